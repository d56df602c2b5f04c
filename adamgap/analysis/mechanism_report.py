"""The mechanism study's tables and figures (``docs/atlas/mechanism_tables.md``,
``docs/atlas/mechanism/*.png``) from its sweeps (``adamgap.experiments.mechanism``).

    python scripts/mechanism.py report --root runs/mechanism --out docs/atlas

- phase diagrams of the test error and the final feature learning of Adam over beta1 x beta2,
  at the fixed step size 1e-4 and at the tuned one (fresh seeds), and over eps (x lr);
- sign GD and Lion over their step sizes; Lion over its betas;
- the trajectories of the step-size callback (``adamgap.step_sizes``): per-coordinate steps on
  the feature coordinate and on the noise coordinates, Adam's second-moment memory, the parts of
  the feature coordinate's gradient, and the iterations at which the feature's gradient turns
  and feature learning flips.

Numbers are mean ± the half-width of the 95% t-interval over seeds (``stats.mean_ci``).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from adamgap import provenance
from adamgap.cli import study
from adamgap.config import load_run_config
from adamgap.errors import ConfigError
from adamgap.experiments import mechanism
from adamgap.experiments.aggregate import results
from adamgap.experiments.cells import FINISHED, cell_dir
from adamgap.experiments.spec import load, render
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.figures import pyplot, read_alignment, save
from adamgap.outputs import write_text
from adamgap.summary import is_number, read

STAGE_I = 200  # iterations [0, STAGE_I): before Adam's feature learning peaks (200-300)
SIDE_ADAM, SIDE_GD = 0.5, 0.1  # test error at least / at most (as in the gap report)


# -- reading sweeps ------------------------------------------------------------------------------
def points(sweep_dir: Path) -> dict[tuple, list[dict]]:
    """Rows of a sweep by grid point (the rendered values of its grid keys, in grid order)."""
    spec, _ = load(sweep_dir)
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in results(sweep_dir):
        out[tuple(render(r["conf"] if k == "conf" else r[k]) for k in spec.grid)].append(r)
    return out


def stat(rows: list[dict], metric: str) -> tuple[float, float]:
    """(mean, 95% CI) of ``metric`` over the finished rows."""
    vals = [float(r[metric]) for r in rows if r["status"] in FINISHED and is_number(r.get(metric))]
    mean, _, ci = mean_ci(vals)
    return mean, ci


def n_done(rows: list[dict]) -> str:
    """'3' or '2/3 (1 diverged)'."""
    done = sum(r["status"] in FINISHED for r in rows)
    bad = sorted({r["status"] for r in rows} - {"completed"})
    return f"{done}" if not bad else f"{done}/{len(rows)} ({', '.join(bad)})"


def tuned_points(root: Path, name: str) -> dict[str, tuple[float | None, str, list]]:
    """Grid point (rendered) -> (tuned step size, why, fresh-seed rows at it) of study
    ``name``."""
    study = next(s for s in mechanism.studies() if s.name == name)
    choices = mechanism.tuned_choices(mechanism.tuning_sweeps(root, study), study.tuned)
    fresh: dict[str, list[dict]] = {}
    for ev in mechanism.evaluation_studies(study, choices):
        if (root / ev.name / "sweep.yaml").is_file():
            for point, rows in points(root / ev.name).items():
                fresh[point[0]] = rows
    return {p: (lr, why, fresh.get(p, [])) for p, (lr, why) in choices.items()}


# -- figures -------------------------------------------------------------------------------------
def heatmap(ax, grid: list[list[float]], xlabels: list[str], ylabels: list[str], title: str,
            vmin: float, vmax: float, cmap: str, notes: list[list[str]] | None = None) -> None:
    """One annotated phase diagram on ``ax`` (rows ``ylabels``, columns ``xlabels``)."""
    data = np.array(grid, dtype=float)
    im = ax.imshow(data, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not math.isnan(data[i, j]):
                text = f"{data[i, j]:.2f}" + (f"\n{notes[i][j]}" if notes else "")
                light = (data[i, j] - vmin) / (vmax - vmin) < 0.35
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                        color="white" if light else "black")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=7)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
    ax.set_title(title, fontsize=8.5)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def panels(specs: list[tuple], path: Path, xlabel: str, ylabel: str, cols: int = 2) -> None:
    """Heatmaps ``(grid, title, vmin, vmax, cmap, notes)`` on one figure."""
    plt = pyplot()
    rows = math.ceil(len(specs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, (grid, xl, yl, title, vmin, vmax, cmap, notes) in zip(axes.flat, specs,
                                                                   strict=False):
        heatmap(ax, grid, xl, yl, title, vmin, vmax, cmap, notes)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(specs):]:
        ax.axis("off")
    save(fig, path)


def _g(x: float) -> str:
    return f"{x:g}"


# -- Adam over beta1 x beta2 ---------------------------------------------------------------------
def betas_section(root: Path, out: Path) -> list[str]:
    fixed = points(root / "betas")
    large = points(root / "betas_lr0.01") if (root / "betas_lr0.01" / "sweep.yaml").is_file() \
        else {}
    tuned = tuned_points(root, "betas")
    B1, B2 = mechanism.BETA1, mechanism.BETA2  # noqa: N806 - the study's grid, as constants
    key = {(b1, b2): render([b1, b2]) for b1 in B1 for b2 in B2}

    def rows_at(b1, b2, where: str) -> list[dict]:
        if where == "tuned":
            return tuned.get(key[b1, b2], (None, "", []))[2]
        grid = fixed if where == "fixed" else large
        return grid.get((key[b1, b2], render(mechanism.ADAM_LR if where == "fixed" else 1e-2)),
                        [])

    def grid(metric: str, where: str) -> list[list[float]]:
        return [[stat(rows_at(b1, b2, where), metric)[0] for b2 in B2] for b1 in B1]

    lr_note = [["lr " + (_g(tuned[key[b1, b2]][0]) if tuned.get(key[b1, b2], (None,))[0]
                         else "-") for b2 in B2] for b1 in B1]
    xl, yl = [_g(b) for b in B2], [_g(b) for b in B1]
    specs = []
    for metric, name, vmin, vmax, cmap in (("test_error", "test error", 0, 1, "viridis"),
                                           ("feature_learning", "feature learning", -0.5, 1.5,
                                            "RdBu")):
        specs += [(grid(metric, "fixed"), xl, yl, f"{name}, lr 1e-4 (seeds 0-2)", vmin, vmax,
                   cmap, None),
                  (grid(metric, "large"), xl, yl, f"{name}, lr 1e-2 (seeds 0-2)", vmin, vmax,
                   cmap, None),
                  (grid(metric, "tuned"), xl, yl, f"{name}, tuned lr (seeds 100-102)", vmin,
                   vmax, cmap, lr_note)]
    panels(specs, out / "betas.png", "beta2", "beta1", cols=3)
    lines = ["## Adam over beta1 x beta2", "",
             "eps 1e-8. Fixed: lr 1e-4 and lr 1e-2, seeds 0-2. Tuned: the step size of the rule "
             "(training data of seeds 0-2 over lr in {1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2}), "
             "then seeds 100-102. Feature learning max_r <w_{+1,r}, v> and noise memorization "
             "at T = 10 000.", "", "![betas](mechanism/betas.png)", "",
             "| beta1 | beta2 | seeds | test error (lr 1e-4) | feature learning (lr 1e-4) | "
             "noise memorization (lr 1e-4) | train error (lr 1e-2) | test error (lr 1e-2) | "
             "tuned lr | why | seeds | train error (tuned) | test error (tuned) | "
             "feature learning (tuned) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
             "---|"]
    for b1 in B1:
        for b2 in B2:
            f, big = rows_at(b1, b2, "fixed"), rows_at(b1, b2, "large")
            lr, why, t = tuned.get(key[b1, b2], (None, "not run", []))
            lines.append(
                f"| {_g(b1)} | {_g(b2)} | {n_done(f)} | " + " | ".join(
                    fmt(*stat(f, m)) for m in ("test_error", "feature_learning",
                                               "noise_memorization"))
                + " | " + " | ".join(fmt(*stat(big, m)) for m in ("train_error", "test_error"))
                + f" | {_g(lr) if lr else '-'} | {why} | {n_done(t) if t else '-'} | "
                + " | ".join(fmt(*stat(t, m)) for m in ("train_error", "test_error",
                                                        "feature_learning")) + " |")
    return lines + [""]


# -- Adam over eps ---------------------------------------------------------------------------------
def eps_section(root: Path, out: Path) -> list[str]:
    EPS, LRS = mechanism.EPS, mechanism.LR_EPS  # noqa: N806 - the study's grid, as constants
    grid_rows = points(root / "eps")
    tuned = tuned_points(root, "eps")
    cell = {(e, lr): grid_rows.get((render(e), render(lr)), []) for e in EPS for lr in LRS}
    xl, yl = [_g(e) for e in EPS], [_g(lr) for lr in LRS]
    fit = [[("fit" if all(r["status"] == "completed" and r.get("train_error") == 0
                          for r in cell[e, lr]) and cell[e, lr] else "no fit")
            for e in EPS] for lr in LRS]
    panels([([[stat(cell[e, lr], "test_error")[0] for e in EPS] for lr in LRS], xl, yl,
             "test error (seeds 0-2)", 0, 1, "viridis", fit),
            ([[stat(cell[e, lr], "feature_learning")[0] for e in EPS] for lr in LRS], xl, yl,
             "feature learning (seeds 0-2)", -0.5, 2.5, "RdBu", None)],
           out / "eps_lr.png", "eps", "lr")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, rows_of, style in (
            ("lr 1e-4 (seeds 0-2)", lambda e: cell[e, mechanism.ADAM_LR], "o-"),
            ("tuned lr (seeds 100-102)", lambda e: tuned.get(render(e), (0, "", []))[2], "s--")):
        for ax, metric in zip(axes, ("test_error", "feature_learning"), strict=True):
            st = [stat(rows_of(e), metric) for e in EPS]
            ax.errorbar(EPS, [m for m, _ in st], fmt=style, capsize=3, label=label,
                        yerr=[0 if math.isnan(c) else c for _, c in st])
    for ax, metric in zip(axes, ("test error", "feature learning"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("eps")
        ax.set_ylabel(metric)
        ax.axhline(0.5 if metric == "test error" else 0, color="gray", lw=0.6, ls="--")
        ax.legend(fontsize=7)
    save(fig, out / "eps.png")
    lines = ["## Adam over eps", "",
             "betas 0.9, 0.999. The grid eps x lr (seeds 0-2; a cell says `no fit` where a seed "
             "kept a training error or diverged) and, per eps, the test error at lr 1e-4 and at "
             "the tuned step size (seeds 100-102). For eps >> |g| Adam is GD with step lr / eps.",
             "", "![eps x lr](mechanism/eps_lr.png)", "", "![eps](mechanism/eps.png)", "",
             "| eps | test error (lr 1e-4) | feature learning (lr 1e-4) | noise memorization "
             "(lr 1e-4) | tuned lr | lr / eps | why | train error (tuned) | test error (tuned) "
             "| feature learning (tuned) | noise memorization (tuned) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in EPS:
        f = cell[e, mechanism.ADAM_LR]
        lr, why, t = tuned.get(render(e), (None, "not run", []))
        lines.append(f"| {_g(e)} | {fmt(*stat(f, 'test_error'))} | "
                     f"{fmt(*stat(f, 'feature_learning'))} | "
                     f"{fmt(*stat(f, 'noise_memorization'))} | {_g(lr) if lr else '-'} | "
                     f"{_g(lr / e) if lr else '-'} | {why} | " + " | ".join(
                         fmt(*stat(t, m)) for m in ("train_error", "test_error",
                                                    "feature_learning", "noise_memorization"))
                     + " |")
    return lines + [""]


# -- sign GD and Lion over their step sizes, Lion over its betas -----------------------------------
def sign_section(root: Path, out: Path) -> list[str]:
    grid_rows = points(root / "sign")
    tuned = tuned_points(root, "sign")
    confs = {"synthetic_signgd": "signGD", "synthetic_lion": "Lion"}
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    lines = ["## sign GD and Lion over their step sizes", "",
             "5 seeds (0-4) per step size; Lion: lion-pytorch, betas 0.9, 0.99, no weight decay "
             "(the paper's lambda is in the loss).", "", "![sign](mechanism/sign.png)", "",
             "| optimizer | lr | seeds | train error | test error | feature learning | "
             "noise memorization |", "|---|---|---|---|---|---|---|"]
    for conf, label in confs.items():
        rows = {lr: grid_rows.get((conf, render(lr)), []) for lr in mechanism.LR_SIGN}
        for ax, metric in zip(axes, ("test_error", "train_error", "feature_learning"),
                              strict=True):
            st = [stat(rows[lr], metric) for lr in mechanism.LR_SIGN]
            ax.errorbar(mechanism.LR_SIGN, [m for m, _ in st], yerr=[0 if math.isnan(c) else c
                                                           for _, c in st],
                        marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_xlabel("lr")
            ax.set_ylabel(metric.replace("_", " "))
            ax.legend(fontsize=7)
        for lr in mechanism.LR_SIGN:
            lines.append(f"| {label} | {_g(lr)} | {n_done(rows[lr])} | " + " | ".join(
                fmt(*stat(rows[lr], m)) for m in ("train_error", "test_error",
                                                  "feature_learning", "noise_memorization"))
                + " |")
    save(fig, out / "sign.png")
    lines += ["", "Tuned (the same rule; then seeds 100-104):", "",
              "| optimizer | tuned lr | why | seeds | train error | test error | "
              "feature learning |", "|---|---|---|---|---|---|---|"]
    for conf, label in confs.items():
        lr, why, t = tuned.get(conf, (None, "not run", []))
        lines.append(f"| {label} | {_g(lr) if lr else '-'} | {why} | {n_done(t) if t else '-'} | "
                     + " | ".join(fmt(*stat(t, m)) for m in ("train_error", "test_error",
                                                             "feature_learning")) + " |")
    return lines + [""] + lion_betas_section(root, out)


def lion_betas_section(root: Path, out: Path) -> list[str]:
    rows = points(root / "lion_betas")
    b1s = sorted({b[0] for b in mechanism.LION_BETAS})
    b2s = sorted({b[1] for b in mechanism.LION_BETAS})

    def at(b1, b2):
        return rows.get((render({"betas": [b1, b2]}),), [])

    xl, yl = [_g(b) for b in b2s], [_g(b) for b in b1s]
    panels([([[stat(at(a, b), "test_error")[0] for b in b2s] for a in b1s], xl, yl,
             "Lion test error, lr 1e-4", 0, 1, "viridis", None),
            ([[stat(at(a, b), "feature_learning")[0] for b in b2s] for a in b1s], xl, yl,
             "Lion feature learning, lr 1e-4", -0.5, 1.5, "RdBu", None)],
           out / "lion_betas.png", "beta2 (momentum memory)", "beta1 (interpolation)")
    lines = ["## Lion over its betas (lr 1e-4, seeds 0-2)", "",
             "Lion's update is sign(beta1 m + (1 - beta1) g), then m <- beta2 m + (1 - beta2) g: "
             "beta1 = 0 is sign GD exactly.", "", "![lion betas](mechanism/lion_betas.png)", "",
             "| beta1 | beta2 | seeds | train error | test error | feature learning | "
             "noise memorization |", "|---|---|---|---|---|---|---|"]
    for a in b1s:
        for b in b2s:
            lines.append(f"| {_g(a)} | {_g(b)} | {n_done(at(a, b))} | " + " | ".join(
                fmt(*stat(at(a, b), m)) for m in ("train_error", "test_error",
                                                  "feature_learning", "noise_memorization"))
                + " |")
    return lines + [""]


def objectives_section(root: Path) -> list[str]:
    """The tuning rows behind the choices of the default Adam, sign GD and Lion: per step
    size the mean final training objective, the worst training error, the statuses."""
    lines = ["## The tuning objectives", "",
             "The final training objective L(W(T)) (train loss + (lam/2) ||W||_F^2) of each "
             "tuning seed, mean over the seeds, with the largest training error and the "
             "statuses: what `mechanism.tuned_lr` chose from.", "",
             "| run | lr | objective | max train error | statuses | chosen |",
             "|---|---|---|---|---|---|"]
    for name, point, label in (("betas", render([0.9, 0.999]), "Adam (0.9, 0.999)"),
                               ("sign", "synthetic_signgd", "signGD"),
                               ("sign", "synthetic_lion", "Lion")):
        study = next(s for s in mechanism.studies() if s.name == name)
        sweeps = mechanism.tuning_sweeps(root, study)
        by_lr: dict[float, list[dict]] = {}
        for sweep in sweeps:
            by_lr.update(mechanism.tuning_rows(sweep, study.tuned).get(point, {}))
        chosen, _ = mechanism.tuned_lr(by_lr)
        for lr, rows in sorted(by_lr.items()):
            obj = [r["objective"] for r in rows if math.isfinite(r["objective"])]
            errs = [r["train_error"] for r in rows if is_number(r.get("train_error"))]
            lines.append(f"| {label} | {_g(lr)} | "
                         f"{sum(obj) / len(obj) if obj else math.nan:.4g} | "
                         f"{max(errs) if errs else math.nan:.3f} | "
                         f"{', '.join(sorted({r['status'] for r in rows}))} | "
                         f"{'yes' if lr == chosen else ''} |")
    return lines + [""]


# -- trajectories ----------------------------------------------------------------------------------
def crossing(steps: np.ndarray, values: np.ndarray) -> float | None:
    """The first iteration where ``values`` goes from > 0 to <= 0, linearly interpolated
    between the two records around it; None when it never does (or starts <= 0)."""
    below = np.flatnonzero(values <= 0)
    if below.size == 0 or below[0] == 0:
        return None
    b = below[0]
    fa, fb = values[b - 1], values[b]
    return float(steps[b - 1] + (steps[b] - steps[b - 1]) * fa / (fa - fb))


TRAJECTORY_STUDIES = ("trajectories", "trajectories_adam", "trajectories_eps",
                      "trajectories_adam_lr0.01", "trajectories_signgd_lr0.001")


def trajectory_runs(root: Path, names: tuple[str, ...] = TRAJECTORY_STUDIES
                    ) -> list[tuple[str, Path]]:
    """(label, run directory) of every run with step-size records in the sweeps ``names``."""
    out = []
    for name in names:
        sweep = root / name
        if not (sweep / "sweep.yaml").is_file():
            continue
        for cell in load(sweep)[1]:
            run = cell_dir(sweep, cell)
            if (run / "step_sizes.pt").is_file():
                out.append((run_label(run), run))
    return out


def run_label(run: Path) -> str:
    cfg = load_run_config(run)
    o = cfg.optim
    names = {"adam": "Adam", "signgd": "signGD", "gd": "GD", "lion_pytorch:Lion": "Lion"}
    label = names.get(o.name, o.name)
    if o.name == "adam":
        label += f" ({_g(o.betas[0])}, {_g(o.betas[1])}" + (
            f", eps {_g(o.eps)})" if o.eps != 1e-8 else ")")
    return f"{label}, lr {_g(o.lr)}" + (f", d {cfg.data.d}" if cfg.data.d != 1000 else "")


def trajectory(run: Path) -> dict:
    """One run's step-size records per seed, the derived quantities, and its alignment."""
    cfg = load_run_config(run)
    rows = list(csv.DictReader(open(run / "step_sizes.csv")))
    seeds = sorted({int(r["seed"]) for r in rows})
    series = {s: defaultdict(list) for s in seeds}
    for r in rows:
        for k, v in r.items():
            series[int(r["seed"])][k].append(float(v))
    beta2 = float(cfg.optim.betas[1]) if cfg.optim.name in ("adam", "adamw") else None
    steps_align, align = read_alignment(run / "alignment.csv")
    history = torch.load(run / "step_sizes.pt")
    out = {"cfg": cfg, "seeds": {}}
    summary = read(run) or {}
    by_seed = {r["seed"]: r for r in summary.get("replicas", [])}
    for k, s in enumerate(seeds):
        d = {key: np.array(v) for key, v in series[s].items()}
        if beta2 is not None and "feature_exp_avg_sq" in d:
            bias = 1 - beta2 ** (d["step"] + 1)  # v after step t has seen t + 1 gradients
            d["feature_memory"] = (np.sqrt(d["feature_exp_avg_sq"] / bias)
                                   / np.abs(d["feature_grad"]))
            d["noise_memory"] = np.sqrt(d["noise_exp_avg_sq"] / bias / d["noise_grad_sq"])
        feature = np.array([v[k] for v in align["feature_learning"]])
        d["flip"] = crossing(steps_align, feature)
        # the feature's gradient turns when the feature noise outweighs the feature patches
        d["turn"] = crossing(d["step"], -(d["feature_grad_feature_patch"]
                                          + d["feature_grad_feature_noise"]))
        d["align_step"], d["align_feature"] = steps_align, feature
        d["align_noise"] = np.array([v[k] for v in align["noise_memorization"]])
        d["summary"] = by_seed.get(s, {})
        final = history["feature"]["feature_learning"][-1, k]  # (2, m)
        d["outputs"] = feature_outputs(final, float(cfg.model.q))
        d["positive"] = tuple(int(n) for n in (final > 0).sum(1))  # filters, per class
        out["seeds"][s] = d
    return out


