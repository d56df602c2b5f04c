"""First-layer alignment without a planted feature (``adamgap/first_layer.py``): on hand-built
data whose patches live in a known subspace, filters inside it have feature energy 1, filters
outside it 0, the two energies sum to 1, and the memorization score sees a filter that matches
a training patch; every run records the measure and writes its filter figure."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_config

from adamgap import first_layer
from adamgap.figures import plot_filters
from adamgap.network import PatchCNN
from adamgap.tasks.patch_conv import PatchConvCNN
from adamgap.train import run


def patch_data(train, test):
    """A datamodule stand-in that gives the first layer's inputs."""
    return SimpleNamespace(first_layer_inputs=lambda limit: (train[:, :limit], test[:, :limit]))


def planted_subspace(d: int = 10, r: int = 3, n: int = 400, seed: int = 0):
    """Patches x = U z (K = 1, n examples x 2 patches) with U (d, r) orthonormal and z of
    variances 3, 2, 1 (shares 1/2, 1/3, 1/6 of the energy), and U's complement (d, d - r)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    U, V = q[:, :r], q[:, r:]
    z = torch.randn(n, 2, r, generator=g) * torch.tensor([3.0, 2.0, 1.0]).sqrt()
    return (z @ U.T)[None], U, V


def net_with(filters: torch.Tensor) -> PatchCNN:
    """A one-replica patch CNN whose 2 x m filters are the rows of ``filters`` (2m, d)."""
    F, d = filters.shape
    net = PatchCNN(d, F // 2, 3.0, 0.01, [0])
    net.weight.data = filters.view(1, 2, F // 2, d).permute(0, 3, 1, 2).contiguous()
    return net


def test_filters_inside_the_planted_subspace_are_feature_outside_are_noise():
    x, U, V = planted_subspace()
    inside = (U @ torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 3.0]]).T).T  # (2, d) in span U
    outside = V[:, :2].T * torch.tensor([[1.0], [5.0]])  # orthogonal to span U
    half = (U[:, 0] + V[:, 0])[None]  # half its energy in each
    net = net_with(torch.cat([inside, outside, half, -half]))
    probe = first_layer.FirstLayerProbe(net, patch_data(x, x), share=0.95, images=10_000)
    assert probe.dims.tolist() == [3]  # 1/2 + 1/3 < 0.95 <= 1/2 + 1/3 + 1/6
    m = probe.measure(net)
    feature, noise = m.per_filter["feature_energy"][0], m.per_filter["noise_energy"][0]
    torch.testing.assert_close(feature, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 0.5]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(feature + noise, torch.ones(6), atol=1e-6, rtol=0)
    assert m.summary["first_layer_feature_energy"].item() == pytest.approx(0.5, abs=1e-5)
    assert m.summary["first_layer_subspace_dims"].item() == 3
    # the share decides dim S: 1/2 of the energy needs one direction, 0.6 two
    for share, dims in ((0.5, 1), (0.6, 2), (1.0, 3)):
        assert first_layer.FirstLayerProbe(net, patch_data(x, x), share, 10_000).dims.item() \
            == dims


def test_a_random_filter_has_feature_energy_dim_s_over_d():
    x, _, _ = planted_subspace(d=40, r=3)
    net = PatchCNN(40, 500, 3.0, 1.0, [0])  # 1000 random filters
    probe = first_layer.FirstLayerProbe(net, patch_data(x, x), share=0.95, images=10_000)
    energy = probe.measure(net).summary["first_layer_feature_energy"].item()
    assert energy == pytest.approx(3 / 40, abs=0.01)


def test_convolution_patches_are_read_in_the_filters_layout():
    """Images tiled with one asymmetric 3x3 tile, read by a stride-3 convolution: every patch
    is the tile, so S is its direction; the tile as a filter has energy 1, its transpose less,
    a filter orthogonal to it 0."""
    tile = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 1, 1, generator=g) * tile.repeat(3, 3)[None, None]  # (8,1,9,9)
    net = PatchConvCNN(1, 2, 2, 3.0, 0.01, kernel=3, stride=3)
    other = torch.zeros(3, 3)
    other[1, 1] = 1.0
    net.conv.weight.data = torch.stack([tile, tile.T, other, -tile])[:, None]
    dm = SimpleNamespace(first_layer_inputs=lambda limit: (images, images))
    probe = first_layer.FirstLayerProbe(net, dm, share=0.95, images=8)
    assert probe.dims.tolist() == [1]
    feature = probe.measure(net).per_filter["feature_energy"][0]
    cos2 = float((tile * tile.T).sum() ** 2 / (tile.norm() ** 4))
    torch.testing.assert_close(feature, torch.tensor([1.0, cos2, 0.0, 1.0]), atol=1e-6,
                               rtol=0)
    assert cos2 == pytest.approx(1 / 9)  # <tile, tile^T>^2 / ||tile||^4 = 2^2 / 6^2


def test_memorization_sees_a_filter_that_matches_a_training_patch():
    x, U, _ = planted_subspace(d=10, r=3, n=50)
    test, _, _ = planted_subspace(d=10, r=3, n=50, seed=1)
    same = first_layer.FirstLayerProbe(net_with(torch.randn(4, 10)), patch_data(x, x), 0.95,
                                       1000)
    net = net_with(torch.randn(4, 10))
    assert same.measure(net).summary["first_layer_memorization"].item() == pytest.approx(0.0)
    spiky = torch.zeros(1, 50, 2, 10)
    spiky[0, :, 0, 9] = 5.0  # a coordinate only the training patches use
    memorizing = net_with(torch.eye(10)[[9, 9, 9, 9]])  # every filter: that coordinate
    probe = first_layer.FirstLayerProbe(memorizing, patch_data(x + spiky, test), 0.95, 1000)
    m = probe.measure(memorizing)
    assert m.summary["first_layer_memorization"].item() > 1.0
    assert (m.per_filter["response_train"] > m.per_filter["response_test"]).all()


def test_filter_figure_is_written(tmp_path):
    images = torch.randn(12, 1, 5, 5)
    rgb = torch.randn(6, 3, 3, 3)
    vectors = torch.randn(4, 100)
    plot_filters([("gray", images), ("rgb", rgb), ("vectors", vectors)], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [
    ("fmnist_cnn_adam", ["data.n=32", "data.n_test=32", "data.batch_size=8", "model.width=4",
                         "data.augment=true"]),
    ("fmnist_grid_adam", []),  # the patch CNN on images as patches: both measures
])
def test_runs_record_the_first_layer_and_draw_its_filters(name, extra, tmp_path):
    summary = run(tiny_config(name, "trainer.max_steps=20", "trainer.eval_every=20",
                              "trainer.log_every=10", "align.every=10", "align.images=16",
                              *extra, tmp_path=tmp_path))
    run_dir = tmp_path / "run"
    with open(run_dir / "alignment.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    for r in rows:
        total = float(r["first_layer_feature_energy"]) + float(r["first_layer_noise_energy"])
        assert total == pytest.approx(1.0, abs=1e-5)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["first_layer_feature_energy"] == pytest.approx(
        float(rows[-1]["first_layer_feature_energy"]))
    assert saved["first_layer_feature_energy_init"] != saved["first_layer_feature_energy"]
    assert ("feature_learning" in saved) == (name == "fmnist_grid_adam")
    filters = torch.load(run_dir / "filters.pt")
    shape = (1, 4, 1, 5, 5) if name.startswith("fmnist_cnn") else (1, 40, 1, 7, 7)
    assert filters["init"].shape == filters["final"].shape == shape
    assert not torch.equal(filters["init"], filters["final"])
    assert (run_dir / "figures" / "filters.png").stat().st_size > 5000
    per_filter = torch.load(run_dir / "alignment.pt")["first_layer_feature_energy"]
    assert per_filter.shape == (3, 1, shape[1])  # records, replicas, filters
    assert summary["first_layer_feature_energy"] == saved["first_layer_feature_energy"]
