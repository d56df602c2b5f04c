"""Sweeps: a grid of experiments, each cell one seed ensemble, all in one directory.

    python scripts/sweep.py conf=synthetic_adam sweep.seeds=10 sweep.grid.data.alpha=[0.05,0.1,0.2]
    python scripts/sweep.py sweep.grid.conf=[synthetic_adam,synthetic_gd] sweep.seeds=10

The grid keys (``conf`` or any config key) form a product; every other ``key=value`` is a base
override for all cells. Each cell trains its seeds ``seed, ..., seed + seeds - 1`` as one
ensemble (``run.replicas``, bit-for-bit the separate runs: tests/test_ensemble.py), or in chunks
of ``sweep.chunk`` seeds, one run per chunk. The spec says *what* to run, never *where*: a
launcher (``sweep.launcher``; ``local`` here, a cluster array elsewhere) runs cells by index.

    SWEEP_DIR/sweep.yaml     the spec, written before anything runs
    SWEEP_DIR/cells.json     cell i: id, conf, grid values, the overrides that make its config
    SWEEP_DIR/cells/<id>/    the cell's run directory (adamgap.train.run)
    SWEEP_DIR/cells/<id>.json  its attempts: status, error line (``.error.log``: traceback,
                             ``.log``: the output of a cell run in its own process)
    SWEEP_DIR/results.csv    one row per (cell, seed): conf, seed, status, grid keys, metrics
    SWEEP_DIR/aggregate.csv  per grid point, every metric: mean, std, 95% CI (t) over seeds

Re-running a sweep (same command, or ``--dir SWEEP_DIR``) skips finished cells (completed or
diverged: a divergence is a result), retries failed ones and continues interrupted ones from
their last checkpoint. A failed cell never stops the others.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adamgap.config import ConfigError, load_config, parse_overrides
from adamgap.outputs import write_csv, write_json, write_text
from adamgap.slurm import SlurmSpec, submit_sweep
from adamgap.slurm import validate as validate_slurm

FINISHED = ("completed", "diverged")  # a cell in one of these states is never run again
# keys the sweep sets itself for every cell: a grid over them would fight the sweep
RESERVED = ("seed", "run.replicas", "run.dir", "run.resume")


@dataclass
class SweepSpec:
    """What a sweep runs (``sweep.yaml``): independent of the machine that runs it."""

    conf: str = "default"  # base experiment; a grid over ``conf`` replaces it per cell
    overrides: list[str] = field(default_factory=list)  # base key=value for every cell
    seeds: int = 10  # seeds per cell: seed, seed + 1, ..., seed + seeds - 1
    chunk: int | None = None  # seeds per run (one ensemble); null -> all of a cell's seeds
    grid: dict[str, list[Any]] = field(default_factory=dict)  # config key -> values (product)
    dir: str | None = None  # null -> sweeps/<timestamp>
    launcher: str = "local"  # where the cells run (local: this machine)
    jobs: int = 1  # local: cells run at once, each in its own process when > 1
    # torch threads per cell; null -> cores // jobs. 1: the paper's problem is too small for
    # more (2 threads ran 30x slower on a busy 2-core machine, docs/benchmark.md)
    threads: int | None = 1
    slurm: SlurmSpec = field(default_factory=SlurmSpec)  # launcher=slurm: sbatch settings


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


# -- the spec --------------------------------------------------------------------------------------
def render(value: Any) -> str:
    """A value as the right-hand side of a ``key=value`` override (OmegaConf's grammar)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_args(argv: list[str]) -> SweepSpec:
    """``conf=NAME sweep.FIELD=VALUE sweep.grid.KEY=[...] key=value ...`` -> a checked spec."""
    conf, rest = parse_overrides(argv)
    spec, grid, base = {"conf": conf}, {}, []
    for arg in rest:
        key, _, value = arg.partition("=")
        if not key.startswith("sweep."):
            base.append(arg)
            continue
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
        except Exception as err:  # OmegaConf's errors, and the YAML parser's (e.g. "[0.1")
            msg = str(err).splitlines()[0]
            raise ConfigError(f"{key}: cannot parse '{value}': {msg}") from None
        if key.startswith("sweep.grid."):
            grid[key.removeprefix("sweep.grid.")] = parsed if isinstance(parsed, list) else [parsed]
        elif key.startswith("sweep.slurm."):  # the slurm launcher's settings (adamgap/slurm.py)
            spec.setdefault("slurm", {})[key.removeprefix("sweep.slurm.")] = parsed
        else:
            spec[key.removeprefix("sweep.")] = parsed
    return check(spec | {"grid": grid, "overrides": base})


def check(raw: dict) -> SweepSpec:
    """Schema and values of a sweep spec; ConfigError (one line, naming the key) otherwise."""
    schema = OmegaConf.structured(SweepSpec)
    try:
        node = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        if "not in" in msg:
            parent = key.rpartition(".")[0]
            keys = OmegaConf.select(schema, parent) if parent else schema
            raise ConfigError(f"unknown sweep key 'sweep.{key}'; allowed: "
                              f"{', '.join(f'sweep.{parent}.{k}'.replace('..', '.') for k in keys)}"
                              ) from None
        raise ConfigError(f"bad value for 'sweep.{key}': {msg}") from None
    spec = OmegaConf.to_object(node)  # a SweepSpec (its slurm settings a SlurmSpec)
    for key, ok, allowed in (
            ("seeds", spec.seeds >= 1, "an integer >= 1"),
            ("chunk", spec.chunk is None or spec.chunk >= 1, "null or an integer >= 1"),
            ("launcher", spec.launcher in LAUNCHERS, " | ".join(LAUNCHERS)),
            ("jobs", spec.jobs >= 1, "an integer >= 1"),
            ("threads", spec.threads is None or spec.threads >= 1, "null or an integer >= 1")):
        if not ok:
            raise ConfigError(f"sweep.{key}={getattr(spec, key)!r} is not allowed: {allowed}")
    if spec.launcher == "slurm":
        validate_slurm(spec.slurm)
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"sweep.grid.{key} is empty: give a list of values, e.g. [1,2]")
        if key in RESERVED:
            raise ConfigError(f"sweep.grid.{key}: the sweep sets {key} itself; use sweep.seeds "
                              "and base overrides (seed=S sets the first seed)")
    return spec


