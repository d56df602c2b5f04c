"""Epochs of mini-batches (``adamgap/data.py``, ``config.steps_per_epoch``): the arithmetic of
``trainer.max_epochs``, per-epoch sampling (each example once per epoch without replacement, or
draws with replacement; the same seed, the same order), the last partial batch, and the data
stored per patch with its own nonzeros: the same inputs, mini-batches and training trajectory
as the zero-padded coordinate lists the data were stored as before (``padded_*`` below)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import synthetic_datamodule, tiny_config

from adamgap import objective
from adamgap.config import load_config, load_run_config, steps_per_epoch
from adamgap.data import generator, labels_and_positions, make_patches, sparse_noise
from adamgap.errors import ConfigError
from adamgap.network import PatchCNN
from adamgap.patches import SparsePatches
from adamgap.train import run


def datamodule(seeds=(0,), **kwargs):
    return synthetic_datamodule(seeds, **{"d": 60, "n": 12, "n_test": 9, "s": 7, "alpha": 0.3,
                                         **kwargs})


def examples_of(dm, x) -> torch.Tensor:
    """For each replica and example of batch ``x`` (K, b, P, d), its index in the training set."""
    full = dm.x_train.to_dense() if isinstance(dm.x_train, SparsePatches) else dm.x_train
    x = x.to_dense() if isinstance(x, SparsePatches) else x
    match = (x[:, :, None] == full[:, None]).flatten(3).all(-1)  # (K, b, n)
    assert (match.sum(-1) == 1).all()
    return match.float().argmax(-1)


# -- arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("n, B, last, steps", [(200, 2, "drop", 100), (200, 200, "drop", 1),
                                               (200, None, "keep", 1), (12, 5, "drop", 2),
                                               (12, 5, "keep", 3), (13, 13, "keep", 1)])
def test_steps_per_epoch(n, B, last, steps):
    assert steps_per_epoch(n, B, last) == steps


def test_max_epochs_sets_max_steps_from_n_and_the_batch_size():
    cfg = load_config("stochastic_adam")
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (10_000, 10_000 * 100)
    cfg = load_config("stochastic_adam", ["data.batch_size=200"])
    assert cfg.trainer.max_steps == 10_000
    cfg = load_config("synthetic_sgd", ["trainer.max_epochs=3", "data.n=40", "data.batch_size=12",
                                        "data.last_batch=keep"])
    assert cfg.trainer.max_steps == 3 * 4


def test_the_source_read_last_decides_between_steps_and_epochs():
    """A conf with max_epochs and max_steps on the command line: a run of those steps (and the
    other way round); both in one source is one error line naming them."""
    cfg = load_config("stochastic_adam", ["trainer.max_steps=500"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (500, None)
    cfg = load_config("synthetic_adam", ["trainer.max_epochs=7"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (7, 7)  # full batch: 1 per epoch
    with pytest.raises(ConfigError) as err:
        load_config("synthetic_adam", ["trainer.max_epochs=7", "trainer.max_steps=5"])
    assert "trainer.max_steps and trainer.max_epochs" in str(err.value)
    assert "\n" not in str(err.value)


def test_resolved_config_keeps_both_and_they_must_agree(tmp_path):
    cfg = tiny_config("stochastic_adam", "trainer.max_steps=4", "trainer.max_epochs=null",
                      "trainer.eval_every=2", "trainer.log_every=2", "align.every=2",
                      tmp_path=tmp_path)
    run(cfg)
    assert load_run_config(tmp_path / "run").trainer.max_steps == 4
    text = (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / "config.yaml").write_text(text.replace("max_epochs: null",
                                                               "max_epochs: 3"))
    with pytest.raises(ConfigError, match="trainer.max_steps=4 is not allowed"):
        load_run_config(tmp_path / "run")


@pytest.mark.parametrize("override, key", [
    ("trainer.max_epochs=0", "trainer.max_epochs"), ("data.sampling=bootstrap", "data.sampling"),
    ("data.last_batch=pad", "data.last_batch")])
def test_bad_epoch_settings_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("stochastic_adam", [override])
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


# -- sampling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("last_batch, sizes", [("drop", [5, 5]), ("keep", [5, 5, 2])])
def test_each_example_once_per_epoch_without_replacement(last_batch, sizes):
    dm = datamodule(seeds=(0, 1, 2), batch_size=5, last_batch=last_batch)
    assert dm.steps_per_epoch == len(sizes)
    seen = {}
    for epoch in range(3):
        steps = range(epoch * len(sizes), (epoch + 1) * len(sizes))
        batches = [dm.train_batch(t) for t in steps]
        assert [y.shape[1] for _, y in batches] == sizes
        rows = torch.cat([examples_of(dm, x) for x, _ in batches], dim=1)  # (K, sum of sizes)
        for k in range(3):
            assert len(set(rows[k].tolist())) == sum(sizes)  # no example twice in an epoch
            if last_batch == "keep":
                assert sorted(rows[k].tolist()) == list(range(12))  # every example once
        labels = torch.cat([y for _, y in batches], dim=1)
        assert torch.equal(labels, dm.y_train.gather(1, rows))  # labels travel with examples
        seen[epoch] = rows
    assert not torch.equal(seen[0], seen[1])  # a new order every epoch
    assert not torch.equal(seen[0][0], seen[0][1])  # and every replica its own


def test_the_order_is_a_function_of_seed_and_epoch():
    """The same seed gives the same order on a fresh datamodule, for any step asked in any
    order (a resumed run mid-epoch continues it); replica k's order is that of a single run
    with its seed; another seed gives another order."""
    dm = datamodule(seeds=(4, 5), batch_size=3)
    again = datamodule(seeds=(4, 5), batch_size=3)
    for step in (9, 2, 5, 2, 13):
        (x, y), (x2, y2) = dm.train_batch(step), again.train_batch(step)
        assert torch.equal(x.to_dense(), x2.to_dense()) and torch.equal(y, y2)
    single = datamodule(seeds=(5,), batch_size=3)
    for step in range(8):
        assert torch.equal(examples_of(dm, dm.train_batch(step)[0])[1],
                           examples_of(single, single.train_batch(step)[0])[0])
    other = datamodule(seeds=(6,), batch_size=3)
    orders = [torch.cat([examples_of(d, d.train_batch(t)[0])[0] for t in range(4)])
              for d in (single, other)]
    assert not torch.equal(*orders)
    g = generator(5, "epoch1")  # the documented stream: a permutation from (seed, epoch)
    assert torch.equal(torch.cat([examples_of(single, single.train_batch(t)[0])[0]
                                  for t in range(4, 8)]), torch.randperm(12, generator=g))


def test_sampling_with_replacement_draws_from_the_seed_and_epoch_stream():
    dm = datamodule(seeds=(0,), n=40, batch_size=4, sampling="replace")
    assert dm.steps_per_epoch == 10
    rows = torch.cat([examples_of(dm, dm.train_batch(t)[0])[0] for t in range(10)])
    assert torch.equal(rows, torch.randint(40, (40,), generator=generator(0, "epoch0")))
    assert len(set(rows.tolist())) < 40  # repeats (40 draws of 40: all distinct has p ~ 1e-16)


def test_full_batch_with_replacement_is_a_resample():
    dm = datamodule(seeds=(0,), batch_size=12, sampling="replace")
    x, y = dm.train_batch(0)
    assert x is not dm.full_batch[0] and y.shape == (1, 12)
    assert len(set(examples_of(dm, x)[0].tolist())) < 12


@pytest.mark.parametrize("batch_size, source", [(1, False), (5, True)])
def test_sparse_and_dense_batches_agree(batch_size, source):
    """n = 12: a batch of 1 (under n * SOURCE_SHARE) has its own transpose, built with the
    epoch; a batch of 5 takes the training set's. Either way the backward product is X^T."""
    a = datamodule(seeds=(0, 1), batch_size=batch_size, last_batch="keep", sparse=True)
    b = datamodule(seeds=(0, 1), batch_size=batch_size, last_batch="keep", sparse=False)
    assert a.source_transpose is source
    for step in range(7):
        (xa, ya), (xb, yb) = a.train_batch(step), b.train_batch(step)
        assert torch.equal(xa.to_dense(), xb) and torch.equal(ya, yb)
        assert (xa.source_t is not None) is source and (xa.matrix_t is None) is source
        if not source:  # the batch's transpose, built with the epoch, is the CSR transpose
            assert same_csr(xa.transpose(), xa.matrix.transpose())
        K, B, P, d = xb.shape
        dz = torch.randn(K * B * P, 3, generator=torch.Generator().manual_seed(step))
        want = torch.einsum("kbpd,kbpc->kdc", xb, dz.view(K, B, P, 3)).reshape(K * d, 3)
        torch.testing.assert_close(xa.transpose_matmul(dz), want)