SHORT_WINDOW = 5  # records taken when Stage I is shorter than 3 records


def short_window(d: dict) -> bool:
    """Whether Stage I, [0, STAGE_I x 1e-4 / lr) (a sign step travels lr per iteration),
    holds fewer than 3 records (at lr 1e-2 it is 2 iterations long)."""
    return int((d["step"] < STAGE_I * mechanism.ADAM_LR / d["lr"][0]).sum()) < 3


def stage_window(d: dict) -> np.ndarray:
    """The records of Stage I (iterations [0, STAGE_I) at lr 1e-4), or the first
    ``SHORT_WINDOW`` records when it is shorter than 3 (``short_window``)."""
    if short_window(d):
        return np.arange(d["step"].size) < SHORT_WINDOW
    return d["step"] < STAGE_I * mechanism.ADAM_LR / d["lr"][0]


def stage_i(d: dict, key: str) -> float:
    """The mean of ``key`` over the records of Stage I (``stage_window``)."""
    return float(np.mean(d[key][stage_window(d)])) if key in d else math.nan


def growth(d: dict, key: str) -> float:
    """|key| at the last record of Stage I over |key| at iteration 0."""
    last = np.flatnonzero(stage_window(d))[-1]
    return float(abs(d[key][last]) / abs(d[key][0]))


