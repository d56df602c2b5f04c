"""A local launcher that keeps ``jobs`` worker processes and hands them a sweep's cells one at a
time (``run_pool``), for sweeps of many short cells.

``launch.run_local`` starts a fresh process per cell (a crash costs that cell only); importing
torch, Lightning and the optimizer libraries costs a few seconds a process, which for the
atlas's hundreds of cells of a minute each is a tenth of the time. Here each worker imports
once and runs its cells in-process (``launch.run_cell``: the same records, states and resume
as every launcher); a worker that dies takes only its current cell with it: the cell is
recorded ``failed`` with the worker's exit status and a fresh worker takes the next one.

    python -m adamgap.experiments.pool --dir SWEEP_DIR    # a worker: cell indices on stdin
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from adamgap.experiments.cells import FINISHED, Cell, cell_file, record_of, state
from adamgap.experiments.launch import run_cell
from adamgap.experiments.spec import SweepSpec, load
from adamgap.outputs import write_json
from adamgap.startup import collector_paused

READY = "ready"


def run_pool(sweep_dir: Path, spec: SweepSpec, cells: list[Cell],
             progress: Callable[[str], None] = print, deadline: float | None = None
             ) -> dict[int, str]:
    """Run the unfinished ``cells`` with ``spec.jobs`` workers; each cell's state. After
    ``deadline`` (a ``time.monotonic()`` value) no cell is started: those running finish, the
    rest stay pending for the next call (so that a long sweep can yield a shared machine)."""
    todo: queue.Queue[Cell] = queue.Queue()
    for cell in cells:
        if state(sweep_dir, cell) not in FINISHED:
            todo.put(cell)
    out = {c.index: state(sweep_dir, c) for c in cells}
    threads = spec.threads or max(1, (os.cpu_count() or 1) // spec.jobs)
    progress(f"sweep {sweep_dir}: {len(cells)} cells, {todo.qsize()} to run ({spec.jobs} "
             f"workers, {threads} threads each)")
    lock = threading.Lock()

    def serve() -> None:
        worker = None
        while deadline is None or time.monotonic() < deadline:
            try:
                cell = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None:
                worker = _start(sweep_dir, threads)
            worker.stdin.write(f"{cell.index}\n")
            worker.stdin.flush()
            line = worker.stdout.readline().strip()
            now = state(sweep_dir, cell)
            if not line:  # the worker died with this cell
                code = worker.wait()
                write_json(cell_file(sweep_dir, cell, ".json"), record_of(sweep_dir, cell) | {
                    "status": "failed", "error": f"worker exit code {code}"})
                now, worker = "failed", None
            with lock:
                out[cell.index] = now
                error = record_of(sweep_dir, cell).get("error")
                progress(f"cell {cell.index} {cell.id}: {now}" + (f" ({error})" if error else ""))
        if worker is not None:
            worker.stdin.close()
            worker.wait()

    pool = [threading.Thread(target=serve) for _ in range(spec.jobs)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return out


def _start(sweep_dir: Path, threads: int) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = open(Path(sweep_dir) / "workers.log", "a")  # noqa: SIM115 - the worker's stderr
    proc = subprocess.Popen([sys.executable, "-m", "adamgap.experiments.pool", "--dir",
                             str(sweep_dir), "--threads", str(threads)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    if proc.stdout.readline().strip() != READY:
        raise RuntimeError(f"a sweep worker did not start (see {log.name})")
    return proc


def serve(sweep_dir: Path, threads: int) -> None:
    """A worker: run the cells whose indices arrive on stdin; one line per cell on stdout."""
    _, cells = load(sweep_dir)
    out = sys.stdout
    sys.stdout = sys.stderr  # what the runs print goes to the log, not the reply pipe
    print(READY, file=out, flush=True)
    for line in sys.stdin:
        index = int(line)
        status = run_cell(sweep_dir, cells[index], threads)
        print(status, file=out, flush=True)


if __name__ == "__main__":
    with collector_paused():
        import adamgap.train  # noqa: F401 - torch and Lightning, without the collector
    parser = argparse.ArgumentParser(prog="adamgap.experiments.pool")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    serve(Path(args.dir), args.threads)