def _check_grid_key(key: str, cfg) -> None:
    if key == "conf":
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node) or leaf not in node:
        allowed = ", ".join(f"{parent}.{k}" if parent else k for k in node) \
            if OmegaConf.is_dict(node) else "a config key such as data.alpha"
        raise ConfigError(f"sweep.grid.{key}: unknown config key; allowed: {allowed}")
    if OmegaConf.is_dict(node[leaf]) and key != "optim.kwargs":
        raise ConfigError(f"sweep.grid.{key}: a group of settings; name one of its keys "
                          f"({', '.join(f'{key}.{k}' for k in node[leaf])})")


def plan(spec: SweepSpec) -> list[Cell]:
    """The cells, in grid order (first key slowest), every config validated: a bad grid key or
    value fails here, before anything runs."""
    base = load_config(spec.conf, spec.overrides)  # bad base overrides name themselves
    for key in spec.grid:
        _check_grid_key(key, base)
    first, chunk = base.seed, spec.chunk or spec.seeds
    blocks = [(first + i, min(chunk, spec.seeds - i)) for i in range(0, spec.seeds, chunk)]
    cells = []
    for point in product(*spec.grid.values()):
        values = dict(zip(spec.grid, point, strict=True))
        conf = values.get("conf", spec.conf)
        over = spec.overrides + [f"{k}={render(v)}" for k, v in values.items() if k != "conf"]
        for seed, replicas in blocks:
            label = [str(v) if k == "conf" else f"{k.rpartition('.')[2]}{v}"
                     for k, v in values.items()]
            if len(blocks) > 1:
                label.append(f"s{seed}-{seed + replicas - 1}")
            index = len(cells)
            cell = Cell(index, _slug("_".join([f"{index:03d}", *label])), conf, values, seed,
                        replicas, over)
            try:
                config_of(cell, Path("."))
            except ConfigError as err:
                raise ConfigError(f"sweep cell {cell.id}: {err}") from None
            cells.append(cell)
    return cells


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)
    return keep[:120]


