"""The gap report: Table 1, Figure 2, phase diagrams and an optimizer league, from sweeps.

    python scripts/report.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]

Each section appears when the sweeps hold what it needs:

- a sweep whose grid varies only ``conf`` (optimizers, each with its own learning rate) gives
  **Table 1** (Adam, AdamW, SGD, GD, signGD beside the paper's numbers), **Figure 2** (feature
  learning and noise memorization of Adam and GD, mean over seeds with a +-1 std band) and the
  **optimizer league** (every optimizer, and the side of the gap it lands on);
- a sweep with two other grid keys gives a **phase diagram** per optimizer (test error) and,
  where Adam and GD share the axes (in one sweep or two), of the **gap** test error Adam - GD;
  a learning-rate axis is relative to each optimizer's own rate (``lr x``), so Adam's 1e-4 and
  GD's 0.1 line up;
- a sweep with one other grid key gives a **curve** per optimizer (e.g. over the batch size);
- a standard-gap directory (``scripts/standard_gap.py``, it holds ``protocol.json``) gives the
  **real CNNs** section (``adamgap.analysis.realcnn_report``): the standard-gap table, SGD's win
  rate, Figure 1's filters and the first layer's alignment curves.

Numbers are mean +- the half-width of the 95% t-interval over seeds (``stats.mean_ci``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from adamgap import optimizers, provenance
from adamgap.analysis import realcnn_report
from adamgap.config import load_config
from adamgap.errors import ConfigError
from adamgap.experiments.aggregate import results
from adamgap.experiments.cells import FINISHED, cell_dir
from adamgap.experiments.spec import SweepSpec, config_of, load, render
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.figures import plot_figure2, pyplot, read_alignment, save
from adamgap.outputs import write_text
from adamgap.summary import is_number, read

PAPER = {"Adam": (0.0, 0.884), "GD": (0.0, 0.0)}  # Table 1: (train error, test error)
TABLE1 = ("Adam", "AdamW", "SGD", "GD", "signGD")
ADAM_SIDE, GD_SIDE = 0.5, 0.1  # test error at least / at most: the side of the gap
# settings that make a run "the paper's" (Section 6) when they equal the schema defaults
PAPER_KEYS = ("data.d", "data.n", "data.n_test", "data.s", "data.sigma_p", "data.alpha",
              "model.m", "model.q", "model.sigma_0", "trainer.max_steps")


@dataclass
class Group:
    """One grid point of one sweep: a conf at some grid values, over its seeds."""

    sweep: Path
    conf: str
    values: dict  # grid key -> value, ``conf`` excluded
    cfg: DictConfig
    base_lr: float  # the conf's own learning rate (before any grid value)
    cells: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return optimizer_label(self.cfg)

    @property
    def kind(self) -> str:
        """The label without its batch size: what Table 1 and the paper call it."""
        return self.label.split(" (")[0]

    def stat(self, metric: str) -> tuple[float, float]:
        """(mean, 95% CI half-width) of ``metric`` over the finished seeds."""
        vals = [float(r[metric]) for r in self.rows
                if r["status"] in FINISHED and is_number(r.get(metric))]
        mean, _, ci = mean_ci(vals)
        return mean, ci

    @property
    def seeds(self) -> int:
        return sum(r["status"] in FINISHED for r in self.rows)

    def axis(self, key: str) -> float:
        """The group's coordinate on ``key`` (a learning rate relative to the conf's own)."""
        value = self.values[key]
        # 6 significant digits: 0.03 / 0.1 and 3e-5 / 1e-4 must meet at the same 0.3
        return float(f"{value / self.base_lr:.6g}") if key == "optim.lr" else value


def optimizer_label(cfg: DictConfig) -> str:
    o = cfg.optim
    if o.name == "sgd":
        batch = cfg.data.batch_size
        size = "" if batch in (None, cfg.data.n) else f" (batch {batch})"
        return (f"SGD+momentum {o.momentum:g}" if o.momentum > 0 else "SGD") + size
    return optimizers.label(o.name)


def side(test_error: float) -> str:
    if math.isnan(test_error):
        return "-"
    if test_error >= ADAM_SIDE:
        return "Adam's (memorizes noise)"
    return "GD's (learns the feature)" if test_error <= GD_SIDE else "in between"


def load_groups(sweep_dir: Path) -> tuple[SweepSpec, list[Group]]:
    spec, cells = load(sweep_dir)
    rows = results(sweep_dir)
    groups: dict[tuple, Group] = {}
    for cell in cells:
        values = {k: v for k, v in cell.values.items() if k != "conf"}
        key = (cell.conf, *map(render, values.values()))
        if key not in groups:
            base = load_config(cell.conf, spec.overrides)
            groups[key] = Group(sweep_dir, cell.conf, values, config_of(cell, sweep_dir),
                                float(base.optim.lr))
        groups[key].cells.append(cell)
        groups[key].rows += [r for r in rows if r["cell"] == cell.id]
    return spec, list(groups.values())


# -- figures ---------------------------------------------------------------------------------------
def figure2(groups: list[Group], path: Path) -> None:
    """Figure 2 of Adam and GD side by side: per step the mean over seeds, a +-1 std band."""
    panels = []
    for panel, g in zip("ab", groups, strict=False):
        steps, values = [], {}
        for cell in g.cells:  # every cell's seeds, in cell order
            path_csv = cell_dir(g.sweep, cell) / "alignment.csv"
            if path_csv.is_file():
                steps, cell_values = read_alignment(path_csv)
                for k, per_step in cell_values.items():
                    values[k] = [a + b for a, b in zip(values[k], per_step, strict=True)] \
                        if k in values else per_step
        panels.append((f"({panel}) {g.label}, lr {g.cfg.optim.lr:g}: mean ± std of {g.seeds} "
                       "seeds", steps, values))
    plot_figure2(panels, path, "std")


def bars(groups: list[Group], path: Path, title: str, paper: bool = False) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(groups) + 1.2))
    y = range(len(groups))
    stats = [g.stat("test_error") for g in groups]
    colors = ["tab:red" if m >= ADAM_SIDE else "tab:green" if m <= GD_SIDE else "tab:orange"
              for m, _ in stats]
    ax.barh(list(y), [m for m, _ in stats], xerr=[0 if math.isnan(c) else c for _, c in stats],
            color=colors, alpha=0.8, capsize=3)
    for i, (m, c) in enumerate(stats):  # the number, so that a zero bar is still read
        if not math.isnan(m):
            end = m + (0 if math.isnan(c) else c)
            inside = end > 0.85  # no room to the right: write it inside the bar
            ax.text(m - 0.12 if inside else end + 0.02, i, f"{m:.3f}", va="center", fontsize=7,
                    color="white" if inside else "black")
    if paper:
        marked = [(PAPER[g.kind][1], i) for i, g in enumerate(groups) if g.kind in PAPER]
        ax.plot([x for x, _ in marked], [i for _, i in marked], "k*", ms=10, ls="none",
                label="paper (Table 1)")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(list(y), [f"{g.label} (lr {g.cfg.optim.lr:g})" for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="gray", lw=0.6, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test error (mean, 95% CI)")
    ax.set_title(title, fontsize=9)
    save(fig, path)


def heatmaps(panels: list[tuple[str, dict]], xs: list, ys: list, xkey: str, ykey: str,
             path: Path) -> None:
    """One heatmap per (title, {(x, y): value}) on the grid xs x ys."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.4), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        grid = [[values.get((x, y), math.nan) for x in xs] for y in ys]
        gap = title.startswith("gap")
        im = ax.imshow(grid, origin="lower", cmap="RdBu_r" if gap else "viridis",
                       vmin=-1 if gap else 0, vmax=1, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if gap or v > 0.5 else "white")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set_xlabel(_axis_name(xkey))
        ax.set_ylabel(_axis_name(ykey))
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    save(fig, path)


