"""Checkpoints and resume: a run killed at any step continues to the same result.

:class:`StepCheckpoint` writes ``RUN_DIR/checkpoints/last.ckpt`` every ``run.checkpoint_every``
steps and when a stop signal arrives: SIGTERM, SIGINT (Ctrl-C), or SIGUSR1 outside Slurm (under
Slurm SIGUSR1 is the requeue signal, handled by ``runtime.requeue``, which ends in the same
SIGTERM path). Files are written through :class:`AtomicCheckpointIO`: a temporary file renamed
over the old one, so a kill or a full disk mid-write leaves the last checkpoint intact, and the
one it replaces stays as ``previous.ckpt``. A checkpoint holds what Lightning saves (weights,
optimizer and scheduler state, step counter, loop progress, every callback's state: the
alignment history, the divergence flags), the module's latest metrics, the RNG states and the
run's settings.

``python scripts/train.py ... run.dir=DIR run.resume=true`` continues from it
(:func:`resume_from`), after checking that it reads back and belongs to this run: a damaged
``last.ckpt`` (truncated, not a checkpoint, from another run) is set aside as
``last.ckpt.damaged`` and the run continues from ``previous.ckpt``, saying so in one line; when
neither is usable the resume stops with one line (:class:`RunError`). What makes the
continuation exact:

- data order: the batch of step t is a function of t alone (``data.StepBatches``);
- the save point: Lightning restores its loops as if the checkpoint was taken at the end of a
  training batch and skips an evaluation due at that step, so when one is due the checkpoint
  waits for it (``on_validation_end``) and the evaluation is neither lost nor repeated;
- ``metrics.csv``: Lightning's CSV logger deletes an existing file, so the rows logged before
  the checkpoint step are set aside first (``metrics.resume.csv``) and written back in front of
  the new ones; the loggers are flushed at every checkpoint so no such row is only in memory.
  :class:`MetricsCSVLogger` writes the file so that a failed write (a full disk) leaves the
  rows already there whole.

A stopped run's summary says ``status: "interrupted"`` and the command exits non-zero (130
after SIGINT).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from adamgap.errors import OutputError, RunError
from adamgap.lightning_internals import prepend_csv_rows, save_csv_rows, val_check_batch
from adamgap.outputs import atomic_write, write_text
from adamgap.runtime.rundir import first_difference

# Lightning warns on every mid-epoch resume unless the loader has state_dict/load_state_dict.
# Ours needs none: batch t is a function of t and the loader starts at the restored step.
warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch")

CHECKPOINT_DIR = "checkpoints"
LAST, PREVIOUS, DAMAGED = "last.ckpt", "previous.ckpt", "last.ckpt.damaged"
METRICS, METRICS_STASH = "metrics.csv", "metrics.resume.csv"
CONFIG_KEY = "adamgap_config"  # the run's settings in a checkpoint (rundir.computing_settings)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, rename over the target;
    the checkpoint it replaces stays beside it as ``previous.ckpt``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        atomic_write(path, lambda f: torch.save(checkpoint, f), binary=True,
                     keep=path.with_name(PREVIOUS) if path.name == LAST else None)


class MetricsCSVLogger(CSVLogger):
    """Lightning's CSV logger (``RUN_DIR/metrics.csv``), writing so that a failure loses
    nothing: a failed append is cut back to the rows written before it, a new column rewrites
    the file atomically (``lightning_internals.save_csv_rows``), and the error names the file
    (:class:`OutputError`)."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(run_dir, name="", version="")

    @rank_zero_only
    def save(self) -> None:
        try:
            save_csv_rows(self, write_text)
        except OSError as err:
            raise OutputError(self.experiment.metrics_file_path, err) from None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "failed":
            super().finalize(status)
            return
        # the run stops on an error: a write failing again (the same full disk) must not hide
        # that error, and rows after the last checkpoint are not needed to resume
        with contextlib.suppress(OutputError):
            super().finalize(status)


