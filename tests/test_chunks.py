"""Several optimizer steps per Lightning training step (``trainer.steps_per_batch``, see
``config.steps_per_batch`` and ``GapModule.training_step``): the same run, step for step, as
Lightning driving every step itself."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from helpers import tiny_config

from adamgap.config import load_config, steps_per_batch
from adamgap.errors import ConfigError
from adamgap.train import build_datamodule, build_module, run


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def outputs(run_dir) -> tuple[dict, list[dict], list[dict]]:
    weights = torch.load(run_dir / "weights.pt")
    return weights, read_csv(run_dir / "metrics.csv"), read_csv(run_dir / "alignment.csv")


@pytest.mark.parametrize("name, extra", [
    ("synthetic_adam", []), ("synthetic_gd", []), ("synthetic_sgd", []),
    # mini-batches from epochs (n = 40): batch 2, 20 steps per epoch, chunks across epochs
    ("stochastic_adam", []), ("stochastic_adamw", []),
    ("synthetic_signgd", ["data.batch_size=8", "data.sampling=replace"]),
    ("synthetic_sgd", ["data.batch_size=12", "data.last_batch=keep"]),  # batches 12, 12, 12, 4
])
def test_chunked_run_is_the_run_with_one_step_per_training_step(tmp_path, name, extra):
    """Default chunks (k = 50 here: the tiny config's log_every and align.every) against
    k = 1: the same steps, logs, evaluations and alignment records, and the same weights up
    to float32 round-off (the chunk's closed-form gradient sums in another order than
    autograd). The mini-batch runs check that a chunk's batches are the steps' own, in order."""
    cfg = {k: tiny_config(name, *extra, f"trainer.steps_per_batch={k}", "run.replicas=2",
                          tmp_path=tmp_path / f"k{k}") for k in ("null", 1)}
    assert steps_per_batch(cfg["null"]) == 50 and steps_per_batch(cfg[1]) == 1
    summary = {k: run(c) for k, c in cfg.items()}
    (w, metrics, align), (w1, metrics1, align1) = (outputs(tmp_path / f"k{k}" / "run")
                                                   for k in ("null", 1))
    assert summary["null"]["steps"] == summary[1]["steps"] == 500
    for a, b in zip(summary["null"]["replicas"], summary[1]["replicas"], strict=True):
        assert a["train_error"] == b["train_error"] and a["test_error"] == b["test_error"]
        for key in ("feature_learning", "noise_memorization", "grad_l2", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    torch.testing.assert_close(w["weight"], w1["weight"], rtol=1e-4, atol=1e-6)
    assert [r["step"] for r in metrics] == [r["step"] for r in metrics1]
    assert [(r["step"], r["seed"]) for r in align] == [(r["step"], r["seed"]) for r in align1]
    logged = {key for r in metrics for key, v in r.items() if v}
    assert {"train/objective", "grad/l2", "test/error", "align/feature_learning"} <= logged
    for r, r1 in zip(metrics, metrics1, strict=True):
        for key, value in r.items():
            assert (value == "") == (r1[key] == ""), (r["step"], key)
            if value:
                assert float(value) == pytest.approx(float(r1[key]), rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("k", ["null", 1])
def test_the_lr_schedule_steps_once_per_optimizer_step(k):
    """Manual optimization: the module steps the scheduler itself, after every optimizer step,
    inside a chunk (k = 50) or not: halving every 100 steps, 300 steps end at lr / 8."""
    cfg = tiny_config("synthetic_adam", "trainer.max_steps=300", "optim.schedule=step",
                      "optim.step_size=100", "optim.gamma=0.5", f"trainer.steps_per_batch={k}")
    assert steps_per_batch(cfg) == (50 if k == "null" else 1)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    trainer = L.Trainer(max_steps=300, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 300
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 300
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(cfg.optim.lr / 8)


def test_train_metrics_carry_the_optimizer_step(tmp_path):
    """Lightning labels logs with its count of training steps (here 1 per 50 optimizer
    steps); the module logs ``step`` so that metrics.csv keeps the labels of one optimizer
    step per training step: the iteration index, 49, 99, ... for the train rows and 249, 499
    for the evaluations after 250 and 500 steps."""
    run(tiny_config("synthetic_adam", tmp_path=tmp_path))
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    train_steps = sorted({int(r["step"]) for r in rows if r["train/objective"]})
    test_steps = sorted({int(r["step"]) for r in rows if r["test/error"]})
    assert train_steps == list(range(49, 500, 50))
    assert test_steps == [249, 499]


@pytest.mark.parametrize("overrides, k", [
    ([], 50),  # gcd of max_steps 500, log_every 50, eval_every 250, align.every 50, ckpt 1000
    (["align.every=20"], 10),
    (["align.enabled=false", "trainer.log_every=250"], 250),
    (["run.checkpoint_every=0", "align.every=7"], 1),
    (["trainer.precision=16-mixed"], 1),
    (["trainer.strategy=ddp", "trainer.devices=2"], 1),
])
def test_default_steps_per_batch(overrides, k):
    assert steps_per_batch(tiny_config("synthetic_adam", *overrides)) == k


@pytest.mark.parametrize("overrides, message", [
    (["trainer.steps_per_batch=30"], "trainer.steps_per_batch"),
    (["trainer.steps_per_batch=0"], "trainer.steps_per_batch"),
    (["trainer.steps_per_batch=50", "trainer.strategy=ddp", "trainer.devices=2"],
     "under DDP"),
])
def test_bad_steps_per_batch_is_one_line_naming_the_key(overrides, message):
    from helpers import TINY

    with pytest.raises(ConfigError) as err:
        load_config("synthetic_adam", [*TINY, *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)
