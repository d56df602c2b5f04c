"""A sweep's spec and plan: what runs (``sweep.yaml``), cell by cell (``cells.json``).

    python scripts/sweep.py conf=synthetic_adam sweep.seeds=10 sweep.grid.data.alpha=[0.05,0.1,0.2]
    python scripts/sweep.py sweep.grid.conf=[synthetic_adam,synthetic_gd] sweep.seeds=10

The grid keys (``conf`` or any config key) form a product; every other ``key=value`` is a base
override for all cells. Each cell trains its seeds ``seed, ..., seed + seeds - 1`` as one
ensemble (``run.replicas``, bit-for-bit the separate runs: tests/test_ensemble.py), or in chunks
of ``sweep.chunk`` seeds, one run per chunk. The spec says *what* to run, never *where*: a
launcher (``sweep.launcher``; ``local`` here, a Slurm job array elsewhere) runs cells by index.

    SWEEP_DIR/sweep.yaml     the spec, written before anything runs
    SWEEP_DIR/cells.json     cell i: id, conf, grid values, the overrides that make its config
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adamgap import preflight
from adamgap.config import culprit, load_config, parse_overrides
from adamgap.errors import ConfigError
from adamgap.experiments.cells import Cell
from adamgap.experiments.slurm import SlurmSpec, mem_bytes
from adamgap.experiments.slurm import validate as validate_slurm
from adamgap.outputs import write_json, write_text

LAUNCHERS = ("local", "slurm")  # where cells run: this machine, or a Slurm job array
# keys the sweep sets itself for every cell: a grid over them would fight the sweep
RESERVED = ("seed", "run.replicas", "run.dir", "run.resume")
# at most this many cells: every one is validated when the sweep is planned (a few ms each),
# and a Slurm array is capped at MaxArraySize (1001 by default) anyway
MAX_CELLS = 10_000


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
        elif key.startswith("sweep.slurm."):  # the slurm launcher's (experiments.slurm)
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
    except (TypeError, ValueError) as err:  # OmegaConf's, e.g. a mapping for a list
        raise ConfigError(f"bad value for 'sweep.{culprit(schema, raw)}': "
                          f"{str(err).splitlines()[0]}") from None
    spec = OmegaConf.to_object(node)  # a SweepSpec (its slurm settings a SlurmSpec)
    for key, ok, allowed in (
            ("seeds", spec.seeds >= 1, "an integer >= 1"),
            ("chunk", spec.chunk is None or spec.chunk >= 1, "null or an integer >= 1"),
            ("launcher", spec.launcher in LAUNCHERS, " | ".join(LAUNCHERS)),
            ("jobs", spec.jobs >= 1, "an integer >= 1"),
            ("threads", spec.threads is None or 1 <= spec.threads <= _cores(spec),
             f"null or an integer in 1..{_cores(spec)}" + (" (this machine's cores)" if
                                                          spec.launcher == "local" else ""))):
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


def _cores(spec: SweepSpec) -> int:
    """The most torch threads a cell may ask for: this machine's cores when it runs here."""
    return (os.cpu_count() or 1) if spec.launcher == "local" else 1024


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
    count = math.prod(len(v) for v in spec.grid.values()) * math.ceil(spec.seeds / chunk)
    if count > MAX_CELLS:
        raise ConfigError(f"sweep.seeds={spec.seeds} with sweep.chunk={spec.chunk} and the grid "
                          f"give {count} cells, more than {MAX_CELLS}: use fewer grid values, "
                          "or more seeds per cell (sweep.chunk)")
    blocks = [(first + i, min(chunk, spec.seeds - i)) for i in range(0, spec.seeds, chunk)]
    here = spec.launcher == "local"
    cells, needs = [], []
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
                cfg = config_of(cell, Path("."))
                preflight.check(cfg, memory=here)
                if here:
                    needs.append(preflight.memory_needed(cfg))
                elif spec.slurm.mem:
                    preflight.check_memory(cfg, mem_bytes(spec.slurm.mem),
                                           f"sweep.slurm.mem={spec.slurm.mem} gives")
            except ConfigError as err:
                raise ConfigError(f"sweep cell {cell.id}: {err}") from None
            cells.append(cell)
    if here and spec.jobs > 1:  # the largest cells may run at the same time
        together = sum(sorted(needs)[-spec.jobs:])
        avail = preflight.available_memory()
        if together > avail:
            raise ConfigError(f"sweep.jobs={spec.jobs} is too large: {min(spec.jobs, len(cells))} "
                              f"cells at once need about {preflight.gb(together)} of memory, "
                              f"this machine has {preflight.gb(avail)} available; lower "
                              "sweep.jobs")
    return cells


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)
    return keep[:120]


