"""Optimizers by name (``adamgap/optimizers/``), checked against their update formulas: the
paper's GD and Adam (L2 inside the gradient), AdamW (decoupled decay), sign GD, SGD, and any
``torch.optim`` class; where the other collections' classes come from, what the suite sets for
them, how they must be stepped, and one optimizer per replica. Training goes through Lightning
exactly as ``adamgap.train.run`` does."""

from __future__ import annotations

import importlib.metadata
import inspect

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from omegaconf import OmegaConf

from adamgap.optimizers import (
    Contract,
    ReplicaOptimizers,
    SignGD,
    build_optimizer,
    contract_of,
    resolve,
    resolve_optimizer_class,
    sources,
)
from adamgap.patches import SparsePatches
from adamgap.train import build_datamodule, build_module


def fit(cfg, steps: int):
    """W(0), W(steps) and the datamodule of ``steps`` optimizer steps (no evaluation)."""
    cfg = OmegaConf.merge(cfg, {"trainer": {"max_steps": steps}})  # chunks that divide steps
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    w0 = module.net.weight.detach().clone()
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return w0, module.net.weight.detach().clone(), dm


def dense(x) -> torch.Tensor:
    return x.to_dense() if isinstance(x, SparsePatches) else x


def objective(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float,
              q: float = 3.0) -> torch.Tensor:
    """Sum over replicas of mean log(1 + exp(-y f)) + (lam/2)||W||_F^2, from dense inputs."""
    W = weight.permute(0, 2, 3, 1)  # (K, d, 2, m) -> (K, 2, m, d)
    F_j = torch.einsum("kbpd,kjrd->kbpjr", x, W).relu().pow(q).sum(dim=(2, 4))  # (K, B, 2)
    f = F_j[..., 0] - F_j[..., 1]
    return (F.softplus(-y * f).mean(1) + 0.5 * lam * W.square().sum(dim=(1, 2, 3))).sum()


def gradient(weight, x, y, lam):
    w = weight.clone().requires_grad_(True)
    return torch.autograd.grad(objective(w, dense(x).to(w), y.to(w), lam), w)[0]


TINY_STEPS = ("run.replicas=2", "trainer.max_steps=6", "model.sigma_0=0.1")


def test_gd_equals_full_batch_gradient_descent_without_momentum():
    lr, lam = 0.5, 0.05
    cfg = tiny_config("synthetic_gd", *TINY_STEPS, f"optim.lr={lr}", f"optim.lam={lam}",
                      "optim.momentum=0.9")  # momentum belongs to sgd: gd ignores it
    w0, w6, dm = fit(cfg, 6)
    w = w0
    for _ in range(6):
        w = w - lr * gradient(w, dm.x_train, dm.y_train, lam)
    assert (w - w0).abs().max() > 1e-3  # the steps are not negligible
    torch.testing.assert_close(w6, w, rtol=1e-4, atol=1e-7)


def test_sgd_steps_on_the_mini_batch_of_each_step_with_nesterov_momentum():
    lr, lam = 0.5, 0.05
    cfg = tiny_config("synthetic_sgd", *TINY_STEPS, "data.batch_size=10", f"optim.lr={lr}",
                      f"optim.lam={lam}", "optim.momentum=0.9", "optim.nesterov=true")
    w0, w6, dm = fit(cfg, 6)
    w = w0.clone().requires_grad_(True)
    reference = torch.optim.SGD([w], lr=lr, momentum=0.9, nesterov=True)
    for t in range(6):
        x, y = dm.train_batch(t)
        assert y.shape == (2, 10)
        reference.zero_grad()
        objective(w, dense(x), y, lam).backward()
        reference.step()
    torch.testing.assert_close(w6, w.detach(), rtol=1e-4, atol=1e-7)


def test_adam_is_the_adam_formula_on_the_gradient_with_l2_inside():
    """The paper's Adam: g = grad of (logistic + (lam/2)||W||^2), then PyTorch's Adam update
    with bias correction, m/(sqrt(v)+eps), betas and eps from the config."""
    lr, lam, (b1, b2), eps = 1e-2, 0.05, (0.8, 0.99), 1e-6
    cfg = tiny_config("synthetic_adam", *TINY_STEPS, f"optim.lr={lr}", f"optim.lam={lam}",
                      f"optim.betas=[{b1},{b2}]", f"optim.eps={eps}")
    w0, w6, dm = fit(cfg, 6)
    w, m, v = w0.double(), 0.0, 0.0
    for t in range(1, 7):
        g = gradient(w, dm.x_train, dm.y_train, lam)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(w6.double(), w, rtol=1e-4, atol=1e-6)


