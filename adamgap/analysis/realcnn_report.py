"""The report's "real CNNs" section, from a standard-gap directory
(``adamgap.experiments.standard_gap``; ``python scripts/report.py OUT``):

- the **standard-gap table**: per optimizer and augmentation the chosen step size (the tuning
  runs' final training losses beside it), train and test error, mean ± 95% t-interval over the
  seeds, the first layer's alignment; **SGD's win rate** over each adaptive method across the
  seeds (paired: same seed, same subset, same W(0)), beside Wilson et al.'s CIFAR-10 VGG
  numbers;
- **Figure 1**: the first-layer filters of one W(0) trained by Adam and by SGD (GD for the
  patch CNN), for the real CNN and for each extra sweep of patch-CNN runs, with the number that
  says what "noisier" means (``adamgap.first_layer``: the feature energy, the memorization);
- the **alignment curves** of the first layer, Adam vs SGD, over training; on the planted task
  both measures (Figure 2's planted v and xi, and the first layer's PCA subspace) on the same
  runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from adamgap import provenance
from adamgap.config import load_run_config
from adamgap.experiments.aggregate import results
from adamgap.experiments.standard_gap import load
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.figures import (
    band,
    figure2_curves,
    plot_figure2,
    plot_filters,
    pyplot,
    read_alignment,
    save,
)
from adamgap.optimizers import label as optimizer_label
from adamgap.summary import read, replicas_of

# Wilson et al. (2017), Table 2 / Sec. 4.3: CIFAR-10 test error (%) of a VGG, mean ± std over
# 5 seeds at each method's best step size
WILSON = (("SGD", "7.65 ± 0.14"), ("RMSprop (the best adaptive method)", "9.60 ± 0.19"))
FIRST_LAYER = ("first_layer_feature_energy", "first_layer_memorization")
PLANTED = ("feature_learning", "noise_memorization")
COLORS = {"SGD": "tab:green", "GD": "tab:green", "Adam": "tab:red", "AdamW": "tab:orange"}
NAMES = {"first_layer_feature_energy": "first layer: feature energy",
         "first_layer_noise_energy": "first layer: noise energy",
         "first_layer_memorization": "first layer: memorization",
         "feature_learning": "planted: feature learning", "noise_memorization":
         "planted: noise memorization"}


# -- reading ---------------------------------------------------------------------------------------
class Runs:
    """The finished seeds of one sweep, optionally of one conf: per seed its results row (a
    replica of an ensemble run has its own) and its run directory; the optimizer's name."""

    def __init__(self, sweep_dir: Path, conf: str | None = None) -> None:
        self.sweep = Path(sweep_dir)
        self.rows = {}  # seed -> results row (adamgap.experiments.aggregate.results)
        self.where = {}  # seed -> the run directory that trained it
        for r in results(self.sweep):
            if r["status"] == "completed" and (conf is None or r["conf"] == conf):
                self.rows[int(r["seed"])] = r
                self.where[int(r["seed"])] = self.sweep / "cells" / r["cell"]
        self.dirs = sorted(set(self.where.values()))  # each run once (an ensemble: K seeds)
        self.cfg = load_run_config(self.dirs[0]) if self.dirs else None
        self.label = optimizer_label(self.cfg.optim.name) if self.cfg else "?"

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for _, r in sorted(self.rows.items())
                if isinstance(r.get(key), (int, float))]

    def stat(self, key: str, scale: float = 1.0, digits: int = 3) -> str:
        """Mean ± 95% CI over the seeds of ``key`` (times ``scale``)."""
        mean, _, ci = mean_ci([scale * v for v in self.values(key)])
        return fmt(mean, ci, digits)

    def curves(self, keys: tuple[str, ...]) -> tuple[np.ndarray, dict[str, list[list[float]]]]:
        """Per recorded step, the values of every seed, from the runs' ``alignment.csv``."""
        steps, out = None, {k: None for k in keys}
        for d in self.dirs:
            s, v = read_alignment(d / "alignment.csv", keys)
            steps = s if steps is None else steps
            for k in keys:
                out[k] = v[k] if out[k] is None else [a + b for a, b in zip(out[k], v[k],
                                                                            strict=False)]
        return steps, out

    def _replica(self, seed: int) -> tuple[dict, int]:
        summary = read(self.where[seed])
        seeds = [r["seed"] for r in replicas_of(summary)]
        return summary, seeds.index(seed)

    def replica_row(self, seed: int) -> dict:
        """The summary row of seed ``seed`` (its replica's, in an ensemble run)."""
        summary, k = self._replica(seed)
        return replicas_of(summary)[k]

    def filters(self, seed: int) -> torch.Tensor:
        """The final first-layer filters of seed ``seed`` (``filters.pt``)."""
        _, k = self._replica(seed)
        return torch.load(self.where[seed] / "filters.pt", weights_only=True)["final"][k]


