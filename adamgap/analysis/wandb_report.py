"""A W&B report for one sweep group (``wandb-workspaces``): the gap table, Figure 2 per
optimizer, phase diagrams.

The report reads what the runs logged (``adamgap/runtime/wandb_run.py``): runs grouped by sweep, the
config (``optim.name``, ``data.alpha``, ...), summary metrics (``test_error``, ...), the
alignment curves ``align/feature_learning`` and ``align/noise_memorization`` against
``trainer/global_step``, and the Figure-2 image. Given the sweep directory it also carries the
exact numbers of the sweep's ``aggregate.csv`` (mean and 95% CI over seeds), the Adam - GD
test-error gap per grid point, and the phase diagrams over the sweep's own grid keys.

:func:`build_report` only builds the report object (no network); ``Report.save()`` uploads it.
"""

from __future__ import annotations

import csv
import math
from itertools import combinations
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from adamgap.experiments.spec import config_of, load
from adamgap.runtime.wandb_run import FIGURE_KEY

CURVES = ("align/feature_learning", "align/noise_memorization")  # Figure 2, class +1
# phase diagrams without a sweep directory: over (alpha, s) and over (lambda, lr), as in the report
DEFAULT_PHASES = (("data.alpha", "data.s"), ("optim.lam", "optim.lr"))
BY_OPTIMIZER = "config.optim.name"


def runset(entity: str, project: str, group: str, optimizer: str | None = None) -> wr.Runset:
    """The group's runs (one optimizer's when given), grouped by optimizer."""
    filters = [expr.Metric("Group") == group]
    if optimizer is not None:
        filters.append(expr.Config("optim.name") == optimizer)
    return wr.Runset(entity=entity, project=project, name=optimizer or group, filters=filters,
                     groupby=[BY_OPTIMIZER])


def sweep_facts(sweep_dir: str | Path) -> tuple[list[str], dict[str, list], list[dict]]:
    """From a sweep directory: its optimizers (grid order), its grid other than ``conf`` and
    the rows of its ``aggregate.csv`` (none before aggregation), each with ``optim``."""
    sweep_dir = Path(sweep_dir)
    spec, cells = load(sweep_dir)
    optim_of = {c.conf: config_of(c, sweep_dir).optim.name for c in cells}
    rows = []
    if (sweep_dir / "aggregate.csv").is_file():
        with open(sweep_dir / "aggregate.csv", newline="") as f:
            rows = [row | {"optim": optim_of.get(row["conf"], "?")} for row in csv.DictReader(f)]
    grid = {k: v for k, v in spec.grid.items() if k != "conf"}
    return list(dict.fromkeys(optim_of.values())), grid, rows


