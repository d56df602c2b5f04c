"""Definition 3.1: the synthetic data model (``adamgap/data.py``, ``adamgap/patches.py``).

Coordinate index 0 here is the paper's coordinate 1 (v = e_1)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import synthetic_datamodule

from adamgap.data import SyntheticDataModule
from adamgap.patches import SparsePatches, to_dense_patches


def datamodule(seeds=(0,), **kwargs) -> SyntheticDataModule:
    return synthetic_datamodule(seeds, **{"d": 60, "n": 12, "n_test": 9, "s": 7, "alpha": 0.3,
                                         **kwargs})


def dense(x) -> torch.Tensor:
    return x.to_dense() if isinstance(x, SparsePatches) else x


def feature_mask(dm: SyntheticDataModule, patches) -> torch.Tensor:
    """(K, N, P) True at each example's feature patch."""
    return torch.arange(dm.patches) == patches.feature_patch[..., None]


@pytest.mark.parametrize("sparse", [True, False])
def test_shapes_for_K_replicas(sparse):
    K, n, n_test, P, d = 3, 12, 9, 3, 60
    dm = datamodule(seeds=(4, 5, 6), patches=P, sparse=sparse)
    assert dm.sparse is sparse
    assert isinstance(dm.x_train, SparsePatches) is sparse
    assert tuple(dm.x_train.shape) == (K, n, P, d)
    assert tuple(dm.x_test.shape) == (K, n_test, P, d)
    assert tuple(dm.train_noise.shape) == (K, n, P - 1, d)
    assert dm.y_train.shape == (K, n) and dm.y_test.shape == (K, n_test)
    assert dm.features.shape == (K, 2, d)
    assert dense(dm.x_train).shape == (K, n, P, d)


@pytest.mark.parametrize("P", [2, 4])
def test_noise_patches_have_s_gaussian_coordinates_and_the_feature_noise(P):
    s, alpha = 7, 0.3
    dm = datamodule(seeds=(0, 1), patches=P, s=s, alpha=alpha)
    for patches, x in ((dm.train, dense(dm.x_train)), (dm.test, dense(dm.x_test))):
        noise = x[~feature_mask(dm, patches)]  # (K*N*(P-1), d)
        y = patches.y[..., None].expand(-1, -1, P)[~feature_mask(dm, patches)]
        assert ((noise[:, 1:] != 0).sum(1) == s).all()  # exactly s outside coordinate 1
        torch.testing.assert_close(noise[:, 0], -alpha * y)  # - alpha y on coordinate 1


def test_feature_patch_is_y_v_in_exactly_one_patch():
    dm = datamodule(seeds=(0, 1), patches=3)
    x, y = dense(dm.x_train), dm.y_train
    v = torch.zeros(dm.d)
    v[0] = 1.0
    is_feature = (x == y[..., None, None] * v).all(-1)  # (K, n, P): patch equals y v
    assert (is_feature.sum(-1) == 1).all()
    assert torch.equal(is_feature, feature_mask(dm, dm.train))
    assert torch.equal(dm.features, torch.stack([v, -v]).expand(2, 2, dm.d))


@pytest.mark.parametrize("sigma_p", [None, 0.37])
def test_empirical_sigma_p(sigma_p):
    s = 25
    dm = datamodule(seeds=(0, 1), d=200, n=400, s=s, sigma_p=sigma_p)
    expected = 1 / math.sqrt(s) if sigma_p is None else sigma_p
    x = dense(dm.x_train)[~feature_mask(dm, dm.train)][:, 1:]
    values = x[x != 0].double()
    N = values.numel()
    assert N == 2 * 400 * s
    # standard errors of the sample mean and std of N Gaussians: sigma/sqrt(N), sigma/sqrt(2N)
    assert abs(values.mean()) < 5 * expected / math.sqrt(N)
    assert abs(values.std() - expected) < 5 * expected / math.sqrt(2 * N)


def test_noise_coordinates_are_uniform_outside_the_feature():
    dm = datamodule(seeds=(0,), d=21, n=1000, s=5)
    x = dense(dm.x_train)[~feature_mask(dm, dm.train)]  # (1000, 21)
    counts = (x[:, 1:] != 0).sum(0).double()  # per coordinate 2..d: Binomial(1000, 5/20)
    p = 5 / 20
    assert (counts - 1000 * p).abs().max() < 5 * math.sqrt(1000 * p * (1 - p))


