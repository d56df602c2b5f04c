"""The optimizer atlas: every installed optimizer (``optimizers.catalogue``) through one tuning
protocol stated before any result (docs/atlas/protocol.md), landing on one side of the gap.

    python scripts/atlas.py [--dir DIR] [--only NAME ...] [sweep.jobs=2] [sweep.launcher=slurm
                            sweep.slurm.KEY=VALUE ...] [key=value ...]

Per optimizer, at the paper's settings (the schema's defaults, T = 10 000; ``key=value``
overrides apply to every run):

1. **probe** (``experiments.probe``): does it run, and does an ensemble of its replicas equal
   separate runs? The verdict decides the layout (``ensemble``, ``replicas``, or separate
   ``processes``) and is recorded (``probe.json``);
2. **tune**: the step-size grid ``GRID`` on the tuning seed ``TUNE_SEED`` as ONE ensemble, one
   replica per step size, each with its own optimizer (``optim.lrs``, ``optim.layout=replicas``;
   ``processes``: one cell per step size);
3. **select** (:func:`select`): from the tuning runs alone, the step size with the lowest final
   training objective among those that fit the training set without diverging;
4. **evaluate**: ``EVAL_SEEDS`` fresh seeds (0..9, disjoint from the tuning seed) at the chosen
   step size, as one ensemble where the probe allows.

Stages 2 and 4 are sweeps (``DIR/tune``, ``DIR/eval``) with cells of the sweep machinery
(``experiments.cells``): resumable, failure-tolerant, run by ``sweep.jobs`` local workers
(``experiments.pool``) or as a Slurm job array (``sweep.launcher=slurm``: run the command
again once the array has ended to go on to the next stage). ``collect`` gathers everything
per optimizer for the report (``analysis.atlas_report``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from adamgap.config import load_config
from adamgap.errors import ConfigError
from adamgap.experiments.cells import FINISHED, Cell, cell_dir, state
from adamgap.experiments.pool import run_pool
from adamgap.experiments.probe import Verdict, probe
from adamgap.experiments.slurm import submit_sweep
from adamgap.experiments.spec import SweepSpec, check, load, render
from adamgap.optimizers import catalogue
from adamgap.outputs import write_json, write_text
from adamgap.summary import read, replicas_of

# -- the protocol (docs/atlas/protocol.md states it; tests/test_atlas.py holds it to that) ----
GRID = tuple(float(f"{10 ** (-5 + i / 2):.3g}") for i in range(11))  # 1e-5 .. 1, half decades
TUNE_SEED = 100  # the tuning runs' seed: disjoint from the evaluation seeds
EVAL_SEEDS = 10  # seeds 0 .. 9 at the chosen step size
FIT = 0.0  # a run fits the training set when its final training error is at most this
COST_MS = 15.0  # an optimizer step (one replica, with its gradient) dearer than this is
# excluded for cost: its protocol (RUNS x 10 000 steps) would exceed COST_MS * RUNS * 10 s
RUNS = len(GRID) + EVAL_SEEDS  # runs of T steps in one optimizer's protocol
BASE = ["trainer.progress_bar=false"]  # every atlas run; the rest is the schema's defaults


@dataclass
class Choice:
    """The selection rule's outcome on one optimizer's tuning runs."""

    lr: float | None  # the chosen step size (None: every step size diverged or failed)
    rule: str  # "fits": the lowest final objective among those that fit the training set;
    # "no fit": none fit, the lowest training error then objective; "none": nothing finished
    best_test_lr: float | None  # the step size with the lowest test error (tuning seed) ...
    best_test_error: float | None  # ... among those that fit (else among those that finished)


def select(grid: list[dict]) -> Choice:
    """The selection rule (docs/atlas/protocol.md) on the tuning runs of one optimizer: rows
    with ``lr``, ``status``, ``train_error``, ``train_objective`` and ``test_error``. Uses the
    training data only; the best test error over the grid is reported beside it, never used."""
    done = [r for r in grid if r.get("status") == "completed" and _num(r.get("train_objective"))
            and _num(r.get("train_error"))]
    fits = [r for r in done if r["train_error"] <= FIT]
    if fits:
        best = min(fits, key=lambda r: (r["train_objective"], r["lr"]))
        rule = "fits"
    elif done:
        best = min(done, key=lambda r: (r["train_error"], r["train_objective"], r["lr"]))
        rule = "no fit"
    else:
        return Choice(None, "none", None, None)
    pool = [r for r in (fits or done) if _num(r.get("test_error"))]
    top = min(pool, key=lambda r: (r["test_error"], r["lr"])) if pool else None
    return Choice(best["lr"], rule, top and top["lr"], top and top["test_error"])


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- the stages ------------------------------------------------------------------------------
@dataclass
class Atlas:
    """An atlas directory and how its cells run."""

    dir: Path
    names: list[str]  # the optimizers (optim.name), in catalogue order
    overrides: list[str] = field(default_factory=list)  # key=value for every run
    spec: SweepSpec = field(default_factory=SweepSpec)  # jobs, launcher, slurm settings
    extra: dict[str, list[str]] = field(default_factory=dict)  # name -> its own key=value
    deadline: float | None = None  # time.monotonic() after which no cell starts (local)
    command: str = ""  # the invocation, recorded with its wall time (``timing.json``)
    log: list[str] = field(default_factory=list)

    def runs_of(self, name: str) -> list[str]:
        """The overrides of every run of optimizer ``name``."""
        return [*BASE, *self.overrides, f"optim.name={name}", *self.extra.get(name, [])]

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[atlas {stamp}] {line}", flush=True)
        self.log.append(f"{stamp} {line}")


def entries(names: list[str] | None = None) -> list[catalogue.Entry]:
    """The catalogue, or the named optimizers of it (any other name becomes an entry too: a
    researcher's ``module:Class``)."""
    known = {e.name: e for e in catalogue.catalogue()}
    if not names:
        return list(known.values())
    return [known.get(n) or catalogue.Entry(n, "adaptive", None, "") for n in names]


def probe_all(atlas: Atlas) -> dict[str, Verdict]:
    """The probe's verdict per optimizer (``probe.json``; optimizers probed already are kept)."""
    path = atlas.dir / "probe.json"
    found = {v["name"]: Verdict(**v) for v in _read(path, [])}
    for e in entries(atlas.names):
        if e.name in found:
            continue
        if e.excluded:
            found[e.name] = Verdict(e.name, None, None, None, None, f"excluded: {e.excluded}")
        else:
            found[e.name] = probe(probe_config(atlas, e.name), budget_ms=COST_MS)
        atlas.say(f"probe {e.name}: {found[e.name].describe()}")
        write_json(path, [v.record() for v in found.values()])
    return {n: found[n] for n in atlas.names}


def probe_config(atlas: Atlas, name: str):
    """The config the probe runs optimizer ``name`` at (the tuning seed's)."""
    return load_config("default", [*atlas.runs_of(name), f"seed={TUNE_SEED}"])


def too_dear(v: Verdict, max_steps: int) -> str | None:
    """Why optimizer ``v`` is excluded for cost (``COST_MS``), or None."""
    if v.ms_per_step is None or v.ms_per_step <= COST_MS:
        return None
    hours = v.ms_per_step * RUNS * max_steps / 3.6e6
    return (f"cost: {v.ms_per_step:.0f} ms a step (one replica, the probe's); its protocol "
            f"would take {hours:.1f} core-hours (the budget: {COST_MS:g} ms a step)")


def tune_cells(atlas: Atlas, verdicts: dict[str, Verdict]) -> list[Cell]:
    """One cell per optimizer: the grid as one ensemble of one optimizer per replica (where
    the probe passed that layout; else a cell per step size)."""
    cells: list[Cell] = []
    steps = load_config("default", [*BASE, *atlas.overrides]).trainer.max_steps
    for name in atlas.names:
        v = verdicts[name]
        if v.layout is None or too_dear(v, steps):
            continue
        common = [*atlas.runs_of(name), "optim.layout=replicas"]
        if not v.passes("replicas"):  # one process per step size
            for lr in GRID:
                cells.append(_cell(len(cells), name, {"optim.lr": lr}, TUNE_SEED, 1,
                                   [*common, f"optim.lr={lr}"]))
        else:
            cells.append(_cell(len(cells), name, {}, TUNE_SEED, 1,
                               [*common, f"optim.lrs={render(list(GRID))}"]))
    return cells


def eval_cells(atlas: Atlas, verdicts: dict[str, Verdict], choices: dict[str, Choice]
               ) -> list[Cell]:
    """One cell per optimizer with a chosen step size: the evaluation seeds at it."""
    cells: list[Cell] = []
    for name in atlas.names:
        choice, v = choices.get(name), verdicts[name]
        if choice is None or choice.lr is None:
            continue
        layout = "ensemble" if v.layout == "ensemble" else "replicas"
        common = [*atlas.runs_of(name), f"optim.lr={choice.lr}", f"optim.layout={layout}"]
        blocks = [(s, 1) for s in range(EVAL_SEEDS)] if v.layout == "processes" \
            else [(0, EVAL_SEEDS)]
        for seed, k in blocks:
            cells.append(_cell(len(cells), name, {"optim.lr": choice.lr}, seed, k, common))
    return cells


def _cell(index: int, name: str, values: dict, seed: int, replicas: int, overrides: list[str]
          ) -> Cell:
    label = "".join(c if c.isalnum() or c in "._+-" else "-" for c in name)
    tail = "".join(f"_{k.rpartition('.')[2]}{v}" for k, v in values.items())
    return Cell(index, f"{index:03d}_{label}{tail}_s{seed}"[:120], "default",
                {"optim.name": name, **values}, seed, replicas, overrides)


def make_sweep(sweep_dir: Path, atlas: Atlas, cells: list[Cell]) -> SweepSpec:
    """Write (or find again) a stage's sweep directory: ``sweep.yaml`` and ``cells.json``."""
    spec = check({**{k: v for k, v in asdict(atlas.spec).items() if k not in ("grid", "slurm")},
                  "slurm": asdict(atlas.spec.slurm), "conf": "default", "dir": str(sweep_dir),
                  "overrides": [*BASE, *atlas.overrides], "seeds": 1,
                  "grid": {"optim.name": sorted({c.values["optim.name"] for c in cells})}})
    if (sweep_dir / "cells.json").is_file():
        _, old = load(sweep_dir)
        if [asdict(c) for c in old] == [asdict(c) for c in cells]:
            return spec
        finished = [c.id for c in old if state(sweep_dir, c) in FINISHED]
        kept = {c.id for c in cells}
        if any(i not in kept for i in finished):
            raise ConfigError(f"--dir {atlas.dir}: {sweep_dir} holds other finished cells; "
                              "choose another --dir")
    write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))
    write_json(sweep_dir / "cells.json", [asdict(c) for c in cells])
    return spec