def config_of(cell: Cell, sweep_dir: Path) -> DictConfig:
    """The cell's full config: its run directory, seeds and resume are the sweep's."""
    return load_config(cell.conf, [*cell.overrides, f"seed={cell.seed}",
                                   f"run.replicas={cell.replicas}",
                                   f"run.dir={sweep_dir / 'cells' / cell.id}", "run.resume=true",
                                   "trainer.progress_bar=false"])


def create(spec: SweepSpec) -> Path:
    """Write ``sweep.yaml`` and ``cells.json`` (or find the same spec already there: resume,
    with this spec's launcher, jobs, threads and Slurm settings). A ``sweep.yaml`` that no
    longer reads back is written again from this spec when the cells it would plan are the
    ones ``cells.json`` lists."""
    cells = plan(spec)
    if spec.dir is None:
        spec.dir = str(Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    sweep_dir = Path(spec.dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, a read-only or full file system
        raise ConfigError(f"sweep.dir={sweep_dir} cannot be created: {err.strerror or err}; "
                          "choose another sweep.dir") from None
    if (sweep_dir / "sweep.yaml").is_file():
        try:
            old = read_spec(sweep_dir)
        except ConfigError:
            if _read_cells(sweep_dir) not in (None, cells):
                raise ConfigError(f"sweep.dir={sweep_dir}: its sweep.yaml is damaged and its "
                                  "cells.json lists other cells than these settings give; choose "
                                  "another sweep.dir") from None
            write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))
            old = spec
        if _what(old) != _what(spec):
            raise ConfigError(f"sweep.dir={sweep_dir} holds a different sweep (sweep.yaml); "
                              "choose another sweep.dir, or resume it with --dir")
        if asdict(old) != asdict(spec):  # how and where to compute: this command's settings
            write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))
        load(sweep_dir)  # cells.json: rebuilt if it is damaged
        return sweep_dir
    write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))
    write_json(sweep_dir / "cells.json", [asdict(c) for c in cells])
    return sweep_dir


def _what(spec: SweepSpec) -> dict:
    """The parts of a spec that decide results (not where or how fast they are computed)."""
    return {k: v for k, v in asdict(spec).items() if k not in ("dir", "launcher", "jobs",
                                                                 "threads", "slurm")}


def read_spec(sweep_dir: Path) -> SweepSpec:
    """``SWEEP_DIR/sweep.yaml``, checked; ConfigError naming the file when it is damaged."""
    path = Path(sweep_dir) / "sweep.yaml"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # the YAML parser's errors: a truncated or overwritten file
        raise ConfigError(f"{path} is damaged ({str(err).splitlines()[0]}): what the sweep "
                          "runs is unknown; run the sweep's command again with "
                          f"sweep.dir={sweep_dir} (finished cells are kept)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is damaged (not a mapping of sweep settings); run the "
                          f"sweep's command again with sweep.dir={sweep_dir}")
    return check(raw)


def _read_cells(sweep_dir: Path) -> list[Cell] | None:
    """``SWEEP_DIR/cells.json``, or None when it is missing or does not read back."""
    try:
        return [Cell(**c) for c in json.loads((Path(sweep_dir) / "cells.json").read_text())]
    except (OSError, ValueError, TypeError):
        return None


def load(sweep_dir: str | Path, say: Callable[[str], None] | None = None
         ) -> tuple[SweepSpec, list[Cell]]:
    """The spec and cells of the sweep in ``sweep_dir``. A damaged ``cells.json`` is planned
    again from ``sweep.yaml`` and rewritten, saying so in one line (``say``, default stderr)."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.yaml").is_file():
        raise ConfigError(f"--dir {sweep_dir}: no sweep.yaml there (not a sweep directory)")
    spec = read_spec(sweep_dir)
    cells = _read_cells(sweep_dir)
    if cells is None:
        cells = plan(spec)
        write_json(sweep_dir / "cells.json", [asdict(c) for c in cells])
        (say or (lambda line: print(line, file=sys.stderr)))(
            f"warning: {sweep_dir / 'cells.json'} was missing or damaged; planned its "
            f"{len(cells)} cells again from sweep.yaml")
    return spec, cells