def feature_outputs(feature: torch.Tensor, q: float) -> tuple[float, float]:
    """y f(W, (y v, 0)) for y = +1, -1: the network's output on the feature patch alone, from
    feature learning <w_{j,r}, j v> of every filter (``feature`` (2, m)). Filters of class y
    with <w_{y,r}, y v> > 0 push towards y; filters of class -y whose feature coordinate has
    flipped (<w_{-y,r}, -y v> < 0) push away from it: sum_r relu(<w_{y,r}, y v>)^q -
    sum_r relu(-<w_{-y,r}, -y v>)^q."""
    pos, neg = feature[0], feature[1]
    return (float(pos.clamp(min=0).pow(q).sum() - (-neg).clamp(min=0).pow(q).sum()),
            float(neg.clamp(min=0).pow(q).sum() - (-pos).clamp(min=0).pow(q).sum()))


def trajectory_section(root: Path, out: Path) -> list[str]:
    runs = [(label, trajectory(run)) for label, run in trajectory_runs(root)]
    if not runs:
        return []
    lines = ["## Trajectories (the step-size callback, seeds 0-2)", "",
             "Records every 10 iterations (every 5 at the tuned step sizes 1e-2 and 1e-3).",
             "",
             f"Stage I: the mean over the records of iterations 0-{STAGE_I - 1} at lr 1e-4 "
             f"(0 to {STAGE_I} x 1e-4 / lr at another lr: a sign step travels lr). Steps are "
             "|W(t+1) - W(t)| / lr (sign GD: 1); velocities the gain per step, in lr, of the "
             "feature learning <w_{+1,r}, v> of the feature filter r+ (largest <w_{+1,r}, v>) "
             "and of the noise memorization <w_{+1,r*}, xi_i> (r*: largest, mean over y_i = +1). "
             "Memory: sqrt(v_hat) / |g| on the feature coordinate, sqrt(mean v_hat / mean g^2) "
             "on an example's noise coordinates (v_hat bias-corrected; < 1: v lags a growing "
             "gradient, the step exceeds lr). Turn: the first iteration at which the feature "
             "noise's part of the feature coordinate's gradient outweighs the feature patches' "
             "part (for r+); flip: where feature learning first crosses 0 (alignment every 10 "
             "iterations). Feature output: y f(W, (y v, 0)) at the last record for y = +1, -1 "
             "(``feature_outputs``: the feature patch's push towards the label, over every "
             "filter; negative: the flipped filters of the other class win); positive filters: "
             "how many of the m filters of class +1, -1 end with <w_{j,r}, j v> > 0. Growth: "
             "|g| on the feature coordinate (r+) and rms g on the noise coordinates at the end "
             "of Stage I over iteration 0. Runs marked * have a Stage I shorter than the record "
             f"spacing: their columns are the first {SHORT_WINDOW} records. Per seed, "
             "separated by /.", "",
             "| run | feature step | noise step | feature velocity | noise velocity | "
             "velocity ratio | noise memory | feature, noise gradient growth | turn | flip | "
             "feature output (+1, -1) | positive filters (+1, -1) | test error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def per_seed(tr, fn, digits=2) -> str:
        vals = [fn(d) for d in tr["seeds"].values()]
        return " / ".join("never" if v is None else "-" if isinstance(v, float) and math.isnan(v)
                          else f"{v:.{digits}f}" for v in vals)

    for label, tr in runs:
        short = any(short_window(d) for d in tr["seeds"].values())
        lines.append(f"| {label}{' *' if short else ''} | " + " | ".join([
            per_seed(tr, lambda d: stage_i(d, "feature_step")),
            per_seed(tr, lambda d: stage_i(d, "noise_step")),
            per_seed(tr, lambda d: stage_i(d, "feature_velocity")),
            per_seed(tr, lambda d: stage_i(d, "noise_velocity")),
            per_seed(tr, lambda d: stage_i(d, "noise_velocity") / stage_i(d, "feature_velocity"),
                     1),
            per_seed(tr, lambda d: stage_i(d, "noise_memory")),
            " / ".join(f"{growth(d, 'feature_grad'):.1f}, "
                       f"{math.sqrt(growth(d, 'noise_grad_sq')):.0f}"
                       for d in tr["seeds"].values()),
            per_seed(tr, lambda d: d["turn"], 0), per_seed(tr, lambda d: d["flip"], 0),
            " / ".join(f"{a:.2f}, {b:.2f}" for a, b in
                       (d["outputs"] for d in tr["seeds"].values())),
            " / ".join(f"{a}, {b}" for a, b in (d["positive"] for d in tr["seeds"].values())),
            per_seed(tr, lambda d: d["summary"].get("test_error", math.nan), 3)]) + " |")
    draw_comparison(runs, out / "comparison.png")
    draw_trajectories(runs, out / "trajectories.png")
    lines += ["", "The runs at lr 1e-4 side by side (seed 0):", "",
              "![comparison](mechanism/comparison.png)", "",
              "Every run, seed 0 (dotted: turn, dashed: flip):", "",
              "![trajectories](mechanism/trajectories.png)", ""]
    return lines


def draw_trajectories(runs: list[tuple[str, dict]], path: Path) -> None:
    """Per run (a row): alignment, per-coordinate steps, memory, the feature gradient's parts;
    the first seed of each run, iterations 1-T on a log axis."""
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 4, figsize=(17, 2.6 * len(runs)), squeeze=False)
    for row, (label, tr) in zip(axes, runs, strict=True):
        d = next(iter(tr["seeds"].values()))
        t = d["step"]
        ax = row[0]
        ax.plot(d["align_step"], d["align_feature"], color="tab:blue", label="feature learning")
        ax.plot(d["align_step"], d["align_noise"], color="tab:red", label="noise memorization")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_ylabel(label, fontsize=8)
        ax = row[1]
        ax.plot(t, d["feature_step"], color="tab:blue", label="|dW|/lr feature coordinate")
        ax.plot(t, d["noise_step"], color="tab:red", label="|dW|/lr noise coordinates")
        ax.set_yscale("log")
        if tr["cfg"].optim.name != "gd":  # GD's |dW| / lr is |g|: its own scale
            ax.set_ylim(0.02, 5)
        ax = row[2]
        if "noise_memory" in d:
            ax.plot(t, d["feature_memory"], color="tab:blue", label="sqrt(v_hat)/|g| feature")
            ax.plot(t, d["noise_memory"], color="tab:red", label="sqrt(v_hat)/rms g noise")
            ax.set_yscale("log")
            ax.axhline(1, color="gray", lw=0.6)
        else:
            ax.plot(t, d["noise_velocity"], color="tab:red", label="noise velocity (lr/step)")
            ax.plot(t, d["feature_velocity"], color="tab:blue", label="feature velocity")
            ax.axhline(0, color="gray", lw=0.6)
        ax = row[3]
        ax.plot(t, -d["feature_grad_feature_patch"], color="tab:blue",
                label="-grad from feature patches")
        ax.plot(t, d["feature_grad_feature_noise"], color="tab:red",
                label="grad from feature noise")
        ax.set_yscale("symlog", linthresh=1e-6)
        for a in row:
            a.set_xscale("log")
            a.set_xlim(1, t[-1] + 1)
            a.tick_params(labelsize=7)
            a.legend(fontsize=6)
            for when, style in ((d["turn"], ":"), (d["flip"], "--")):
                if when is not None:
                    a.axvline(when, color="black", lw=0.7, ls=style)
    for ax in axes[-1]:
        ax.set_xlabel("iteration (dotted: turn, dashed: flip)", fontsize=8)
    save(fig, path)


