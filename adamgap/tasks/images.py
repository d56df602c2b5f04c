"""Whole images for a CNN (``data.task=images``): the standard optimizer comparison of Wilson
et al. (2017, "The marginal value of adaptive gradient methods in machine learning"), who report
7.65% test error for SGD and 9.60% for the best adaptive method with a VGG on CIFAR-10.

- the networks (``NETWORKS``, ``model.name``): Section 3's CNN as a convolution over k x k
  patches (``patch_conv``), DeepOBS's Fashion-MNIST CNN (``cnn``) and ResNet-18 for 32x32
  (``resnet18``), each wrapped by :class:`ImageClassifier` so that
  :class:`adamgap.module.GapModule` sees one replica;
- the data: ``n`` training images (the training subset: fewer than the split's for CPU budgets)
  and ``n_test`` test images of ``data.classes`` (null -> all), drawn with the seed;
  per-channel standardization from the training images; with ``data.augment=true`` the standard
  augmentation (a random crop of the 4-pixel zero-padded image and a horizontal flip).

Every training batch is a function of the seed and the step (``train_batch``): the examples
of step t are slice t of the epoch's permutation (``generator(seed, "epoch<e>")``), their crops
and flips come from ``generator(seed, "augment<t>")``, never from torch's global random state.
A resumed run sees the batches of the uninterrupted one, in any number of loader workers, and
under DDP each rank takes its slice of the same batch (``shards_for_ddp``).

The objective is GapModule's: mean cross-entropy (logistic for two classes) + (lam / 2)
||W||^2 over all parameters, i.e. L2 weight decay inside the gradient for ``sgd`` and ``adam``,
decoupled ``weight_decay`` for ``adamw``; schedules from ``optim.schedule``, mixed precision from
``trainer.precision`` (``bf16-mixed`` on a GPU), DDP from ``trainer.strategy``/``devices``.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as tvF

from adamgap.config import DATASETS
from adamgap.data import StepBatches, StepChunk, generator
from adamgap.errors import ConfigError
from adamgap.tasks.cnn import CNN2c2d
from adamgap.tasks.datasets import load, subset
from adamgap.tasks.patch_conv import PatchConvCNN
from adamgap.tasks.resnet import resnet18_cifar

EVAL_BATCH = 1000  # images per evaluation batch (memory only: the metrics sum over batches)
PAD = 4  # the standard augmentation: crops of the 4-pixel zero-padded image

# model.name -> the network on (channels, side, classes) images, from the model.* keys that
# config.MODELS lists for it
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "patch_conv": lambda channels, side, classes, **kw: PatchConvCNN(channels, classes, **kw),
    "cnn": lambda channels, side, classes, **kw: CNN2c2d(channels, side, classes, **kw),
    "resnet18": lambda channels, side, classes: resnet18_cifar(classes, channels),
}


class ImageClassifier(nn.Module):
    """One image network as GapModule's network: ``replicas = 1``; ``forward`` returns (1, B, C)
    logits, or for two classes f = F_0 - F_1 (1, B) with label +1 for the first class. W(0)
    comes from the seed's ``init`` stream: the same for every optimizer."""

    replicas = 1

    def __init__(self, name: str, channels: int, side: int, classes: int, seed: int,
                 **model) -> None:
        super().__init__()
        self.classes = classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator(seed, "init").initial_seed())
            self.net = NETWORKS[name](channels, side, classes, **model)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)[None]  # (1, B, C)
        return z[..., 0] - z[..., 1] if self.classes == 2 else z


def augment(images: Tensor, g: torch.Generator) -> Tensor:
    """Random crops of the zero-padded images and horizontal flips, (B, C, H, W) uint8, the
    draws from ``g`` (offsets (B, 2), then flips (B,))."""
    B, _, H, W = images.shape
    offsets = torch.randint(0, 2 * PAD + 1, (B, 2), generator=g).tolist()
    flips = (torch.rand(B, generator=g) < 0.5).tolist()
    padded = tvF.pad(images, [PAD])
    out = [tvF.crop(img, top, left, H, W) for img, (top, left) in zip(padded, offsets,
                                                                       strict=True)]
    return torch.stack([tvF.horizontal_flip(x) if flip else x
                        for x, flip in zip(out, flips, strict=True)])