# -- tables ----------------------------------------------------------------------------------------
def gap_table(record: dict, out: Path, augment: str) -> tuple[list[str], dict[str, Runs]]:
    """The standard-gap rows of one augmentation setting, and their runs by optimizer."""
    runs = {conf: Runs(out / record["final"][conf][augment]) for conf in record["final"]}
    lines = ["| optimizer | step size | tuning: final training loss per step size | seeds | "
             "train loss | train error (%) | test error (%) | first-layer feature energy | "
             "first-layer memorization |", "|---|---|---|---|---|---|---|---|---|"]
    for conf, r in runs.items():
        chosen = record["chosen"][conf][augment]
        tuning = ", ".join(
            (f"**{lr}: {loss:.3g}**" if float(lr) == chosen else f"{lr}: {loss:.3g}")
            if not math.isnan(loss) else f"{lr}: diverged"
            for lr, loss in record["tuning"][conf][augment].items())
        lines.append(f"| {r.label} | {chosen:g} | {tuning} | {len(r.rows)} | "
                     f"{r.stat('train_loss')} | {r.stat('train_error', 100, 2)} | "
                     f"{r.stat('test_error', 100, 2)} | "
                     f"{r.stat('first_layer_feature_energy')} | "
                     f"{r.stat('first_layer_memorization')} |")
    return lines, runs


def win_rates(runs: dict[str, Runs], baseline: str) -> list[str]:
    """SGD against each other optimizer, paired by seed: the seeds on which SGD's test error
    is lower (a tie counts half) and the mean paired difference."""
    base = runs[baseline]
    lines = []
    for conf, other in runs.items():
        if conf == baseline:
            continue
        seeds = sorted(set(base.rows) & set(other.rows))
        diff = [100 * (float(other.rows[s]["test_error"]) - float(base.rows[s]["test_error"]))
                for s in seeds]
        wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diff)
        mean, _, ci = mean_ci(diff)
        lines.append(f"- {base.label} beats {other.label} on {wins:g} of {len(seeds)} seeds "
                     f"(win rate {wins / max(len(seeds), 1):.2f}); {other.label} − "
                     f"{base.label} test error {fmt(mean, ci, 2)} percentage points.")
    return lines


def extra_table(runs: dict[str, Runs]) -> list[str]:
    """Per optimizer: errors (%) and both alignments, mean ± 95% CI over the seeds."""
    keys = ("feature_learning", "noise_memorization", "first_layer_feature_energy",
            "first_layer_memorization")
    present = [k for k in keys if any(r.values(k) for r in runs.values())]
    lines = ["| optimizer | lr | seeds | train error (%) | test error (%) | "
             + " | ".join(NAMES[k] for k in present) + " |", "|" + "---|" * (5 + len(present))]
    for r in runs.values():
        lines.append(f"| {r.label} | {r.cfg.optim.lr:g} | {len(r.rows)} | "
                     f"{r.stat('train_error', 100, 2)} | {r.stat('test_error', 100, 2)} | "
                     + " | ".join(r.stat(k) for k in present) + " |")
    return lines


