"""The mechanism study (docs/atlas/mechanism.md): where between GD, sign GD and Adam an optimizer
lands, and why.

Adam's own knobs interpolate between the three (Section 5; ``m`` and ``v`` as in NOTES.md):

- beta1 = beta2 = 0 and eps -> 0: the update m / (sqrt(v) + eps) is g / |g|, sign GD;
- beta2 sets the memory of the second moment v: how far sqrt(v) lags a gradient that grows;
- eps >> |g|: the update is g / eps, GD with step lr / eps.

The studies, each a sweep (``adamgap.experiments.spec``) of the paper's settings with ``SEEDS``
seeds per cell (sign GD and Lion ``SIGN_SEEDS``), tuning seeds from 0:

``betas``       Adam over BETA1 x BETA2 x LR_ADAM (eps 1e-8); ``betas_lr0.01`` adds lr 1e-2
``eps``         Adam over EPS x LR_EPS (betas 0.9, 0.999)
``sign``        sign GD and Lion (lion-pytorch, betas 0.9, 0.99) over LR_SIGN
``lion_betas``  Lion over LION_BETAS at lr 1e-4 (beta1 = 0 is sign GD exactly)
``trajectories*``  Adam, sign GD, Lion, GD and Adam variants (betas, eps, the tuned step sizes)
                with the step-size callback on (``align.step_sizes``, every 10 iterations)
``disjoint``    sign GD and Adam with d = 20 000 (nearly disjoint noise supports), T = 1000
``long``        the paper's Adam for T = 100 000 steps

"Fixed" step size: Adam's 1e-4 (the lr = 1e-4 slice of a grid). "Tuned": per cell, the step
size :func:`tuned_lr` picks from training data only, then evaluated on ``SEEDS`` fresh seeds
from ``EVAL_SEED`` (the ``*_tuned_lr<lr>`` sweeps: one per distinct chosen step size).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import torch

from adamgap.config import load_run_config
from adamgap.experiments.aggregate import results
from adamgap.experiments.cells import FINISHED, cell_dir
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import check, create, load, render
from adamgap.optimizers import loss_lambda
from adamgap.summary import read, replicas_of

ADAM_LR = 1e-4  # the paper's Adam step size: the "fixed" column
BETA1 = (0.0, 0.5, 0.9, 0.99)
BETA2 = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999)
LR_ADAM = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
EPS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LR_EPS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # decades: lr / eps reaches GD's 0.1 at every eps
LR_SIGN = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
LION_BETAS = tuple(product((0.0, 0.5, 0.9, 0.99), (0.0, 0.9, 0.99, 0.999)))
SEEDS, SIGN_SEEDS = 3, 5
EVAL_SEED = 100  # first evaluation seed at a tuned step size (tuning seeds: 0, 1, 2)
TRAJECTORY = ("align.step_sizes=true", "align.every=10")
# Adam variants whose trajectories the study records beside the optimizers' own confs: the
# beta2 boundary at beta1 0.9 (0.9: GD's side, 0.99: Adam's), beta1 = beta2 = 0.99 (GD's) and
# RMSprop with bias correction (beta1 0, Adam's)
TRAJECTORY_BETAS = ([0.9, 0.9], [0.9, 0.99], [0.99, 0.99], [0.0, 0.999])
TRAJECTORY_EPS = (1e-5, 1e-4)  # eps of the size of the noise coordinates' Stage-I gradients
TRAJECTORY_LARGE_LR = (("synthetic_adam", 1e-2), ("synthetic_signgd", 1e-3))  # as tuned
DISJOINT_D = 20_000
LONG_T = 100_000


@dataclass(frozen=True)
class Study:
    """One sweep of the study: a conf, its grid (a product), seeds, base overrides."""

    name: str
    conf: str
    grid: dict[str, list[Any]]
    seeds: int = SEEDS
    overrides: tuple[str, ...] = ()
    tuned: str | None = None  # the grid key of the point a step size is tuned for
    joins: str | None = None  # more step sizes for the tuning grid of the study of this name


def studies() -> list[Study]:
    """The grids that run first (the evaluations at tuned step sizes follow from them)."""
    return [
        Study("betas", "synthetic_adam",
              {"optim.betas": [[b1, b2] for b1, b2 in product(BETA1, BETA2)],
               "optim.lr": list(LR_ADAM)}, tuned="optim.betas"),
        Study("betas_lr0.01", "synthetic_adam",
              {"optim.betas": [[b1, b2] for b1, b2 in product(BETA1, BETA2)],
               "optim.lr": [1e-2]}, joins="betas"),
        Study("eps", "synthetic_adam", {"optim.eps": list(EPS), "optim.lr": list(LR_EPS)},
              tuned="optim.eps"),
        Study("sign", "synthetic_signgd", {"conf": ["synthetic_signgd", "synthetic_lion"],
                                           "optim.lr": list(LR_SIGN)}, seeds=SIGN_SEEDS,
              tuned="conf"),
        Study("lion_betas", "synthetic_lion",
              {"optim.kwargs": [{"betas": list(b)} for b in LION_BETAS]}),
        Study("trajectories", "synthetic_adam",
              {"conf": ["synthetic_adam", "synthetic_signgd", "synthetic_lion", "synthetic_gd"]},
              overrides=TRAJECTORY),
        Study("trajectories_adam", "synthetic_adam",
              {"optim.betas": [list(b) for b in TRAJECTORY_BETAS]}, overrides=TRAJECTORY),
        Study("trajectories_eps", "synthetic_adam", {"optim.eps": list(TRAJECTORY_EPS)},
              overrides=TRAJECTORY),
        # at the tuned step sizes the dynamics are ~100x faster: a record every 5 iterations
        # (no checkpoints: they would hold every record)
        *(Study(f"trajectories_{conf.removeprefix('synthetic_')}_lr{lr:g}", conf, {},
                overrides=(*TRAJECTORY, f"optim.lr={lr!r}", "align.step_sizes_every=5",
                           "run.checkpoint_every=0")) for conf, lr in TRAJECTORY_LARGE_LR),
        # nearly disjoint noise supports (n s / d = 1 instead of 20): Lemma 5.1's setting
        Study("disjoint", "synthetic_adam", {"conf": ["synthetic_signgd", "synthetic_adam"]},
              overrides=(*TRAJECTORY, f"data.d={DISJOINT_D}", "trainer.max_steps=1000")),
        # the paper's Adam, ten times longer: is its side a transient?
        Study("long", "synthetic_adam", {}, overrides=(
            f"trainer.max_steps={LONG_T}", f"trainer.eval_every={LONG_T // 10}",
            f"align.every={LONG_T // 100}", f"run.checkpoint_every={LONG_T // 10}")),
    ]


def run_study(study: Study, root: Path, jobs: int = 2) -> Path:
    """Create (or resume) the study's sweep under ``root`` and run its unfinished cells."""
    spec = check({"conf": study.conf, "overrides": list(study.overrides), "seeds": study.seeds,
                  "grid": dict(study.grid), "dir": str(root / study.name), "jobs": jobs})
    sweep_dir = create(spec)
    run_sweep(sweep_dir)
    return sweep_dir