def test_batches_with_a_repeated_example_have_their_own_transpose():
    """With replacement a batch can hold an example twice: its rows of the training set are
    then not distinct, so it takes the product with its own transpose (both rows count)."""
    dm = datamodule(seeds=(0,), n=12, batch_size=6, sampling="replace")
    assert not dm.source_transpose
    for step in range(40):
        x, _ = dm.train_batch(step)
        if len(set(examples_of(dm, x)[0].tolist())) < 6:
            break
    else:
        pytest.fail("no batch with a repeated example in 40 steps")
    assert x.source_t is None
    dense = x.to_dense()
    K, B, P, d = dense.shape
    dz = torch.randn(K * B * P, 3, generator=torch.Generator().manual_seed(0))
    want = torch.einsum("kbpd,kbpc->kdc", dense, dz.view(K, B, P, 3)).reshape(K * d, 3)
    torch.testing.assert_close(x.transpose_matmul(dz), want)


# -- each patch with its own nonzeros, against the zero-padded lists it was stored as --------
def padded_patches(seed, n, d, s, sigma_p, alpha, v, labels, feature_position, patches,
                   stream):
    """Definition 3.1 as the zero-padded (1, n, P, s + |supp v|) coordinate lists of the
    previous implementation: the feature patch padded with s zeros like a noise patch."""
    g = generator(seed, stream)
    y, where = labels_and_positions(n, labels, feature_position, patches, g)
    support = v.nonzero().flatten()
    free = (v == 0).nonzero().flatten()
    feat = torch.arange(patches)[None, :] == where[:, None]
    noise_idx, noise_val = sparse_noise(n, patches, free, s, sigma_p, g, used=~feat)
    L = s + support.numel()
    index = torch.empty(n, patches, L, dtype=torch.long)
    value = torch.empty(n, patches, L)
    index[..., :s] = noise_idx
    value[..., :s] = noise_val
    index[..., s:] = support
    value[..., s:] = -alpha * y[:, None, None] * v[support]
    index[feat] = torch.cat([support.new_zeros(s), support])
    value[feat] = torch.cat([torch.zeros(n, s), y[:, None] * v[support]], dim=1)
    return index[None], value[None], y[None], where[None]