# -- figures ---------------------------------------------------------------------------------------
def figure1(runs: list[Runs], path: Path, seed: int = 0) -> list[str]:
    """Figure 1: the final filters of the runs with ``seed`` (one W(0)) side by side."""
    panels, notes = [], []
    for r in runs:
        if seed not in r.where:
            continue
        row = r.replica_row(seed)
        energy, memo = row.get("first_layer_feature_energy"), row.get("first_layer_memorization")
        number = "" if energy is None else f"\nfeature energy {energy:.2f} " \
            f"(W(0): {row['first_layer_feature_energy_init']:.2f}), memorization {memo:.3f}"
        panels.append((f"{r.label}, lr {r.cfg.optim.lr:g}, seed {seed}: test error "
                       f"{100 * row['test_error']:.1f}%{number}", r.filters(seed)))
        notes.append(f"{r.label} {energy:.2f}" if energy is not None else r.label)
    plot_filters(panels, path)
    return notes


def plot_compare(runs: list[Runs], keys: tuple[str, ...], path: Path, title: str) -> None:
    """One panel per key; per optimizer the mean over seeds and a ±1 std band."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for r in runs:
            steps, values = r.curves((key,))
            mean, low, high = band(values[key], "std")
            color = COLORS.get(r.label)
            ax.plot(steps, mean, color=color, label=f"{r.label} (lr {r.cfg.optim.lr:g}, "
                    f"{len(values[key][0])} seeds)")
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        ax.set_xlabel("iteration")
        ax.set_title(f"{title}: {NAMES.get(key, key)}", fontsize=9)
        ax.legend(fontsize=7)
    save(fig, path)


def plot_planted(runs: list[Runs], path: Path) -> None:
    """Figure 2's planted measures per optimizer (one panel each), the same runs' first-layer
    measures are ``plot_compare``'s."""
    panels = []
    for r in runs:
        steps, values = r.curves(tuple(k for k, _, _ in figure2_curves()))
        seeds = len(values["feature_learning"][0])
        panels.append((f"{r.label}, lr {r.cfg.optim.lr:g}: mean ± std of {seeds} seeds",
                       steps, values))
    plot_figure2(panels, path, "std", r"\mu_{+1}", sharey=True)


# -- the section -----------------------------------------------------------------------------------
EXTRA_TITLES = {
    "planted": ("Planted Fashion-MNIST (Definition 3.1 with a T-shirt/trouser image as the "
                "feature patch): the patch CNN's filters, the image part of each as a 28x28 "
                "picture"),
    "image_patches": ("Images as patches (T-shirt vs trouser, 4x4 grid of 7x7 patches): the "
                      "patch CNN's 7x7 filters"),
    "patchconv": ("Section 3's network as a convolution over whole images (every 7x7 patch, "
                  "T-shirt vs trouser): its 7x7 filters"),
}


