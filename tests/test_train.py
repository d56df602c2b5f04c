"""End to end (``adamgap.train.run``): the paper's gap at a small scale, the shared data and W(0)
of an Adam and a GD run with one seed, and what a run directory holds."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import tiny_config
from omegaconf import OmegaConf

from adamgap.train import build_datamodule, build_module, run

SEEDS = 3  # seeds 0, 1, 2, trained as the replicas of one run
# TINY is 20x shorter than the paper's T = 10 000, so the learning rates are scaled up (paper:
# Adam 1e-4, GD 0.1). With these, seeds 0-95 all showed the gap (see tests/conftest.py).
LR = {"synthetic_adam": "optim.lr=3e-4", "synthetic_gd": "optim.lr=1.0"}
SUMMARY_KEYS = ("train_error", "test_error", "train_loss", "test_loss", "steps", "wall_seconds",
                "feature_learning", "noise_memorization", "feature_learning_init",
                "noise_memorization_init")


def gap_config(name: str, *overrides: str, tmp_path=None):
    return tiny_config(name, LR[name], f"run.replicas={SEEDS}", *overrides, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    """One Adam and one GD run of the tiny Definition 3.1 instance, seeds 0, 1, 2 each."""
    out = {}
    for name in LR:
        tmp = tmp_path_factory.mktemp(name)
        out[name] = {"summary": run(gap_config(name, tmp_path=tmp)), "dir": tmp / "run"}
    return out


def replicas(gap, name: str) -> list[dict]:
    return gap[name]["summary"]["replicas"]


@pytest.mark.slow
def test_adam_and_gd_both_fit_the_data_but_only_gd_generalizes(gap):
    """Table 1 and Figure 2 in small: train error 0 for both, Adam's test error far above GD's,
    Adam's feature learning flipped below zero while it memorised the noise."""
    adam, gd = replicas(gap, "synthetic_adam"), replicas(gap, "synthetic_gd")
    assert [r["seed"] for r in adam] == [r["seed"] for r in gd] == list(range(SEEDS))
    for a, g in zip(adam, gd, strict=True):
        assert a["train_error"] == 0.0 and g["train_error"] == 0.0, (a, g)
        assert a["test_error"] - g["test_error"] >= 0.3, (a, g)
        assert a["feature_learning"] < 0 < a["feature_learning_init"], a  # it flips
        assert a["noise_memorization"] > 0.5 > 10 * g["noise_memorization"], (a, g)
        assert g["feature_learning"] > 1.0, g  # GD learns the feature instead


@pytest.mark.slow
def test_adam_and_gd_with_one_seed_share_data_and_initial_weights(gap):
    cfgs = [gap_config(name) for name in LR]
    assert cfgs[0].optim.name == "adam" and cfgs[1].optim.name == "gd"
    dms = [build_datamodule(cfg) for cfg in cfgs]
    for dm in dms:
        dm.setup("fit")
    for split in ("train", "test"):
        a, g = (getattr(dm, split) for dm in dms)
        for field in ("index", "value", "y", "feature_patch"):
            assert torch.equal(getattr(a, field), getattr(g, field)), (split, field)
    w = [build_module(cfg, dm).net.weight for cfg, dm in zip(cfgs, dms, strict=True)]
    assert torch.equal(w[0], w[1])
    assert not torch.equal(w[0][0], w[0][1])  # while the replicas (seeds) differ
    # and the runs themselves started from the same point: identical alignment at step 0
    for a, g in zip(replicas(gap, "synthetic_adam"), replicas(gap, "synthetic_gd"), strict=True):
        for key in ("feature_learning_init", "noise_memorization_init"):
            assert a[key] == g[key], key


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def last_logged(rows: list[dict], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


def check_summary_matches_metrics(summary: dict, run_dir) -> None:
    """The summary's final errors and losses are the last evaluation in metrics.csv (whose values
    are means over the replicas)."""
    rows = read_csv(run_dir / "metrics.csv")
    for split in ("train", "test"):
        assert f"{split}/error" in rows[0] and f"{split}/loss" in rows[0]
    evaluated = [r for r in rows if r["test/error"]]
    # the last evaluation is at the end (Lightning labels one inside the last batch T - 1)
    assert int(evaluated[-1]["step"]) in (summary["steps"] - 1, summary["steps"])
    per_replica = summary.get("replicas", [summary])
    for split in ("train", "test"):
        for what in ("error", "loss"):
            mean = sum(r[f"{split}_{what}"] for r in per_replica) / len(per_replica)
            assert last_logged(rows, f"{split}/{what}") == pytest.approx(mean, rel=1e-6)


@pytest.mark.slow
def test_ensemble_summary_matches_its_metrics(gap):
    for name in LR:
        summary = gap[name]["summary"]
        assert summary["steps"] == 500 and summary["seeds"] == list(range(SEEDS))
        check_summary_matches_metrics(summary, gap[name]["dir"])
        on_disk = json.loads((gap[name]["dir"] / "summary.json").read_text())
        assert on_disk["replicas"] == summary["replicas"]


def test_run_directory_of_a_single_run(tmp_path):
    """120 steps with an evaluation every 50: the end (120) is evaluated after training."""
    cfg = tiny_config("synthetic_adam", "seed=2", "trainer.max_steps=120",
                      "trainer.eval_every=50", "optim.lr=1e-3", tmp_path=tmp_path)
    summary = run(cfg)
    run_dir = tmp_path / "run"
    for path in ("config.yaml", "metrics.csv", "alignment.csv", "figures/alignment.png",
                 "summary.json"):
        assert (run_dir / path).is_file(), path
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(cfg, resolve=True)
    assert saved.optim.lr == 1e-3 and saved.seed == 2 and saved.conf == "synthetic_adam"

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    for key in SUMMARY_KEYS:
        assert isinstance(summary[key], (int, float)), key
    assert summary["seed"] == 2 and summary["steps"] == 120 and summary["wall_seconds"] > 0
    assert 0.0 <= summary["train_error"] <= 1.0 and 0.0 <= summary["test_error"] <= 1.0
    check_summary_matches_metrics(summary, run_dir)
    evaluated = [int(r["step"]) for r in read_csv(run_dir / "metrics.csv") if r["test/error"]]
    assert evaluated == [49, 99, 120]  # after 50, 100 (inside batches 49, 99) and 120 steps

    align = read_csv(run_dir / "alignment.csv")
    assert [int(r["step"]) for r in align] == [0, 50, 100, 120]
    for key in ("feature_learning", "noise_memorization"):
        assert summary[key] == pytest.approx(float(align[-1][key]), rel=1e-6)
        assert summary[f"{key}_init"] == pytest.approx(float(align[0][key]), rel=1e-6)
