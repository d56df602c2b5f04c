"""Seed ensembles: K replicas trained at once are exactly K separate runs (same data, same W(0),
same trajectory), for every per-element optimizer, including mini-batch SGD."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config
from torch.testing import assert_close

from adamgap.train import build_datamodule, build_module, run

SEEDS = (3, 4)
SHORT = ["trainer.max_steps=40", "trainer.eval_every=20", "align.every=10",
         "trainer.log_every=10"]
CASES = {  # conf, extra overrides
    "gd": ("synthetic_gd", []),
    "sgd": ("synthetic_sgd", ["data.batch_size=8"]),  # 5 mini-batches per epoch, reshuffled
    "adam": ("synthetic_adam", []),
    "adamw": ("synthetic_adamw", []),
    "signgd": ("synthetic_signgd", []),
    "adam_minibatch": ("stochastic_adam", []),  # batches of 2 from epochs of 20 steps
    "adamw_minibatch": ("stochastic_adamw", ["data.batch_size=12", "data.last_batch=keep"]),
}


def weights(run_dir) -> torch.Tensor:
    return torch.load(run_dir / "weights.pt")["weight"]  # (K, d, 2, m)


def test_replica_k_sees_the_data_and_init_of_seed_k():
    ens = tiny_config("synthetic_adam", f"seed={SEEDS[0]}", f"run.replicas={len(SEEDS)}")
    dm = build_datamodule(ens)
    dm.setup()
    net = build_module(ens, dm).net
    for k, seed in enumerate(SEEDS):
        one = tiny_config("synthetic_adam", f"seed={seed}")
        dm1 = build_datamodule(one)
        dm1.setup()
        assert torch.equal(dm.train.index[k], dm1.train.index[0])
        assert torch.equal(dm.train.value[k], dm1.train.value[0])
        assert torch.equal(dm.test.y[k], dm1.test.y[0])
        assert torch.equal(net.weight[k], build_module(one, dm1).net.weight[0])
    assert not torch.equal(net.weight[0], net.weight[1])  # and the replicas differ


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_ensemble_equals_separate_runs(name, tmp_path):
    conf, extra = CASES[name]
    ens = run(tiny_config(conf, *SHORT, *extra, f"seed={SEEDS[0]}", f"run.replicas={len(SEEDS)}",
                          f"run.dir={tmp_path / 'ensemble'}"))
    assert [r["seed"] for r in ens["replicas"]] == list(SEEDS)
    w_ens = weights(tmp_path / "ensemble")
    for k, seed in enumerate(SEEDS):
        one = run(tiny_config(conf, *SHORT, *extra, f"seed={seed}",
                              f"run.dir={tmp_path / f's{seed}'}"))
        assert_close(w_ens[k], weights(tmp_path / f"s{seed}")[0])
        for key in ("train_error", "test_error", "feature_learning", "noise_memorization"):
            assert ens["replicas"][k][key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    # the run moved the weights, so the equality above is not the trivial one of W(0)
    init = build_module(tiny_config(conf, f"seed={SEEDS[0]}"),
                        build_datamodule(tiny_config(conf))).net.weight[0]
    assert (w_ens[0] - init).abs().max() > 1e-4