@pytest.mark.parametrize("n", [12, 13])
def test_balanced_labels_are_exactly_half(n):
    dm = datamodule(seeds=range(5), n=n, n_test=11)
    for y in (dm.y_train, dm.y_test):
        assert ((y == 1) | (y == -1)).all()
    assert ((dm.y_train == 1).sum(1) == n - n // 2).all()  # +1 gets the odd one out
    assert ((dm.y_test == 1).sum(1) == 6).all()
    assert not (dm.y_train == dm.y_train[:1]).all()  # shuffled differently per seed


def test_rademacher_labels_are_random():
    dm = datamodule(seeds=range(8), n=400, labels="rademacher", s=3, d=10)
    y = dm.y_train
    assert ((y == 1) | (y == -1)).all()
    positives = (y == 1).sum(1)
    assert (positives != 200).any()  # not forced to n/2
    assert abs(y.mean()) < 5 / math.sqrt(y.numel())  # fair coin


def test_feature_position_fixed_or_random():
    fixed = datamodule(seeds=(0, 1), patches=3, feature_position="fixed")
    assert (fixed.train.feature_patch == 0).all() and (fixed.test.feature_patch == 0).all()
    assert (dense(fixed.x_train)[:, :, 0, 0] == fixed.y_train).all()
    rand = datamodule(seeds=(0,), patches=3, n=900, s=3, d=10)
    counts = torch.bincount(rand.train.feature_patch.flatten(), minlength=3).double()
    assert (counts - 300).abs().max() < 5 * math.sqrt(900 * (1 / 3) * (2 / 3))


@pytest.mark.parametrize("patches", [2, 3])
def test_sparse_and_dense_inputs_agree(patches):
    sparse = datamodule(seeds=(0, 3), patches=patches, sparse=True)
    dense_dm = datamodule(seeds=(0, 3), patches=patches, sparse=False)
    for split in ("train", "test"):
        p = getattr(sparse, split)
        expected = to_dense_patches(p.index, p.value, sparse.d)
        assert torch.equal(getattr(sparse, f"x_{split}").to_dense(), expected)
        assert torch.equal(getattr(dense_dm, f"x_{split}"), expected)
    assert torch.equal(sparse.train_noise.to_dense(), dense_dm.train_noise)
    x = dense_dm.x_train
    assert torch.equal(dense_dm.train_noise, x[~feature_mask(dense_dm, dense_dm.train)].view(
        2, 12, patches - 1, 60))  # the noise patches in patch order


def row_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each example of ``rows`` (B, P, d), its index among ``x`` (n, P, d)."""
    match = (rows[:, None] == x[None]).flatten(2).all(-1)  # (B, n)
    assert (match.sum(1) == 1).all()
    return match.float().argmax(1)


@pytest.mark.parametrize("sparse", [True, False])
def test_mini_batches_are_per_replica_slices_and_a_function_of_the_step(sparse):
    n, b = 12, 4
    dm = datamodule(seeds=(0, 1), n=n, batch_size=b, sparse=sparse)
    x_all = dense(dm.x_train)
    seen = {0: [], 1: []}
    for epoch in range(2):
        for step in range(epoch * n // b, (epoch + 1) * n // b):
            x, y = dm.train_batch(step)
            x = dense(x)
            assert x.shape == (2, b, 2, dm.d) and y.shape == (2, b)
            for k in range(2):
                rows = row_of(x_all[k], x[k])
                assert torch.equal(y[k], dm.y_train[k, rows])  # labels travel with examples
                seen[epoch].append(rows)
    for k in range(2):  # each epoch visits every example of each replica exactly once
        for epoch in range(2):
            rows = torch.cat(seen[epoch][k::2])
            assert torch.equal(rows.sort().values, torch.arange(n))
    assert not torch.equal(torch.cat(seen[0][0::2]), torch.cat(seen[0][1::2]))  # own order each
    assert not torch.equal(torch.cat(seen[0][0::2]), torch.cat(seen[1][0::2]))  # new each epoch
    again = datamodule(seeds=(0, 1), n=n, batch_size=b, sparse=sparse)
    for step in (5, 2, 5):  # any step, in any order, on a fresh datamodule
        assert torch.equal(dense(again.train_batch(step)[0]), dense(dm.train_batch(step)[0]))


def test_full_batch_is_the_whole_training_set():
    dm = datamodule(seeds=(0, 1))
    for step in (0, 7):
        x, y = dm.train_batch(step)
        assert torch.equal(dense(x), dense(dm.x_train)) and torch.equal(y, dm.y_train)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = datamodule(seeds=(3,)), datamodule(seeds=(3,)), datamodule(seeds=(4,))
    for split in ("train", "test"):
        pa, pb, pc = (getattr(dm, split) for dm in (a, b, c))
        for field in ("index", "value", "y", "feature_patch"):
            assert torch.equal(getattr(pa, field), getattr(pb, field))
        assert not torch.equal(pa.value, pc.value)
        assert not torch.equal(pa.index, pc.index)
    assert torch.equal(dense(a.x_train), dense(b.x_train))
    assert not torch.equal(dense(a.x_train), dense(c.x_train))
    assert not torch.equal(a.test.value, a.train.value[:, :9])  # separate streams


def test_replica_k_equals_a_single_run_with_its_seed():
    seeds = (2, 7, 11)
    ensemble = datamodule(seeds=seeds, patches=3)
    for k, seed in enumerate(seeds):
        single = datamodule(seeds=(seed,), patches=3)
        for split in ("train", "test"):
            pe, ps = getattr(ensemble, split), getattr(single, split)
            for field in ("index", "value", "y", "feature_patch"):
                assert torch.equal(getattr(pe, field)[k], getattr(ps, field)[0])
            assert torch.equal(dense(getattr(ensemble, f"x_{split}"))[k],
                               dense(getattr(single, f"x_{split}"))[0])
        assert torch.equal(ensemble.train_noise.to_dense()[k], single.train_noise.to_dense()[0])


def test_training_set_does_not_depend_on_n_test():
    a, b = datamodule(n_test=9), datamodule(n_test=50)
    assert torch.equal(dense(a.x_train), dense(b.x_train)) and torch.equal(a.y_train, b.y_train)


def test_custom_feature_vector():
    d, s, alpha = 30, 6, 0.25
    v = torch.zeros(d)
    v[[3, 17]] = torch.tensor([0.6, -0.8])
    dm = datamodule(seeds=(0, 1), d=d, s=s, alpha=alpha, v=v.tolist(), patches=3)
    x, y = dense(dm.x_train), dm.y_train
    mask = feature_mask(dm, dm.train)
    torch.testing.assert_close(x[mask], y.flatten()[:, None] * v)  # feature patch y v
    noise = x[~mask]
    y_noise = y[..., None].expand(-1, -1, 3)[~mask]
    support = v != 0
    torch.testing.assert_close(noise[:, support], -alpha * y_noise[:, None] * v[support])
    assert ((noise[:, ~support] != 0).sum(1) == s).all()  # noise stays off supp(v)
    assert torch.equal(dm.features, torch.stack([v, -v]).expand(2, 2, d))