def test_adamw_decouples_the_decay_and_differs_from_adam_with_l2():
    """One step from the same W(0) on the same data, with lambda = weight_decay = c. Adam's first
    step is -lr (g + c W)/(|g + c W| + eps): the decay is normalised, each coordinate moves by
    about lr. AdamW's is -lr g/(|g| + eps) - lr c W: the decay stays proportional to W."""
    lr, c, eps = 1e-2, 0.5, 1e-4  # eps well above float32 noise in tiny gradients
    common = (*TINY_STEPS, f"optim.lr={lr}", f"optim.eps={eps}")
    w0, w_adam, dm = fit(tiny_config("synthetic_adam", *common, f"optim.lam={c}"), 1)
    w0_, w_adamw, _ = fit(tiny_config("synthetic_adamw", *common, f"optim.weight_decay={c}",
                                      "optim.lam=0.3"), 1)  # lam is not used by adamw
    assert torch.equal(w0, w0_)
    g = gradient(w0.double(), dm.x_train, dm.y_train, 0.0)  # the data term alone
    w = w0.double()
    expected_adam = w - lr * (g + c * w) / ((g + c * w).abs() + eps)
    expected_adamw = w * (1 - lr * c) - lr * g / (g.abs() + eps)
    torch.testing.assert_close(w_adam.double(), expected_adam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_adamw.double(), expected_adamw, rtol=1e-4, atol=1e-6)
    assert (w_adam - w_adamw).abs().max() > lr / 2


def test_adam_with_l2_is_torch_adam_on_grad_plus_lambda_w():
    lr, lam = 1e-2, 0.5
    w0, w_adam, dm = fit(tiny_config("synthetic_adam", *TINY_STEPS, f"optim.lr={lr}",
                                     f"optim.lam={lam}"), 1)
    w = w0.clone().requires_grad_(True)
    reference = torch.optim.Adam([w], lr=lr)  # no weight_decay, plain (unfused) Adam
    w.grad = gradient(w0, dm.x_train, dm.y_train, 0.0) + lam * w0
    reference.step()
    torch.testing.assert_close(w_adam, w.detach(), rtol=1e-5, atol=1e-8)


def test_signgd_step_is_w_minus_lr_sign_grad():
    w = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
    g = torch.tensor([[1e-9, -3.0, 0.0], [2.0, -1e-12, 5.0]])
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    unused = torch.nn.Parameter(torch.ones(2))  # no gradient: left alone
    opt = build_optimizer([p, unused], "signgd", lr=0.1)
    assert isinstance(opt, SignGD)
    opt.step()
    assert torch.equal(p.detach(), w - 0.1 * torch.sign(g))
    assert torch.equal(unused.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="lr"):
        SignGD([p], lr=0.0)


def test_signgd_in_training_steps_by_lr_per_coordinate():
    lr = 1e-3
    w0, w1, dm = fit(tiny_config("synthetic_signgd", *TINY_STEPS, f"optim.lr={lr}"), 1)
    g = gradient(w0, dm.x_train, dm.y_train, 1e-5)  # the paper's lambda
    torch.testing.assert_close(w1, w0 - lr * g.sign(), rtol=0, atol=1e-7)


def test_builtin_names_get_the_paper_settings():
    p = [torch.nn.Parameter(torch.zeros(3))]
    kw = {"betas": (0.8, 0.9), "eps": 1e-6, "momentum": 0.7, "nesterov": True,
          "weight_decay": 0.2}
    gd = build_optimizer(p, "gd", 0.1, **kw).param_groups[0]
    assert (gd["momentum"], gd["nesterov"], gd["weight_decay"]) == (0.0, False, 0.0)
    sgd = build_optimizer(p, "sgd", 0.1, **kw).param_groups[0]
    assert (sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (0.7, True, 0.0)
    adam = build_optimizer(p, "adam", 0.1, **kw)
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.9), 1e-6, 0.0)
    adamw = build_optimizer(p, "adamw", 0.1, **kw)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.2


@pytest.mark.parametrize("name, cls", [
    ("RMSprop", torch.optim.RMSprop), ("NAdam", torch.optim.NAdam),
    ("torch.optim:Adagrad", torch.optim.Adagrad), ("adamgap.optimizers:SignGD", SignGD)])
