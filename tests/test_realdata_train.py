"""End to end on real-image tasks: every real-data config trains on tiny data and writes its
results; images-as-patches (binary and multi-class) and the CIFAR ResNet work on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config

from adamgap.data import generator
from adamgap.errors import ConfigError
from adamgap.tasks.image_patches import to_patches
from adamgap.tasks.images import ImageClassifier
from adamgap.train import build_datamodule, run

PLANTED = [f"{family}_patch_{opt}" for family in ("fmnist", "cifar10")
           for opt in ("adam", "gd", "adamw", "sgd")]
RESNET = [f"cifar10_resnet_{opt}" for opt in ("sgd", "adam", "adamw")]
# a few steps of ResNet-18 on 16 CIFAR-format images, on the CPU in the configs' bf16-mixed
RESNET_TINY = ["data.n=16", "data.n_test=16", "data.batch_size=8", "data.workers=0",
               "trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1",
               "trainer.accelerator=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PLANTED)
def test_planted_configs_train_and_record_the_density_ratios(name, tmp_path, request):
    extra = ["trainer.max_steps=50", "trainer.eval_every=50", "align.every=25"]
    if name.startswith("cifar10"):
        extra.append(f"data.root={request.getfixturevalue('cifar_root')}")
    summary = run(tiny_config(name, *extra, tmp_path=tmp_path))
    run_dir = tmp_path / "run"
    assert summary["status"] == "completed" and summary["steps"] == 50
    assert json.loads((run_dir / "summary.json").read_text())["test_error"] == summary["test_error"]
    assert (run_dir / "alignment.csv").is_file() and (run_dir / "figures/alignment.png").is_file()
    # a whole image is dense (l1/l2 >> 1); the noise patch is s Gaussian coordinates plus
    # alpha x an image, normalized to about 1
    assert summary["mu_l1_l2"] > 10 and summary["mu_l2"] == pytest.approx(1.0)
    assert 0.9 < summary["xi_l2"] < 1.2
    assert summary["noise_memorization"] != summary["noise_memorization_init"]


@pytest.mark.slow
def test_planted_fashion_mnist_gd_learns_the_feature_and_generalizes(tmp_path):
    """The dense real-image feature is learned: GD (lr scaled up for the 500-step horizon) fits
    the training set and its feature learning grows far beyond the noise memorization."""
    summary = run(tiny_config("fmnist_patch_gd", "optim.lr=3.0", tmp_path=tmp_path))
    assert summary["train_error"] == 0.0 and summary["test_error"] < 0.15
    assert summary["feature_learning"] > 5 * summary["noise_memorization"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RESNET)
def test_cifar_resnet_configs_take_a_few_steps_on_cpu(name, cifar_root, tmp_path):
    cfg = tiny_config(name, *RESNET_TINY, f"data.root={cifar_root}", tmp_path=tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.augment
    assert cfg.optim.schedule == "cosine" and cfg.trainer.max_steps == 2
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert 0.0 <= summary["test_error"] <= 1.0 and torch.isfinite(torch.tensor(
        summary["train_loss"]))
    assert "feature_learning" not in summary  # no planted feature: only the first layer's
    assert 0 <= summary["first_layer_feature_energy"] <= 1


def test_resnet_is_adapted_to_32x32_and_augmentation_crops_and_flips(cifar_root):
    net = ImageClassifier("resnet18", 3, 32, 10, seed=0).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert ImageClassifier("resnet18", 3, 32, 10, 0)(torch.zeros(2, 3, 32, 32)).shape == (1, 2, 10)
    assert torch.equal(ImageClassifier("resnet18", 3, 32, 10, 4).net.conv1.weight,
                       ImageClassifier("resnet18", 3, 32, 10, 4).net.conv1.weight)  # W(0)
    dm = build_datamodule(tiny_config("cifar10_resnet_sgd", *RESNET_TINY,
                                      f"data.root={cifar_root}"))
    x = dm.batch("train", torch.arange(8))[0]
    assert x.shape == (8, 3, 32, 32) and abs(float(x.mean())) < 0.5  # standardized
    views = torch.stack([dm.train_batch(t)[0] for t in range(40)])  # 20 epochs of 2 batches
    order = [torch.randperm(16, generator=generator(0, f"epoch{t // 2}"))[8 * (t % 2):][:8]
             for t in range(40)]
    first = [views[t][(o == 0).nonzero().flatten()] for t, o in enumerate(order) if 0 in o]
    assert not all(torch.equal(v, first[0]) for v in first)  # image 0: crops / flips differ


@pytest.mark.slow
def test_binary_image_patches_train_with_the_alignment(tmp_path):
    patches = ["data.task=image_patches", "data.grid=4", "data.d=49"]
    summary = run(tiny_config("fmnist_patch_gd", *patches, "optim.lr=3.0", tmp_path=tmp_path))
    assert summary["train_error"] == 0.0 and summary["test_error"] < 0.1  # T-shirt vs trouser
    dm = build_datamodule(tiny_config("fmnist_patch_gd", *patches))
    dm.setup()
    x = dm.train.inputs(sparse=False)
    assert x.shape == (1, 40, 16, 49) and dm.train_noise.shape == x.shape
    # the noise is the example-specific part: it averages to zero over each class
    for j in (1.0, -1.0):
        assert dm.train_noise[0, dm.y_train[0] == j].mean(0).abs().max() < 1e-5


@pytest.mark.slow
def test_multiclass_image_patches_beat_chance(tmp_path):
    patches = ["data.task=image_patches", "data.grid=4", "data.d=49",
               "data.classes=[0,1,7]", "data.n=60", "data.n_test=300", "align.enabled=false"]
    summary = run(tiny_config("fmnist_patch_adam", *patches, "optim.lr=1e-3",
                              tmp_path=tmp_path))
    assert summary["train_error"] < 0.1 and summary["test_error"] < 0.3  # chance: 2/3


def test_images_are_cut_into_row_major_non_overlapping_patches():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    p = to_patches(x, grid=2)
    assert p.shape == (2, 4, 3 * 2 * 2)
    assert torch.equal(p[1, 2], x[1, :, 2:, :2].reshape(-1))  # patch 2: bottom-left block
    assert torch.equal(p.sort(-1).values.flatten().sort().values, x.flatten().sort().values)


def test_image_patches_check_the_grid_and_alignment():
    patches = ["data.task=image_patches", "data.grid=4"]
    with pytest.raises(ConfigError, match="data.d=1000 .* = 49"):
        tiny_config("fmnist_patch_adam", *patches)
    with pytest.raises(ConfigError, match="data.grid=5 .*divisor of the image side 28"):
        tiny_config("fmnist_patch_adam", *patches[:1], "data.grid=5")
    # more than two classes: no planted measure, but the first layer's alignment applies
    assert tiny_config("fmnist_patch_adam", *patches, "data.d=49",
                       "data.classes=[0,1,2]").align.enabled


def test_report_section_pairs_seeds_and_writes_its_figures(tmp_path):
    from adamgap.analysis.realdata_report import phase_cell_dirs, phase_rows, section
    from adamgap.experiments.cells import cell_dir
    from adamgap.experiments.spec import create, load, parse_args
    from adamgap.outputs import write_csv, write_json

    def fake_run(run_dir, test_error):
        replicas = [{"seed": k, "train_error": 0.0, "test_error": test_error + 0.01 * k,
                     "feature_learning": 1.0, "noise_memorization": 0.5, "mu_l1_l2": 12.0,
                     "xi_l1_l2": 8.0, "mu_cosine": -0.9, "wall_seconds": 60.0}
                    for k in range(3)]
        write_json(run_dir / "summary.json", {"conf": "x", "replicas": replicas})
        write_csv(run_dir / "alignment.csv", [{"step": t, "seed": k, "feature_learning": t,
                                               "noise_memorization": k}
                                              for t in (0, 100) for k in range(3)])

    runs = {"Adam": tmp_path / "adam", "GD": tmp_path / "gd"}
    fake_run(runs["Adam"], 0.4)
    fake_run(runs["GD"], 0.1)
    sweep = create(parse_args(["conf=fmnist_patch_adam", "sweep.seeds=3", "data.basis=dct",
                               f"sweep.dir={tmp_path / 'sweep'}", "sweep.grid.data.alpha=[0.2]",
                               "sweep.grid.data.feature_k=[1,null]", "sweep.grid.data.s=[20]",
                               "sweep.grid.conf=[fmnist_patch_adam,fmnist_patch_gd]"]))
    rows = []
    for cell in load(sweep)[1]:
        adam = "adam" in cell.conf
        gap = 0.4 if cell.values["data.feature_k"] == 1 else 0.0
        fake_run(cell_dir(sweep, cell), 0.1 + gap * adam)
        rows += [{"conf": cell.conf, "seed": k, "status": "completed", "data.alpha": 0.2,
                  "data.feature_k": cell.values["data.feature_k"], "data.s": 20,
                  "train_error": 0.0, "test_error": 0.1 + gap * adam + (0.1 * k if adam else 0),
                  "feature_learning": 1.0, "noise_memorization": 0.5, "mu_l1_l2": 1.0,
                  "xi_l1_l2": 3.5} for k in range(3)]
    write_csv(sweep / "results.csv", rows)
    phase = phase_rows(sweep / "results.csv")
    assert [r["feature_k"] for r in phase] == ["1", "all"]  # null: the whole image, last
    assert phase[0]["gap"] == pytest.approx(0.5) and phase[0]["seeds"] == 3  # paired by seed
    assert set(phase_cell_dirs(sweep, phase[0])) == {"Adam", "GD"}
    text = section(runs, sweep, tmp_path / "figures")
    assert "| Adam | 3 | 0.000 ± 0.000 | 0.410 ± 0.025" in text and "| 0.2 | all | 20 |" in text
    assert "largest mean gap (alpha = 0.2, k = 1, s = 20)" in text
    for name in ("fmnist_phase", "fmnist_patch_alignment", "fmnist_phase_largest_gap_alignment"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
