"""The study of stochastic Adam (``experiments.stochastic_study``): its tables and figures.

    python scripts/stochastic.py report --root runs/stochastic --out docs/stochastic

writes ``OUT/*.png`` and the measured part of ``docs/stochastic.md`` (between its markers; the
prose around them is the page's own):

- test error against the batch size at lambda 1e-5 and 1e-2, Adam and AdamW (the closing note's
  numbers), and the lambda at which each stops fitting the training set, per batch size;
- phase diagrams batch size x lambda per optimizer: test error, train error;
- per-class feature learning ``max_r <w_{j,r}, j v>`` for j = +1 and j = -1 at the confs'
  lambda, with how many seeds ended with 0, 1 or 2 classes flipped (one flipped class: test
  error near 1/2), and noise memorization ``min_i / max_i max_r <w_{y_i,r}, xi_i>``;
- the Figure-2 pair: feature learning (both classes) and noise memorization over the epochs,
  full batch against batches of 2, per optimizer (mean over seeds, +-1 std band).

Numbers are mean +- the half-width of the 95% t-interval over seeds (``stats.mean_ci``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from adamgap import provenance
from adamgap.analysis.benchmark import write_into
from adamgap.analysis.report import heatmaps
from adamgap.cli import study
from adamgap.config import load_config
from adamgap.experiments.aggregate import run_provenance
from adamgap.experiments.cells import cell_dir
from adamgap.experiments.spec import config_of, load
from adamgap.experiments.stats import fmt
from adamgap.experiments.stochastic_study import (
    CONFS,
    FIGURE2_EVERY,
    KEY_LAMBDAS,
    LAMBDA_KEY,
    SEEDS,
    Point,
    batches_of,
    command,
    conf_lambda,
    fit_limits,
    lambdas_of,
    points,
    run,
    specs,
)
from adamgap.figures import band, pyplot, read_alignment, save

LABEL = {"adam": "Adam (L2 in the loss)", "adamw": "AdamW (decoupled)"}
PAGE = Path(__file__).resolve().parents[2] / "docs" / "stochastic.md"
ALIGN_KEYS = ("feature_learning", "feature_learning_neg", "noise_memorization")


def _cell(p: Point | None, key: str, digits: int = 3) -> str:
    return "-" if p is None or not p.rows else fmt(*p.stat(key), digits=digits)


def _batches(grids: dict[str, dict]) -> list[int]:
    return sorted({B for grid in grids.values() for B in batches_of(grid)})


def batch_table(grids: dict[str, dict]) -> list[str]:
    """Test (and train) error per batch size at ``KEY_LAMBDAS``."""
    head = [f"{LABEL[o].split(' ')[0]} lambda {lam:g}" for o in CONFS for lam in KEY_LAMBDAS]
    lines = ["| batch | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for B in _batches(grids):
        row = [f"{_cell(grids[o].get((B, lam)), 'test_error')} (train "
               f"{_cell(grids[o].get((B, lam)), 'train_error')})"
               for o in CONFS for lam in KEY_LAMBDAS]
        lines.append(f"| {B} | " + " | ".join(row) + " |")
    return lines


def limit_table(grids: dict[str, dict]) -> list[str]:
    """Per batch size, the largest lambda that fits the training set and the first that does
    not (every seed at training error 0 counts as fitting; ``stochastic_study.Limit``)."""
    limits = {o: fit_limits(g) for o, g in grids.items()}
    lines = ["| batch | " + " | ".join(f"{LABEL[o].split(' ')[0]}: fits up to | stops at"
                                      for o in CONFS) + " |", "|---|" + "---|---|" * len(CONFS)]
    for B in _batches(grids):
        cells = [" | ".join(limits[o][B].texts()) for o in CONFS if B in limits[o]]
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    return lines


def phase(grids: dict[str, dict], out: Path) -> list[str]:
    """Heatmaps (test error, train error) per optimizer, batch x lambda; and their tables."""
    lines = []
    for o, grid in grids.items():
        lams, batches = lambdas_of(grid), batches_of(grid)
        panels = [(f"{LABEL[o]}: {what.replace('_', ' ')}",
                   {(B, lam): p.stat(what)[0] for (B, lam), p in grid.items() if p.rows})
                  for what in ("test_error", "train_error")]
        heatmaps(panels, batches, lams, "data.batch_size", LAMBDA_KEY[o],
                 out / f"phase_{o}.png")
        lines += [f"### {LABEL[o]}", "", f"![phase {o}](stochastic/phase_{o}.png)", "",
                  f"Test error (rows {LAMBDA_KEY[o]}, columns batch size; train error in "
                  "brackets):", "",
                  "| lambda | " + " | ".join(str(B) for B in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for lam in lams:
            lines.append(f"| {lam:g} | " + " | ".join(
                f"{_cell(grid.get((B, lam)), 'test_error')} "
                f"({_cell(grid.get((B, lam)), 'train_error')})" for B in batches) + " |")
        lines.append("")
    return lines


def feature_table(grids: dict[str, dict]) -> list[str]:
    """Per-class feature learning, flipped classes and noise memorization, at the confs'
    lambda."""
    lines = ["| optimizer | batch | test error | feature learning j=+1 | feature learning j=-1 "
             "| seeds with 0 / 1 / 2 classes flipped | noise memorization min_i | max_i |",
             "|---|---|---|---|---|---|---|---|"]
    for o, grid in grids.items():
        lam = conf_lambda(o)
        for B in batches_of(grid):
            p = grid.get((B, lam))
            if p is None or not p.rows:
                continue
            flips = p.flipped()
            counts = " / ".join(str(flips.count(c)) for c in (0, 1, 2))
            lines.append(f"| {LABEL[o].split(' ')[0]} (lambda {lam:g}) | {B} | "
                         f"{_cell(p, 'test_error')} | {_cell(p, 'feature_learning')} | "
                         f"{_cell(p, 'feature_learning_neg')} | {counts} | "
                         f"{_cell(p, 'noise_memorization_all_min')} | "
                         f"{_cell(p, 'noise_memorization_all_max')} |")
    return lines


def _alignment(sweep: Path, match) -> tuple[np.ndarray, dict, int, int] | None:
    """(steps, values, batch size, n) of the first cell of ``sweep`` for which ``match(cell,
    cfg)`` holds and that has an ``alignment.csv``."""
    _, cells = load(sweep)
    for cell in cells:
        cfg = config_of(cell, sweep)
        path = cell_dir(sweep, cell) / "alignment.csv"
        if match(cell, cfg) and path.is_file():
            steps, values = read_alignment(path, ALIGN_KEYS)
            return steps, values, cfg.data.batch_size or cfg.data.n, cfg.data.n
    return None


def figure2_pair(root: Path, out: Path, grids: dict[str, dict]) -> list[str]:
    """Per optimizer: full batch (``figure2`` sweep) and the smallest batch (the grid's cell
    at the conf's lambda), feature learning of both classes and noise memorization, per
    epoch."""
    curves = (("feature_learning", r"feature $\max_r\langle w_{+1,r}, v\rangle$", "tab:blue"),
              ("feature_learning_neg", r"feature $\max_r\langle w_{-1,r}, -v\rangle$",
               "tab:cyan"),
              ("noise_memorization", r"noise $\mathrm{mean}_{y_i=+1}\max_r"
               r"\langle w_{+1,r},\xi_i\rangle$", "tab:red"))
    panels = []
    for o in CONFS:
        lam, smallest = conf_lambda(o), min(batches_of(grids[o]), default=None)
        large = _alignment(root / "figure2", lambda c, cfg, o=o: c.conf == CONFS[o]) \
            if (root / "figure2").is_dir() else None
        small = _alignment(root / o, lambda c, cfg, o=o, lam=lam, b=smallest:
                           cfg.data.batch_size == b and
                           math.isclose(c.values[LAMBDA_KEY[o]], lam))
        for data in (large, small):
            if data is not None:
                panels.append((f"{LABEL[o]}, batch {data[2]}, lambda {lam:g}", data))
    if not panels:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, (steps, values, B, n)) in zip(axes[0], panels, strict=True):
        epochs = steps * B / n  # a step is B / n of an epoch
        for key, label, color in curves:
            mean, low, high = band(values[key], "std")
            ax.plot(epochs, mean, color=color, label=label)
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, lw=0)
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=6)
    save(fig, out / "figure2.png")
    return ["![Figure 2 pair](stochastic/figure2.png)"]


def build(root: str | Path, out: str | Path, page: Path = PAGE) -> Path:
    """Figures into ``out``, the measured tables into ``page`` between its markers."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grids = {o: points(root, o) for o in CONFS}
    runs = sorted({line for name in (*CONFS, "figure2") if (root / name).is_dir()
                   for line in run_provenance(root / name)})
    lines = [f"From `python scripts/stochastic.py report --root {root} --out {out}`; the runs:",
             "", *(f"    {command(spec)}" for spec in specs(root).values()), "",
             *(f"Runs: {line}." for line in runs), "",
             f"Report: {provenance.line(provenance.collect())}.", "",
             "### Test error per batch size (train error in brackets), lambda "
             + " and ".join(f"{lam:g}" for lam in KEY_LAMBDAS),
             "", *batch_table(grids), "",
             "### Where the training set stops being fitted", "",
             "Largest lambda of the grid up to which every seed ends at training error 0, and "
             "the first lambda at which one does not:", "", *limit_table(grids), "",
             "### Per-class feature learning and noise memorization (the confs' lambda)", "",
             *feature_table(grids), "",
             "### Figure 2: full batch against batches of 2", "",
             f"Mean over {SEEDS} seeds, +-1 std band; alignment recorded every "
             f"{FIGURE2_EVERY} steps with full batches, every "
             f"{load_config(CONFS['adam']).align.every} steps with the smallest batch.", "",
             *figure2_pair(root, out, grids), "",
             "### Phase diagrams: batch size x lambda", "", *phase(grids, out)]
    write_into(page, "\n".join(lines) + "\n", "scripts/stochastic.py report")
    return page


def main(argv: list[str]) -> int:
    """``scripts/stochastic.py run|report``."""
    p = argparse.ArgumentParser(prog="scripts/stochastic.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="create or resume the study's sweeps and run them")
    r.add_argument("--root", default="runs/stochastic")
    r.add_argument("--jobs", type=int, default=2, help="cells at once")
    r.add_argument("--only", nargs="+", choices=[*CONFS, "figure2"], default=None)
    rep = sub.add_parser("report", help="figures and the measured part of docs/stochastic.md")
    rep.add_argument("--root", default="runs/stochastic")
    rep.add_argument("--out", default=str(PAGE.parent / "stochastic"))
    args = p.parse_args(argv)

    def body() -> int:
        if args.what == "run":
            states = run(args.root, args.jobs, args.only)
            failed = {name: [i for i, s in st.items() if s == "failed"]
                      for name, st in states.items()}
            print(f"[stochastic] done; failed cells: {failed}")
            return 1 if any(failed.values()) else 0
        print(f"wrote {build(args.root, args.out)}")
        return 0
    return study(body, " ".join(["python scripts/stochastic.py", *argv]))