def phase_axes(grid: dict[str, list]) -> list[tuple[str, ...]]:
    """Axes of the phase diagrams: every pair of the numeric grid keys with several values, or
    the one such key alone (test error over it); none when the grid varies no number."""
    numeric = [k for k, values in grid.items() if len(values) > 1
               and all(isinstance(v, (int, float)) for v in values)]
    if len(numeric) >= 2:
        return list(combinations(numeric, 2))
    return [tuple(numeric)] if numeric else []


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def gap_table(rows: list[dict], point_keys: list[str]) -> str:
    """Markdown: per grid point and optimizer, train/test error mean ± 95% CI over seeds, and
    the test-error gap Adam - GD where the point has both."""
    def cell(row: dict, metric: str) -> str:
        mean, ci = _number(row.get(f"{metric}_mean")), _number(row.get(f"{metric}_ci95"))
        if math.isnan(mean):
            return "-"
        return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"

    head = ["optimizer", "conf", *point_keys, "seeds", "train error", "test error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gaps = []
    points: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        point = tuple(row.get(k, "") for k in point_keys)
        points.setdefault(point, {})[row["optim"]] = row
        lines.append("| " + " | ".join([row["optim"], row["conf"], *point, row["n_seeds"],
                                        cell(row, "train_error"), cell(row, "test_error")]) + " |")
    for point, by_optim in points.items():
        if "adam" in by_optim and "gd" in by_optim:
            gap = (_number(by_optim["adam"].get("test_error_mean"))
                   - _number(by_optim["gd"].get("test_error_mean")))
            where = ", ".join(f"{k}={v}" for k, v in zip(point_keys, point, strict=True)) or "all"
            gaps.append(f"- {where}: test error Adam - GD = **{gap:.3f}**")
    return "\n".join(lines + ([""] + gaps if gaps else [])) + "\n"


def phase_panel(label: str, axes: tuple[str, ...]) -> wr.ScatterPlot:
    """Test error over two grid keys (colour), or over one (height)."""
    test_error = wr.SummaryMetric("test_error")
    if len(axes) == 2:
        return wr.ScatterPlot(title=f"{label}: test error over {axes[0]} and {axes[1]}",
                              x=wr.Config(axes[0]), y=wr.Config(axes[1]), z=test_error)
    return wr.ScatterPlot(title=f"{label}: test error over {axes[0]}", x=wr.Config(axes[0]),
                          y=test_error)


def build_report(entity: str, project: str, group: str, sweep_dir: str | Path | None = None,
                 title: str | None = None) -> wr.Report:
    """The report object for ``group`` (nothing is sent anywhere)."""
    optimizers, grid, rows, phases = [], {}, [], list(DEFAULT_PHASES)
    if sweep_dir is not None:
        optimizers, grid, rows = sweep_facts(sweep_dir)
        phases = phase_axes(grid)
    everything = runset(entity, project, group)
    blocks: list = [
        wr.H1(title or f"adamgap: {group}"),
        wr.P("Zou, Cao, Li & Gu (ICLR 2023): on Definition 3.1 data, Adam and GD both reach "
             "zero training error, but Adam memorizes the noise patches and generalizes no "
             "better than a coin flip, while GD learns the feature. Runs of W&B group "
             f"'{group}', one line or bar per optimizer."),
        wr.H2("The gap: test error by optimizer"),
    ]
    if rows:
        blocks.append(wr.MarkdownBlock(gap_table(rows, list(grid))))
    blocks.append(wr.PanelGrid(runsets=[everything], panels=[
        wr.BarPlot(title="test error (mean, stderr over runs)", groupby=BY_OPTIMIZER,
                   metrics=[wr.SummaryMetric("test_error")], groupby_aggfunc="mean",
                   groupby_rangefunc="stderr"),
        wr.BarPlot(title="train error", groupby=BY_OPTIMIZER,
                   metrics=[wr.SummaryMetric("train_error")], groupby_aggfunc="mean",
                   groupby_rangefunc="stderr")]))
    blocks += [wr.H2("Figure 2: feature learning and noise memorization"),
               wr.PanelGrid(runsets=[everything], panels=[
                   *(wr.LinePlot(title=key, x="trainer/global_step", y=[key],
                                 groupby=BY_OPTIMIZER, groupby_aggfunc="mean",
                                 groupby_rangefunc="minmax") for key in CURVES),
                   wr.MediaBrowser(title="Figure 2 per run", media_keys=[FIGURE_KEY])])]
    blocks.append(wr.H2("Phase diagrams: test error over the grid"))
    if not phases:
        blocks.append(wr.P("This sweep varies no numeric setting: no phase diagram."))
    for optimizer in (optimizers or [None]) if phases else []:
        blocks.append(wr.PanelGrid(
            runsets=[runset(entity, project, group, optimizer)],
            panels=[phase_panel(optimizer or "all runs", axes) for axes in phases]))
    return wr.Report(project=project, entity=entity, title=title or f"adamgap: {group}",
                     description=f"Sweep group {group}: gap table, Figure 2, phase diagrams",
                     blocks=blocks, width="fluid")


def outline(report: wr.Report) -> str:
    """The report's headings and panels, one line each (what ``--dry-run`` prints)."""
    lines = [f"report '{report.title}' ({report.entity}/{report.project})"]
    for block in report.blocks:
        if isinstance(block, (wr.H1, wr.H2)):
            lines.append(f"{'#' * (1 + isinstance(block, wr.H2))} {block.text}")
        elif isinstance(block, wr.MarkdownBlock):
            lines.append("  table:\n    " + block.text.strip().replace("\n", "\n    "))
        elif isinstance(block, wr.PanelGrid):
            sets = ", ".join(f"{rs.name} [{rs.filters}]" for rs in block.runsets)
            lines += [f"  panel: {panel.title} (runs: {sets})" for panel in block.panels]
    return "\n".join(lines)
