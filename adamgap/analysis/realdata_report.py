"""The report's real-data section: tables and figures built from finished runs and sweeps.

``section(runs, phase_sweep, figures)`` returns markdown and writes its PNGs:

- the planted task at its defaults: one run directory per optimizer (a K-seed ensemble,
  ``run.replicas``), train/test error and the alignment at the end (mean ± 95% CI over seeds),
  the density ratios ``||mu||_1/||mu||_2`` and ``||xi||_1/||xi||_2``, and the alignment curves
  (Figure 2's quantities; ``<figures>/fmnist_patch_alignment.png``);
- the phase diagram: a sweep (``scripts/sweep.py``) over ``conf`` (an Adam and a GD config),
  ``data.alpha``, ``data.feature_k`` and ``data.s``; per cell the Adam-minus-GD test-error gap,
  paired by seed (same data, same W(0)), with the alignment values that explain it
  (``<figures>/fmnist_phase.png``).

    python scripts/realdata_report.py     # writes docs/realdata_results.md and the figures
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from adamgap.experiments.cells import cell_dir
from adamgap.experiments.spec import load
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.figures import plot_figure2, pyplot, read_alignment, save
from adamgap.summary import read, replicas_of

COLUMNS = (("train_error", "train error", 3), ("test_error", "test error", 3),
           ("feature_learning", "feature learning", 2),
           ("noise_memorization", "noise memorization", 2), ("mu_l1_l2", "‖μ‖₁/‖μ‖₂", 1),
           ("xi_l1_l2", "‖ξ‖₁/‖ξ‖₂", 1), ("mu_cosine", "cos(μ₊, μ₋)", 2))


FEATURE = r"\mu_{+1}"  # Figure 2's feature direction here: the class-mean image of class +1


def sweep_groups(sweep_dir: Path) -> dict[str, list[dict]]:
    """The finished seeds of a sweep (its ``results.csv``), grouped by conf and grid values."""
    spec, _ = load(sweep_dir)
    keys = [k for k in spec.grid if k != "conf"]
    groups: dict[str, list[dict]] = {}
    with open(Path(sweep_dir) / "results.csv") as f:
        for r in csv.DictReader(f):
            if r["status"] == "completed":
                label = ", ".join([r["conf"], *(f"{k}={r[k]}" for k in keys)])
                groups.setdefault(label, []).append(r)
    return groups


def summary_table(groups: dict[str, list[dict]]) -> str:
    """One row per group of seeds: mean ± 95% CI of each column present."""
    head = ["run", "seeds", *(title for _, title, _ in COLUMNS), "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in groups.items():
        cells = [name, str(len(rows))]
        for key, _, digits in COLUMNS:
            values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
            mean, _, ci = mean_ci(values)
            cells.append(fmt(mean, ci, digits))
        cells.append(f"{float(rows[0]['wall_seconds']):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_alignment_curves(runs: dict[str, Path], path: Path) -> None:
    """Feature learning and noise memorization vs iteration, one panel per optimizer: the mean
    over seeds and the band from the lowest to the highest seed."""
    panels = []
    for name, run_dir in runs.items():
        steps, values = read_alignment(Path(run_dir) / "alignment.csv")
        seeds = len(values["feature_learning"][0])
        panels.append((f"{name} ({seeds} seeds)", steps, values))
    plot_figure2(panels, path, "range", FEATURE, sharey=True)


def phase_rows(results_csv: Path) -> list[dict]:
    """Per (alpha, feature_k, s): the paired Adam-minus-GD test-error gap and both sides'
    errors, alignment and density ratios (mean ± 95% CI over seeds)."""
    with open(results_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "completed"]
    by: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in rows:
        side = "adam" if "adam" in r["conf"] else "gd"
        point = (float(r["data.alpha"]), k_label(r["data.feature_k"]), int(r["data.s"]))
        by.setdefault(point, {}).setdefault(side, {})[int(r["seed"])] = r
    out = []
    for (alpha, k, s), sides in sorted(by.items(), key=lambda kv: (kv[0][0], _k(kv[0][1]),
                                                                  kv[0][2])):
        seeds = sorted(set(sides.get("adam", {})) & set(sides.get("gd", {})))
        if not seeds:
            continue
        row = {"alpha": alpha, "feature_k": k, "s": s, "seeds": len(seeds)}
        gap = [float(sides["adam"][i]["test_error"]) - float(sides["gd"][i]["test_error"])
               for i in seeds]
        row["gap"], _, row["gap_ci"] = mean_ci(gap)
        for side in ("adam", "gd"):
            for key in ("train_error", "test_error", "feature_learning", "noise_memorization",
                        "mu_l1_l2", "xi_l1_l2"):
                row[f"{side}_{key}"] = mean_ci([float(sides[side][i][key]) for i in seeds])[0]
        out.append(row)
    return out


def phase_cell_dirs(sweep_dir: Path, row: dict) -> dict[str, Path]:
    """The Adam and GD run directories of one phase-diagram point (``phase_rows`` row)."""
    _, cells = load(sweep_dir)
    out = {}
    for cell in cells:
        v = cell.values
        if (float(v["data.alpha"]) == row["alpha"] and k_label(v["data.feature_k"]) ==
                row["feature_k"] and int(v["data.s"]) == row["s"]):
            out["Adam" if "adam" in cell.conf else "GD"] = cell_dir(sweep_dir, cell)
    return dict(sorted(out.items()))


def k_label(k) -> str:
    """``data.feature_k`` as a label: the number, or ``all`` for null (from yaml or a CSV)."""
    return "all" if k in (None, "", "None", "null", "all") else str(int(float(k)))


def _k(k: str) -> float:
    return math.inf if k == "all" else float(k)


def phase_table(rows: list[dict]) -> str:
    head = ["alpha", "k", "s", "‖μ‖₁/‖μ‖₂", "‖ξ‖₁/‖ξ‖₂", "seeds", "Adam − GD test error",
            "Adam train / test", "GD train / test", "Adam FL / NM", "GD FL / NM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        k = r["feature_k"]
        lines.append("| " + " | ".join([
            f"{r['alpha']:g}", k, str(r["s"]), f"{r['adam_mu_l1_l2']:.1f}",
            f"{r['adam_xi_l1_l2']:.1f}", str(r["seeds"]), fmt(r["gap"], r["gap_ci"]),
            f"{r['adam_train_error']:.3f} / {r['adam_test_error']:.3f}",
            f"{r['gd_train_error']:.3f} / {r['gd_test_error']:.3f}",
            f"{r['adam_feature_learning']:.2f} / {r['adam_noise_memorization']:.2f}",
            f"{r['gd_feature_learning']:.2f} / {r['gd_noise_memorization']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def plot_phase(rows: list[dict], path: Path) -> None:
    """One heatmap per alpha: the gap over feature density (columns) and noise density (rows),
    each cell annotated with the gap and its 95% CI."""
    plt = pyplot()
    alphas = sorted({r["alpha"] for r in rows})
    ks = sorted({r["feature_k"] for r in rows}, key=_k)
    ss = sorted({r["s"] for r in rows})
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.4 * len(alphas) + 1, 3.8))
    for ax, alpha in zip(np.atleast_1d(axes), alphas, strict=True):
        grid = np.full((len(ss), len(ks)), np.nan)
        for r in rows:
            if r["alpha"] == alpha:
                i, j = ss.index(r["s"]), ks.index(r["feature_k"])
                grid[i, j] = r["gap"]
                ax.text(j, i, f"{r['gap']:+.2f}\n±{r['gap_ci']:.2f}", ha="center",
                        va="center", fontsize=7)
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-0.5, vmax=0.5, origin="lower")
        mu = {r["feature_k"]: r["adam_mu_l1_l2"] for r in rows}
        xi = {s: [r["adam_xi_l1_l2"] for r in rows if r["alpha"] == alpha and r["s"] == s]
              for s in ss}  # with feature noise it also depends on k: show the range
        xi = {s: f"{min(v):.1f}" if max(v) - min(v) < 0.05 else f"{min(v):.1f}-{max(v):.1f}"
              for s, v in xi.items()}
        ax.set_xticks(range(len(ks)), [f"k={k}\n{mu[k]:.1f}"
                                       for k in ks], fontsize=7)
        ax.set_yticks(range(len(ss)), [f"s={s}\n{xi[s]}" for s in ss], fontsize=7)
        ax.set_xlabel(r"feature: top-k DCT coefficients, $\|\mu\|_1/\|\mu\|_2$", fontsize=8)
        ax.set_ylabel(r"noise: s, $\|\xi\|_1/\|\xi\|_2$", fontsize=8)
        ax.set_title(f"alpha = {alpha:g}: Adam − GD test error", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8)
    save(fig, path, tight=True)


def section(runs: dict[str, Path], phase_sweep: Path | None, figures: Path,
            patch_sweeps: dict[str, list[Path]] | None = None) -> str:
    """The real-data section: the planted task's table and curves (``runs``: optimizer name
    -> run directory), the phase diagram of the sweep in ``phase_sweep``, and one table per
    entry of ``patch_sweeps`` (title -> sweep directories, e.g. the images-as-patches runs).
    Writes the PNGs under ``figures``; returns the markdown."""
    figures = Path(figures)
    groups = {name: replicas_of(read(run_dir)) for name, run_dir in runs.items()}
    parts = ["### Planted Fashion-MNIST at the family defaults\n", summary_table(groups), ""]
    plot_alignment_curves(runs, figures / "fmnist_patch_alignment.png")
    parts.append(f"![alignment curves]({figures.name}/fmnist_patch_alignment.png)\n")
    if phase_sweep is not None and (Path(phase_sweep) / "results.csv").is_file():
        rows = phase_rows(Path(phase_sweep) / "results.csv")
        plot_phase(rows, figures / "fmnist_phase.png")
        parts += ["### Phase diagram: feature density x noise density\n", phase_table(rows), "",
                  f"![phase diagram]({figures.name}/fmnist_phase.png)\n"]
        top = max(rows, key=lambda r: r["gap"])  # the cell with the largest mean gap
        name = "fmnist_phase_largest_gap_alignment.png"
        plot_alignment_curves(phase_cell_dirs(Path(phase_sweep), top), figures / name)
        parts += [f"Alignment in the cell with the largest mean gap (alpha = {top['alpha']:g}, "
                  f"k = {top['feature_k']}, s = {top['s']}):\n",
                  f"![largest-gap alignment]({figures.name}/{name})\n"]
    for title, sweeps in (patch_sweeps or {}).items():
        groups = {}
        for sweep_dir in sweeps:
            groups.update(sweep_groups(Path(sweep_dir)))
        parts += [f"### {title}\n", summary_table(groups), ""]
    return "\n".join(parts)
