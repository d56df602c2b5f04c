"""The standard-gap protocol (``adamgap/experiments/standard_gap.py``): the step size with the
lowest final training loss is chosen per optimizer and augmentation, diverged runs do not
count, the seeds then run at it, a rerun resumes, and the report builds its "real CNNs"
section (tables, win rates, Figure 1, alignment curves) from the directory."""

from __future__ import annotations

import json
import math

import pytest

from adamgap.analysis.report import build
from adamgap.config import load_config
from adamgap.errors import ConfigError
from adamgap.experiments.standard_gap import (
    PROTOCOLS,
    Extra,
    Protocol,
    check_overrides,
    choose,
    final_dir,
    run,
)
from adamgap.summary import read, replicas_of

TINY = ("data.n=48", "data.n_test=48", "data.batch_size=16", "model.width=4",
        "trainer.max_steps=12", "trainer.eval_every=12", "trainer.log_every=6", "align.every=6",
        "align.images=16", "trainer.progress_bar=false")
TINY_PATCH = ("data.n=20", "data.n_test=40")


def test_choose_takes_the_lowest_finite_training_loss():
    assert choose({0.1: 0.3, 0.03: 0.2, 0.01: 0.25}, "x") == 0.03
    assert choose({0.3: math.nan, 0.1: 0.5, 0.03: 0.6}, "x") == 0.1  # diverged: not counted
    assert choose({1e-3: 0.2, 1e-4: 0.2}, "x") == 1e-3  # a tie: the larger step size
    with pytest.raises(ConfigError, match="x: no tuning run finished"):
        choose({0.1: math.nan}, "x")


def test_the_protocol_sets_step_sizes_augmentation_seeds_and_run_dirs_itself():
    for arg in ("optim.lr=0.1", "data.augment=true", "seed=3", "run.dir=x"):
        with pytest.raises(ConfigError, match="the protocol sets"):
            check_overrides([arg])
    check_overrides(["data.n=100", "optim.lam=0.001", "trainer.accelerator=gpu"])


def test_named_protocols_tune_sgd_adam_and_adamw_under_the_same_weight_decay():
    for name, p in PROTOCOLS.items():
        assert len(p.grids) == 3 and p.baseline in p.grids and p.seeds >= 5, name
        cfgs = [load_config(c, list(p.overrides)) for c in p.grids]
        assert {c.optim.name for c in cfgs} == {"sgd", "adam", "adamw"}
        decay = {c.optim.name: c.optim.lam if c.optim.name != "adamw" else
                 c.optim.weight_decay for c in cfgs}
        assert len(set(decay.values())) == 1, (name, decay)
        assert all(c.optim.schedule in ("cosine", "step") for c in cfgs)


@pytest.mark.slow
def test_a_tiny_protocol_runs_resumes_and_reports(tmp_path, monkeypatch):
    protocol = Protocol({"fmnist_cnn_sgd": (0.1, 3.0e3), "fmnist_cnn_adam": (1e-3, 1e-4)},
                        seeds=2, overrides=TINY, baseline="fmnist_cnn_sgd",
                        extras=(Extra("planted", ("sweep.grid.conf=[fmnist_patch_adam,"
                                                  "fmnist_patch_gd]", "sweep.seeds=2",
                                                  "conf=fmnist_patch_adam", *TINY_PATCH)),))
    out = tmp_path / "protocol"
    record = run("tiny", protocol, out, jobs=1, progress=lambda line: None)
    saved = json.loads((out / "protocol.json").read_text())
    assert saved["chosen"] == record["chosen"]
    tuning = saved["tuning"]["fmnist_cnn_sgd"]
    assert math.isnan(tuning["false"]["3000.0"])  # SGD at lr 3000 diverges: not chosen
    assert record["chosen"]["fmnist_cnn_sgd"] == {"false": 0.1, "true": 0.1}
    for augment in ("false", "true"):
        losses = saved["tuning"]["fmnist_cnn_adam"][augment]
        best = min(losses, key=lambda lr: losses[lr])
        assert record["chosen"]["fmnist_cnn_adam"][augment] == float(best)
    for conf in protocol.grids:
        for augment in (False, True):
            sweep = final_dir(out, conf, augment)
            summaries = [read(d) for d in sorted((sweep / "cells").iterdir()) if d.is_dir()]
            assert [s["seed"] for s in summaries] == [0, 1]  # one run per seed
            for s in summaries:
                cfg = json.dumps(s)
                assert s["status"] == "completed" and "first_layer_memorization" in cfg
    # a rerun resumes: nothing left to train, the same choice
    again = run("tiny", protocol, out, jobs=1, progress=lambda line: None)
    assert again["chosen"] == record["chosen"]
    report = build([out], tmp_path / "report")
    text = report.read_text()
    assert "## Real CNNs: the standard gap (tiny)" in text
    assert "### Test error, without augmentation" in text and "SGD+" not in text
    assert "SGD beats Adam on" in text and "| Wilson" not in text and "7.65 ± 0.14" in text
    assert "feature energy" in text and "planted" in text.lower()
    for png in ("figure1_tiny_cnn", "figure1_tiny_planted", "alignment_tiny_cnn_augmentfalse",
                "alignment_tiny_planted", "figure2_tiny_planted"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 5000, png
    planted = read(next((out / "extra" / "planted" / "cells").glob("*fmnist_patch_gd")))
    assert all("first_layer_feature_energy" in r and "feature_learning" in r
               for r in replicas_of(planted))
