"""The claims as checks (adamgap.theory), on hand-made trajectories that should pass and ones
that should fail."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adamgap.config import load_config, to_yaml
from adamgap.outputs import write_csv, write_json, write_text
from adamgap.theory import claims as theory

STEPS = np.arange(0, 10_001, 100)


def traj(name: str = "synthetic_adam", feature=None, noise=None, seed: int = 0,
         **summary) -> theory.Trajectory:
    """A trajectory at the paper's settings; the default curves are Figure 2(a) (Adam) or
    2(b) (GD) shaped, and ``summary`` entries override a passing summary."""
    cfg = load_config(name)
    t = STEPS.astype(float)
    if name == "synthetic_adam":
        # rises 1e-4 per step to 0.04 at step 200, falls through 0 at step 400, stays negative
        default_f = np.where(t <= 200, 0.02 + 1e-4 * t, 0.04 - 2e-4 * (t - 200))
        default_f = np.maximum(default_f, -0.2)
        default_n = 0.02 + 1.6 * (1 - np.exp(-t / 1500))  # linear rise, then saturates
        base = {"train_error": 0.0, "test_error": 0.9, "grad_l1": 0.01, "grad_l2": 1e-4}
    else:
        default_f = np.where(t < 800, 0.02, 2.0 + 2e-5 * t)
        default_n = np.full_like(t, 0.02)
        base = {"train_error": 0.0, "test_error": 0.0, "grad_l1": 3e-3, "grad_l2": 1e-4}
    return theory.Trajectory(
        seed=seed, cfg=cfg, summary={"status": "completed", "steps": 10_000, **base, **summary},
        step=STEPS, feature=default_f if feature is None else np.asarray(feature, float),
        noise=default_n if noise is None else np.asarray(noise, float))


def gd(**kw) -> theory.Trajectory:
    return traj("synthetic_gd", **kw)


def test_signgd_prediction():
    # s sigma_p sqrt(2/pi) - alpha at the paper's settings
    assert theory.signgd_rate_ratio(100, 0.1, 0.2) == pytest.approx(10 * 0.7978846 - 0.2)


def test_figure2_shaped_runs_pass_every_claim():
    comparison = convex_comparison()
    verdicts = theory.check_all([traj(), traj(seed=1)], [gd(), gd(seed=1)], comparison)
    assert len(verdicts) == 11 and len({v.claim for v in verdicts}) == 11
    failed = [v.claim for v in verdicts if not v.passed]
    assert failed == []
    for v in verdicts:
        row = v.as_dict()
        assert set(row) == {"claim", "reference", "predicted", "measured", "passed",
                            "explanation"}
        json.dumps(row)


def test_generalization_claims():
    assert theory.adam_generalization([traj()]).passed
    assert not theory.adam_generalization([traj(test_error=0.3)]).passed  # generalises
    assert not theory.adam_generalization([traj(train_error=0.02)]).passed  # misfits
    assert theory.gd_generalization([gd()]).passed
    v = theory.gd_generalization([gd(), gd(seed=1, test_error=0.2)])
    assert not v.passed and "seed 1" in v.explanation


def test_stage1_ratio_is_measured_over_the_rise():
    v = theory.noise_outpaces_feature([traj()])
    noise = traj().noise
    expected = (noise[2] - noise[0]) / (0.04 - 0.02)  # the feature peaks at step 200
    assert v.passed and v.values[0] == pytest.approx(expected)
    assert "7.78" in v.predicted and "steps 0-200" in v.measured


def test_stage1_fails_when_noise_is_slower_than_feature():
    slow_noise = 0.02 + 0.5e-4 * STEPS  # half the feature's rate
    v = theory.noise_outpaces_feature([traj(noise=slow_noise)])
    assert not v.passed and v.values[0] == pytest.approx(0.5)


def test_flip_iteration_is_interpolated():
    v = theory.feature_flips([traj()])
    assert v.passed and v.values[0] == pytest.approx(400.0)


def test_no_flip_fails():
    rising = 0.02 + 1e-5 * STEPS
    v = theory.feature_flips([traj(feature=rising)])
    assert not v.passed and v.values == [None] and "never" in v.measured
    assert not theory.pattern_maintained([traj(feature=rising)]).passed


def test_pattern_must_persist_after_the_flip():
    assert theory.pattern_maintained([traj()]).passed
    back = traj().feature.copy()
    back[-10:] = 0.01  # feature learning recovers at the end
    assert not theory.pattern_maintained([traj(feature=back)]).passed
    growing = 0.02 + 3e-4 * STEPS  # never saturates: tripled over the second half
    v = theory.pattern_maintained([traj(noise=growing)])
    assert not v.passed and v.values[0] > theory.NOISE_SATURATION_MAX
    collapsing = traj().noise.copy()
    collapsing[50:] = 0.01  # memorised noise forgotten
    assert not theory.pattern_maintained([traj(noise=collapsing)]).passed


def test_gd_feature_must_reach_and_keep_a_constant():
    assert theory.gd_feature_learned([gd()]).passed
    never = np.full(STEPS.size, 0.05)
    assert not theory.gd_feature_learned([gd(feature=never)]).passed
    lost = gd().feature.copy()
    lost[-5:] = 0.1
    assert not theory.gd_feature_learned([gd(feature=lost)]).passed


def test_gd_noise_that_explodes_fails():
    assert theory.gd_noise_bounded([gd()]).passed
    exploding = 0.02 * np.exp(STEPS / 2000)
    v = theory.gd_noise_bounded([gd(noise=exploding)])
    assert not v.passed and v.values[0] > 100


def test_gradient_claims_use_the_descent_scale():
    scale = math.log(2) / (1e-4 * 10_000)
    assert theory.descent_scale(traj()) == pytest.approx(scale)
    assert theory.adam_gradient_l1([traj(grad_l1=0.9 * scale)]).passed
    assert not theory.adam_gradient_l1([traj(grad_l1=1.1 * scale)]).passed
    gd_scale = 2 * math.log(2) / (0.1 * 10_000)
    assert theory.gd_gradient_l2([gd(grad_l2=math.sqrt(0.9 * gd_scale))]).passed
    assert not theory.gd_gradient_l2([gd(grad_l2=math.sqrt(1.1 * gd_scale))]).passed


def test_unfinished_or_missing_runs_fail():
    v = theory.adam_generalization([traj(status="diverged")])
    assert not v.passed and "diverged" in v.explanation
    assert not theory.feature_flips([]).passed
    assert not theory.convex_same_solution(None).passed


def convex_comparison(distance: float = 1e-3, agreement: float = 1.0,
                      adam_test: float = 0.0) -> dict:
    return {"seeds": [0], "lam": 0.01,
            "adam": {"distance": [distance], "train_error": [0.0], "test_error": [adam_test]},
            "gd": {"distance": [1e-5], "train_error": [0.0], "test_error": [0.0]},
            "adam_vs_gd": {"distance": [distance], "agreement": [agreement]}}


def test_convex_pair_that_disagrees_fails():
    assert theory.convex_same_solution(convex_comparison()).passed
    assert theory.convex_same_predictions(convex_comparison()).passed
    assert not theory.convex_same_solution(convex_comparison(distance=0.05)).passed
    assert not theory.convex_same_predictions(convex_comparison(agreement=0.9)).passed
    assert not theory.convex_same_predictions(convex_comparison(adam_test=0.05)).passed


def test_load_trajectories_splits_an_ensemble_by_seed(tmp_path):
    cfg = load_config("synthetic_adam", ["run.replicas=2"])
    write_text(tmp_path / "config.yaml", to_yaml(cfg))
    write_json(tmp_path / "summary.json", {"conf": "synthetic_adam", "status": "completed",
                                           "replicas": [{"seed": 0, "test_error": 0.9},
                                                        {"seed": 1, "test_error": 0.8}]})
    rows = [{"step": s, "seed": k, "feature_learning": s + k, "noise_memorization": -s}
            for s in (0, 100) for k in (0, 1)]
    write_csv(tmp_path / "alignment.csv", rows)
    t0, t1 = theory.load_trajectories(tmp_path)
    assert (t0.seed, t1.seed) == (0, 1) and t1.summary["test_error"] == 0.8
    assert t1.feature.tolist() == [1.0, 101.0] and t0.noise.tolist() == [0.0, -100.0]
    assert t0.step.tolist() == [0, 100]