# -- the tuned step size ------------------------------------------------------------------------
def final_objectives(sweep_dir: Path, cell) -> list[float]:
    """Each replica's final training objective L(W(T)) = train loss + (lam / 2) ||W||_F^2
    (``summary.json``'s ``train_loss``, ``weights.pt``), NaN where it is not there."""
    run = cell_dir(sweep_dir, cell)
    summary = read(run)
    if summary is None or not (run / "weights.pt").is_file():
        return [math.nan] * cell.replicas
    cfg = load_run_config(run)
    lam = loss_lambda(cfg.optim.name, cfg.optim.lam)
    w = torch.load(run / "weights.pt")["weight"]  # (K, d, 2, m)
    norms = w.reshape(w.shape[0], -1).square().sum(1).tolist()
    rows = replicas_of(summary)
    return [float(r.get("train_loss", math.nan)) + 0.5 * lam * sq
            for r, sq in zip(rows, norms, strict=True)]


def tuned_lr(by_lr: dict[float, list[dict]]) -> tuple[float | None, str]:
    """The step size a cell is tuned to, from training data only, and why.

    ``by_lr``: step size -> the rows of the tuning seeds (``status``, ``train_error``,
    ``objective``). Candidates are the step sizes at which every seed completed (none
    diverged or failed) with training error 0; among them the lowest mean final training
    objective wins (ties: the smaller step size). None when no step size fits the training
    set."""
    fits = {lr: rows for lr, rows in by_lr.items() if rows and all(
        r["status"] == "completed" and r.get("train_error") == 0
        and math.isfinite(r.get("objective", math.nan)) for r in rows)}
    if not fits:
        return None, "no step size fits the training set"
    best = min(fits, key=lambda lr: (sum(r["objective"] for r in fits[lr]) / len(fits[lr]), lr))
    edge = " (the grid's edge)" if best in (min(by_lr), max(by_lr)) else ""
    return best, f"lowest final objective of {len(fits)} fitting step sizes{edge}"