COMPARED = ("Adam (0.9, 0.999), lr 0.0001", "Adam (0.9, 0.99), lr 0.0001",
            "Adam (0.9, 0.9), lr 0.0001", "Adam (0.99, 0.99), lr 0.0001",
            "Adam (0, 0.999), lr 0.0001", "signGD, lr 0.0001", "Lion, lr 0.0001")


def draw_comparison(runs: list[tuple[str, dict]], path: Path) -> None:
    """The runs of ``COMPARED`` on shared axes (their first seed): feature learning, the step
    on the noise coordinates, the second-moment memory there, and the ratio of the feature
    coordinate's gradient parts (feature noise over feature patches: the turn at 1)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.9))
    chosen = [(label, tr) for name in COMPARED for label, tr in runs if label == name]
    for n, (label, tr) in enumerate(chosen):
        d = next(iter(tr["seeds"].values()))
        t, style = d["step"], {"color": f"C{n}", "lw": 1.2, "label": label.split(", lr")[0]}
        axes[0].plot(d["align_step"], d["align_feature"], **style)
        axes[1].plot(t, d["noise_step"], **style)
        if "noise_memory" in d:
            axes[2].plot(t, d["noise_memory"], **style)
        axes[3].plot(t, d["feature_grad_feature_noise"] / -d["feature_grad_feature_patch"],
                     **style)
    titles = ("feature learning max_r <w_{+1,r}, v>", "|dW| / lr on the noise coordinates",
              "sqrt(v_hat) / rms g on the noise coordinates",
              "feature noise / feature patches in grad_v")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlim(1, 10_000)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration (lr 1e-4, seed 0)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].axhline(0, color="gray", lw=0.6)
    axes[1].set_yscale("log")
    axes[1].set_ylim(0.02, 5)
    axes[2].set_yscale("log")
    axes[2].axhline(1, color="gray", lw=0.6)
    axes[3].set_yscale("log")
    axes[3].set_ylim(1e-2, 1e2)
    axes[3].axhline(1, color="gray", lw=0.6)
    axes[0].legend(fontsize=6.5)
    save(fig, path)


def disjoint_section(root: Path) -> list[str]:
    """Stage-I rates with nearly disjoint noise supports (d = 20 000) beside d = 1000."""
    runs = [(label, trajectory(run)) for label, run in
            trajectory_runs(root, ("trajectories", "disjoint"))
            if load_run_config(run).optim.name in ("signgd", "adam")]
    if not any("d 20000" in label for label, _ in runs):
        return []
    cfg = runs[0][1]["cfg"].data
    gauss = cfg.s * (cfg.sigma_p or cfg.s ** -0.5) * math.sqrt(2 / math.pi)
    lines = ["## Shared noise supports", "",
             f"Lemma 5.2's sign-GD rate assumes disjoint noise supports (Lemma 5.1): each of the "
             f"s noise coordinates of xi_i moves lr along sign(xi_i,k), so <w, xi'_i> gains "
             f"s sigma_p sqrt(2/pi) = {gauss:.2f} lr per step and <w, xi_i> "
             f"{gauss - cfg.alpha:.2f} lr. At d = 1000 every coordinate lies in the supports "
             f"of n s / (d - 1) = {cfg.n * cfg.s / (cfg.d - 1):.0f} examples on average; at "
             f"d = 20 000 in about 1. Stage-I means (iterations 0-{STAGE_I - 1}), per seed:", "",
             "| run | noise step | Gaussian part of the noise velocity | noise velocity | "
             "feature velocity | turn | flip |", "|---|---|---|---|---|---|---|"]
    for label, tr in runs:
        vals = [(stage_i(d, "noise_step"), stage_i(d, "noise_velocity_gauss"),
                 stage_i(d, "noise_velocity"), stage_i(d, "feature_velocity"), d["turn"],
                 d["flip"]) for d in tr["seeds"].values()]
        cols = [" / ".join(f"{v[i]:.2f}" for v in vals) for i in range(4)]
        cols += [" / ".join("never" if v[i] is None else f"{v[i]:.0f}" for v in vals)
                 for i in (4, 5)]
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    T = int(next(tr for label, tr in runs if "d 20000" in label)["cfg"].trainer.max_steps)
    return lines + ["", f"(d = 20 000 runs stop at T = {T}: turn and flip within it.)", ""]


def long_section(root: Path) -> list[str]:
    """The paper's Adam trained ten times longer: test error and alignment over T."""
    sweep = root / "long"
    if not (sweep / "sweep.yaml").is_file():
        return []
    (cell,) = load(sweep)[1]
    run = cell_dir(sweep, cell)
    if read(run) is None:
        return []
    with open(run / "metrics.csv") as f:
        evals = [r for r in csv.DictReader(f) if r.get("test/error")]
    steps, align = read_alignment(run / "alignment.csv")
    at = {int(s): i for i, s in enumerate(steps)}
    T = int(load_run_config(run).trainer.max_steps)
    lines = ["## The paper's Adam, ten times longer", "",
             f"Adam (0.9, 0.999), lr 1e-4, T = {T}; seeds 0-2. Test error and training "
             "objective: means over the seeds (metrics.csv); feature learning and noise "
             "memorization: mean ± 95% CI (alignment.csv).", "",
             "| iteration | test error | training objective | feature learning | "
             "noise memorization |", "|---|---|---|---|---|"]
    for r in evals:
        step = round(float(r["step"])) + 1  # logged with the index of the iteration just run
        i = at.get(step)
        fl = fmt(*_ci(align["feature_learning"][i])) if i is not None else "-"
        nm = fmt(*_ci(align["noise_memorization"][i])) if i is not None else "-"
        obj = next((q["train/objective"] for q in _rows_at(run, step - 1)), "")
        lines.append(f"| {step} | {float(r['test/error']):.3f} | "
                     f"{float(obj):.4f} | {fl} | {nm} |" if obj else
                     f"| {step} | {float(r['test/error']):.3f} | - | {fl} | {nm} |")
    return lines + [""]