def run_stage(sweep_dir: Path, atlas: Atlas, cells: list[Cell]) -> bool:
    """Run a stage's unfinished cells; True when every cell has finished or failed (False:
    submitted to Slurm, or stopped at the deadline: come back to go on)."""
    if not cells:
        return True
    spec = make_sweep(sweep_dir, atlas, cells)
    todo = [c for c in cells if state(sweep_dir, c) not in FINISHED]
    atlas.say(f"{sweep_dir.name}: {len(cells)} cells, {len(todo)} to run")
    if spec.launcher == "slurm":
        if todo:
            submit_sweep(sweep_dir, spec, cells, progress=atlas.say)
            return False
        return True
    start = time.perf_counter()
    run_pool(sweep_dir, spec, cells, progress=atlas.say, deadline=atlas.deadline)
    atlas.say(f"{sweep_dir.name}: {time.perf_counter() - start:.0f} s")
    return all(state(sweep_dir, c) in (*FINISHED, "failed") for c in cells)


def stage_rows(sweep_dir: Path, cells: list[Cell]) -> dict[str, list[dict]]:
    """Per optimizer, its runs' per-replica rows (``summary.json``'s ``replicas``: one per
    step size of the tuning grid, one per seed of the evaluation); a cell that has not
    finished gives rows with its state and step sizes only."""
    out: dict[str, list[dict]] = {}
    for cell in cells:
        name = cell.values["optim.name"]
        summary = read(cell_dir(sweep_dir, cell)) if state(sweep_dir, cell) in FINISHED else None
        lrs = [cell.values["optim.lr"]] if "optim.lr" in cell.values else list(GRID)
        if summary is None:
            rows = [{"lr": lr, "status": state(sweep_dir, cell)} for lr in lrs]
        else:
            rows = [dict(r) for r in replicas_of(summary)]
        out.setdefault(name, []).extend(rows)
    return out