def tuning_rows(sweep_dir: Path, key: str) -> dict[str, dict[float, list[dict]]]:
    """The rows of a tuning sweep by grid point (``key``'s value, rendered) and step size,
    each with its replica's final ``objective``."""
    _, cells = load(sweep_dir)
    rows = results(sweep_dir)
    objective = {}
    for cell in cells:
        if any(r["cell"] == cell.id and r["status"] in FINISHED for r in rows):
            for k, value in enumerate(final_objectives(sweep_dir, cell)):
                objective[(cell.id, cell.seed + k)] = value
    out: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        point = render(r["conf"] if key == "conf" else r[key])
        out[point][float(r["optim.lr"])].append(
            r | {"objective": objective.get((r["cell"], r["seed"]), math.nan)})
    return out


def tuned_choices(sweep_dirs: list[Path], key: str) -> dict[str, tuple[float | None, str]]:
    """Grid point -> (tuned step size, why) over the step sizes of the tuning sweeps
    ``sweep_dirs`` together."""
    merged: dict[str, dict[float, list[dict]]] = defaultdict(dict)
    for sweep_dir in sweep_dirs:
        for point, by_lr in tuning_rows(sweep_dir, key).items():
            merged[point].update(by_lr)
    return {point: tuned_lr(by_lr) for point, by_lr in merged.items()}


def tuning_sweeps(root: Path, study: Study) -> list[Path]:
    """The sweeps whose step sizes ``study`` is tuned over: its own and those that join it
    (the ones created so far)."""
    joined = [root / s.name for s in studies() if s.joins == study.name]
    return [root / study.name] + [d for d in joined if (d / "sweep.yaml").is_file()]


def evaluation_studies(study: Study, choices: dict[str, tuple[float | None, str]]
                       ) -> list[Study]:
    """The fresh-seed runs at the tuned step sizes: one sweep per distinct step size, over the
    grid points tuned to it (points that fit at no step size are left out, and reported)."""
    by_lr: dict[float, list[str]] = defaultdict(list)
    for point, (lr, _) in choices.items():
        if lr is not None:
            by_lr[lr].append(point)
    base = next(s for s in studies() if s.name == study.name)
    out = []
    for lr, points in sorted(by_lr.items()):
        # named by the points too: a sweep directory holds one spec, and a point's choice
        # changes when the tuning grid grows
        digest = hashlib.sha1("|".join(sorted(points)).encode()).hexdigest()[:6]
        out.append(Study(f"{study.name}_tuned_lr{lr:g}_{digest}", base.conf,
                         {study.tuned: [_parse(p) for p in points]},
                         seeds=base.seeds, overrides=(*base.overrides, f"optim.lr={lr!r}",
                                                      f"seed={EVAL_SEED}")))
    return out


def _parse(rendered: str) -> Any:
    """A grid value back from its rendering (``spec.render``: JSON, or a plain string)."""
    try:
        return json.loads(rendered)
    except ValueError:
        return rendered


def run_all(root: str | Path, jobs: int = 2, only: list[str] | None = None,
            progress=print) -> list[Path]:
    """Every study (``only``: those named), then the evaluations at the tuned step sizes."""
    root = Path(root)
    done = []
    for study in studies():
        if (only and study.name not in only) or study.joins:
            continue  # a study that joins another's tuning grid runs with it
        for part in [study, *(s for s in studies() if s.joins == study.name)]:
            progress(f"== {part.name}")
            done.append(run_study(part, root, jobs))
        if study.tuned:
            choices = tuned_choices(tuning_sweeps(root, study), study.tuned)
            for ev in evaluation_studies(study, choices):
                progress(f"== {ev.name}")
                done.append(run_study(ev, root, jobs))
    return done
