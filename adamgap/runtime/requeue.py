"""Slurm requeue: ``sbatch --signal=SIGUSR1@90`` -> checkpoint at a step boundary -> requeue.

Lightning's ``SLURMEnvironment`` auto-requeue writes its checkpoint inside the SIGUSR1 handler,
which may run anywhere: in the middle of a step, between the optimizer step and the step
counter, or, under DDP, while the other ranks wait in a collective
(Lightning-AI/pytorch-lightning#21406). Here the handler only notes the signal; at the end of
the next training step every rank agrees that one of them got it (a boolean all-reduce) and
takes the run's SIGTERM path, where :class:`adamgap.runtime.checkpointing.StepCheckpoint` writes
``checkpoints/last.ckpt`` at that step (after the step's evaluation when one is due) and stops
the run with Lightning's ``SIGTERMException``. Rank 0 then runs ``scontrol requeue`` as
Lightning would; the restarted job keeps its job id, so ``slurm/train.sbatch`` finds the same
run directory and adds ``run.resume=true``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


def under_slurm() -> bool:
    """Whether Lightning sees this process as a Slurm task (``srun`` inside an allocation)."""
    return SLURMEnvironment.detect()


def plugins() -> list:
    """Trainer plugins: under Slurm, Lightning's environment with its own requeue handler off."""
    return [SLURMEnvironment(auto_requeue=False)] if under_slurm() else []


def callbacks() -> list[L.Callback]:
    return [SlurmRequeue()] if under_slurm() else []


def job_id() -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


class SlurmRequeue(L.Callback):
    """On SIGUSR1: stop gracefully at the next step boundary, checkpointed, then requeue."""

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.noted = False  # set by the signal handler, nothing else happens there
        self.stopping = False
        self._previous = None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._note)

    def _note(self, signum, frame) -> None:
        self.noted = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # every rank calls this at the same step, so the collectives below line up
        if self.stopping or not trainer.strategy.reduce_boolean_decision(self.noted, all=False):
            return
        self.stopping = True
        rank_zero_info(f"adamgap: requeue signal: checkpoint at step {trainer.global_step}, "
                       f"then scontrol requeue {job_id()}")
        signal.raise_signal(signal.SIGTERM)  # the graceful stop: StepCheckpoint saves this step

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule,
                     exception: BaseException) -> None:
        self.teardown(trainer, module, "fit")
        if self.stopping and isinstance(exception, SIGTERMException) and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job_id()], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                rank_zero_warn(f"scontrol requeue {job_id()} failed: {result.stderr.strip()}")

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
