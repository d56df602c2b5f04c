"""Figures: Figure 2's curves (feature learning and noise memorization against the iteration)
and the plumbing every PNG of the suite goes through.

The alignment callback draws one run's Figure 2 (``plot_alignment``), the gap report draws it
over the seeds of a sweep and the real-data section over the seeds of a run
(``plot_figure2``); all of them label and colour the curves from :func:`figure2_curves`.
matplotlib is imported only when a figure is drawn (it is the slowest import of a run).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adamgap.outputs import atomic_write

if TYPE_CHECKING:
    from torch import Tensor


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display); imported on first use."""
    import matplotlib  # optional at import time: only drawing needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 110, tight: bool = False) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"bbox_inches": "tight"} if tight else {}
    if not tight:
        fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **options), binary=True)
    pyplot().close(fig)


def figure2_curves(feature: str = "v") -> tuple[tuple[str, str, str], ...]:
    """Figure 2's two curves, class +1, as (summary key, legend label, colour); ``feature`` is
    the symbol of the class's feature direction (``v``; ``\\mu_{+1}`` on real images)."""
    return (("feature_learning", rf"feature learning $\max_r\langle w_{{+1,r}}, {feature}\rangle$",
             "tab:blue"),
            ("noise_memorization", r"noise memorization $\mathrm{mean}_{y_i=+1}\max_r"
             r"\langle w_{+1,r},\xi_i\rangle$", "tab:red"))


def read_alignment(path: str | Path, keys: tuple[str, ...] = ("feature_learning",
                                                              "noise_memorization")
                   ) -> tuple[np.ndarray, dict[str, list[list[float]]]]:
    """``alignment.csv`` as (steps, {key: per step, the values of every seed recorded})."""
    per_step: dict[int, dict[str, list[float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            at = per_step.setdefault(int(row["step"]), {k: [] for k in keys})
            for k in keys:
                at[k].append(float(row[k]))
    steps = sorted(per_step)
    return np.array(steps), {k: [per_step[s][k] for s in steps] for k in keys}


def band(values: list[list[float]], kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step (mean, low, high) over seeds: ``range`` from the lowest to the highest seed,
    ``std`` mean -+ one sample standard deviation (0 for a single seed)."""
    mean = np.array([np.mean(v) for v in values])
    if kind == "range":
        return mean, np.array([min(v) for v in values]), np.array([max(v) for v in values])
    sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return mean, mean - sd, mean + sd


def draw_figure2(ax, steps: np.ndarray, values: dict[str, list[list[float]]], kind: str,
                 feature: str = "v", title: str | None = None) -> None:
    """One Figure-2 panel on ``ax``: per curve the mean over seeds and its ``kind`` band
    (no band for one seed)."""
    seeds = max(len(v) for series in values.values() for v in series)
    for key, label, color in figure2_curves(feature):
        mean, low, high = band(values[key], kind)
        ax.plot(steps, mean, color=color, label=label if seeds == 1 else f"{label}, mean")
        if seeds > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)


def plot_figure2(panels: list[tuple[str, np.ndarray, dict]], path: str | Path, kind: str,
                 feature: str = "v", sharey: bool = False) -> None:
    """Figure 2 with one panel per (title, steps, values) side by side (see ``draw_figure2``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False,
                             sharey=sharey)
    for ax, (title, steps, values) in zip(axes[0], panels, strict=True):
        draw_figure2(ax, steps, values, kind, feature, title)
    save(fig, path)


def plot_alignment(history: dict[str, Tensor], path: str | Path) -> None:
    """One run's Figure 2 (``alignment.AlignmentCallback.history``): class +1, every replica,
    the mean with the band from the lowest to the highest replica when K > 1."""
    steps = history["step"].numpy()
    values = {key: history[key].tolist() for key, _, _ in figure2_curves()}  # (records, K)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    draw_figure2(ax, steps, values, "range")
    save(fig, path, dpi=120)
