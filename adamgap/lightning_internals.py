"""The only place adamgap touches Lightning's private API; ``tests/test_lightning_internals.py``
fails loudly when a Lightning release renames or changes any of it.

- ``LightningOptimizer._on_before_step`` / ``_on_after_step``: the step-count hooks its
  ``step()`` wraps around the torch optimizer's. Several optimizer steps run inside one
  Lightning training step (``GapModule``), where the torch optimizer steps directly and these
  hooks keep ``trainer.global_step`` (and with it ``max_steps``, checkpoints, resume) counting
  every one of them.
- ``Trainer.val_check_batch``: after how many training batches the fit loop evaluates, so
  that a checkpoint due at that batch can wait for the evaluation (``StepCheckpoint``).
- ``CSVLogger.experiment.metrics`` / ``.metrics_keys`` / ``.metrics_file_path``: the rows the
  CSV logger holds before writing ``metrics.csv``, the columns of the file and its path; a
  resumed run puts the rows logged before its checkpoint back in front, and
  :func:`save_csv_rows` writes them so that a failed write loses nothing.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
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
    logger.save()


def save_csv_rows(logger: CSVLogger, write_text: Callable[[Path, str], None]) -> None:
    """Write the rows ``logger`` holds to ``metrics.csv`` as its own ``save`` would (append,
    or rewrite the whole file when new columns appear), so that a failure loses nothing: a
    rewrite goes through ``write_text`` (atomic), a failed append is cut back to the rows
    that were there before, and the rows stay held. Raises the ``OSError``."""
    writer = logger.experiment
    if not writer.metrics:
        return
    path = Path(writer.metrics_file_path)
    keys = sorted(set(writer.metrics_keys).union(*writer.metrics))
    if path.is_file() and keys != sorted(writer.metrics_keys):
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
        buf = io.StringIO()
        out = csv.DictWriter(buf, fieldnames=keys)
        out.writeheader()
        out.writerows(old + writer.metrics)
        write_text(path, buf.getvalue())
    else:
        size = path.stat().st_size if path.is_file() else None
        try:
            with open(path, "a" if size is not None else "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                if size is None:
                    out.writeheader()
                out.writerows(writer.metrics)
                f.flush()
        except BaseException:
            try:
                if size is None:
                    path.unlink(missing_ok=True)
                else:
                    os.truncate(path, size)  # frees what was appended: works on a full disk
            except OSError:
                pass  # a read-only file system: nothing was appended
            raise
    writer.metrics_keys[:] = keys
    writer.metrics = []