def config_of(cell: Cell, sweep_dir: Path):
    """The cell's full config: its run directory, seeds and resume are the sweep's."""
    return load_config(cell.conf, [*cell.overrides, f"seed={cell.seed}",
                                   f"run.replicas={cell.replicas}",
                                   f"run.dir={sweep_dir / 'cells' / cell.id}", "run.resume=true",
                                   "trainer.progress_bar=false"])


# -- the sweep directory ---------------------------------------------------------------------------
def create(spec: SweepSpec) -> Path:
    """Write ``sweep.yaml`` and ``cells.json`` (or find the same spec already there: resume)."""
    cells = plan(spec)
    if spec.dir is None:
        spec.dir = str(Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    sweep_dir = Path(spec.dir)
    if (sweep_dir / "sweep.yaml").is_file():
        old, _ = load(sweep_dir)
        if _what(old) != _what(spec):
            raise ConfigError(f"sweep.dir={sweep_dir} holds a different sweep (sweep.yaml); "
                              "choose another sweep.dir, or resume it with --dir")
        return sweep_dir
    write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))
    write_json(sweep_dir / "cells.json", [asdict(c) for c in cells])
    return sweep_dir


def _what(spec: SweepSpec) -> dict:
    """The parts of a spec that decide results (not where or how fast they are computed)."""
    return {k: v for k, v in asdict(spec).items() if k not in ("dir", "launcher", "jobs",
                                                                 "threads", "slurm")}


def load(sweep_dir: str | Path) -> tuple[SweepSpec, list[Cell]]:
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.yaml").is_file():
        raise ConfigError(f"--dir {sweep_dir}: no sweep.yaml there (not a sweep directory)")
    spec = check(OmegaConf.to_container(OmegaConf.load(sweep_dir / "sweep.yaml")))
    cells = [Cell(**c) for c in json.loads((sweep_dir / "cells.json").read_text())]
    return spec, cells


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
    from adamgap import rundir

    run_state = rundir.inspect(cell_dir(sweep_dir, cell))
    if run_state in FINISHED or run_state == "running":
        return run_state
    return "failed" if record_of(sweep_dir, cell).get("status") == "failed" else "pending"


# -- running cells ---------------------------------------------------------------------------------
def run_cell(sweep_dir: Path, cell: Cell, threads: int | None = None,
             train: Callable[[Any], dict] | None = None) -> str:
    """Run one cell in this process (nothing if it is finished); record its outcome in
    ``cells/<id>.json``. Returns the cell's state; any error becomes ``failed`` with its line."""
    import torch

    from adamgap.train import run

    now = state(sweep_dir, cell)
    if now in FINISHED or now == "running":
        return now
    if threads:
        torch.set_num_threads(threads)
    rec = {"index": cell.index, "id": cell.id, "attempts": record_of(sweep_dir, cell).get(
        "attempts", 0) + 1, "started": datetime.now().isoformat(timespec="seconds")}
    write_json(cell_file(sweep_dir, cell, ".json"), rec | {"status": "running"})
    try:
        summary = (train or run)(config_of(cell, Path(sweep_dir)))
        status, error = summary.get("status", "completed"), _first_error(summary)
    except Exception as err:  # noqa: BLE001 - any failure is recorded, the sweep goes on
        status, error = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" \
            if str(err).strip() else type(err).__name__
        write_text(cell_file(sweep_dir, cell, ".error.log"), traceback.format_exc())
    finished = datetime.now().isoformat(timespec="seconds")
    write_json(cell_file(sweep_dir, cell, ".json"),
               rec | {"status": status, "error": error, "finished": finished})
    return status