class Interrupted(Exception):
    """A stop that cannot wait for the next step boundary: SIGINT before training has started
    (nothing to checkpoint yet), or a second SIGINT. The message is the summary's line."""


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

    def __init__(self, run_dir: str | Path, every: int, settings: dict | None = None) -> None:
        self.run_dir, self.every, self.settings = Path(run_dir), every, settings
        self.path = self.run_dir / CHECKPOINT_DIR / LAST
        self.saved_step = -1
        self.pending = False  # a save waits for this step's evaluation
        self.requested: str | None = None  # the name of the stop signal received
        self.stopping = False  # every rank knows of the request
        self.training = False  # between on_train_start and on_train_end
        self.trained = False  # after on_train_end
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
        self.training = True

    def _note(self, signum: int, frame) -> None:
        self.requested = self.requested or signal.Signals(signum).name

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """SIGINT (Ctrl-C) for the duration of a run (main thread only): during training it
        asks for the same stop as SIGTERM, at the next step boundary with a checkpoint; before
        training starts, or a second time, it stops the run at once (:class:`Interrupted`)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _interrupt(self, signum: int, frame) -> None:
        if self.training and self.requested is None:
            self.requested = "SIGINT"
            return
        why = ("a second SIGINT" if self.requested else "SIGINT after training ended"
               if self.trained else "SIGINT before training started")
        self.requested = self.requested or "SIGINT"
        raise Interrupted(why)

    def agree_to_stop(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:  # the ranks may hear the signal at different steps
            self.stopping |= trainer.strategy.reduce_boolean_decision(bool(self.requested),
                                                                      all=False)
        else:
            self.stopping |= bool(self.requested)
        return self.stopping

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.training, self.trained = False, True
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exc: BaseException):
        self.training = False
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    def mark_interrupted(self, rows: list[dict], step: int,
                         at_once: Interrupted | None = None) -> list[dict]:
        """Status ``interrupted``, the signal (``stopped_by``) and the line that says how to go
        on, in every replica's row. ``at_once``: the stop did not wait for a step boundary."""
        how = (f"stopped at once by {at_once}" if at_once is not None else
               f"stopped by {self.requested or 'SIGTERM'}")
        error = (f"{how} at step {step} (checkpoint: "
                 f"{f'step {self.saved_step}' if self.saved_step >= 0 else 'none'}); "
                 f"continue with run.dir={self.run_dir} run.resume=true")
        for row in rows:
            row.update(status="interrupted", stopped_by=self.requested or "SIGTERM", error=error)
        return rows

    # -- what, besides Lightning's own state ----------------------------------------------------
    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()
        if self.settings is not None:
            checkpoint[CONFIG_KEY] = self.settings

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        set_rng_states(checkpoint["rng_states"])
        self.saved_step = checkpoint["global_step"]
        if trainer.is_global_zero:
            restore_metrics(trainer, self.run_dir, checkpoint["global_step"])


def checkpoint_problem(path: Path, settings: dict | None = None,
                       shapes: dict[str, tuple[int, ...]] | None = None) -> str | None:
    """Why the checkpoint ``path`` cannot continue this run, or None: it does not read back
    (truncated, not a checkpoint), or it was written by another run (other ``settings``,
    ``rundir.computing_settings``; for checkpoints without them: other weight ``shapes``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError
        text = str(err).strip().splitlines()
        return f"it does not read back ({type(err).__name__}{': ' + text[0] if text else ''})"
    if not isinstance(ckpt, dict) or not {"state_dict", "global_step", "loops"} <= set(ckpt):
        return "it is not a checkpoint of a run"
    if settings is not None and CONFIG_KEY in ckpt:
        diff = first_difference(ckpt[CONFIG_KEY], settings)
        if diff is not None:
            return f"it is from another run ({diff})"
    for key, shape in (shapes or {}).items():
        saved = ckpt["state_dict"].get(key)
        if saved is None or tuple(saved.shape) != tuple(shape):
            return (f"it is from another run ({key} has shape "
                    f"{tuple(saved.shape) if saved is not None else 'none'}, this run's "
                    f"{tuple(shape)})")
    return None


def resume_from(run_dir: str | Path, stash_metrics: bool = True, settings: dict | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None,
                say: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint to continue ``run_dir`` from, or None (start afresh): ``last.ckpt``, or
    when it is damaged (:func:`checkpoint_problem`) ``previous.ckpt``, the damaged one set
    aside and one line said (``say``, default stderr). Raises :class:`RunError` when there
    are checkpoints but none usable. Sets ``metrics.csv`` aside (on rank 0: ``stash_metrics``)
    before Lightning's CSV logger deletes it; :class:`StepCheckpoint` writes its rows back once
    the checkpoint is loaded."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR
    last, previous = folder / LAST, folder / PREVIOUS
    problems = {p: checkpoint_problem(p, settings, shapes) for p in (last, previous)
                if p.is_file()}
    if not problems:
        return None
    usable = [p for p, problem in problems.items() if problem is None]
    if not usable:
        said = "; ".join(f"{p} is damaged: {problem}" for p, problem in problems.items())
        raise RunError(f"cannot resume {run_dir}: {said}; move {folder} away to run it again "
                       "from step 0, or choose another run.dir")
    ckpt = usable[0]
    if ckpt != last and last.is_file():
        if stash_metrics:  # rank 0 (the others only read)
            os.replace(last, folder / DAMAGED)  # else the next save would keep it as previous
            (say or _stderr)(f"warning: {last} is damaged: {problems[last]}; set it aside as "
                             f"{DAMAGED} and resuming from {PREVIOUS}")
    metrics, stash = run_dir / METRICS, run_dir / METRICS_STASH
    if stash_metrics and metrics.is_file() and not stash.is_file():  # an older stash wins
        os.replace(metrics, stash)
    return ckpt


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def restore_metrics(trainer: L.Trainer, run_dir: Path, step: int) -> None:
    """Put the stashed ``metrics.csv`` rows logged before ``step`` in front of the CSV logger's."""
    stash = run_dir / METRICS_STASH
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is None or not stash.is_file():
        return
    with open(stash, newline="") as f:
        rows = [row for row in csv.DictReader(f) if _complete(row) and int(row["step"]) < step]
    prepend_csv_rows(csv_logger, rows)  # values stay the strings they were: the file reads the same
    stash.unlink()


def _complete(row: dict) -> bool:
    """A whole ``metrics.csv`` row (a row cut short by a kill mid-write has missing fields)."""
    return None not in row and None not in row.values() and row.get("step", "").isdigit()