def section(protocol_dir: str | Path, out: str | Path) -> str:
    """The markdown of the "real CNNs" section of the standard-gap directory ``protocol_dir``;
    its PNGs are written to ``out`` (the report's directory) and linked relative to it."""
    pdir, out = Path(protocol_dir), Path(out)
    record = load(pdir)
    name, baseline = record["name"], record["protocol"]["baseline"]
    cfg = Runs(pdir / next(iter(record["final"][baseline].values()))).cfg
    wall = record["wall_seconds"]
    runs_all = [read(d) for sub in ("tune", "final", "extra") for d in
                sorted((pdir / sub).glob("*/cells/*")) if d.is_dir()]
    lines = [f"## Real CNNs: the standard gap ({name})", "",
             f"From `python scripts/standard_gap.py {name} --out {pdir}` (resumable) and "
             f"`python scripts/report.py {pdir}`. Runs: "
             + "; ".join(provenance.lines_of([s for s in runs_all if s])) + ".", "",
             f"Protocol (Wilson et al. 2017): {cfg.data.dataset}, {cfg.model.name} "
             f"(model.width={cfg.model.width}), training subset n = {cfg.data.n}, test images "
             f"n_test = {cfg.data.n_test}, batch {cfg.data.batch_size}, {cfg.trainer.max_steps} "
             f"steps ({cfg.trainer.max_steps * cfg.data.batch_size / cfg.data.n:.1f} epochs), "
             f"{cfg.optim.schedule} schedule, weight decay {cfg.optim.lam:g} (L2 in the loss "
             f"for SGD with momentum {cfg.optim.momentum:g} and Adam; decoupled "
             f"{cfg.optim.weight_decay:g} for AdamW); the step size per optimizer and "
             f"augmentation chosen on its grid by the final training loss of one tuning run "
             f"(seed {record['protocol']['tune_seed']}), then seeds 0-"
             f"{record['protocol']['seeds'] - 1}. Wall time: tuning {wall.get('tune', 0):.0f} "
             f"s, seeds {wall.get('final', 0):.0f} s, extra sweeps {wall.get('extra', 0):.0f} s "
             "(summed over the invocations of a resumed protocol"
             + (f": {record['wall_seconds_note']}" if "wall_seconds_note" in record else "")
             + ").", ""]
    gap_runs = {}
    for augment in record["protocol"]["augment"]:
        a = "true" if augment else "false"
        rows, runs = gap_table(record, pdir, a)
        gap_runs[a] = runs
        lines += [f"### Test error, {'with' if augment else 'without'} augmentation", "",
                  *rows, "", *win_rates(runs, baseline), ""]
    lines += ["Wilson et al. (2017), CIFAR-10 with a VGG (test error %, mean ± std over 5 "
              "seeds), for comparison:", "", "| method | test error (%) |", "|---|---|",
              *(f"| {m} | {e} |" for m, e in WILSON), ""]
    plain = gap_runs["false" if "false" in gap_runs else next(iter(gap_runs))]
    order = [plain[c] for c in sorted(plain, key=lambda c: c != baseline)]
    figure1(order, out / f"figure1_{name}_cnn.png")
    lines += ["### Figure 1: first-layer filters, one initialization per optimizer", "",
              f"Seed 0 (the same W(0) and data for every optimizer), without augmentation: "
              f"the {cfg.model.name}'s conv1 filters.", "",
              f"![Figure 1, {cfg.model.name}](figure1_{name}_cnn.png)", ""]
    for a, runs in gap_runs.items():
        name_a = f"alignment_{name}_cnn_augment{a}.png"
        plot_compare(list(runs.values()), FIRST_LAYER, out / name_a,
                     f"{'with' if a == 'true' else 'no'} augmentation")
        lines += [f"First-layer alignment over training, {'with' if a == 'true' else 'without'}"
                  " augmentation (mean ± std over seeds):", "", f"![alignment]({name_a})", ""]
    for extra, sub in record.get("extras", {}).items():
        sweep = pdir / sub
        confs = sorted({r["conf"] for r in results(sweep) if r["status"] == "completed"},
                       key=lambda c: "gd" in c)
        runs = {c: Runs(sweep, c) for c in confs}
        fig = f"figure1_{name}_{extra}.png"
        figure1(list(runs.values()), out / fig)
        lines += [f"### {EXTRA_TITLES.get(extra, extra)}", "", *extra_table(runs), "",
                  f"![Figure 1, {extra}]({fig})", ""]
        curves = f"alignment_{name}_{extra}.png"
        plot_compare(list(runs.values()), FIRST_LAYER, out / curves, extra)
        lines += [f"![first-layer alignment, {extra}]({curves})", ""]
        if all(r.values("feature_learning") for r in runs.values()):
            planted = f"figure2_{name}_{extra}.png"
            plot_planted(list(runs.values()), out / planted)
            lines += ["The planted measures (Figure 2: feature learning <w, mu_+1> and noise "
                      "memorization <w, xi>) on the same runs:", "", f"![Figure 2]({planted})",
                      ""]
    return "\n".join(lines) + "\n"
