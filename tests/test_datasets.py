"""Real datasets through torchvision: offline Fashion-MNIST from the Debian files, CIFAR from
its on-disk format, and one clear line when a dataset is missing or corrupt."""

from __future__ import annotations

import pickle

import pytest
import torch

from adamgap import config
from adamgap.cli import main
from adamgap.errors import ConfigError
from adamgap.tasks import datasets
from adamgap.train import run


def test_fashion_mnist_loads_offline_from_the_debian_files(tmp_path):
    train = datasets.load("fashion_mnist", str(tmp_path))
    test = datasets.load("fashion_mnist", str(tmp_path), train=False)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # the real, balanced labels
    assert train.class_names[:2] == ("T-shirt/top", "Trouser")
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_corrupt_fashion_mnist_gives_one_clear_line(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    datasets.load("fashion_mnist", str(tmp_path), train=False)  # fills raw/ from Debian
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    datasets._load.cache_clear()
    with pytest.raises(ConfigError) as err:
        datasets.load("fashion_mnist", str(tmp_path), train=False)
    msg = str(err.value)
    assert "\n" not in msg and "data.dataset=fashion_mnist" in msg and str(raw) in msg
    assert "data.download=true" in msg and "dataset-fashion-mnist" in msg


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("mnist", "MNIST/raw"), ("cifar100", "cifar-100-python")])
def test_missing_dataset_names_what_where_and_how(tmp_path, name, folder):
    with pytest.raises(ConfigError) as err:
        datasets.load(name, str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"data.dataset={name}" in msg
    assert f"{tmp_path}/{folder}" in msg and "data.download=true" in msg and "data.root=" in msg


def test_cifar10_loads_its_on_disk_format(cifar_root):
    train = datasets.load("cifar10", str(cifar_root))
    test = datasets.load("cifar10", str(cifar_root), train=False)
    assert train.images.shape == (400, 3, 32, 32) and test.images.shape == (2000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [40] * 10
    # channel-first: pixel (row 0, col 1) of channel 2 is byte 2 * 1024 + 1 of the stored row
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert train.images[0, 2, 0, 1] == int(first[2 * 1024 + 1])


def test_cli_reports_missing_cifar_in_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(run, ["conf=cifar10_patch_adam", f"data.root={tmp_path / 'none'}",
                      f"run.dir={run_dir}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "data.dataset=cifar10" in err
    assert not run_dir.exists()


def test_subset_relabels_classes_in_the_given_order():
    split = datasets.ImageSplit(torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
                                torch.tensor([3, 1, 4, 1, 5, 9]), ())
    images, labels = datasets.subset(split, [4, 1])
    assert labels.tolist() == [1, 0, 1]  # 4 -> 0, 1 -> 1, in dataset order; 3, 5, 9 dropped
    assert len(images) == 3


def test_downscaling_averages_blocks_and_unit_normalization():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 10
    small = datasets.to_float(img, image_size=2)
    assert torch.allclose(small[0, 0, 0, 0], img[0, 0, :2, :2].float().mean() / 255)
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert torch.allclose(datasets.normalize(x, "unit").norm(dim=1), torch.ones(2))
    x = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    centered = datasets.normalize(x, "centered", x.mean(0))
    assert torch.allclose(centered, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) / 2**0.5)
    assert config.image_dim("cifar10", 16) == 3 * 16 * 16