def run_atlas(atlas: Atlas) -> bool:
    """Every stage that can run now; True when the atlas is complete. The wall seconds of
    each stage of this invocation are appended to ``timing.json``."""
    atlas.dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    verdicts = probe_all(atlas)
    seconds["probe"] = time.perf_counter() - t0
    steps = load_config("default", [*BASE, *atlas.overrides]).trainer.max_steps
    write_json(atlas.dir / "cost.json", {n: why for n, v in verdicts.items()
                                         if (why := too_dear(v, steps))})
    tune = tune_cells(atlas, verdicts)
    done = run_stage(atlas.dir / "tune", atlas, tune)
    seconds["tune"] = time.perf_counter() - t0 - seconds["probe"]
    if done:
        grids = stage_rows(atlas.dir / "tune", tune)
        choices = {name: select(rows) for name, rows in grids.items()}
        write_json(atlas.dir / "choices.json", {n: asdict(c) for n, c in choices.items()})
        done = run_stage(atlas.dir / "eval", atlas, eval_cells(atlas, verdicts, choices))
        seconds["eval"] = time.perf_counter() - t0 - seconds["probe"] - seconds["tune"]
    seconds["total"] = time.perf_counter() - t0
    history = _read(atlas.dir / "timing.json", [])
    write_json(atlas.dir / "timing.json", [*history, {
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": atlas.command, "optimizers": len(atlas.names), "jobs": atlas.spec.jobs,
        "complete": done,
        **{f"{k}_seconds": round(v, 1) for k, v in seconds.items()}}])
    atlas.say(f"atlas: {seconds['total']:.0f} s" + ("" if done else " (not complete)"))
    return done


