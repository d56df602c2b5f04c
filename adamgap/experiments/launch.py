"""Running a sweep's cells: one in this process (``run_cell``), all unfinished ones on this
machine (``run_local``, ``sweep.jobs`` at a time, each in its own process when more than one),
or the sweep as a whole with its launcher (``run_sweep``: local, or a Slurm job array through
``adamgap.experiments.slurm``). A failed cell is recorded with its error line and never stops
the others; a re-run skips finished cells, retries failed ones and continues interrupted ones
from their last checkpoint (a cell whose ``summary.json`` no longer reads back runs again, from
its last checkpoint, and the re-run says so). A file that cannot be written (a full disk) stops
the sweep with one line: every later cell would fail the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import torch

from adamgap import train
from adamgap.errors import OutputError
from adamgap.experiments.aggregate import aggregate
from adamgap.experiments.cells import FINISHED, Cell, cell_dir, cell_file, record_of, state
from adamgap.experiments.slurm import submit_sweep
from adamgap.experiments.spec import SweepSpec, config_of, load
from adamgap.outputs import write_json, write_text
from adamgap.runtime.checkpointing import Interrupted
from adamgap.summary import read as read_summary
from adamgap.summary import replicas_of


def run_cell(sweep_dir: Path, cell: Cell, threads: int | None = None) -> str:
    """Run one cell in this process (nothing if it is finished); record its outcome in
    ``cells/<id>.json``. Returns the cell's state; any error becomes ``failed`` with its line."""
    now = state(sweep_dir, cell)
    if now in FINISHED or now == "running":
        return now
    if threads:
        torch.set_num_threads(threads)
    rec = {"index": cell.index, "id": cell.id, "attempts": record_of(sweep_dir, cell).get(
        "attempts", 0) + 1, "started": datetime.now().isoformat(timespec="seconds")}
    write_json(cell_file(sweep_dir, cell, ".json"), rec | {"status": "running"})
    try:
        summary = train.run(config_of(cell, Path(sweep_dir)))
        status, error = summary.get("status", "completed"), _first_error(summary)
    except OutputError as err:  # the sweep stops: the next cells could not write either
        write_json(cell_file(sweep_dir, cell, ".json"), rec | {"status": "failed",
                                                               "error": str(err)})
        raise
    except Interrupted as err:  # SIGINT before the cell's training, or twice: the sweep stops
        write_json(cell_file(sweep_dir, cell, ".json"), rec | {"status": "interrupted",
                                                               "error": str(err)})
        raise KeyboardInterrupt from None
    except Exception as err:  # noqa: BLE001 - any failure is recorded, the sweep goes on
        status, error = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" \
            if str(err).strip() else type(err).__name__
        write_text(cell_file(sweep_dir, cell, ".error.log"), traceback.format_exc())
    finished = datetime.now().isoformat(timespec="seconds")
    write_json(cell_file(sweep_dir, cell, ".json"),
               rec | {"status": status, "error": error, "finished": finished})
    return status


def _first_error(summary: dict) -> str | None:
    for row in replicas_of(summary):
        if row.get("error"):
            return str(row["error"])
    return None


def _run_in_subprocess(sweep_dir: Path, cell: Cell, threads: int) -> str:
    """One cell in a fresh process (``python -m adamgap.experiments.sweep --dir D --cell I``): a
    crash or a
    kill there costs that cell only."""
    log = cell_file(sweep_dir, cell, ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "adamgap.experiments.sweep", "--dir",
                               str(sweep_dir),
                               "--cell", str(cell.index), "--threads", str(threads)],
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    now = state(sweep_dir, cell)
    if proc.returncode != 0 and now == "pending":  # died before it could record anything
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        error = f"exit code {proc.returncode}: {lines[-1] if lines else 'no output'}"
        write_json(cell_file(sweep_dir, cell, ".json"), record_of(sweep_dir, cell) | {
            "status": "failed", "error": error})
        now = "failed"
    return now


def run_local(sweep_dir: Path, spec: SweepSpec, cells: list[Cell],
              progress: Callable[[str], None] = print) -> dict[int, str]:
    """Run the unfinished ``cells`` on this machine, ``spec.jobs`` at a time."""
    threads = spec.threads or max(1, (os.cpu_count() or 1) // spec.jobs)
    todo = [c for c in cells if state(sweep_dir, c) not in FINISHED]
    out = {c.index: state(sweep_dir, c) for c in cells}

    def one(cell: Cell) -> None:
        if spec.jobs == 1:
            out[cell.index] = run_cell(sweep_dir, cell, threads)
        else:
            out[cell.index] = _run_in_subprocess(sweep_dir, cell, threads)
        error = record_of(sweep_dir, cell).get("error")
        progress(f"cell {cell.index} {cell.id}: {out[cell.index]}" + (f" ({error})" if error
                                                                     else ""))
        if out[cell.index] == "interrupted":
            raise KeyboardInterrupt  # asked to stop (SIGTERM): the sweep stops with it

    progress(f"sweep {sweep_dir}: {len(cells)} cells, {len(cells) - len(todo)} finished, "
             f"{len(todo)} to run ({spec.jobs} at a time, {threads} threads each)")
    for cell in todo:
        damaged = cell_dir(sweep_dir, cell) / "summary.json"
        if damaged.is_file() and read_summary(cell_dir(sweep_dir, cell)) is None:
            progress(f"cell {cell.index} {cell.id}: {damaged} is damaged; the cell runs again "
                     "from its last checkpoint")
    if spec.jobs == 1:
        for cell in todo:
            one(cell)
    else:
        with ThreadPoolExecutor(spec.jobs) as pool:
            list(pool.map(one, todo))
    return out


def run_sweep(sweep_dir: str | Path, progress: Callable[[str], None] = print) -> dict[int, str]:
    """Run the sweep in ``sweep_dir`` with its launcher, then aggregate what is there."""
    spec, cells = load(sweep_dir)
    launcher = submit_sweep if spec.launcher == "slurm" else run_local
    states = launcher(Path(sweep_dir), spec, cells, progress=progress)
    if "submitted" not in states.values():  # else the cluster's aggregation job does it
        aggregate(sweep_dir)
    return states