def _first_error(summary: dict) -> str | None:
    for row in summary.get("replicas", [summary]):
        if row.get("error"):
            return str(row["error"])
    return None


def _run_in_subprocess(sweep_dir: Path, cell: Cell, threads: int) -> str:
    """One cell in a fresh process (``python -m adamgap.sweep --dir D --cell I``): a crash or a
    kill there costs that cell only."""
    log = cell_file(sweep_dir, cell, ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "adamgap.sweep", "--dir", str(sweep_dir),
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
    if spec.jobs == 1:
        for cell in todo:
            one(cell)
    else:
        with ThreadPoolExecutor(spec.jobs) as pool:
            list(pool.map(one, todo))
    return out


# a launcher runs (or submits) the unfinished cells; "submitted": they run elsewhere, later
LAUNCHERS: dict[str, Callable[..., dict[int, str]]] = {"local": run_local, "slurm": submit_sweep}


def run_sweep(sweep_dir: str | Path, progress: Callable[[str], None] = print) -> dict[int, str]:
    """Run the sweep in ``sweep_dir`` with its launcher, then aggregate what is there."""
    spec, cells = load(sweep_dir)
    states = LAUNCHERS[spec.launcher](Path(sweep_dir), spec, cells, progress=progress)
    if "submitted" not in states.values():  # else the cluster's aggregation job does it
        aggregate(sweep_dir)
    return states


# -- results ---------------------------------------------------------------------------------------
def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean, sample std (n - 1) and the half-width of the ``level`` t-interval of the mean;
    std and half-width are NaN for fewer than two values."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def results(sweep_dir: str | Path) -> list[dict]:
    """One row per (cell, seed): conf, seed, status, the grid values, every summary metric
    (a cell that failed or has not run gives its seeds' rows with the status and error)."""
    from adamgap import rundir

    sweep_dir = Path(sweep_dir)
    spec, cells = load(sweep_dir)
    rows = []
    for cell in cells:
        now = state(sweep_dir, cell)
        summary = rundir.summary_of(cell_dir(sweep_dir, cell)) if now in FINISHED else None
        replicas = (summary.get("replicas", [summary]) if summary else
                    [{"seed": cell.seed + k} for k in range(cell.replicas)])
        keys = {k: v for k, v in cell.values.items() if k != "conf"}
        for r in replicas:
            row = {"conf": cell.conf, "seed": r["seed"], "status": r.get("status", now), **keys,
                   "cell": cell.id}
            row.update({k: v for k, v in r.items() if k not in row and k != "error"})
            error = r.get("error") or (record_of(sweep_dir, cell).get("error")
                                       if not summary else None)
            row["error"] = error or ""
            rows.append(row)
    return rows


def group_key(row: dict, spec: SweepSpec) -> tuple:
    """The grid point of a results row (values rendered, so that lists and dicts hash)."""
    return (row["conf"], *(render(row.get(k)) for k in spec.grid if k != "conf"))


def aggregate(sweep_dir: str | Path) -> list[dict]:
    """Write ``results.csv`` and ``aggregate.csv``/``.md``: per grid point, every numeric
    metric's mean, std and 95% CI half-width over the seeds that finished."""
    sweep_dir = Path(sweep_dir)
    spec, _ = load(sweep_dir)
    rows = results(sweep_dir)
    write_csv(sweep_dir / "results.csv", rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_key(row, spec), []).append(row)
    keys = [k for k in spec.grid if k != "conf"]
    table = []
    for group, members in groups.items():
        done = [r for r in members if r["status"] in FINISHED]
        out = {"conf": group[0], **{k: members[0].get(k) for k in keys}, "n_seeds": len(done),
               "n_failed": sum(r["status"] == "failed" for r in members),
               "n_diverged": sum(r["status"] == "diverged" for r in members)}
        metrics = [k for k in members[0] if k not in out and k not in
                   ("seed", "status", "cell", "error", "steps")]
        for k in metrics:
            vals = [float(r[k]) for r in done if _is_number(r.get(k))]
            if not vals:
                continue
            out[f"{k}_mean"], out[f"{k}_std"], out[f"{k}_ci95"] = mean_ci(vals)
        table.append(out)
    write_csv(sweep_dir / "aggregate.csv", table)
    write_text(sweep_dir / "aggregate.md", markdown(table, keys))
    return table


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(mean: float, ci: float, digits: int = 3) -> str:
    """``mean ± ci`` (just the mean when the interval is undefined)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def markdown(table: list[dict], keys: list[str]) -> str:
    """The aggregate table's headline metrics, mean ± 95% CI."""
    metrics = ("train_error", "test_error", "feature_learning", "noise_memorization")
    head = ["conf", *keys, "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row["conf"]), *(str(row[k]) for k in keys), str(row["n_seeds"])]
        cells += [fmt(row.get(f"{m}_mean", math.nan), row.get(f"{m}_ci95", math.nan))
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------
USAGE = "sweep.py --dir D [--cell I | --aggregate] [--threads N]"


def main(argv: list[str]) -> int:
    """``conf=... sweep.*=... key=value`` (new or same sweep), or ``--dir D [--cell I |
    --aggregate] [--threads N]``. Exit 0 when every cell finished, 1 when one failed, 2 on bad
    input."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # argparse's usage + error: one line, as everywhere
            raise ConfigError(f"{message} (usage: {USAGE})")

    sweep_dir: str | Path = "SWEEP_DIR"  # named in the interrupt message
    try:
        args = None
        if argv and argv[0].startswith("--"):
            p = Parser(prog="sweep.py")
            p.add_argument("--dir", required=True)
            p.add_argument("--cell", type=int)
            p.add_argument("--aggregate", action="store_true")
            p.add_argument("--threads", type=int)
            args = p.parse_args(argv)
        if args is None:
            sweep_dir = create(parse_args(argv))
        else:
            sweep_dir = Path(args.dir)
            spec, cells = load(sweep_dir)
            if args.cell is not None:
                if not 0 <= args.cell < len(cells):
                    raise ConfigError(f"--cell {args.cell}: the sweep has cells "
                                      f"0..{len(cells) - 1}")
                status = run_cell(sweep_dir, cells[args.cell], args.threads or spec.threads)
                print(f"cell {args.cell} {cells[args.cell].id}: {status}")
                return 1 if status == "failed" else 0
            if args.aggregate:
                aggregate(sweep_dir)
                print(f"wrote {sweep_dir / 'results.csv'} and {sweep_dir / 'aggregate.csv'}")
                return 0
        states = run_sweep(sweep_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: finished cells stay, the rest resume
        print(f"interrupted: resume with python scripts/sweep.py --dir {sweep_dir}",
              file=sys.stderr)
        return 130
    if "submitted" in states.values():
        return 0  # the launcher printed its job ids; results come from the aggregation job
    failed = sorted(i for i, s in states.items() if s == "failed")
    print((Path(sweep_dir) / "aggregate.md").read_text(), end="")
    print(f"results: {Path(sweep_dir) / 'results.csv'}" + (f"; failed cells: {failed}"
                                                           if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    from adamgap.cli import collector_paused, exit_status

    if "--cell" in sys.argv:  # this process trains (a cell of a local or Slurm sweep)
        with collector_paused():
            import adamgap.train  # noqa: F401 - torch and Lightning, without the collector
    sys.exit(exit_status(main(sys.argv[1:])))
