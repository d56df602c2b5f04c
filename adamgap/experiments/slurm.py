"""The Slurm launcher of a sweep (``sweep.launcher=slurm``): a job array, one task per cell,
and an aggregation job that runs when the array has ended.

    python scripts/sweep.py sweep.grid.conf=[synthetic_adam,synthetic_gd] sweep.seeds=10 \\
        sweep.dir=sweeps/table1 sweep.launcher=slurm sweep.slurm.partition=gpu \\
        sweep.slurm.gpus=1 sweep.slurm.time=00:30:00 trainer.accelerator=gpu

writes the sweep directory exactly as a local sweep does (the spec says what runs, never
where), then submits

- ``slurm/sweep.sbatch SWEEP_DIR`` as an array over the cells not finished yet
  (``--array=0,3,5%P``): task ``i`` runs ``scripts/sweep.py --dir SWEEP_DIR --cell i``, which
  resumes an interrupted cell from its checkpoint (a requeued task continues, see
  ``adamgap/runtime/requeue.py``);
- ``slurm/aggregate.sbatch SWEEP_DIR`` with ``--dependency=afterany:<array>``: results.csv, the
  aggregate tables and the report once every task has ended, failed ones included;

and prints both job ids (also in ``SWEEP_DIR/slurm/jobs.json``, next to the jobs' logs).
Every cluster-specific setting is a ``sweep.slurm.*`` key (:class:`SlurmSpec`) that becomes an
sbatch option or the jobs' environment; ``sweep.slurm.sbatch_args`` passes any other option.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adamgap.errors import ConfigError
from adamgap.experiments.cells import FINISHED, state
from adamgap.outputs import write_json

ROOT = Path(__file__).resolve().parents[2]  # the checkout: slurm/*.sbatch, scripts/
# Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2})$")
# Slurm's memory sizes: a number with an optional unit (K, M, G or T; none: megabytes)
MEM = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)


@dataclass
class SlurmSpec:
    """``sweep.slurm.*``: where and how the cells run on Slurm (not part of what they compute)."""

    partition: str | None = None  # --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time: str = "01:00:00"  # --time of each cell (array task)
    gpus: int = 0  # --gres=gpu:N per cell; the cell's config says trainer.accelerator=gpu
    cpus: int = 1  # --cpus-per-task per cell (also OMP_NUM_THREADS, slurm/job.sh)
    mem: str | None = None  # --mem per cell, e.g. 8G
    parallel: int | None = None  # at most this many cells at once (--array=...%N)
    setup: str | None = None  # shell lines run first in every job: modules, virtualenv
    python: str | None = None  # the interpreter; null -> `python` after setup
    aggregate_time: str = "00:20:00"  # --time of the aggregation job
    sbatch_args: list[str] = field(default_factory=list)  # more sbatch options, both jobs


def validate(s: SlurmSpec) -> None:
    """Reject impossible settings before anything is written or submitted."""
    for key, ok, allowed in (
            ("time", bool(TIME.match(s.time)), "a Slurm time: MM, HH:MM:SS or D-HH:MM:SS"),
            ("aggregate_time", bool(TIME.match(s.aggregate_time)), "a Slurm time, e.g. 00:20:00"),
            ("gpus", s.gpus >= 0, "an integer >= 0"),
            ("cpus", s.cpus >= 1, "an integer >= 1"),
            ("parallel", s.parallel is None or s.parallel >= 1, "null or an integer >= 1"),
            ("mem", s.mem is None or bool(MEM.match(s.mem)),
             "null or a Slurm memory size such as 8G or 16000M"),
            ("sbatch_args", all(a.startswith("-") for a in s.sbatch_args),
             "a list of sbatch options such as [--constraint=a100]")):
        if not ok:
            raise ConfigError(f"sweep.slurm.{key}={getattr(s, key)!r} is not allowed: {allowed}")


def mem_bytes(mem: str) -> float:
    """A Slurm ``--mem`` size in bytes (0, all of a node's memory: unlimited here)."""
    number, unit = MEM.match(mem).groups()
    size = int(number) * 1024 ** "KMGT".index((unit or "M").upper()) * 1024
    return size if size > 0 else float("inf")


def common_options(s: SlurmSpec) -> list[str]:
    """The sbatch options both jobs get."""
    named = {"--partition": s.partition, "--account": s.account, "--qos": s.qos}
    return [f"{k}={v}" for k, v in named.items() if v] + ["--chdir", str(ROOT), *s.sbatch_args]


def job_env(s: SlurmSpec) -> dict[str, str]:
    """The submitting environment plus the setup the jobs source (slurm/job.sh)."""
    env = dict(os.environ, ADAMGAP_ROOT=str(ROOT))
    if s.setup:
        env["ADAMGAP_SETUP"] = s.setup
    if s.python:
        env["ADAMGAP_PYTHON"] = s.python
    return env


def sbatch(options: list[str], script: str, args: list[str], env: dict[str, str]) -> str:
    """Submit ``slurm/<script>``; the job id, or ConfigError with sbatch's own message."""
    cmd = ["sbatch", "--parsable", *options, str(ROOT / "slurm" / script), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        raise ConfigError("sweep.launcher=slurm: no sbatch here; submit from a Slurm login "
                          "node (or use sweep.launcher=local)") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["(no message)"]
        raise ConfigError(f"sbatch refused {script}: {lines[-1].strip()}")
    return done.stdout.strip().split(";")[0]


def still_queued(jobs_file: Path) -> list[str]:
    """The jobs of an earlier submission (``jobs.json``) that squeue still lists."""
    if not jobs_file.is_file():
        return []
    jobs = json.loads(jobs_file.read_text())
    ids = ",".join(str(jobs[k]) for k in ("array", "aggregate"))
    try:
        done = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ids], capture_output=True,
                              text=True, timeout=60)
    except FileNotFoundError:  # not on a Slurm host: sbatch will say so
        return []
    return sorted({line.split("_")[0] for line in done.stdout.split()})  # an old id: none