def test_any_torch_optimizer_by_name_or_module_class(name, cls):
    assert resolve_optimizer_class(name) is cls
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(p, name, 0.25, kwargs={"alpha": 0.9} if cls is torch.optim.RMSprop
                          else {})
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.25
    if cls is torch.optim.RMSprop:
        assert opt.param_groups[0]["alpha"] == 0.9  # optim.kwargs reach the constructor


@pytest.mark.parametrize("name", ["adamm", "rms_prop", "no_such_module:Adam", "torch.optim:Nope",
                                  "torch.nn:Linear", "math:pi", "Tensor", "Optimizer"])
def test_unknown_optimizer_names_raise(name):
    with pytest.raises(ValueError):
        resolve_optimizer_class(name)
    with pytest.raises(ValueError):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], name, 0.1)


# -- where optimizers come from (adamgap/optimizers/sources.py) -------------------------------
@pytest.mark.parametrize("name, package, cls_name", [
    ("adan", "pytorch_optimizer", "Adan"), ("prodigy", "pytorch_optimizer", "Prodigy"),
    ("heavyball:SOAP", "heavyball", "SOAP"), ("lion_pytorch:Lion", "lion-pytorch", "Lion"),
    ("pytorch_optimizer:SAM", "pytorch_optimizer", "SAM"), ("Muon", "torch", "Muon"),
    ("signgd", "adamgap", "SignGD")])
def test_short_names_of_every_source_resolve_with_package_and_version(name, package, cls_name):
    found = resolve(name)
    assert found.cls.__name__ == cls_name and found.package == package
    assert found.version == importlib.metadata.version(package)


def test_the_registry_names_are_pytorch_optimizers_and_rmsprop_is_torchs():
    import pytorch_optimizer

    assert set(sources.pytorch_optimizer_names()) == set(
        pytorch_optimizer.get_supported_optimizers())
    assert resolve("rmsprop").cls is torch.optim.RMSprop  # the registry re-exports torch's


def test_heavyball_compiles_nothing_at_run_time():
    """heavyball would torch.compile its kernels on first use; resolving it switches that off
    (``heavyball.utils.compile_mode``: the test fails loudly if the switch goes away)."""
    import torch._dynamo.utils

    opt = build_optimizer([torch.nn.Parameter(torch.randn(6, 4))], "heavyball:AdamW", 1e-2)
    import heavyball

    assert heavyball.utils.compile_mode is None
    before = dict(torch._dynamo.utils.counters["frames"])
    for _ in range(3):
        opt.param_groups[0]["params"][0].grad = torch.randn(6, 4)
        opt.step()
    assert dict(torch._dynamo.utils.counters["frames"]) == before


# -- what the suite sets (adamgap/optimizers/build.py) -----------------------------------------
def test_every_optimizers_own_weight_decay_is_off_unless_the_config_sets_it():
    p = [torch.nn.Parameter(torch.zeros(3, 2))]
    for name in ("adalite", "heavyball:SOAP", "Muon", "tiger"):  # defaults 0.01 .. 0.1
        assert inspect.signature(resolve(name).cls.__init__).parameters["weight_decay"].default
        assert build_optimizer(p, name, 1e-3).param_groups[0]["weight_decay"] == 0.0
    kept = build_optimizer(p, "adalite", 1e-3, kwargs={"weight_decay": 0.3})
    assert kept.param_groups[0]["weight_decay"] == 0.3


def test_required_arguments_come_from_the_run():
    p = [torch.nn.Parameter(torch.zeros(3, 2))]
    ranger = build_optimizer(p, "ranger21", 1e-3, max_steps=700, n=40)
    assert ranger.start_warm_down + ranger.num_warm_down_iterations == 700  # its schedule's T
    bsam = build_optimizer(p, "bsam", 1e-3, max_steps=700, n=40)
    assert bsam.num_data == 40
    sam = build_optimizer(p, "pytorch_optimizer:SAM", 0.3)
    assert type(sam.base_optimizer) is torch.optim.SGD
    assert sam.base_optimizer.param_groups[0]["momentum"] == 0
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.3
    adam_sam = build_optimizer(p, "pytorch_optimizer:SAM", 0.3,
                               kwargs={"base_optimizer": "adam"})
    assert type(adam_sam.base_optimizer) is torch.optim.Adam
    wrapper = build_optimizer(p, "heavyball:SAMWrapper", 0.02)
    assert wrapper.wrapped_optimizer.param_groups[0]["lr"] == 0.02


