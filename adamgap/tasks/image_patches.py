"""Images as patches: each image cut into a grid of non-overlapping patches, fed to the same
patch network (Section 3's CNN is a convolution with stride = kernel and the truncated
polynomial activation), with no planted feature or added noise.

``data.classes`` picks the classes: two give the binary task (y = +1 for the first, -1 for the
second, logistic loss), more give a multi-class task with one filter group per class
(``PatchCNN(classes=C)``, cross-entropy). Every replica draws its own ``n`` training and
``n_test`` test images (balanced over the classes with ``labels=balanced``).

The question it asks (docs/realdata.md): do Adam's filters memorize example-specific detail
while GD's learn class structure? For the binary task the alignment callback reads
``features`` (K, 2, d), row j the unit-norm mean patch of class j (over its training images and
all positions), and ``train_noise`` (K, n, P, d), the example-specific part of each patch:
``x_{i,p}`` minus the class-mean image's patch p.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adamgap.data import PatchSet, SyntheticDataModule, generator
from adamgap.errors import ConfigError
from adamgap.first_layer import patch_inputs
from adamgap.tasks.datasets import load, subset, to_float
from adamgap.tasks.datasets import normalize as normalize_rows  # the argument name is taken


def to_patches(x: Tensor, grid: int) -> Tensor:
    """Images (N, C, S, S) -> (N, grid^2, C (S/grid)^2), patches in row-major grid order."""
    N, C, S, _ = x.shape
    b = S // grid
    return x.reshape(N, C, grid, b, grid, b).permute(0, 2, 4, 1, 3, 5).reshape(N, grid**2, -1)


class ImagePatchDataModule(SyntheticDataModule):
    """Grid patches of real images for replicas ``seeds`` (dense inputs (K, B, P, d))."""

    def __init__(self, seeds: list[int], *, dataset: str, root: str, download: bool,
                 classes: list[int] | None, image_size: int | None, normalize: str, grid: int,
                 d: int, n: int, n_test: int, labels: str, batch_size: int | None,
                 max_steps: int, steps_per_batch: int) -> None:
        self.pools: dict[str, tuple[Tensor, Tensor]] = {}
        for stream, train in (("train", True), ("test", False)):
            images, y = subset(load(dataset, root, download, train), classes)
            x = to_float(images, image_size)
            shape = x.shape
            x = x.flatten(1)
            if train:
                mean = x.mean(0)  # centering uses the training images' mean
            x = normalize_rows(x, normalize, mean).view(shape)
            self.pools[stream] = (to_patches(x, grid), y)
            self.patch_shape = (shape[1], shape[2] // grid, shape[3] // grid)  # (C, b, b)
            need = n if train else n_test
            if need > len(y):
                raise ConfigError(f"data.{'n' if train else 'n_test'}={need} is not allowed: "
                                  f"the {stream} split has {len(y)} images of these classes")
        self.num_classes = int(self.pools["train"][1].max()) + 1
        # Definition 3.1's noise settings do not apply: no noise is added (sigma_p = 0)
        super().__init__(seeds, d=d, n=n, n_test=n_test, s=0, sigma_p=0.0, alpha=0.0, v=None,
                         labels=labels, feature_position="fixed", patches=grid**2,
                         batch_size=batch_size, sparse=False, max_steps=max_steps,
                         steps_per_batch=steps_per_batch)

    def make_set(self, seed: int, n: int, stream: str) -> PatchSet:
        """``n`` images of replica ``seed``: balanced over the classes, or a uniform draw."""
        g = generator(seed, stream)
        patches, labels = self.pools[stream]
        C = self.num_classes
        if self.labels == "balanced":
            counts = [n // C + (j < n % C) for j in range(C)]
            rows = []
            for j, count in enumerate(counts):
                pool = (labels == j).nonzero().flatten()
                if count > len(pool):
                    raise ConfigError(f"data: {stream} needs {count} images of class {j}, the "
                                      f"split has {len(pool)}; lower data.n / data.n_test")
                rows.append(pool[torch.randperm(len(pool), generator=g)[:count]])
            pick = torch.cat(rows)[torch.randperm(n, generator=g)]
        else:
            pick = torch.randperm(len(labels), generator=g)[:n]
        c = labels[pick]
        y = (1.0 - 2.0 * c.float()) if C == 2 else c.float()  # binary: +1 / -1
        x = patches[pick]  # (n, P, d)
        index = torch.arange(self.d).expand(x.shape)
        return PatchSet(index[None], x[None], y[None], torch.zeros(1, n, dtype=torch.long),
                        self.d)

    def first_layer_inputs(self, limit: int) -> tuple[Tensor, Tensor]:
        """Up to ``limit`` training and test examples, (K, N, P, d) (``first_layer``)."""
        return patch_inputs(self.train, self.test, limit)

    def filter_images(self, filters: Tensor) -> Tensor:
        """Filters (K, F, d) as the patches they match, (K, F, C, b, b)."""
        return filters.unflatten(-1, self.patch_shape)

    def class_index(self, y: Tensor) -> Tensor:
        """Class positions 0..C-1 of labels y (+1 -> 0, -1 -> 1 for the binary task)."""
        return (y < 0).long() if self.num_classes == 2 else y.long()

    def class_means(self) -> Tensor:
        """Per replica the class-mean image as patches, (K, C, P, d)."""
        x, c = self.train.value, self.class_index(self.train.y)  # (K, n, P, d), (K, n)
        onehot = torch.nn.functional.one_hot(c, self.num_classes).float()  # (K, n, C)
        counts = onehot.sum(1).clamp(min=1)  # (K, C)
        return torch.einsum("knc,knpd->kcpd", onehot, x) / counts[..., None, None]

    def class_features(self) -> Tensor:
        return normalize_rows(self.class_means().mean(2), "unit")  # (K, C, d)

    def setup(self, stage: str | None = None) -> None:
        made = self._made
        super().setup(stage)
        if not made:  # the example-specific part of every training patch
            means = self.class_means()  # (K, C, P, d)
            c = self.class_index(self.y_train)[..., None, None].expand(-1, -1, *means.shape[2:])
            self.train_noise = self.train.value - means.gather(1, c)

