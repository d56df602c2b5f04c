"""Optimizers whose ``step()`` alone does not fit (``adamgap/optimizers/contract.py``), stepped by
``GapModule`` on the tiny config and checked against the library driven by hand on the dense
objective: closures (LBFGS, SAM), Hessian-vector products (AdaHessian), schedule-free eval
mode, and the per-replica (2m, d) matrices a matrix optimizer sees."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config
from test_optimizers import dense, fit, objective

from adamgap.optimizers import build_optimizer
from adamgap.optimizers.replicas import _seeded_state
from adamgap.train import build_datamodule, build_module, run

SEEDS = (0, 1)
STEPS = ("trainer.max_steps=4", "model.sigma_0=0.1", f"run.replicas={len(SEEDS)}",
         "optim.layout=replicas")
LAM = 1e-5


def as_weight(matrix: torch.Tensor) -> torch.Tensor:
    """A replica's (2m, d) matrix as the (1, d, 2, m) weight the reference objective takes."""
    d = matrix.shape[1]
    return matrix.view(2, -1, d).permute(2, 0, 1)[None]


def reference(name: str, lr: float, dm, k: int, w0: torch.Tensor, steps: int,
              create_graph: bool = False, **kwargs) -> torch.Tensor:
    """Replica k driven by hand: its (2m, d) matrix, the library's optimizer, the dense
    objective with a closure, its random stream seeded as the suite seeds it."""
    # contiguous, as the module's: random draws like p (randn_like) follow p's strides
    p = torch.nn.Parameter(w0[k].permute(1, 2, 0).reshape(-1, w0.shape[1]).contiguous())
    opt = build_optimizer([p], name, lr, kwargs=kwargs, max_steps=steps, n=dm.n)
    x, y = dense(dm.x_train)[k:k + 1], dm.y_train[k:k + 1]

    def closure():  # AliG calls it under no_grad, as the module's closure allows
        opt.zero_grad()
        with torch.enable_grad():
            loss = objective(as_weight(p), x, y, LAM)
            loss.backward(create_graph=create_graph)
        return loss

    torch.set_rng_state(_seeded_state(dm.seeds[k], torch.device("cpu")))
    for _ in range(steps):
        closure()
        opt.step(closure)
    return as_weight(p.detach())[0]


def assert_same_run(w: torch.Tensor, expected: torch.Tensor, w0: torch.Tensor) -> None:
    """w is the run ``expected`` is, up to float32 rounding (sparse closed form against dense
    autograd): within 1e-3 of how far the weights moved, which moved by more than 1e-3."""
    moved = (expected - w0).abs().max().item()
    assert moved > 1e-3  # the steps moved it
    assert (w - expected).abs().max().item() <= 1e-3 * moved


@pytest.mark.parametrize("name, lr, kwargs", [
    ("LBFGS", 0.1, {"max_iter": 3}),  # (20 evaluations at 0.5 overshoot: chaotic in rounding)
    ("pytorch_optimizer:SAM", 0.5, {"rho": 0.05}),
    ("alig", 0.5, {}),
])
def test_closure_optimizers_evaluate_their_own_replica_on_the_steps_batch(name, lr, kwargs):
    cfg = tiny_config("synthetic_gd", *STEPS, f"optim.name={name}", f"optim.lr={lr}",
                      *(f"optim.kwargs.{k}={v}" for k, v in kwargs.items()))
    w0, w, dm = fit(cfg, 4)
    for k in range(len(SEEDS)):
        assert_same_run(w[k], reference(name, lr, dm, k, w0, 4, **kwargs), w0[k])


def test_sam_is_gd_at_the_perturbed_point():
    """pytorch-optimizer's SAM over GD, one step: w - lr grad L(w + rho g / ||g||), g = grad
    L(w), each replica with its own norm."""
    lr, rho = 0.5, 0.05
    cfg = tiny_config("synthetic_gd", *STEPS, "optim.name=pytorch_optimizer:SAM",
                      f"optim.lr={lr}", f"optim.kwargs.rho={rho}")
    w0, w1, dm = fit(cfg, 1)
    for k in range(len(SEEDS)):
        x, y = dense(dm.x_train)[k:k + 1], dm.y_train[k:k + 1]
        wk = w0[k:k + 1].double().requires_grad_(True)
        g = torch.autograd.grad(objective(wk, x.double(), y.double(), LAM), wk)[0]
        e = (wk + rho * g / (g.norm() + 1e-12)).detach().requires_grad_(True)
        g2 = torch.autograd.grad(objective(e, x.double(), y.double(), LAM), e)[0]
        torch.testing.assert_close(w1[k].double(), (wk - lr * g2)[0].detach(), rtol=1e-4,
                                   atol=1e-7)