def timing(atlas_dir: Path) -> str:
    """The wall time of the atlas's invocations, as a sentence (``timing.json``)."""
    history = _read(Path(atlas_dir) / "timing.json", [])
    if not history:
        return "not recorded"
    total = sum(h["total_seconds"] for h in history)
    parts = "; ".join(f"{h['started']}" + (f" `{h['command']}`" if h.get("command") else "")
                      + f": probe {h['probe_seconds']:.0f} s, tune {h['tune_seconds']:.0f} s, "
                      f"evaluation {h.get('eval_seconds', 0):.0f} s ({h['jobs']} jobs)"
                      for h in history)
    return f"{total / 60:.1f} min in {len(history)} invocation(s) ({parts})"


def summaries(atlas_dir: Path) -> list[dict]:
    """Every finished run's ``summary.json`` of the atlas (tuning and evaluation)."""
    out = []
    for stage in ("tune", "eval"):
        d = Path(atlas_dir) / stage
        if (d / "cells.json").is_file():
            out += [read(cell_dir(d, c)) for c in load(d)[1] if state(d, c) in FINISHED]
    return [s for s in out if s]


# -- what the report reads -------------------------------------------------------------------
def collect(atlas_dir: Path, names: list[str] | None = None) -> list[dict]:
    """One record per optimizer: its catalogue entry, probe verdict, tuning grid, choice and
    evaluation runs (per-seed rows), in catalogue order (``names``: those, in that order)."""
    atlas_dir = Path(atlas_dir)
    verdicts = {v["name"]: v for v in _read(atlas_dir / "probe.json", [])}
    choices = _read(atlas_dir / "choices.json", {})
    cost = _read(atlas_dir / "cost.json", {})
    grids = _stage_rows(atlas_dir / "tune")
    evals = _stage_rows(atlas_dir / "eval")
    order = names or list(verdicts)
    steps = load_config("default", BASE).trainer.max_steps  # the protocol's T
    out = []
    for e in entries(order):
        if e.name not in verdicts:
            continue
        # the cost rule excludes by the probe alone: also an optimizer no invocation has run
        dear = cost.get(e.name) or too_dear(Verdict(**verdicts[e.name]), steps)
        out.append({"name": e.name, "family": e.family, "note": e.note,
                    "excluded": e.excluded or dear, "probe": verdicts[e.name],
                    "grid": sorted(grids.get(e.name, []), key=lambda r: r.get("lr", 0)),
                    "choice": choices.get(e.name), "eval": evals.get(e.name, []),
                    "optimizer": _optimizer_record(atlas_dir, e.name)})
    return out


def _stage_rows(sweep_dir: Path) -> dict[str, list[dict]]:
    if not (sweep_dir / "cells.json").is_file():
        return {}
    return stage_rows(sweep_dir, load(sweep_dir)[1])


def _optimizer_record(atlas_dir: Path, name: str) -> dict | None:
    """``summary.json``'s ``optimizer`` (class, package, version) of one of its runs."""
    for stage in ("eval", "tune"):
        d = atlas_dir / stage
        if not (d / "cells.json").is_file():
            continue
        _, cells = load(d)
        for c in cells:
            if c.values["optim.name"] == name:
                s = read(cell_dir(d, c))
                if s and "optimizer" in s:
                    return s["optimizer"]
    return None


def _read(path: Path, default):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def save_verdict(atlas_dir: Path, verdict: Verdict) -> None:
    """Add one optimizer's verdict to ``probe.json`` (a probe already run for it)."""
    path = Path(atlas_dir) / "probe.json"
    found = [v for v in _read(path, []) if v["name"] != verdict.name]
    write_json(path, [*found, verdict.record()])
