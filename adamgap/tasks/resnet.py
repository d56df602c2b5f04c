"""The standard CIFAR gap: a real CNN trained with SGD + momentum, Adam (L2) and AdamW.

Wilson et al. (2017, "The marginal value of adaptive gradient methods") report 7.65% test error
for SGD and 9.60% for the best adaptive method with a VGG on CIFAR-10; the theory of Zou et al.
(Section 4) explains such gaps on its own data model. This file holds the real-CNN side:

- the network: torchvision's ResNet-18 adapted to 32x32 inputs as usual for CIFAR (3x3 stride-1
  first convolution, no max-pool), wrapped so that :class:`adamgap.module.GapModule` sees one
  replica: logits (1, B, C) (or f = F_0 - F_1, (1, B), for two classes);
- the data (``data.task=images``): whole images of ``data.classes`` (null -> all), per-channel
  standardization from the training images, and the standard augmentation (random 32x32 crop
  of the 4-pixel zero-padded image and a horizontal flip) when ``data.augment=true``.

The objective is GapModule's: mean cross-entropy + (lam / 2) ||W||^2 over all parameters, i.e.
L2 weight decay inside the gradient for ``sgd`` and ``adam`` (what torch's ``weight_decay`` does
for them), decoupled ``weight_decay`` for ``adamw``. Schedules (cosine, step) come from
``optim.schedule``; mixed precision from ``trainer.precision`` (``bf16-mixed`` on GPU).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.models import resnet18
from torchvision.transforms import v2

from adamgap.config import DATASETS
from adamgap.data import generator
from adamgap.errors import ConfigError
from adamgap.tasks.datasets import load, subset


def resnet18_cifar(num_classes: int, channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem and no max-pool (He et al. 2016, Sec. 4.2
    use this stem for CIFAR)."""
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class ResNetClassifier(nn.Module):
    """One ResNet-18 as GapModule's network: ``replicas = 1``; ``forward`` returns (1, B, C)
    logits, or for two classes f = F_0 - F_1 (1, B) with label +1 for the first class."""

    replicas = 1

    def __init__(self, classes: int, channels: int, seed: int) -> None:
        super().__init__()
        self.classes = classes
        with torch.random.fork_rng(devices=[]):  # W(0) from the seed's "init" stream
            torch.manual_seed(generator(seed, "init").initial_seed())
            self.net = resnet18_cifar(classes, channels)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)[None]  # (1, B, C)
        return z[..., 0] - z[..., 1] if self.classes == 2 else z


class Images(Dataset):
    """Images (N, C, H, W) uint8 with labels, each item passed through ``transform``."""

    def __init__(self, images: Tensor, y: Tensor, transform: v2.Transform) -> None:
        self.images, self.y, self.transform = images, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.y[i]


class ImageDataModule(L.LightningDataModule):
    """Whole images for one replica (``seeds`` = [seed]): ``n`` training and ``n_test`` test
    images drawn with the seed (all of them when n equals the split's size)."""

    def __init__(self, seeds: list[int], *, dataset: str, root: str, download: bool,
                 classes: list[int] | None, n: int, n_test: int, batch_size: int | None,
                 augment: bool, workers: int, max_steps: int) -> None:
        super().__init__()
        self.seed, self.batch_size = seeds[0], batch_size or n
        self.augment, self.workers, self.max_steps = augment, workers, max_steps
        self.splits = {}
        for stream, count in (("train", n), ("test", n_test)):
            images, c = subset(load(dataset, root, download, stream == "train"), classes)
            if count > len(c):
                raise ConfigError(f"data.{'n' if stream == 'train' else 'n_test'}={count} is "
                                  f"not allowed: the {stream} split has {len(c)} images")
            pick = torch.randperm(len(c), generator=generator(self.seed, stream))[:count]
            self.splits[stream] = (images[pick], c[pick])
        self.num_classes = DATASETS[dataset].classes if classes is None else len(classes)
        self.channels = images.shape[1]
        train = self.splits["train"][0].float() / 255.0
        self.mean = train.mean(dim=(0, 2, 3)).tolist()  # per-channel standardization
        self.std = train.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()

    def dataset(self, stream: str, augment: bool) -> Images:
        images, c = self.splits[stream]
        y = (1.0 - 2.0 * c.float()) if self.num_classes == 2 else c.float()
        size = images.shape[-1]
        steps = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if augment else []
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return Images(images, y, v2.Compose(steps))

    def _loader(self, ds: Images, **kwargs) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.workers,
                          persistent_workers=self.workers > 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Exactly the remaining steps' batches: reshuffled every pass over the data."""
        start = self.trainer.global_step if self.trainer is not None else 0
        ds = self.dataset("train", self.augment)
        sampler = RandomSampler(ds, num_samples=(self.max_steps - start) * self.batch_size,
                                generator=generator(self.seed, f"order{start}"))
        return self._loader(ds, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        """The training images (train error, no augmentation) and the test images."""
        return [self._loader(self.dataset(s, augment=False)) for s in ("train", "test")]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return x, y[None]  # labels (1, B): one replica, like the patch tasks
