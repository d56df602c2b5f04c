"""The mechanism study (``adamgap/experiments/mechanism.py``, ``analysis/mechanism_report.py``):
the tuned-lr rule on a hand-made table, the fresh-seed evaluations it makes, the final objective
it reads, and the report's crossing iteration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TINY

from adamgap import objective
from adamgap.analysis.mechanism_report import crossing
from adamgap.config import load_run_config
from adamgap.experiments import mechanism
from adamgap.experiments.mechanism import Study, final_objectives, tuned_lr
from adamgap.experiments.spec import load
from adamgap.summary import read
from adamgap.train import build_datamodule, build_module


def rows(*objectives: float, train_error: float = 0.0, status: str = "completed") -> list[dict]:
    return [{"status": status, "train_error": train_error, "objective": o} for o in objectives]


def test_the_lowest_objective_among_step_sizes_that_fit_wins():
    table = {1e-5: rows(0.60, 0.61, train_error=0.05),  # does not fit the training set
             3e-5: rows(0.05, 0.07),
             1e-4: rows(0.02, 0.03),  # the winner
             3e-4: rows(0.01, math.nan, status="diverged")[:1] + rows(0.01, status="diverged"),
             1e-3: rows(0.04, 0.04)}
    lr, why = tuned_lr(table)
    assert lr == 1e-4
    assert why == "lowest final objective of 3 fitting step sizes"


def test_one_seed_that_does_not_fit_or_diverges_rules_a_step_size_out():
    table = {1e-4: rows(0.02) + rows(0.01, train_error=0.005), 3e-4: rows(0.03, 0.03),
             1e-3: rows(0.001) + rows(0.001, status="diverged")}
    assert tuned_lr(table) == (3e-4, "lowest final objective of 1 fitting step sizes")


def test_ties_go_to_the_smaller_step_size_and_the_edge_is_said():
    lr, why = tuned_lr({1e-5: rows(0.1), 1e-4: rows(0.1), 1e-3: rows(0.2)})
    assert lr == 1e-5 and why.endswith("(the grid's edge)")


def test_no_step_size_that_fits_gives_none():
    assert tuned_lr({1e-4: rows(0.3, train_error=0.2), 1e-3: rows(0.1, status="failed")}) == (
        None, "no step size fits the training set")


def test_evaluations_run_fresh_seeds_one_sweep_per_tuned_step_size():
    betas = next(s for s in mechanism.studies() if s.name == "betas")
    choices = {"[0.9, 0.999]": (1e-4, ""), "[0.0, 0.0]": (1e-4, ""), "[0.9, 0.9]": (3e-4, ""),
               "[0.5, 0.5]": (None, "no step size fits the training set")}
    out = mechanism.evaluation_studies(betas, choices)
    assert [s.name.rpartition("_")[0] for s in out] == ["betas_tuned_lr0.0001",
                                                         "betas_tuned_lr0.0003"]
    again = mechanism.evaluation_studies(betas, choices | {"[0.5, 0.5]": (3e-4, "")})
    assert again[0].name == out[0].name and again[1].name != out[1].name  # a new point set
    assert out[0].grid == {"optim.betas": [[0.9, 0.999], [0.0, 0.0]]}
    assert out[1].grid == {"optim.betas": [[0.9, 0.9]]}
    for s in out:
        assert f"seed={mechanism.EVAL_SEED}" in s.overrides and s.seeds == mechanism.SEEDS
    assert "optim.lr=0.0003" in out[1].overrides


@pytest.mark.slow
def test_a_tiny_tuning_sweep_reads_the_final_objective_and_tunes(tmp_path):
    study = Study("tiny", "synthetic_adam", {"optim.lr": [3e-4, 1e-3]}, seeds=2,
                  overrides=(*TINY, "trainer.max_steps=100", "trainer.eval_every=100"))
    sweep = mechanism.run_study(study, tmp_path, jobs=1)
    _, cells = load(sweep)
    fitting = {}  # lr -> mean objective, where every seed completed with train error 0
    for cell in cells:
        run = sweep / "cells" / cell.id
        cfg = load_run_config(run)
        dm = build_datamodule(cfg)
        dm.setup("fit")
        module = build_module(cfg, dm)
        module.net.load_state_dict(torch.load(run / "weights.pt"))
        with torch.no_grad():  # L(W(T)) per replica, from scratch
            want, _ = objective.objective(module.net, dm.x_train, dm.y_train, module.lam,
                                          module.params)
        assert final_objectives(sweep, cell) == pytest.approx(want.tolist(), rel=1e-5)
        replicas = read(run)["replicas"]
        if all(r["status"] == "completed" and r["train_error"] == 0 for r in replicas):
            fitting[cfg.optim.lr] = float(want.mean())
    (point, (lr, _)), = mechanism.tuned_choices([sweep], "conf").items()
    assert point == "synthetic_adam"
    assert lr == (min(fitting, key=fitting.get) if fitting else None)


def test_crossing_interpolates_the_first_sign_change():
    steps = np.array([0, 10, 20, 30, 40])
    assert crossing(steps, np.array([0.3, 0.2, 0.1, -0.3, 0.2])) == pytest.approx(22.5)
    assert crossing(steps, np.array([0.3, 0.2, 0.1, 0.1, 0.2])) is None
    assert crossing(steps, np.array([-0.1, 0.2, 0.1, -0.1, 0.2])) is None  # starts below 0
