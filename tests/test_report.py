"""The report builds from tiny sweeps: each section appears for the sweep that feeds it, its
numbers are the sweep's, and its pictures are real PNGs."""

from __future__ import annotations

import csv

import pytest
from helpers import TINY

from adamgap.analysis import report
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import create, parse_args
from adamgap.experiments.stats import fmt

FAST = [*TINY, "trainer.max_steps=30", "trainer.eval_every=30", "align.every=10",
        "trainer.log_every=10"]


def make_sweep(path, *args: str):
    sweep_dir = create(parse_args([*args, *FAST, "sweep.seeds=2", f"sweep.dir={path}"]))
    run_sweep(sweep_dir, progress=lambda line: None)
    return sweep_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    import adamgap.train

    root = tmp_path_factory.mktemp("sweeps")
    real = adamgap.train.run

    def lost_node(cfg):  # the batch-40 cell fails, as a crashed node would
        if cfg.data.batch_size == 40:
            raise RuntimeError("node lost")
        return real(cfg)

    out = {
        "optimizers": make_sweep(root / "optimizers",
                                 "sweep.grid.conf=[synthetic_adam,synthetic_gd]"),
        "phase": make_sweep(root / "phase", "sweep.grid.conf=[synthetic_adam,synthetic_gd]",
                            "sweep.grid.data.alpha=[0.1,0.3]", "sweep.grid.data.s=[10]"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adamgap.train, "run", lost_node)
        out["batch"] = make_sweep(root / "batch", "conf=synthetic_adam",
                                  "sweep.grid.data.batch_size=[10,40]")
    return out


@pytest.mark.slow
def test_report_has_a_section_per_sweep_with_the_sweeps_numbers(sweeps, tmp_path):
    path = report.build(list(sweeps.values()), tmp_path / "report")
    text = path.read_text()
    for title in ("## Table 1", "## Figure 2", "## Optimizer league",
                  "## Phase diagram over (data.alpha, data.s)", "## Test error over",
                  "## Failures, divergences and cells not run"):
        assert title in text, title
    with open(sweeps["optimizers"] / "aggregate.csv") as f:
        agg = {row["conf"]: row for row in csv.DictReader(f)}
    adam = agg["synthetic_adam"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| Adam | 0.0001 | 2 |"))
    assert fmt(float(adam["test_error_mean"]), float(adam["test_error_ci95"])) in line
    assert line.endswith("| 0 | 0.884 |")  # the paper's numbers beside
    gap = float(next(ln for ln in text.splitlines() if ln.startswith("| 10 | ")).split("|")[2])
    with open(sweeps["phase"] / "aggregate.csv") as f:
        rows = list(csv.DictReader(f))
    mean = {(r["conf"], r["data.alpha"]): float(r["test_error_mean"]) for r in rows}
    assert gap == pytest.approx(mean[("synthetic_adam", "0.1")] - mean[("synthetic_gd", "0.1")],
                                abs=1e-3)
    assert "| failed | 2 | RuntimeError: node lost |" in text  # failed cell, its error line
    for png in ("table1.png", "figure2.png", "league.png", "phase_0.png", "curve_0.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_side_of_the_gap_and_optimizer_labels():
    from adamgap.config import load_config

    assert report.side(0.88).startswith("Adam's") and report.side(0.02).startswith("GD's")
    assert report.side(0.3) == "in between"
    labels = {name: report.optimizer_label(load_config(name)) for name in (
        "synthetic_adam", "synthetic_gd", "synthetic_sgd", "synthetic_sgd_momentum",
        "synthetic_lion", "synthetic_rmsprop")}
    assert labels == {"synthetic_adam": "Adam", "synthetic_gd": "GD",
                      "synthetic_sgd": "SGD (batch 20)",
                      "synthetic_sgd_momentum": "SGD+momentum 0.9 (batch 20)",
                      "synthetic_lion": "Lion", "synthetic_rmsprop": "RMSprop"}
