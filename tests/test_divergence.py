"""Divergence: a non-finite loss, gradient or weight stops the run at that step with one line,
``status: "diverged"`` in summary.json and a non-zero exit (adamgap/runtime/divergence.py)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from helpers import TINY, tiny_config

from adamgap import train
from adamgap.cli import main
from adamgap.runtime.divergence import Diverged, DivergenceCallback
from adamgap.summary import assemble

SHORT = ["trainer.max_steps=40", "trainer.eval_every=20", "trainer.log_every=10"]
EVERY_STEP = [*SHORT, "trainer.steps_per_batch=1"]  # the Poison callback acts between any steps


class Poison(L.Callback):
    """Puts a NaN into replica ``k``'s ``where`` (loss | gradient | weights) at step ``step``."""

    def __init__(self, where: str, step: int, k: int = 0):
        self.where, self.step, self.k = where, step, k

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.where == "loss" and trainer.global_step == self.step:
            with torch.no_grad():  # a NaN weight makes this step's objective NaN first
                module.net.weight[self.k, 0, 0, 0] = float("nan")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.where == "gradient" and trainer.global_step == self.step:
            module.net.weight.grad[self.k, 0, 0, 0] = float("inf")
            optimizer.param_groups[0]["lr"] = 0.0  # the weights stay finite this step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.where == "weights" and trainer.global_step - 1 == self.step:
            with torch.no_grad():
                module.net.weight[self.k, 0, 0, 0] = float("inf")


def fit(cfg, *callbacks: L.Callback, check_every: int | None = None):
    """Train the module of ``cfg`` with ``callbacks`` and a DivergenceCallback (last)."""
    dm = train.build_datamodule(cfg)
    module = train.build_module(cfg, dm)
    div = DivergenceCallback(train.seeds_of(cfg), cfg.optim.name, cfg.optim.lr, sync_every=10)
    if check_every is not None:  # the GPU path (flags on the device, read every few steps)
        start = div.on_train_start
        div.on_train_start = lambda tr, mo: (start(tr, mo), setattr(div, "check_every", 10))
    trainer = L.Trainer(max_steps=cfg.trainer.max_steps, max_epochs=-1, logger=False,
                        callbacks=[*callbacks, div], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    try:
        trainer.fit(module, datamodule=dm)
    except Diverged:
        pass
    return div, trainer


@pytest.mark.parametrize("where", ["loss", "gradient", "weights"])
def test_each_quantity_is_caught_at_its_step(where):
    cfg = tiny_config("synthetic_adam", *EVERY_STEP)
    div, trainer = fit(cfg, Poison(where, step=7))
    assert div.first.tolist() == [7]
    assert div.messages[0].startswith(f"diverged at step 7 (seed 0): the {where} is not finite")
    assert "optim.lr=0.0001 is likely too large for adam" in div.messages[0]
    assert trainer.global_step == 8  # stopped right after the bad step (CPU: checked each step)


def test_device_path_reports_the_exact_step_and_stops_at_the_next_check():
    cfg = tiny_config("synthetic_adam", *EVERY_STEP)
    div, trainer = fit(cfg, Poison("gradient", step=13), check_every=10)
    assert div.first.tolist() == [13]
    assert "the gradient is not finite" in div.messages[0]
    assert trainer.global_step == 20


def test_a_diverged_replica_is_marked_and_the_others_finish():
    cfg = tiny_config("synthetic_adam", *EVERY_STEP, "run.replicas=3")
    div, trainer = fit(cfg, Poison("loss", step=5, k=1))
    assert trainer.global_step == 40
    assert div.first.tolist() == [-1, 5, -1]
    rows = div.mark([{"seed": s, "status": "completed", "steps": 40, "wall_seconds": 1.0,
                      "test_error": float("nan") if s == 1 else 0.5} for s in (0, 1, 2)])
    assert [r["status"] for r in rows] == ["completed", "diverged", "completed"]
    assert rows[1]["diverged_step"] == 5
    assert rows[1]["test_error"] is None  # NaN is not JSON: null
    assert rows[1]["error"].startswith("diverged at step 5 (seed 1): the loss")
    summary = assemble("synthetic_adam", rows)
    assert summary["status"] == "diverged" and summary["error"] == rows[1]["error"]
    assert summary["test_error"] == 0.5  # the mean over the replicas that have one


def test_inside_a_chunk_the_step_and_quantity_are_exact_and_the_run_stops_at_its_end():
    """Ten optimizer steps per training step (the default here): a NaN weight put in before
    step 10 is the loss of step 10; a learning rate that overflows the weights of step 13's
    update (lr jumps to inf there) is the weights of step 13, not the loss of step 14."""
    cfg = tiny_config("synthetic_gd", *SHORT)
    div, trainer = fit(cfg, Poison("loss", step=10))
    assert div.first.tolist() == [10] and "the loss is not finite" in div.messages[0]
    assert trainer.global_step == 20  # the chunk of steps 10-19 ran to its end

    class Jump(L.Callback):  # the only way into a chunk: a scheduler-like change of lr
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 10:
                opt = trainer.optimizers[0]
                original = opt.step

                def step(*args, **kwargs):  # step 13 (the 4th of the chunk): lr = inf
                    opt.param_groups[0]["lr"] = float("inf") if module.global_step == 13 else 0.5
                    return original(*args, **kwargs)
                opt.step = step

    div, trainer = fit(tiny_config("synthetic_gd", *SHORT), Jump())
    assert div.first.tolist() == [13] and "the weights is not finite" in div.messages[0]


def test_a_finite_run_is_completed_and_marked_nowhere():
    cfg = tiny_config("synthetic_adam", *SHORT)
    div, trainer = fit(cfg)
    assert trainer.global_step == 40 and div.first.tolist() == [-1] and not div.messages


def test_cli_diverged_run_exits_nonzero_with_one_line(tmp_path, capsys):
    """End to end: GD with a huge step overflows the cubic network within a few steps."""
    run_dir = tmp_path / "run"
    code = main(train.run, ["conf=synthetic_gd", *TINY, *SHORT,
                            "optim.lr=1e6", f"run.dir={run_dir}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 1
    assert summary["status"] == "diverged" and summary["diverged_quantity"] == "loss"
    step = summary["diverged_step"]  # exact, though 10 steps run per training step here:
    assert 0 < step < 40 and summary["steps"] == (step // 10 + 1) * 10  # stops at chunk end
    assert err == [f"error: diverged at step {step} (seed 0): the loss is not finite; "
                   "optim.lr=1e+06 is likely too large for gd"]
    assert (run_dir / "alignment.csv").is_file()  # the trajectory up to the divergence


def test_overflowing_initialization_gets_its_own_hint(tmp_path):
    summary = train.run(tiny_config("synthetic_adam", *SHORT, "model.sigma_0=1e15",
                                    tmp_path=tmp_path))
    assert summary["status"] == "diverged" and summary["diverged_step"] == 0
    assert summary["error"].endswith("the initial network output overflows: lower "
                                     "model.sigma_0 or the data scale")


def test_completed_run_says_completed(tmp_path):
    summary = train.run(tiny_config("synthetic_adam", *SHORT, tmp_path=tmp_path))
    assert summary["status"] == "completed" and "error" not in summary