def _axis_name(key: str) -> str:
    return "lr x (each optimizer's own rate)" if key == "optim.lr" else key


# -- sections --------------------------------------------------------------------------------------
def row_of(g: Group, *metrics: str) -> list[str]:
    return [fmt(*g.stat(m)) for m in metrics]


def settings_note(g: Group) -> str:
    default = load_config("default")
    off = [f"{k}={_get(g.cfg, k)}" for k in PAPER_KEYS if _get(g.cfg, k) != _get(default, k)]
    return "the paper's settings (Section 6)" if not off else "settings differ from the " \
        f"paper's: {', '.join(off)}"


def _get(cfg, key: str):
    return OmegaConf.select(cfg, key)


def optimizer_sections(groups: list[Group], out: Path) -> list[str]:
    lines = []
    table1 = [g for name in TABLE1 for g in groups if g.kind == name]
    if table1:
        bars(table1, out / "table1.png", "Table 1: test error, paper's values as stars",
             paper=True)
        lines += ["## Table 1: train and test error", "",
                  f"Runs at {settings_note(table1[0])}; mean ± 95% CI over seeds.", "",
                  "![Table 1](table1.png)", "",
                  "| optimizer | lr | seeds | train error | test error | paper train | "
                  "paper test |", "|---|---|---|---|---|---|---|"]
        for g in table1:
            p = PAPER.get(g.kind)
            lines.append(f"| {g.label} | {g.cfg.optim.lr:g} | {g.seeds} | "
                         + " | ".join(row_of(g, "train_error", "test_error"))
                         + (f" | {p[0]:g} | {p[1]:g} |" if p else " | - | - |"))
        lines.append("")
    fig2 = [g for name in ("Adam", "GD") for g in groups if g.kind == name][:2]
    if fig2:
        figure2(fig2, out / "figure2.png")
        lines += ["## Figure 2: feature learning and noise memorization", "",
                  "Class +1: feature learning max_r <w_{+1,r}, v> and noise memorization "
                  "mean_{i: y_i=+1} max_r <w_{+1,r}, xi_i> over the iterations; the line is the "
                  "mean over seeds, the band ± 1 std.", "", "![Figure 2](figure2.png)", ""]
    if len(groups) > 1:
        league = sorted(groups, key=lambda g: g.stat("test_error")[0])
        bars(league, out / "league.png", "Optimizer league: test error (red: Adam's side, "
             "green: GD's side)")
        lines += ["## Optimizer league", "",
                  f"Side of the gap: Adam's when the test error is >= {ADAM_SIDE} (no better "
                  f"than a random guess), GD's when it is <= {GD_SIDE}. Feature learning and "
                  "noise memorization at the last step; mean ± 95% CI over seeds.", "",
                  "![league](league.png)", "",
                  "| optimizer | lr | seeds | train error | test error | feature learning | "
                  "noise memorization | side |", "|---|---|---|---|---|---|---|---|"]
        for g in league:
            lines.append(f"| {g.label} | {g.cfg.optim.lr:g} | {g.seeds} | " + " | ".join(
                row_of(g, "train_error", "test_error", "feature_learning",
                       "noise_memorization")) + f" | {side(g.stat('test_error')[0])} |")
        lines.append("")
    return lines


