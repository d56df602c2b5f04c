"""DDP: full-batch GD/Adam over R ranks is the single-process computation (each rank an equal
shard of the examples, DDP averages the gradients), metrics reduce over ranks, and rank 0 alone
writes the run directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT, TINY, tiny_config
from lightning.pytorch.utilities import rank_zero_only

from adamgap.errors import ConfigError
from adamgap.train import RUN_STAMP_ENV, build_datamodule, build_module, prepare_run_dir, run


def rank_datamodule(cfg, rank: int, world: int):
    """The datamodule as DDP rank ``rank`` of ``world`` sets it up (a stand-in Trainer)."""
    dm = build_datamodule(cfg)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))
    dm.setup("fit")
    return dm


def gradient(cfg, dm, step: int = 0) -> torch.Tensor:
    module = build_module(cfg, dm)
    objective, _ = module.objective(*dm.train_batch(step))  # per replica
    objective.sum().backward()
    return module.net.weight.grad


@pytest.mark.parametrize("overrides", [(), ("optim.name=sgd", "data.batch_size=10")])
def test_shard_gradients_average_to_the_full_gradient(overrides):
    cfg = tiny_config("synthetic_adam", "run.replicas=2", *overrides)
    full = gradient(cfg, rank_datamodule(cfg, 0, 1), step=5)
    shards = [gradient(cfg, rank_datamodule(cfg, r, 2), step=5) for r in range(2)]
    torch.testing.assert_close((shards[0] + shards[1]) / 2, full, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(shards[0], shards[1])  # the ranks really see different examples


def test_evaluation_shards_partition_both_splits():
    cfg = tiny_config("synthetic_adam", "data.n_test=401")  # test blocks of 201 and 200
    full = rank_datamodule(cfg, 0, 1)
    parts = [rank_datamodule(cfg, r, 2).val_batches for r in range(2)]
    for split in range(2):
        y = torch.cat([p[split][1] for p in parts], dim=1)
        assert torch.equal(y, full.val_batches[split][1])


@pytest.mark.parametrize("bad, key", [
    (("data.n=41", "trainer.devices=2"), "data.n=41"),
    (("optim.name=sgd", "data.batch_size=6", "trainer.devices=[0,1]", "trainer.num_nodes=2"),
     "data.batch_size=6"),
    (("trainer.strategy=ddp_spawn",), "trainer.strategy='ddp_spawn'"),
])
def test_ddp_settings_that_cannot_shard_are_rejected(bad, key):
    with pytest.raises(ConfigError, match=key):
        tiny_config("synthetic_adam", *bad)


def test_only_rank_zero_creates_the_run_dir(tmp_path, monkeypatch):
    cfg = tiny_config("synthetic_adam", tmp_path=tmp_path)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert prepare_run_dir(cfg) == tmp_path / "run" and not (tmp_path / "run").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert (prepare_run_dir(cfg) / "config.yaml").is_file()


def test_default_run_dir_follows_the_stamp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RUN_STAMP_ENV, "slurm-123")
    run_dir = prepare_run_dir(tiny_config("synthetic_gd", "seed=4"))
    assert run_dir == Path("runs/synthetic_gd/slurm-123-s4")


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    """Two CPU processes (Lightning's DDP launcher re-runs the script per rank) against the same
    run in this process: same final weights, metrics and alignment to float tolerance. No
    run.dir: both ranks must agree on the default one."""
    short = ["trainer.max_steps=100", "trainer.eval_every=50", "run.replicas=2"]
    args = ["conf=synthetic_adam", *TINY, *short]
    single = run(tiny_config("synthetic_adam", *short, tmp_path=tmp_path))
    ddp = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), *args, "trainer.strategy=ddp",
         "trainer.devices=2", "trainer.accelerator=cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    dirs = list((tmp_path / "runs" / "synthetic_adam").iterdir())
    assert len(dirs) == 1, dirs  # one run directory, not one per rank
    ddp_dir = dirs[0]
    assert len(ddp.stdout.strip().splitlines()) == 2  # one summary line per replica, rank 0 only

    w1 = torch.load(tmp_path / "run" / "weights.pt")["weight"]
    w2 = torch.load(ddp_dir / "weights.pt")["weight"]
    torch.testing.assert_close(w2, w1, rtol=1e-4, atol=1e-6)
    summary = json.loads((ddp_dir / "summary.json").read_text())
    for a, b in zip(summary["replicas"], single["replicas"], strict=True):
        assert a["train_error"] == b["train_error"] and a["test_error"] == b["test_error"]
        for key in ("train_loss", "test_loss", "feature_learning", "noise_memorization"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    rows1 = read_csv(tmp_path / "run" / "alignment.csv")
    rows2 = read_csv(ddp_dir / "alignment.csv")
    assert len(rows1) == len(rows2)
    for a, b in zip(rows1, rows2, strict=True):
        assert a["step"] == b["step"] and a["seed"] == b["seed"]
        assert float(a["noise_memorization"]) == pytest.approx(float(b["noise_memorization"]),
                                                               rel=1e-4, abs=1e-6)
    # the logged test error at every evaluation is the whole test set's, reduced over ranks
    evals = [[r["test/error"] for r in read_csv(d / "metrics.csv") if r["test/error"]]
             for d in (tmp_path / "run", ddp_dir)]
    assert evals[0] == evals[1] and len(evals[0]) >= 2


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_whole_images(tmp_path):
    """A CNN on augmented whole images (data.task=images): each rank takes its half of every
    batch (the same crops and flips), DDP averages the gradients: the one-process run."""
    short = ["trainer.max_steps=12", "trainer.eval_every=6", "trainer.log_every=3",
             "align.every=6", "data.n=48", "data.n_test=100", "data.batch_size=16",
             "model.width=4", "data.augment=true", "trainer.progress_bar=false"]
    single = run(tiny_config("fmnist_cnn_sgd", *short, tmp_path=tmp_path))
    ddp = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), "conf=fmnist_cnn_sgd", *short,
         "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
         f"run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    w1 = torch.load(tmp_path / "run" / "weights.pt")
    w2 = torch.load(tmp_path / "ddp" / "weights.pt")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-6)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["test_error"] == single["test_error"]
    assert summary["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert summary["first_layer_feature_energy"] == pytest.approx(
        single["first_layer_feature_energy"], rel=1e-4)
