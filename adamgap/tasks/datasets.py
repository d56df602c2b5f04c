"""Real image datasets through torchvision: Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100.

``load(name, root, download, train)`` returns a split as a uint8 tensor (N, C, H, W) and its
labels. Datasets live under ``data.root`` in torchvision's own layout; nothing is downloaded
unless ``data.download=true``. Fashion-MNIST works offline: when its torchvision files are
missing, they are decompressed from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/*.gz``, checked against torchvision's MD5 sums), which
``scripts/install.sh`` installs. A missing or corrupt dataset raises a one-line
:class:`ConfigError` saying which dataset, where it looked and how to get it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import datasets as tv

from adamgap.config import DATASETS
from adamgap.errors import ConfigError
from adamgap.outputs import atomic_write

# each dataset's torchvision class (its shape and classes: config.DATASETS)
TORCHVISION = {"fashion_mnist": tv.FashionMNIST, "mnist": tv.MNIST, "cifar10": tv.CIFAR10,
               "cifar100": tv.CIFAR100}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class ImageSplit:
    """One split of a dataset: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]


def load(name: str, root: str, download: bool = False, train: bool = True) -> ImageSplit:
    """The ``train`` (or test) split of dataset ``name`` under ``root`` (cached per process)."""
    if name not in TORCHVISION:
        raise ConfigError(f"data.dataset={name!r} is not allowed: one of "
                          f"{', '.join(TORCHVISION)}")
    return _load(name, str(Path(root).expanduser()), download, train)


@functools.lru_cache(maxsize=8)
def _load(name: str, root: str, download: bool, train: bool) -> ImageSplit:
    if name == "fashion_mnist" and not download:
        _fashion_mnist_from_debian(Path(root))
    try:
        ds = TORCHVISION[name](root, train=train, download=download)
        images = torch.as_tensor(ds.data)
        # MNIST-like data is (N, H, W); CIFAR's is (N, H, W, C)
        images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
    except Exception as err:  # torchvision raises RuntimeError, pickle/IO/shape errors
        raise ConfigError(_missing(name, root, f"{type(err).__name__}: {err}")) from None
    shape = DATASETS[name]
    if images.shape[1:] != (shape.channels, shape.side, shape.side) or len(images) != len(labels):
        raise ConfigError(_missing(name, root, f"unexpected image shape {tuple(images.shape)}"))
    return ImageSplit(images.contiguous(), labels, tuple(ds.classes))


def _missing(name: str, root: str, why: str) -> str:
    cls = TORCHVISION[name].__name__
    where = (f"{root}/{TORCHVISION[name].base_folder}" if hasattr(TORCHVISION[name], "base_folder")
             else f"{root}/{cls}/raw")
    how = "data.download=true on a machine with internet, or data.root=DIR holding it"
    if name == "fashion_mnist":
        how += (f", or install the Debian package dataset-fashion-mnist "
                f"({DEBIAN_FASHION_MNIST}; bash scripts/install.sh)")
    why = why.splitlines()[0] if why else why
    return f"data.dataset={name}: no usable {cls} in {where} ({why}); get it with {how}"


# MD5 of the decompressed upstream files (Debian recompresses the .gz files, so torchvision's
# sums of the .gz files do not apply; these are the sums older torchvision releases listed)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _fashion_mnist_from_debian(root: Path) -> None:
    """Decompress the Debian package's Fashion-MNIST files into torchvision's layout
    (``root/FashionMNIST/raw``) unless they are already there; a file whose content does not
    match the upstream MD5 is refused."""
    raw = root / "FashionMNIST" / "raw"
    for name, md5 in FASHION_MNIST_MD5.items():
        target, source = raw / name, DEBIAN_FASHION_MNIST / f"{name}.gz"
        if target.is_file() or not source.is_file():
            continue  # torchvision reports what is still missing

        def unzip(f, source=source, md5=md5):
            digest = hashlib.md5()
            with gzip.open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != md5:
                raise ConfigError(_missing("fashion_mnist", str(root),
                                           f"{source} is corrupt (MD5 mismatch); reinstall it"))

        try:
            atomic_write(target, unzip, binary=True)
        except (OSError, EOFError) as err:  # unreadable or truncated .gz
            raise ConfigError(_missing("fashion_mnist", str(root), f"{source}: {err}")) from None


def subset(split: ImageSplit, classes: list[int] | None) -> tuple[Tensor, Tensor]:
    """Images and labels of ``classes`` only (null -> all); labels become positions in
    ``classes`` (0, 1, ...)."""
    if classes is None:
        return split.images, split.labels
    keep = torch.isin(split.labels, torch.tensor(classes))
    remap = torch.full((int(split.labels.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return split.images[keep], remap[split.labels[keep]]


def to_float(images: Tensor, image_size: int | None = None) -> Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1], area-downscaled to ``image_size`` if set."""
    x = images.float() / 255.0
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    return x


def normalize(x: Tensor, mode: str, mean: Tensor | None = None) -> Tensor:
    """Rows of ``x`` (N, D) as configured by ``data.normalize``: ``unit`` scales each to
    ||x||_2 = 1 (like Definition 3.1's unit v); ``centered`` first subtracts ``mean`` (the mean
    image of the task's classes, so two classes point roughly in opposite directions);
    ``none`` keeps pixel values."""
    if mode == "none":
        return x
    if mode == "centered":
        x = x - mean
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
