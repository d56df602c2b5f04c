"""Figures: Figure 2's curves (feature learning and noise memorization against the iteration),
the first layer's alignment curves (``adamgap.first_layer``), Figure 1's filter grids, and the
plumbing every PNG of the suite goes through.

The alignment callback draws one run's Figure 2 (``plot_alignment``), the gap report draws it
over the seeds of a sweep and the real-data section over the seeds of a run
(``plot_figure2``); all of them label and colour the curves from :func:`figure2_curves` (the
first layer's from :data:`FIRST_LAYER_CURVES`). Every run draws its first-layer filters
(``plot_filters``, ``figures/filters.png``); the report puts two runs side by side.
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


def draw_curves(ax, steps: np.ndarray, values: dict[str, list[list[float]]],
                curves: tuple[tuple[str, str, str], ...], kind: str,
                title: str | None = None) -> None:
    """Each (key, label, colour) of ``curves`` that ``values`` holds on ``ax``: the mean over
    seeds and its ``kind`` band (no band for one seed)."""
    seeds = max(len(v) for series in values.values() for v in series)
    for key, label, color in curves:
        if key not in values:
            continue
        mean, low, high = band(values[key], kind)
        ax.plot(steps, mean, color=color, label=label if seeds == 1 else f"{label}, mean")
        if seeds > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)


def draw_figure2(ax, steps: np.ndarray, values: dict[str, list[list[float]]], kind: str,
                 feature: str = "v", title: str | None = None) -> None:
    """One Figure-2 panel on ``ax`` (``draw_curves`` of :func:`figure2_curves`)."""
    draw_curves(ax, steps, values, figure2_curves(feature), kind, title)


def plot_figure2(panels: list[tuple[str, np.ndarray, dict]], path: str | Path, kind: str,
                 feature: str = "v", sharey: bool = False) -> None:
    """Figure 2 with one panel per (title, steps, values) side by side (see ``draw_figure2``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False,
                             sharey=sharey)
    for ax, (title, steps, values) in zip(axes[0], panels, strict=True):
        draw_figure2(ax, steps, values, kind, feature, title)
    save(fig, path)


# the first layer's curves (adamgap.first_layer): summary key, legend label, colour
FIRST_LAYER_CURVES = (
    ("first_layer_feature_energy", r"feature energy $\|P_S w\|^2/\|w\|^2$", "tab:blue"),
    ("first_layer_noise_energy", r"noise energy $\|P_{S^\perp} w\|^2/\|w\|^2$", "tab:red"),
    ("first_layer_memorization", r"memorization $R(\mathrm{train})/R(\mathrm{test})-1$",
     "tab:purple"),
)


def plot_alignment(history: dict[str, Tensor], path: str | Path) -> None:
    """One run's alignment (``alignment.AlignmentCallback.history``), every replica, the mean
    with the band from the lowest to the highest replica when K > 1: Figure 2 (class +1) where
    the feature is planted, the first layer's alignment where it was measured."""
    steps = history["step"].numpy()
    panels = []
    if "feature_learning" in history:
        panels.append(("Figure 2", {key: history[key].tolist()  # (records, K)
                                    for key, _, _ in figure2_curves()}))
    if "first_layer_feature_energy" in history:
        panels.append(("first layer", {key: history[key].tolist()
                                       for key, _, _ in FIRST_LAYER_CURVES}))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (kind, values) in zip(axes[0], panels, strict=True):
        if kind == "Figure 2":
            draw_figure2(ax, steps, values, "range")
        else:
            draw_curves(ax, steps, values, FIRST_LAYER_CURVES, "range",
                        "first layer: alignment with the data")
    save(fig, path, dpi=120)


def draw_filters(ax, filters: Tensor, title: str = "") -> None:
    """A grid of first-layer filters on ``ax``: (F, C, h, w) pictures, each scaled on its own
    (one channel: gray, from -max|w| black to +max|w| white; three: RGB, min to max), or (F, D)
    vectors as the rows of one image."""
    f = filters.detach().float().cpu().numpy()
    if f.ndim == 2:  # no picture: filter r is row r
        scale = np.abs(f).max(axis=1, keepdims=True) + 1e-12
        ax.imshow(f / scale, cmap="gray", vmin=-1, vmax=1, aspect="auto",
                  interpolation="nearest")
        ax.set_xlabel("coordinate")
        ax.set_ylabel("filter")
    else:
        F, C, h, w = f.shape
        cols = int(np.ceil(np.sqrt(F * w / h)))
        rows = int(np.ceil(F / cols))
        gap = max(1, h // 8)
        canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 1.0)
        for i, k in enumerate(f):
            if C == 1:
                scale = np.abs(k).max() + 1e-12
                tile = np.repeat((k[0] / scale + 1) / 2, 3).reshape(h, w, 3)
            else:
                k = k[:3].transpose(1, 2, 0)
                tile = (k - k.min()) / (k.max() - k.min() + 1e-12)
            r, c = divmod(i, cols)
            canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_filters(panels: list[tuple[str, Tensor]], path: str | Path) -> None:
    """Filter grids side by side, one per (title, filters) (see ``draw_filters``): a run's
    filters at W(0) and at the end; Figure 1's two optimizers from one initialization."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, filters) in zip(axes[0], panels, strict=True):
        draw_filters(ax, filters, title)
    save(fig, path)
