"""The convex control (Theorem 4.2): the linear model's objective, its closed-form gradient,
the L-BFGS minimiser and the comparison of solutions."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_datamodule

from adamgap.config import load_config, to_yaml
from adamgap.data import SyntheticDataModule
from adamgap.errors import ConfigError
from adamgap.network import PatchCNN
from adamgap.outputs import write_text
from adamgap.theory import convex

LAM = 0.01


@pytest.fixture(scope="module")
def data() -> SyntheticDataModule:
    return synthetic_datamodule([0, 1], d=60, n=20, n_test=200, s=6)


@pytest.fixture(scope="module")
def w_star(data: SyntheticDataModule) -> torch.Tensor:
    return convex.minimiser(data.train, LAM, m=2)


def test_scores_are_the_linear_patch_network(data):
    net = PatchCNN(data.d, m=3, q=1.0, sigma_0=0.1, seeds=[0, 1], linear=True)
    with torch.no_grad():
        expected = net(data.x_train)  # the training code's forward (sparse path)
    got = convex.linear_scores(data.train, net.weight.detach())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_closed_form_gradient_matches_autograd(data):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, data.d, 2, 3, dtype=torch.float64, generator=g)
    w.requires_grad_(True)
    convex.objective(w, data.train, LAM).sum().backward()
    torch.testing.assert_close(convex.gradient(w.detach(), data.train, LAM), w.grad)


def test_minimiser_satisfies_first_order_condition(data, w_star):
    grad = convex.gradient(w_star, data.train, LAM).flatten(1).norm(dim=1)
    assert w_star.dtype == torch.float64 and w_star.shape == (2, data.d, 2, 2)
    assert (grad < 1e-7).all()
    assert (convex.certified_distance(w_star, data.train, LAM) < 1e-6).all()
    assert (w_star.flatten(1).norm(dim=1) > 0.1).all()  # not the trivial point


def test_minimiser_is_the_strongly_convex_minimum(data, w_star):
    # L(W* + D) >= L(W*) + lam/2 ||D||^2 for every D (lam-strong convexity at a minimum)
    base = convex.objective(w_star, data.train, LAM)
    g = torch.Generator().manual_seed(2)
    for scale in (1e-3, 1e-1, 1.0):
        delta = scale * torch.randn(w_star.shape, dtype=torch.float64, generator=g)
        moved = convex.objective(w_star + delta, data.train, LAM)
        assert (moved >= base + 0.5 * LAM * delta.flatten(1).square().sum(1) - 1e-12).all()


def test_minimiser_splits_u_evenly_over_filters(data, w_star):
    # min ||W||^2 at fixed u = sum_r w_{+1,r} - w_{-1,r} puts u/(2m) in every filter
    u = convex.direction(w_star)
    m = w_star.shape[-1]
    torch.testing.assert_close(w_star[:, :, 0], (u / (2 * m))[..., None].expand(-1, -1, m))
    torch.testing.assert_close(w_star[:, :, 1], -(u / (2 * m))[..., None].expand(-1, -1, m))


def test_minimiser_needs_positive_lam(data):
    with pytest.raises(ValueError, match="lam"):
        convex.minimiser(data.train, 0.0, m=1)


def test_distance_and_agreement(data, w_star):
    assert convex.relative_distance(w_star, w_star).abs().max() == 0
    flipped = convex.relative_distance(-w_star, w_star)
    torch.testing.assert_close(flipped, torch.full_like(flipped, 2.0))
    ref = convex.evaluate(w_star, data.train, data.test, LAM)
    assert (ref.train_error == 0).all()
    assert convex.agreement(ref, ref).min() == 1
    opposite = convex.evaluate(-w_star, data.train, data.test, LAM)
    assert convex.agreement(ref, opposite).max() == 0
    torch.testing.assert_close(opposite.test_error, 1 - ref.test_error)


def test_compare_runs_refuses_different_data(tmp_path):
    for name, extra in (("gd", []), ("adam", ["data.alpha=0.3"])):
        cfg = load_config(f"convex_{name}", extra)
        write_text(tmp_path / name / "config.yaml", to_yaml(cfg))
    with pytest.raises(ConfigError, match="same data"):
        convex.compare_runs({"adam": tmp_path / "adam", "gd": tmp_path / "gd"})


@pytest.mark.parametrize("name", ["convex_adam", "convex_gd", "convex_adamw", "convex_signgd"])
def test_convex_confs_are_strongly_convex(name):
    cfg = load_config(name)
    assert cfg.model.name == "linear" and cfg.optim.lam > 0
    assert cfg.optim.name == name.removeprefix("convex_")