def test_muon_groups_mark_matrices():
    matrix, vector = torch.nn.Parameter(torch.zeros(4, 6)), torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer([matrix, vector], "muon", 0.02)
    flags = {id(p): g["use_muon"] for g in opt.param_groups for p in g["params"]}
    assert flags == {id(matrix): True, id(vector): False}


def test_muon_orthogonalises_a_replicas_matrix():
    """One step of pytorch-optimizer's Muon on a (2m, d) matrix moves it by a multiple of an
    (approximately) orthogonal matrix: all singular values of the update about equal."""
    gen = torch.Generator().manual_seed(0)
    # a gradient with singular values spread over two decades (rows scaled 1 .. 0.01)
    g = torch.randn(40, 1000, generator=gen) * torch.logspace(0, -2, 40)[:, None]
    p = torch.nn.Parameter(torch.zeros(40, 1000))
    opt = build_optimizer([p], "muon", 0.02, kwargs={"nesterov": False})
    p.grad = g
    opt.step()
    sv = torch.linalg.svdvals(p.detach())
    assert sv.min() > 0.5 * sv.max()
    assert torch.linalg.svdvals(g).min() < 0.05 * torch.linalg.svdvals(g).max()  # g is not


def test_contracts_of_the_libraries():
    assert contract_of(torch.optim.LBFGS).closure
    assert contract_of(resolve("alig").cls).closure
    assert contract_of(resolve("pytorch_optimizer:SAM").cls).closure
    assert contract_of(resolve("heavyball:SAMWrapper").cls).closure
    assert contract_of(resolve("adahessian").cls).create_graph
    assert contract_of(resolve("sophiah").cls).create_graph
    assert contract_of(resolve("schedulefreeadamw").cls).schedule_free
    assert contract_of(resolve("heavyball:SFAdamW").cls).schedule_free
    assert contract_of(resolve("muon").cls).muon_groups
    assert contract_of(torch.optim.Adam) == Contract()

    class NeedsClosure(torch.optim.SGD):
        def step(self, closure):
            return super().step(closure)

    assert contract_of(NeedsClosure).closure  # a researcher's class: its signature says so


def test_replica_optimizers_step_each_replica_with_its_own_lr_stream_and_state():
    seeds = [3, 4]
    ps = [torch.nn.Parameter(torch.ones(2, 3)) for _ in seeds]
    opt = ReplicaOptimizers([build_optimizer([p], "sgd", lr)
                             for p, lr in zip(ps, (0.1, 1.0), strict=True)], seeds)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    for p in ps:
        p.grad = torch.ones(2, 3)
    opt.step()
    scheduler.step()
    assert torch.allclose(ps[0].detach(), torch.full((2, 3), 0.9))
    assert torch.allclose(ps[1].detach(), torch.zeros(2, 3))
    assert [g["lr"] for g in opt.optimizers[0].param_groups] == [0.05]  # the scheduler's
    state = opt.state_dict()
    again = ReplicaOptimizers([build_optimizer([p], "sgd", 1.0) for p in ps], seeds)
    again.load_state_dict(state)
    assert [o.param_groups[0]["lr"] for o in again.optimizers] == [0.05, 0.5]
    assert all(torch.equal(a, b) for a, b in zip(again.rng, opt.rng, strict=True))


def test_a_replicas_random_stream_is_its_own():
    """An optimizer drawing random numbers draws replica k's from a stream seeded by seed k:
    the same as a single run with that seed, whatever the other replicas draw."""
    class Noisy(torch.optim.Optimizer):
        def __init__(self, params, lr=1.0):
            super().__init__(params, {"lr": lr})

        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.data.add_(torch.randn_like(p), alpha=g["lr"])

    def replica(seeds):
        ps = [torch.nn.Parameter(torch.zeros(4)) for _ in seeds]
        opt = ReplicaOptimizers([Noisy([p]) for p in ps], seeds)
        torch.randn(7)  # the global stream moves on: no replica may notice
        opt.step()
        opt.step()
        return [p.detach() for p in ps]

    both = replica([5, 6])
    assert torch.equal(both[1], replica([6])[0]) and torch.equal(both[0], replica([5])[0])
    assert not torch.equal(both[0], both[1])