def padded_batch(dm, index, value, step):
    """The previous mini-batch of ``step``: the padded lists of a per-replica permutation's
    slice, made into a CSR matrix."""
    epoch, i = divmod(step, dm.n // dm.batch_size)
    rows = torch.stack([torch.randperm(dm.n, generator=generator(k, f"epoch{epoch}"))
                        for k in dm.seeds])[:, i * dm.batch_size:(i + 1) * dm.batch_size]
    pick = rows[:, :, None, None].expand(-1, -1, *index.shape[2:])
    x = SparsePatches.from_coordinates(index.gather(1, pick), value.gather(1, pick), dm.d)
    if dm.source_transpose:  # the backward product with the whole padded set's transpose
        K, _, P, _ = index.shape
        ids = (torch.arange(K)[:, None] * dm.n + rows).reshape(-1)
        x.source_t = SparsePatches.from_coordinates(index, value, dm.d).transpose()
        x.source_rows = (ids[:, None] * P + torch.arange(P)).view(-1)
    return x, dm.y_train.gather(1, rows)


def same_csr(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("crow", "col", "val"))


SETTINGS = [dict(), dict(patches=3), dict(alpha=0.0), dict(v=[0.0] * 20 + [0.6, -0.8] + [0.0] * 38)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_unpadded_patches_are_the_padded_lists_data(settings):
    seeds = (0, 1, 2)
    dm = datamodule(seeds=seeds, batch_size=4, **settings)
    ref = [padded_patches(k, dm.n, dm.d, dm.s, dm.sigma_p, dm.alpha, dm.v, dm.labels,
                          dm.feature_position, dm.patches, "train") for k in seeds]
    index, value = torch.cat([r[0] for r in ref]), torch.cat([r[1] for r in ref])
    assert torch.equal(dm.y_train, torch.cat([r[2] for r in ref]))
    padded = SparsePatches.from_coordinates(index, value, dm.d)
    assert same_csr(dm.x_train.matrix, padded.matrix)  # the same training matrix
    one = make_patches(seeds[0], dm.n, dm.d, dm.s, dm.sigma_p, dm.alpha, dm.v, dm.labels,
                       dm.feature_position, dm.patches, "train")
    lengths = one.rows.crow.diff().view(dm.n, dm.patches)
    feature = torch.arange(dm.patches) == one.feature_patch[0][:, None]
    support = int((dm.v != 0).sum())
    assert (lengths[feature] == support).all()  # a feature patch: its |supp v| nonzeros only
    for step in range(7):
        x, y = dm.train_batch(step)
        x_ref, y_ref = padded_batch(dm, index, value, step)
        assert torch.equal(y, y_ref)
        assert same_csr(x.matrix, x_ref.matrix) and same_csr(x.transpose(), x_ref.transpose())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [4, 10, None])
def test_unpadded_patches_train_the_same_trajectory(seed, batch_size):
    """40 Adam steps (closed-form gradient, as inside a chunk) on the batches of the stored
    data and on those rebuilt from the padded lists: the same weights, bit for bit (n = 40:
    batches of 4 have their own transposes, batches of 10 take the training set's)."""
    dm = datamodule(seeds=(seed,), n=40, batch_size=batch_size, d=100, s=10)
    index, value, _, _ = padded_patches(seed, dm.n, dm.d, dm.s, dm.sigma_p, dm.alpha, dm.v,
                                        dm.labels, dm.feature_position, dm.patches, "train")
    full = (SparsePatches.from_coordinates(index, value, dm.d), dm.y_train)
    weights = []
    for source in ("stored", "padded"):
        net = PatchCNN(dm.d, 5, 3.0, 0.1, [seed])
        params = list(net.parameters())
        opt = torch.optim.Adam(params, lr=1e-2)
        for step in range(40):
            if source == "stored":
                x, y = dm.train_batch(step)
            else:
                x, y = padded_batch(dm, index, value, step) if batch_size else full
            _, _, (grad,) = objective.objective_and_gradient(net, x, y, 1e-3, params)
            params[0].grad = grad
            opt.step()
        weights.append(net.weight.detach())
    assert torch.equal(*weights)
    assert not math.isclose(float(weights[0].abs().sum()), 0.0)


def test_a_batch_moved_to_another_dtype_keeps_the_training_sets_transpose():
    dm = datamodule(seeds=(0, 1), batch_size=6)
    x, _ = dm.train_batch(3)
    moved = x.to(torch.float64)
    assert moved.source_t.val.dtype == torch.float64 and torch.equal(moved.source_rows,
                                                                      x.source_rows)
    dense = moved.to_dense()
    K, B, P, d = dense.shape
    dz = torch.randn(K * B * P, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.einsum("kbpd,kbpc->kdc", dense, dz.view(K, B, P, 3)).reshape(K * d, 3)
    torch.testing.assert_close(moved.transpose_matmul(dz), want)
