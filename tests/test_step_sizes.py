"""The step-size callback (``adamgap/step_sizes.py``): what a tiny chunked run records equals a
direct computation, a loop that steps the same optimizer by hand and reads the weights, the
gradient and the optimizer state with dense tensors.

The run takes 10 optimizer steps per Lightning training step and records every 3rd iteration,
so most records fall inside a chunk, where no callback hook runs: they must still be the steps
of those iterations. Sign GD moves every coordinate with a nonzero gradient by exactly lr."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import tiny_config

from adamgap import objective
from adamgap.config import load_config
from adamgap.patches import SparsePatches
from adamgap.train import build_datamodule, build_module, run

SEEDS, P, STEPS, EVERY, CHUNK = (3, 4), 3, 40, 3, 10


def tiny(name: str, tmp_path, *extra: str):
    return tiny_config(name, f"seed={SEEDS[0]}", f"run.replicas={len(SEEDS)}",
                       f"data.patches={P}", f"trainer.max_steps={STEPS}",
                       f"trainer.steps_per_batch={CHUNK}", "trainer.eval_every=20",
                       "trainer.log_every=20", "align.every=20", "align.step_sizes=true",
                       f"align.step_sizes_every={EVERY}", "optim.lr=1e-3", *extra,
                       tmp_path=tmp_path)


def by_hand(cfg) -> dict[int, dict]:
    """Step the run's optimizer by hand; at each recorded iteration the quantities the callback
    records, from dense tensors, loops over examples and autograd for the gradient's parts."""
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    opt = module.configure_optimizers()
    net, params, lr = module.net, module.params, cfg.optim.lr
    x = dm.x_train.to_dense() if isinstance(dm.x_train, SparsePatches) else dm.x_train
    y, where = dm.y_train, dm.train.feature_patch
    K, n, _, d = x.shape
    out = {}
    for t in range(STEPS):
        value, f, grads = objective.objective_and_gradient(net, dm.x_train, y, module.lam,
                                                           params)
        params[0].grad = grads[0]
        w0 = params[0].detach().clone()
        # the parts of the feature coordinate's gradient, by autograd through dense z
        W = w0.clone().requires_grad_(True)
        z = torch.einsum("kbpd,kdcr->kbpcr", x, W)  # (K, n, P, 2, m)
        zc = z.detach().requires_grad_(True)
        F = (zc.clamp_min(0) ** 3).sum(dim=(2, 4))  # (K, n, 2)
        loss = torch.nn.functional.softplus(-y * (F[..., 0] - F[..., 1])).mean(1).sum()
        (dz,) = torch.autograd.grad(loss, zc)  # (K, n, P, 2, m)
        x0 = x[..., 0]  # (K, n, P): <x_{i,p}, e_1>
        is_feature = torch.arange(P)[None, None] == where[..., None]  # (K, n, P)
        part = {name: torch.einsum("kbpcr,kbp->kcr", dz, x0 * mask)
                for name, mask in (("grad_feature_patch", is_feature),
                                   ("grad_feature_noise", ~is_feature))}
        opt.step()
        w1 = params[0].detach()
        if not (t % EVERY == 0 or t == STEPS - 1):
            continue
        upd = (w1 - w0) / lr
        rec = {"feature": {"step": upd[:, 0].abs(), "grad": grads[0][:, 0],
                           "velocity": upd[:, 0] * torch.tensor([1.0, -1.0])[:, None],
                           "grad_decay": module.lam * w0[:, 0], **part},
               "noise": {}}
        for name, s in opt.state[params[0]].items():
            if s.shape == w0.shape:
                rec["feature"][name] = s[:, 0].clone()
        noise = {k: torch.zeros(K, n, P - 1) for k in ("step", "velocity", "velocity_gauss",
                                                       "grad_abs", "noise_memorization")}
        states = {name: torch.zeros(K, n, P - 1) for name, s in opt.state[params[0]].items()
                  if s.shape == w0.shape}
        for k in range(K):
            for i in range(n):
                c = 0 if y[k, i] > 0 else 1
                for q, p in enumerate(p for p in range(P) if p != where[k, i]):
                    xi = x[k, i, p]
                    act = w0[k, :, c, :].T @ xi  # (m,)
                    r = int(act.argmax())
                    S = xi[1:].nonzero().flatten() + 1  # supp xi' (the feature noise is on 0)
                    noise["noise_memorization"][k, i, q] = act[r]
                    noise["velocity"][k, i, q] = (w1[k, :, c, r] @ xi - act[r]) / lr
                    noise["step"][k, i, q] = upd[k, S, c, r].abs().mean()
                    noise["velocity_gauss"][k, i, q] = upd[k, S, c, r] @ xi[S]
                    noise["grad_abs"][k, i, q] = grads[0][k, S, c, r].abs().mean()
                    for name, s in opt.state[params[0]].items():
                        if name in states:
                            states[name][k, i, q] = s[k, S, c, r].abs().mean()
        rec["noise"] = noise | states
        out[t] = rec
    return out