def _ci(values: list[float]) -> tuple[float, float]:
    mean, _, ci = mean_ci(values)
    return mean, ci


def _rows_at(run: Path, step: int) -> list[dict]:
    """metrics.csv rows logged at ``step`` that carry the training objective."""
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/objective") and r.get("step")
                and round(float(r["step"])) == step]


# -- the document ----------------------------------------------------------------------------------
def sweeps_of(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/sweep.yaml"))


def build(root: Path, out: Path) -> Path:
    """Write ``out/mechanism_tables.md`` and ``out/mechanism/*.png`` from the sweeps in
    ``root``; return the markdown's path."""
    if not (root / "betas" / "sweep.yaml").is_file():
        raise ConfigError(f"--root {root}: no mechanism sweeps there (run "
                          "python scripts/mechanism.py run first)")
    figs = out / "mechanism"
    figs.mkdir(parents=True, exist_ok=True)
    sweeps = sweeps_of(root)
    summaries = [s for sweep in sweeps for c in load(sweep)[1]
                 if (s := read(cell_dir(sweep, c))) is not None]
    head = ["# The mechanism map: measured tables", "",
            f"Written by `python scripts/mechanism.py report --root {root} --out {out}` from "
            f"the sweeps of `python scripts/mechanism.py run --root {root}` "
            "(adamgap/experiments/mechanism.py); the explanation is in "
            "[mechanism.md](mechanism.md). Paper settings (Section 6): d = 1000, n = 200, "
            "s = 100, sigma_p = 0.1, alpha = 0.2, lam = 1e-5, m = 20, q = 3, T = 10 000 "
            "full-batch steps, 10 000 test examples.", "",
            *(f"Runs: {line}." for line in provenance.lines_of(summaries)), "",
            f"Report: {provenance.line(provenance.collect())}.", "",
            "| sweep | conf | grid | seeds | cells | overrides |", "|---|---|---|---|---|---|"]
    for sweep in sweeps:
        spec, cells = load(sweep)
        grid = "; ".join(f"{k}={v}" for k, v in spec.grid.items())
        head.append(f"| {sweep.name} | {spec.conf} | {grid} | {spec.seeds} | {len(cells)} | "
                    f"{' '.join(spec.overrides) or '-'} |")
    body = (betas_section(root, figs) + eps_section(root, figs) + sign_section(root, figs)
            + objectives_section(root)
            + trajectory_section(root, figs) + disjoint_section(root) + long_section(root))
    path = out / "mechanism_tables.md"
    write_text(path, "\n".join(head + [""] + body))
    return path


def main(argv: list[str]) -> int:
    """``run`` or ``report`` (scripts/mechanism.py)."""
    p = argparse.ArgumentParser(prog="mechanism.py", description="The mechanism study: run "
                                "its sweeps, or write its tables and figures.")
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--root", default="runs/mechanism", help="where the study's sweeps live")
    p.add_argument("--jobs", type=int, default=2, help="cells at once (run)")
    p.add_argument("--only", nargs="*", choices=[s.name for s in mechanism.studies()],
                   help="run these studies only (run)")
    p.add_argument("--out", default="docs/atlas", help="output folder (report)")
    args = p.parse_args(argv)

    def body() -> int:
        if args.what == "run":
            mechanism.run_all(args.root, args.jobs, args.only)
        else:
            print(f"wrote {build(Path(args.root), Path(args.out))}")
        return 0
    return study(body, " ".join(["python scripts/mechanism.py", *argv]))

