"""A sweep's cells: what each one is, where its files live and what state it is in.

A cell is one run of a sweep: a grid point and a block of seeds (one ensemble). Its state is
one of

``completed``, ``diverged``   finished (``runtime.rundir.FINISHED``): never run again
``running``                   a live process holds its run directory
``failed``                    its last attempt raised; its record names the error line
``pending``                   never run, or interrupted (it resumes from its checkpoint)

Both launchers, the local one and Slurm's, read the state from here.

    SWEEP_DIR/cells/<id>/       the cell's run directory (adamgap.train.run)
    SWEEP_DIR/cells/<id>.json   its attempts: status, error line (``.error.log``: traceback,
                                ``.log``: the output of a cell run in its own process)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamgap.runtime import rundir
from adamgap.runtime.rundir import FINISHED

__all__ = ["FINISHED", "Cell", "cell_dir", "cell_file", "record_of", "state"]


@dataclass
class Cell:
    """One run of a sweep: a grid point and a block of seeds."""

    index: int
    id: str
    conf: str
    values: dict[str, Any]  # grid key -> value (``conf`` included when it is a grid key)
    seed: int
    replicas: int
    overrides: list[str]  # base overrides, then the grid values (without run.*, seed)


def cell_dir(sweep_dir: Path, cell: Cell) -> Path:
    """The cell's run directory (adamgap.train.run writes it; nothing else goes in)."""
    return Path(sweep_dir) / "cells" / cell.id


def cell_file(sweep_dir: Path, cell: Cell, suffix: str) -> Path:
    """``cells/<id>.json`` (the attempt record), ``.log`` (output), ``.error.log``."""
    return Path(sweep_dir) / "cells" / f"{cell.id}{suffix}"


def record_of(sweep_dir: Path, cell: Cell) -> dict:
    try:
        return json.loads(cell_file(sweep_dir, cell, ".json").read_text())
    except (OSError, ValueError):
        return {}


def state(sweep_dir: Path, cell: Cell) -> str:
    """completed | diverged (finished) | failed | pending (never run, or interrupted)."""
    run_state = rundir.inspect(cell_dir(sweep_dir, cell))
    if run_state in FINISHED or run_state == "running":
        return run_state
    return "failed" if record_of(sweep_dir, cell).get("status") == "failed" else "pending"
