"""The two-layer patch CNN of Section 3 (``adamgap/network.py``, ``adamgap/patches.py``) and the
objective of Section 4 (``adamgap/objective.py``: mean logistic loss + (lam/2)||W||_F^2)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_config
from torch.func import functional_call

from adamgap import objective
from adamgap.network import PatchCNN
from adamgap.patches import SparsePatches, to_dense_patches
from adamgap.train import build_datamodule, build_module

K, B, P, D, M = 2, 4, 3, 6, 3  # replicas, examples, patches, d, filters per class


def random_coordinates(seed: int = 0, L: int = 3, dtype=torch.float64):
    """Per-patch coordinate lists (K, B, P, L) with repeats and zeros, as the data has."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(D, (K, B, P, L), generator=g)
    value = torch.randn(K, B, P, L, generator=g, dtype=dtype)
    value[0, 0, 0] = 0.0  # an all-zero patch
    return index, value


def net64(q: float = 3.0, linear: bool = False) -> PatchCNN:
    # a large init so that many pre-activations are positive: the formula is exercised
    return PatchCNN(D, M, q, sigma_0=1.0, seeds=[5, 6], linear=linear).double()


def formula(net: PatchCNN, x: torch.Tensor) -> torch.Tensor:
    """f(W, x) = F_{+1} - F_{-1}, F_j = sum_r sum_p sigma(<w_{j,r}, x_p>), by explicit loops."""
    W = net.filters.detach()  # (K, 2, m, d): row 0 is j = +1, row 1 is j = -1
    out = torch.zeros(K, B, dtype=x.dtype)
    for k in range(K):
        for b in range(B):
            F_j = [0.0, 0.0]
            for j in range(2):
                for r in range(M):
                    for p in range(P):
                        z = sum(float(W[k, j, r, i]) * float(x[k, b, p, i]) for i in range(D))
                        F_j[j] += z if net.linear else max(z, 0.0) ** net.q
            out[k, b] = F_j[0] - F_j[1]
    return out


@pytest.mark.parametrize("q", [3.0, 2.0, 1.5])
def test_forward_equals_the_formula(q):
    net = net64(q)
    x = to_dense_patches(*random_coordinates(), D)
    expected = formula(net, x)
    assert (expected != 0).all()
    torch.testing.assert_close(net(x), expected)


def test_linear_model_is_the_formula_without_activation():
    net = net64(linear=True)
    x = to_dense_patches(*random_coordinates(), D)
    torch.testing.assert_close(net(x), formula(net, x))
    W = net.filters.detach()  # linear: f = <sum_r w_{+1,r} - w_{-1,r}, sum_p x_p>
    direct = torch.einsum("kd,kbd->kb", W[:, 0].sum(1) - W[:, 1].sum(1), x.sum(2))
    torch.testing.assert_close(net(x), direct)


def test_filters_view_names_the_classes():
    net = net64()
    assert net.weight.shape == (K, D, 2, M) and net.filters.shape == (K, 2, M, D)
    assert torch.equal(net.filters[1, 0, 2], net.weight[1, :, 0, 2])  # w_{+1,3} of replica 1
    assert torch.equal(net.filters[0, 1, 0], net.weight[0, :, 1, 0])  # w_{-1,1} of replica 0