class EvalBatches(Dataset):
    """The images of ``rows`` (this rank's block of a split), ``EVAL_BATCH`` per item, each a
    standardized (x, y) batch with labels (1, B)."""

    def __init__(self, dm: ImageDataModule, stream: str, rows: Tensor) -> None:
        self.dm, self.stream, self.blocks = dm, stream, rows.split(EVAL_BATCH)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.dm.batch(self.stream, self.blocks[i])


class ImageDataModule(L.LightningDataModule):
    """Whole images for one replica (``seeds`` = [seed]): ``n`` training and ``n_test`` test
    images drawn with the seed (all of them when n equals the split's size)."""

    shards_for_ddp = True  # each DDP rank takes its slice of every batch (``train_batch``)

    def __init__(self, seeds: list[int], *, dataset: str, root: str, download: bool,
                 classes: list[int] | None, n: int, n_test: int, batch_size: int | None,
                 augment: bool, workers: int, max_steps: int) -> None:
        super().__init__()
        self.seed, self.n, self.batch_size = seeds[0], n, batch_size or n
        self.augment, self.workers, self.max_steps = augment, workers, max_steps
        self.splits = {}
        for stream, count in (("train", n), ("test", n_test)):
            images, c = subset(load(dataset, root, download, stream == "train"), classes)
            if count > len(c):
                raise ConfigError(f"data.{'n' if stream == 'train' else 'n_test'}={count} is "
                                  f"not allowed: the {stream} split has {len(c)} images")
            pick = torch.randperm(len(c), generator=generator(self.seed, stream))[:count]
            self.splits[stream] = (images[pick].contiguous(), c[pick])
        self.num_classes = DATASETS[dataset].classes if classes is None else len(classes)
        self.channels, self.side = images.shape[1], images.shape[-1]
        train = self.splits["train"][0].float() / 255.0
        self.mean = train.mean(dim=(0, 2, 3)).tolist()  # per-channel standardization
        self.std = train.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
        self.rank, self.world = 0, 1

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:  # under DDP: this rank's part of every batch and split
            self.rank, self.world = self.trainer.global_rank, self.trainer.world_size

    # -- batches ------------------------------------------------------------------------------
    def batch(self, stream: str, rows: Tensor, g: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor]:
        """Images ``rows`` of a split, augmented with draws from ``g`` when given, standardized:
        (x (B, C, H, W) float, y (1, B)); y in {+1, -1} for two classes, else 0..C-1."""
        images, c = self.splits[stream]
        x = images[rows]
        if g is not None:
            x = augment(x, g)
        x = tvF.normalize(tvF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)
        y = (1.0 - 2.0 * c[rows].float()) if self.num_classes == 2 else c[rows].float()
        return x, y[None]

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The training batch of optimizer step ``step`` (under DDP this rank's slice of it):
        every pass over the ``n`` images a new permutation, every step its own crops and flips."""
        per_epoch = self.n // self.batch_size
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(self.n, generator=generator(self.seed, f"epoch{epoch}"))
        rows = order[i * self.batch_size:(i + 1) * self.batch_size]
        g = generator(self.seed, f"augment{step}") if self.augment else None
        x, y = self.batch("train", rows, g)  # the whole batch's draws, then this rank's part
        b = self.batch_size // self.world
        part = slice(self.rank * b, (self.rank + 1) * b)
        return x[part], y[:, part]

    def _loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=None, num_workers=self.workers,
                          persistent_workers=self.workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        """The remaining steps' batches, one ``StepChunk`` of one step per item."""
        start = self.trainer.global_step if self.trainer is not None else 0
        return self._loader(StepBatches(self, self.max_steps, start, 1))

    def val_dataloader(self) -> list[DataLoader]:
        """The training images (train error, no augmentation) and the test images; under DDP
        each rank its block of each (the metrics sum over ranks)."""
        return [self._loader(EvalBatches(self, s, torch.tensor_split(
            torch.arange(len(self.splits[s][1])), self.world)[self.rank]))
            for s in ("train", "test")]

    def first_layer_inputs(self, limit: int) -> tuple[Tensor, Tensor]:
        """Up to ``limit`` training images (those trained on, not augmented) and test images,
        standardized, (N, C, H, W) each: what ``adamgap.first_layer`` measures the filters on."""
        return tuple(self.batch(s, torch.arange(min(limit, len(self.splits[s][1]))))[0]
                     for s in ("train", "test"))

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        if isinstance(batch, StepChunk):
            return StepChunk([self.transfer_batch_to_device(b, device, dataloader_idx)
                              for b in batch.batches])
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