def submit_sweep(sweep_dir: Path, spec, cells: list, progress: Callable[[str], None] = print
                 ) -> dict[int, str]:
    """Submit the array over the unfinished ``cells`` and the aggregation job after it.
    Returns each cell's state, ``submitted`` for the ones in the array."""
    s: SlurmSpec = spec.slurm
    validate(s)
    sweep_dir = Path(sweep_dir).resolve()
    states = {c.index: state(sweep_dir, c) for c in cells}
    todo = [i for i, now in states.items() if now not in FINISHED]
    if not todo:
        progress(f"sweep {sweep_dir}: every cell has finished; nothing to submit")
        return states
    logs = sweep_dir / "slurm"
    queued = still_queued(logs / "jobs.json")
    if queued:
        raise ConfigError(f"sweep {sweep_dir} still has jobs in the queue ({', '.join(queued)});"
                          " wait for them or scancel them before submitting it again")
    logs.mkdir(parents=True, exist_ok=True)
    env, name = job_env(s), f"adamgap-{sweep_dir.name}"
    array = ",".join(map(str, todo)) + (f"%{s.parallel}" if s.parallel else "")
    cell_options = [f"--array={array}", f"--time={s.time}", f"--cpus-per-task={s.cpus}",
                    f"--job-name={name}", f"--output={logs}/cell-%a.out"]
    cell_options += [f"--gres=gpu:{s.gpus}"] if s.gpus else []
    cell_options += [f"--mem={s.mem}"] if s.mem else []
    array_id = sbatch([*cell_options, *common_options(s)], "sweep.sbatch", [str(sweep_dir)], env)
    aggregate_id = sbatch([f"--dependency=afterany:{array_id}", f"--time={s.aggregate_time}",
                           f"--job-name={name}-aggregate", f"--output={logs}/aggregate-%j.out",
                           *common_options(s)], "aggregate.sbatch", [str(sweep_dir)], env)
    write_json(logs / "jobs.json", {"array": array_id, "cells": todo, "aggregate": aggregate_id})
    progress(f"submitted job array {array_id} (cells {array}) and aggregation job "
             f"{aggregate_id} (after the array); logs in {logs}")
    return {i: "submitted" if i in todo else now for i, now in states.items()}
