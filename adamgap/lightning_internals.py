"""The only place adamgap touches Lightning's private API; ``tests/test_lightning_internals.py``
fails loudly when a Lightning release renames or changes any of it.

- ``LightningOptimizer._on_before_step`` / ``_on_after_step``: the step-count hooks its
  ``step()`` wraps around the torch optimizer's. Several optimizer steps run inside one
  Lightning training step (``GapModule``), where the torch optimizer steps directly and these
  hooks keep ``trainer.global_step`` (and with it ``max_steps``, checkpoints, resume) counting
  every one of them.
- ``Trainer.val_check_batch``: after how many training batches the fit loop evaluates, so
  that a checkpoint due at that batch can wait for the evaluation (``StepCheckpoint``).
- ``CSVLogger.experiment.metrics``: the rows the CSV logger holds before writing
  ``metrics.csv``; a resumed run puts the rows logged before its checkpoint back in front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger


def counted_step(opt: LightningOptimizer, step: Callable[[], Any]) -> Any:
    """Run ``step()`` (the torch optimizer's own step) counted as one Lightning optimizer step."""
    opt._on_before_step()
    try:
        return step()
    finally:
        opt._on_after_step()


def val_check_batch(trainer: L.Trainer) -> float:
    """The number of training batches between evaluations (set by the fit loop)."""
    return trainer.val_check_batch


def prepend_csv_rows(logger: CSVLogger, rows: list[dict]) -> None:
    """Put ``rows`` in front of what ``logger`` has logged, and write ``metrics.csv``."""
    writer = logger.experiment
    writer.metrics[:0] = rows
    writer.save()
