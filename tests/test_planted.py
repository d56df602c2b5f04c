"""The planted feature-patch task (Definition 3.1 with real images): its construction, its
density knobs and what it exposes to the alignment callback."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_config

from adamgap.errors import ConfigError
from adamgap.tasks.planted import PlantedDataModule, dct_matrix, feature_vectors
from adamgap.train import build_datamodule

# Fashion-MNIST T-shirt (+1) vs Trouser (-1); 784 pixels embedded in R^1000 with the noise kept
# outside them (noise_coords=outside), so the image part and the Gaussian part of every patch
# can be read apart
SMALL = ["data.n=40", "data.n_test=40", "data.s=20", "data.noise_coords=outside",
         "data.normalize=unit"]


def planted(*overrides: str, name: str = "fmnist_patch_adam") -> PlantedDataModule:
    dm = build_datamodule(tiny_config(name, *SMALL, *overrides))
    dm.setup()
    return dm


def dense(dm: PlantedDataModule, which: str = "train") -> torch.Tensor:
    return getattr(dm, which).inputs(sparse=False)  # (K, N, P, d)


def rows_of(pool: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """For every row of x (N, D), the index of the identical pool row (-1 if none)."""
    dist, index = torch.cdist(x, pool, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    return torch.where(dist < 1e-5, index, -1)


def test_label_image_sits_in_exactly_one_patch_and_noise_patches_follow_the_config():
    dm = planted("data.alpha=0.2", "data.patches=3")
    x, y, where = dense(dm)[0], dm.train.y[0], dm.train.feature_patch[0]  # (n, P, d), (n,)
    D, s, alpha = dm.D, dm.s, dm.alpha
    feat = torch.arange(3) == where[:, None]  # (n, P)
    image, rest = x[..., :D], x[..., D:]
    for j, own, other in ((1.0, *dm.pools["train"]), (-1.0, *dm.pools["train"][::-1])):
        mine = y == j
        # the feature patch: an image of class y, nothing else
        features = image[feat & mine[:, None]]
        assert (rows_of(own, features) >= 0).all() and not rest[feat & mine[:, None]].any()
        # a noise patch: alpha x an opposite-class image, plus s Gaussian coordinates
        noise = ~feat & mine[:, None]
        assert (rows_of(other, image[noise] / alpha) >= 0).all()
        assert (rows_of(own, image[noise]) == -1).all()
        assert ((rest[noise] != 0).sum(-1) == s).all()
    assert set(where.tolist()) == {0, 1, 2}  # positions vary
    values = rest[~feat]
    std = values[values != 0].std().item()
    assert abs(std - 1 / math.sqrt(s)) < 0.1 / math.sqrt(s)  # sigma_p = 1/sqrt(s)


def test_same_class_feature_noise_is_minus_alpha_times_another_own_image():
    dm = planted("data.alpha=0.5", "data.feature_noise=same")
    x, y, where = dense(dm)[0], dm.train.y[0], dm.train.feature_patch[0]
    rows = torch.arange(dm.n)
    image, noise_image = x[rows, where, : dm.D], x[rows, 1 - where, : dm.D] / -0.5
    for j, own in ((1.0, dm.pools["train"][0]), (-1.0, dm.pools["train"][1])):
        a, b = rows_of(own, image[y == j]), rows_of(own, noise_image[y == j])
        assert (a >= 0).all() and (b >= 0).all() and (a != b).all()


def test_same_seed_same_data_and_replicas_are_single_runs():
    a, b = planted("seed=3"), planted("seed=3")
    assert torch.equal(dense(a), dense(b)) and torch.equal(dense(a, "test"), dense(b, "test"))
    ensemble = planted("seed=2", "run.replicas=2")
    assert torch.equal(dense(ensemble)[1], dense(a)[0])
    assert torch.equal(ensemble.features[1], a.features[0])
    assert not torch.equal(dense(ensemble)[0], dense(a)[0])


def test_features_are_the_unit_mean_feature_patch_of_each_class():
    dm = planted()
    x, y, where = dense(dm)[0], dm.train.y[0], dm.train.feature_patch[0]
    u = x[torch.arange(dm.n), where]  # (n, d)
    for row, j in ((0, 1.0), (1, -1.0)):
        mean = u[y == j].mean(0)
        assert torch.allclose(dm.features[0, row], mean / mean.norm(), atol=1e-6)
    assert not dm.features[..., dm.D:].any()
    assert dm.train_noise.shape == (1, dm.n, 1, dm.d)


def test_top_k_feature_has_k_coordinates_and_the_ratios_are_recorded():
    dm = planted("data.feature_k=1", "data.alpha=0")
    u = dm.feature_patches()[0]
    assert ((u != 0).sum(1) == 1).all() and torch.allclose(u.norm(dim=1), torch.ones(dm.n))
    extras = dm.summary_extras()
    assert extras["mu_l1_l2"] == pytest.approx([1.0])
    # alpha = 0: xi is s Gaussian coordinates, E ||xi||_1 / ||xi||_2 ~ sqrt(2 s / pi)
    assert extras["xi_l1_l2"][0] == pytest.approx(math.sqrt(2 * dm.s / math.pi), rel=0.1)
    dense_image = planted("data.alpha=0").summary_extras()
    assert dense_image["mu_l1_l2"][0] > 10  # a whole Fashion-MNIST image is far from sparse


def test_dct_basis_is_orthonormal_and_centering_makes_classes_opposite():
    m = dct_matrix(28)
    assert torch.allclose(m @ m.T, torch.eye(28), atol=1e-5)
    x = torch.rand(5, 1, 28, 28)
    u = feature_vectors(x, "dct", "none", None)
    assert torch.allclose(u.norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-4)
    assert torch.allclose(feature_vectors(x, "dct", "unit", 3).count_nonzero(1),
                          torch.tensor(3))
    cos = planted("data.normalize=centered", "data.basis=dct").summary_extras()["mu_cosine"][0]
    assert cos < -0.9  # T-shirt and trouser mean images point in nearly opposite directions


def test_image_embedding_and_noise_support_are_checked():
    with pytest.raises(ConfigError, match="data.d=500 .*image dimension D=784"):
        tiny_config("fmnist_patch_adam", "data.d=500")
    with pytest.raises(ConfigError, match="data.s=300 .*0..216"):
        tiny_config("fmnist_patch_adam", "data.noise_coords=outside", "data.s=300")
    with pytest.raises(ConfigError, match="data.classes"):
        tiny_config("fmnist_patch_adam", "data.classes=[0,1,2]")
    with pytest.raises(ConfigError, match="data.n_test=3000"):
        build_datamodule(tiny_config("fmnist_patch_adam", "data.n_test=3000"))
