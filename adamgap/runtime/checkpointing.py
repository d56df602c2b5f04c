"""Checkpoints and resume: a run killed at any step continues to the same result.

:class:`StepCheckpoint` writes ``RUN_DIR/checkpoints/last.ckpt`` every ``run.checkpoint_every``
steps and when a stop signal arrives: SIGTERM, or SIGUSR1 outside Slurm (under Slurm SIGUSR1 is
the requeue signal, handled by ``runtime.requeue``, which ends in the same SIGTERM path). Files
are written through :class:`AtomicCheckpointIO`: a temporary file renamed over the old one, so
a kill mid-write leaves the previous checkpoint intact. A checkpoint holds what Lightning saves
(weights, optimizer and scheduler state, step counter, loop progress, every callback's state:
the alignment history, the divergence flags), the module's latest metrics and the RNG states.

``python scripts/train.py ... run.dir=DIR run.resume=true`` continues from it
(:func:`resume_from`). What makes the continuation exact:

- data order: the batch of step t is a function of t alone (``data.StepBatches``);
- the save point: Lightning restores its loops as if the checkpoint was taken at the end of a
  training batch and skips an evaluation due at that step, so when one is due the checkpoint
  waits for it (``on_validation_end``) and the evaluation is neither lost nor repeated;
- ``metrics.csv``: Lightning's CSV logger deletes an existing file, so the rows logged before
  the checkpoint step are set aside first (``metrics.resume.csv``) and written back in front of
  the new ones; the loggers are flushed at every checkpoint so no such row is only in memory.

A stopped run's summary says ``status: "interrupted"`` and the command exits non-zero.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import threading
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from adamgap.lightning_internals import prepend_csv_rows, val_check_batch
from adamgap.outputs import atomic_write

# Lightning warns on every mid-epoch resume unless the loader has state_dict/load_state_dict.
# Ours needs none: batch t is a function of t and the loader starts at the restored step.
warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
METRICS, METRICS_STASH = "metrics.csv", "metrics.resume.csv"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, rename over the target."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f), binary=True)


def rng_states() -> dict:
    """Every global RNG (training draws from none today; a stochastic optimizer or model may)."""
    _, key, *rest = np.random.get_state()  # ("MT19937", key, pos, has_gauss, cached)
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (torch.from_numpy(key.astype(np.int64)), *rest)}  # weights_only-loadable
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    key, *rest = states["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StepCheckpoint(Checkpoint):
    """``checkpoints/last.ckpt`` every ``every`` steps (0: only on a stop signal), after that
    step's evaluation when one is due; never at the last step (the results follow at once).

    SIGTERM, and SIGUSR1 outside Slurm, ask the run to stop: this callback replaces Lightning's
    handler, which would abort an evaluation half-way (no exact checkpoint can be taken there),
    notes the request, saves at the next save point and stops before the following step with
    Lightning's ``SIGTERMException``. Under DDP the ranks agree on the request every step."""

    def __init__(self, run_dir: str | Path, every: int) -> None:
        self.run_dir, self.every = Path(run_dir), every
        self.path = self.run_dir / CHECKPOINT_DIR / LAST
        self.saved_step = -1
        self.pending = False  # a save waits for this step's evaluation
        self.requested: str | None = None  # the name of the stop signal received
        self.stopping = False  # every rank knows of the request
        self._handlers: dict = {}

    # -- when ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.stopping and self.saved_step == trainer.global_step:
            raise SIGTERMException()  # after the checkpoint and every log of the step before

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = (self.every > 0 and step % self.every == 0) or self.agree_to_stop(trainer)
        if not due or step >= trainer.max_steps:
            return
        if (batch_idx + 1) % val_check_batch(trainer) == 0:
            self.pending = True  # Lightning evaluates after this hook: save after it
        else:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        step = trainer.global_step
        stop = self.agree_to_stop(trainer)
        if (self.pending or stop) and step < trainer.max_steps and self.saved_step != step:
            self.save(trainer)
        self.pending = False

    def save(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()  # rows logged before this step must not live only in memory
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    # -- signals ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # after Lightning has installed its handlers (they come back when training ends)
        signums = [signal.SIGTERM] + ([] if SLURMEnvironment.detect() else [signal.SIGUSR1])
        if threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._note) for s in signums}

    def _note(self, signum: int, frame) -> None:
        self.requested = self.requested or signal.Signals(signum).name

    def agree_to_stop(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:  # the ranks may hear the signal at different steps
            self.stopping |= trainer.strategy.reduce_boolean_decision(bool(self.requested),
                                                                      all=False)
        else:
            self.stopping |= bool(self.requested)
        return self.stopping

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exc: BaseException):
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    def mark_interrupted(self, rows: list[dict], step: int) -> list[dict]:
        """Status ``interrupted`` and the line that says how to go on, in every replica's row."""
        error = (f"stopped by {self.requested or 'SIGTERM'} at step {step} (checkpoint: "
                 f"{f'step {self.saved_step}' if self.saved_step >= 0 else 'none'}); "
                 "continue with run.resume=true")
        for row in rows:
            row.update(status="interrupted", error=error)
        return rows

    # -- what, besides Lightning's own state ----------------------------------------------------
    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        set_rng_states(checkpoint["rng_states"])
        self.saved_step = checkpoint["global_step"]
        if trainer.is_global_zero:
            restore_metrics(trainer, self.run_dir, checkpoint["global_step"])


def resume_from(run_dir: str | Path, stash_metrics: bool = True) -> Path | None:
    """The checkpoint to continue ``run_dir`` from, or None (start afresh). Sets ``metrics.csv``
    aside (on rank 0: ``stash_metrics``) before Lightning's CSV logger deletes it;
    :class:`StepCheckpoint` writes its rows back once the checkpoint is loaded."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR / LAST
    if not ckpt.is_file():
        return None
    metrics, stash = run_dir / METRICS, run_dir / METRICS_STASH
    if stash_metrics and metrics.is_file() and not stash.is_file():  # an older stash wins
        os.replace(metrics, stash)
    return ckpt


def restore_metrics(trainer: L.Trainer, run_dir: Path, step: int) -> None:
    """Put the stashed ``metrics.csv`` rows logged before ``step`` in front of the CSV logger's."""
    stash = run_dir / METRICS_STASH
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is None or not stash.is_file():
        return
    with open(stash, newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) < step]
    prepend_csv_rows(csv_logger, rows)  # values stay the strings they were: the file reads the same
    stash.unlink()