def curve_section(key: str, groups: list[Group], out: Path, n: int) -> list[str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    lines = [f"## Test error over {key}", "", f"![{key}](curve_{n}.png)", "",
             f"| optimizer | {key} | seeds | train error | test error |", "|---|---|---|---|---|"]
    by_label: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_label[g.label].append(g)
    for label, gs in by_label.items():
        gs.sort(key=lambda g: g.axis(key))
        stats = [g.stat("test_error") for g in gs]
        ax.errorbar([g.axis(key) for g in gs], [m for m, _ in stats],
                    yerr=[0 if math.isnan(c) else c for _, c in stats], marker="o", capsize=3,
                    label=f"{label} (lr {gs[0].cfg.optim.lr:g})")
        for g in gs:
            lines.append(f"| {label} | {g.values[key]} | {g.seeds} | "
                         + " | ".join(row_of(g, "train_error", "test_error")) + " |")
    if key in ("data.batch_size", "data.n", "optim.lr", "optim.lam", "data.d"):
        ax.set_xscale("log")
    ax.set_xlabel(_axis_name(key))
    ax.set_ylabel("test error (mean, 95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="gray", lw=0.6, ls="--")
    ax.legend(fontsize=7)
    save(fig, out / f"curve_{n}.png")
    return lines + [""]


def phase_sections(surfaces: dict, out: Path) -> list[str]:
    """``surfaces``: (xkey, ykey) -> optimizer label -> {(x, y): Group}."""
    lines = []
    for n, ((xkey, ykey), by_label) in enumerate(surfaces.items()):
        xs = sorted({p[0] for pts in by_label.values() for p in pts})
        ys = sorted({p[1] for pts in by_label.values() for p in pts})
        mean = {lab: {p: g.stat("test_error")[0] for p, g in pts.items() if g.seeds}
                for lab, pts in by_label.items()}  # points with no finished seed stay blank
        panels = []
        if "Adam" in mean and "GD" in mean:  # labels: the grid keeps the batch full
            common = mean["Adam"].keys() & mean["GD"].keys()
            gap = {p: mean["Adam"][p] - mean["GD"][p] for p in common}
            panels.append(("gap: test error Adam - GD", gap))
        panels += [(f"{lab}: test error", m) for lab, m in mean.items()]
        name = f"phase_{n}.png"
        heatmaps(panels, xs, ys, xkey, ykey, out / name)
        lines += [f"## Phase diagram over ({_axis_name(xkey)}, {_axis_name(ykey)})", "",
                  f"![phase]({name})", ""]
        for title, values in panels:
            lines += [f"{title} (rows {ykey}, columns {_axis_name(xkey)}):", "",
                      "| " + ykey + " | " + " | ".join(f"{x:g}" for x in xs) + " |",
                      "|---|" + "---|" * len(xs)]
            lines += [f"| {y:g} | " + " | ".join(f"{values[(x, y)]:.3f}" if (x, y) in values
                                                 else "-" for x in xs) + " |" for y in ys]
            lines.append("")
        seeds = sorted({g.seeds for pts in by_label.values() for g in pts.values() if g.seeds})
        lines += [f"Seeds per point: {', '.join(map(str, seeds))} (a blank point has none "
                  "finished: see the cells not run below).", ""]
    return lines


def failures(all_groups: list[Group]) -> list[str]:
    """Cells that did not complete: failed (with the error line), diverged, or not run yet."""
    bad = []
    for g in all_groups:
        for cell in g.cells:
            rows = [r for r in g.rows if r["cell"] == cell.id]
            status = sorted({r["status"] for r in rows} - {"completed"})
            if status:
                error = next((r["error"] for r in rows if r.get("error")), "")
                bad.append(f"| {g.sweep.name} | {cell.id} | {', '.join(status)} | "
                           f"{len(rows)} | {str(error).replace('|', '/')} |")
    if not bad:
        return []
    return ["## Failures, divergences and cells not run", "",
            "| sweep | cell | status | seeds | error |", "|---|---|---|---|---|", *bad, ""]


def build(sweep_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``out/report.md`` and its PNGs from ``sweep_dirs``; return the report's path."""
    out = Path(out)
    here = provenance.collect()  # before this report writes into the tree
    out.mkdir(parents=True, exist_ok=True)
    protocols = [d for d in sweep_dirs if (Path(d) / "protocol.json").is_file()]
    sweep_dirs = [d for d in sweep_dirs if d not in protocols]
    realcnn = [realcnn_report.section(d, out) for d in protocols]
    if not sweep_dirs:  # only standard-gap directories: the real CNNs section alone
        text = "\n".join(["# Real CNNs on real images: report", "",
                          f"Report: {provenance.line(provenance.collect())}.", "", *realcnn])
        write_text(out / "report.md", text)
        return out / "report.md"
    head = ["# The Adam-GD generalization gap: report", "",
            "From `python scripts/report.py " + " ".join(map(str, sweep_dirs)) + "`.", "",
            "| sweep | conf | grid | seeds | cells | overrides |", "|---|---|---|---|---|---|"]
    body, all_groups, league = [], [], []
    surfaces: dict = defaultdict(lambda: defaultdict(dict))
    n_curves = 0
    for d in sweep_dirs:
        spec, groups = load_groups(Path(d))
        all_groups += groups
        keys = [k for k in spec.grid if k != "conf"]
        grid = "; ".join(f"{k}={v}" for k, v in spec.grid.items()) or "-"
        head.append(f"| {Path(d).name} | {spec.conf} | {grid} | {spec.seeds} | "
                    f"{sum(len(g.cells) for g in groups)} | {' '.join(spec.overrides) or '-'} |")
        if not keys:
            league += groups
        elif len(keys) == 1:
            body += curve_section(keys[0], groups, out, n_curves)
            n_curves += 1
        elif len(keys) == 2:
            axes = tuple(sorted(keys, key=lambda k: k == "optim.lam"))  # lam on the y axis
            for g in groups:
                surfaces[axes][g.label][(g.axis(axes[0]), g.axis(axes[1]))] = g
    body = optimizer_sections(league, out) + phase_sections(surfaces, out) + body
    runs = provenance.lines_of([summary for g in all_groups for c in g.cells
                                if (summary := read(cell_dir(g.sweep, c))) is not None])
    head[4:4] = [*(f"Runs: {line}." for line in runs), "",
                 f"Report: {provenance.line(here)}.", ""]
    text = "\n".join(head + [""] + body + failures(all_groups) + realcnn)
    write_text(out / "report.md", text)
    return out / "report.md"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="report.py", description="Build report.md and PNGs from "
                                "sweep directories (adamgap/analysis/report.py).")
    p.add_argument("sweeps", nargs="+", help="sweep directories (scripts/sweep.py) or "
                   "standard-gap directories (scripts/standard_gap.py)")
    p.add_argument("--out", help="output directory (default: the first sweep directory)")
    args = p.parse_args(argv)
    try:
        path = build(args.sweeps, args.out or args.sweeps[0])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