@pytest.fixture(scope="module", params=["synthetic_adam", "synthetic_signgd"])
def recorded(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("steps")
    cfg = tiny(request.param, tmp)
    run(cfg)
    history = torch.load(tmp / "run" / "step_sizes.pt")
    with open(tmp / "run" / "step_sizes.csv") as f:
        rows = list(csv.DictReader(f))
    return {"name": request.param, "cfg": cfg, "history": history, "rows": rows,
            "hand": by_hand(cfg)}


@pytest.mark.slow
def test_records_every_k_th_iteration_and_the_last_inside_chunks(recorded):
    h = recorded["history"]
    expected = [t for t in range(STEPS) if t % EVERY == 0 or t == STEPS - 1]
    assert h["step"].tolist() == expected
    assert any(t % CHUNK not in (0, CHUNK - 1) for t in expected)  # inside a chunk
    assert h["lr"].tolist() == [1e-3] * len(expected)
    assert h["seeds"] == list(SEEDS)
    assert len(recorded["rows"]) == len(expected) * len(SEEDS)


@pytest.mark.slow
def test_recorded_values_equal_the_direct_computation(recorded):
    h, hand = recorded["history"], recorded["hand"]
    for i, t in enumerate(h["step"].tolist()):
        for group in ("feature", "noise"):
            for key, want in hand[t][group].items():
                got = h[group][key][i]
                torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-9,
                                           msg=f"{group}/{key} at iteration {t}")


@pytest.mark.slow
def test_the_gradient_parts_add_up_to_the_full_batch_gradient(recorded):
    f = recorded["history"]["feature"]
    torch.testing.assert_close(f["grad_feature_patch"] + f["grad_feature_noise"]
                               + f["grad_decay"], f["grad"], rtol=1e-4, atol=1e-10)


@pytest.mark.slow
def test_the_optimizer_state_is_recorded_by_name(recorded):
    names = set(recorded["history"]["feature"])
    if recorded["name"] == "synthetic_adam":
        assert {"exp_avg", "exp_avg_sq"} <= names
        assert {"feature_exp_avg_sq", "noise_exp_avg_sq"} <= set(recorded["rows"][0])
    else:
        assert not {"exp_avg", "exp_avg_sq"} & names  # sign GD keeps no state


@pytest.mark.slow
def test_sign_gd_moves_every_coordinate_by_lr_and_adam_does_not(recorded):
    step = recorded["history"]["feature"]["step"]
    noise = recorded["history"]["noise"]["step"]
    if recorded["name"] == "synthetic_signgd":
        # (w - lr) - w in float32 is lr to ~1e-6; a noise coordinate's gradient is never 0 here
        torch.testing.assert_close(step, torch.ones_like(step), rtol=1e-4, atol=0)
        torch.testing.assert_close(noise, torch.ones_like(noise), rtol=1e-4, atol=0)
    else:  # m / (sqrt(v) + eps): |g| / (|g| + eps) at the first step, then its own size
        g = recorded["history"]["feature"]["grad"][0].abs()
        torch.testing.assert_close(step[0], g / (g + recorded["cfg"].optim.eps), rtol=1e-4,
                                   atol=0)
        assert (step[1:] - 1).abs().max() > 0.1 and (noise[1:] - 1).abs().max() > 0.1


@pytest.mark.slow
def test_the_csv_summarises_class_plus_one_in_figure_2s_convention(recorded):
    h, rows = recorded["history"], recorded["rows"]
    y = build_datamodule(recorded["cfg"])
    y.setup("fit")
    pos = y.y_train > 0  # (K, n)
    for i in (0, len(h["step"]) - 1):
        for k, seed in enumerate(SEEDS):
            row = next(r for r in rows if int(r["step"]) == int(h["step"][i])
                       and int(r["seed"]) == seed)
            fl = h["feature"]["feature_learning"][i, k, 0]  # class +1's filters (m,)
            r = int(fl.argmax())
            assert float(row["feature_learning"]) == pytest.approx(float(fl[r]))
            assert float(row["feature_step"]) == pytest.approx(
                float(h["feature"]["step"][i, k, 0, r]))
            noise = h["noise"]["velocity"][i, k][pos[k]]  # (n+, P-1)
            assert float(row["noise_velocity"]) == pytest.approx(float(noise.mean()), rel=1e-5)


def test_off_by_default():
    assert load_config("synthetic_adam").align.step_sizes is False