@pytest.mark.parametrize("q", [3.0, 2.0, 1.5, 1.0])
def test_sparse_and_dense_inputs_give_the_same_f_and_gradient(q):
    index, value = random_coordinates()
    sparse = SparsePatches.from_coordinates(index, value, D)
    dense = to_dense_patches(index, value, D)
    assert torch.equal(sparse.to_dense(), dense)
    weights = torch.randn(K, B, dtype=torch.float64)
    results = []
    for x in (sparse, dense):
        net = net64(q)
        f = net(x)
        (f * weights).sum().backward()
        results.append((f.detach(), net.weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("linear", [False, True])
def test_gradcheck_in_float64(sparse, linear):
    index, value = random_coordinates(seed=1)
    x = SparsePatches.from_coordinates(index, value, D) if sparse else to_dense_patches(
        index, value, D)
    net = net64(linear=linear)
    w = net.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: functional_call(net, {"weight": w}, (x,)), (w,))


@pytest.mark.parametrize("q, linear, classes", [(3.0, False, 2), (2.0, False, 2),
                                                (1.5, False, 2), (1.0, False, 2),
                                                (3.0, True, 2), (3.0, False, 3)])
def test_forward_with_vjp_is_forward_and_its_autograd_gradient(q, linear, classes):
    """The closed-form path of the inner loop (no autograd graph) computes the same output
    and, for any cotangent, the same weight gradient as autograd through ``forward``."""
    index, value = random_coordinates(seed=2)
    x = SparsePatches.from_coordinates(index, value, D)
    net = PatchCNN(D, M, q, sigma_0=1.0, seeds=[5, 6], linear=linear, classes=classes).double()
    out = net(x)
    cotangent = torch.randn(out.shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(3))
    (out * cotangent).sum().backward()
    closed, vjp = net.forward_with_vjp(x)
    assert not closed.requires_grad
    torch.testing.assert_close(closed, out.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(vjp(cotangent), net.weight.grad, rtol=1e-12, atol=1e-14)
    assert net.weight.grad.abs().sum() > 0


def test_init_std_is_sigma_0_and_is_fixed_by_the_seed():
    sigma_0, d, m = 0.05, 1000, 20
    w = PatchCNN(d, m, 3.0, sigma_0, seeds=[0]).weight.detach().double()
    N = w.numel()
    assert N == 2 * m * d
    assert abs(w.mean()) < 5 * sigma_0 / math.sqrt(N)
    assert abs(w.std() - sigma_0) < 5 * sigma_0 / math.sqrt(2 * N)
    ensemble = PatchCNN(d, m, 3.0, sigma_0, seeds=[3, 0, 7]).weight
    assert torch.equal(ensemble[1], PatchCNN(d, m, 3.0, sigma_0, seeds=[0]).weight[0])
    assert torch.equal(ensemble[2], PatchCNN(d, m, 3.0, sigma_0, seeds=[7]).weight[0])
    assert not torch.equal(ensemble[0], ensemble[1])
    # the init stream is not the data stream: W(0) does not depend on q or the activation
    assert torch.equal(PatchCNN(d, m, 2.0, sigma_0, seeds=[0], linear=True).weight,
                       PatchCNN(d, m, 3.0, sigma_0, seeds=[0]).weight)


# -- the objective (Section 4) -----------------------------------------------------------------

def module_and_batch(name: str, *overrides: str):
    cfg = tiny_config(name, "run.replicas=2", "optim.lam=0.3", *overrides)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return build_module(cfg, dm), dm.train_batch(0)


def test_l2_term_is_half_lambda_frobenius_norm_squared():
    module, _ = module_and_batch("synthetic_gd")
    W = module.net.filters.detach()  # (K, 2, m, d)
    expected = torch.tensor([0.5 * 0.3 * sum(float(W[k, j, r].dot(W[k, j, r]))
                                             for j in range(2) for r in range(W.shape[2]))
                             for k in range(2)])
    torch.testing.assert_close(objective.l2_penalty(module.params, module.lam, 2), expected)


@pytest.mark.parametrize("name, has_l2", [("synthetic_adam", True), ("synthetic_gd", True),
                                          ("synthetic_signgd", True), ("synthetic_adamw", False)])
def test_training_objective_is_mean_logistic_plus_l2_except_adamw(name, has_l2):
    module, (x, y) = module_and_batch(name)
    with torch.no_grad():
        f = module.net(x)  # (K, n)
        logistic = torch.log1p(torch.exp(-y * f.double())).mean(1)
        norm2 = module.net.weight.double().square().flatten(1).sum(1)
        expected = logistic + (0.5 * 0.3 * norm2 if has_l2 else 0.0)  # per replica
        value, _ = module.objective(x, y)  # what every optimizer step minimizes
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["synthetic_adam", "synthetic_adamw"])
def test_closed_form_objective_and_gradient_equal_autograd(name):
    """``objective.objective_and_gradient`` (the inner loop's path) against autograd through
    ``objective`` (the path Lightning drives), on two replicas, with L2 (adam) and without
    (adamw, whose decay is the optimizer's): same objective, same gradient, same f."""
    module, (x, y) = module_and_batch(name)
    module.double()
    x, y = x.to(torch.float64), y.double()
    value, f = module.objective(x, y)
    value.sum().backward()
    closed = objective.objective_and_gradient(module.net, x, y, module.lam, module.params)
    assert closed is not None
    closed_value, f_closed, (grad,) = closed
    torch.testing.assert_close(closed_value, value.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(f_closed, f.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, module.net.weight.grad, rtol=1e-10, atol=1e-16)
    assert grad.abs().sum() > 0


def test_closed_form_is_declined_where_there_is_none():
    module, (x, y) = module_and_batch("synthetic_adam")
    dense = x.to_dense()
    assert objective.objective_and_gradient(module.net, dense, y, module.lam,
                                            module.params) is None  # dense inputs: autograd