@pytest.mark.parametrize("name, kwargs", [
    # eps 1e-3: with the default 1e-8 AdaHessian divides by Hessian estimates near 0 and moves
    # W by ~100 in a step, where float32 rounding decides the digits
    ("adahessian", {"eps": 1e-3}),
    ("sophiah", {}),
])
def test_hessian_optimizers_get_the_gradient_with_its_graph(name, kwargs):
    """AdaHessian / SophiaH take Hutchinson estimates z * (H z) of the Hessian diagonal from
    the gradient's graph: with the module's gradients (twice-differentiable forward, replica
    by replica) they step as on the dense objective with create_graph=True, each replica with
    its own random probes z."""
    lr = 0.05
    cfg = tiny_config("synthetic_adam", *STEPS, f"optim.name={name}", f"optim.lr={lr}",
                      *(f"optim.kwargs.{k}={v}" for k, v in kwargs.items()))
    w0, w, dm = fit(cfg, 4)
    for k in range(len(SEEDS)):
        expected = reference(name, lr, dm, k, w0, 4, create_graph=True, **kwargs)
        assert_same_run(w[k], expected, w0[k])


@pytest.mark.parametrize("name", ["schedulefreeadamw", "heavyball:SFAdamW"])
def test_schedule_free_runs_are_evaluated_and_saved_at_the_eval_point(name, tmp_path):
    """Between training steps a schedule-free optimizer is in ``eval()`` mode: the test error,
    the saved weights (and the alignment, checkpoints) are those of the point x it returns,
    not of the point y it takes gradients at."""
    lr, steps = 1e-2, 40
    cfg = tiny_config("synthetic_adam", f"optim.name={name}", f"optim.lr={lr}",
                      f"trainer.max_steps={steps}", "trainer.eval_every=20",
                      "trainer.log_every=10", "align.every=10", "model.sigma_0=0.1",
                      tmp_path=tmp_path)
    summary = run(cfg)
    assert summary["optimizer"]["adapters"] == "schedule-free"
    dm = build_datamodule(cfg)
    dm.setup()
    q = build_module(cfg, dm).net.replica_weights[0]  # W(0), the run's
    opt = build_optimizer([q], name, lr)
    x, y = dense(dm.x_train), dm.y_train
    opt.train()
    for _ in range(steps):
        opt.zero_grad()
        objective(as_weight(q), x, y, LAM).backward()
        opt.step()
    y_point = as_weight(q.detach())[0].clone()
    opt.eval()
    x_point = as_weight(q.detach())[0]
    apart = (x_point - y_point).abs().max().item()
    assert apart > 1e-2  # the two points differ
    saved = torch.load(tmp_path / "run" / "weights.pt")["weight"][0]
    # the saved weights are x's up to rounding (the sparse closed form against dense autograd:
    # ~1e-5 for pytorch-optimizer's, ~1e-3 in a few coordinates for heavyball's), far from y's
    assert (saved - x_point).abs().max().item() < 0.1 * apart
    errors = {}
    for label, w in (("x", x_point), ("y", y_point)):
        F_j = torch.einsum("kbpd,djr->kbpjr", dense(dm.x_test), w).relu().pow(3).sum(dim=(2, 4))
        errors[label] = float(((F_j[..., 0] - F_j[..., 1] > 0) != (dm.y_test > 0)).float().mean())
    assert summary["test_error"] == pytest.approx(errors["x"], abs=1e-6)


class Recorder(torch.optim.SGD):
    """SGD that records the shapes of the parameters it is given."""

    shapes: list = []

    def step(self, closure=None):
        Recorder.shapes.append([tuple(p.shape) for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def test_a_matrix_optimizer_sees_each_replicas_2m_by_d_matrix():
    Recorder.shapes = []
    cfg = tiny_config("synthetic_gd", "trainer.max_steps=2", "run.replicas=3",
                      "optim.name=test_adapters:Recorder")
    fit(cfg, 2)
    assert Recorder.shapes == [[(40, 1000)]] * 6  # 3 replicas' own optimizers, 2 steps


def test_muon_runs_with_its_groups_marked(tmp_path):
    cfg = tiny_config("synthetic_adam", "trainer.max_steps=20", "trainer.eval_every=10",
                      "trainer.log_every=10", "align.every=10", "run.replicas=2",
                      "optim.name=muon", "optim.lr=0.02", tmp_path=tmp_path)
    summary = run(cfg)
    assert summary["status"] == "completed"
    assert summary["optimizer"]["adapters"] == "muon groups"
    assert summary["optimizer"]["layout"] == "replicas"
