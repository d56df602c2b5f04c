"""The planted feature-patch task: Definition 3.1 with a real image as the feature.

Each example is ``x = (x_1, ..., x_P)`` with label ``y in {+1, -1}`` (classes
``data.classes[0]`` and ``[1]``), every patch in ``R^d``:

- the *feature patch* (random position) is ``u_i``, a real image of class ``y_i`` turned into a
  D-vector (area downscaling, optionally the orthonormal 2-D DCT, centering, the top-k
  coordinates, unit norm) and embedded in the first D coordinates of ``R^d`` (``d >= D``);
- every other patch is a *noise patch* ``xi = xi' + feature noise``: ``xi'`` is
  ``N(0, sigma_p^2)`` on ``s`` coordinates drawn among all d (or only outside the image's D) and
  zero elsewhere, as in Definition 3.1; the feature noise is ``+alpha u'`` with ``u'`` an image
  of the opposite class (``feature_noise=opposite``: a faint object of the other class in the
  clutter) or ``-alpha u'`` with ``u'`` another image of the example's own class (``same``: the
  exact analogue of ``-alpha y v`` when the class features are antipodal, as in the paper).

Training examples take their images from the training split, test examples from the test split.
Why the density knobs: early on Adam moves like sign descent, which raises ``<w, z>`` by about
``lr ||z||_1`` per step, so it favours whichever patch has the larger l1/l2 ratio (in the paper
the feature is 1-sparse, the noise s-sparse); GD's rates follow l2 norms (Section 5.1). Real
images are dense, so ``feature_k``, ``basis``, ``image_size``, ``d`` and ``s`` set the ratios,
and :meth:`PlantedDataModule.summary_extras` records them for every run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adamgap.data import (
    PatchSet,
    SyntheticDataModule,
    generator,
    labels_and_positions,
    sparse_noise,
)
from adamgap.errors import ConfigError
from adamgap.first_layer import patch_inputs
from adamgap.tasks.datasets import load, normalize, subset, to_float


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix (n, n): row k is the k-th cosine basis vector."""
    k, i = torch.arange(n)[:, None], torch.arange(n)[None, :]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def feature_vectors(x: Tensor, basis: str, mode: str, k: int | None,
                    mean: Tensor | None = None) -> Tensor:
    """Images (N, C, H, W) in [0, 1] -> feature vectors (N, D): in the pixel or 2-D DCT basis
    (per channel), normalized as ``mode`` (``datasets.normalize``; ``mean`` in the same basis),
    keeping the ``k`` largest |coordinates| (then renormalized) when ``k`` is set."""
    if basis == "dct":
        m = dct_matrix(x.shape[-1])
        x = m @ x @ m.T  # orthonormal: l2 norms and inner products are unchanged
    x = normalize(x.flatten(1), mode, mean)
    if k is not None and k < x.shape[1]:
        keep = x.abs().topk(k, dim=1).indices
        x = torch.zeros_like(x).scatter_(1, keep, x.gather(1, keep))
        x = x if mode == "none" else normalize(x, "unit")
    return x


def make_planted(seed: int, n: int, pools: tuple[Tensor, Tensor], d: int, s: int,
                 sigma_p: float, alpha: float, labels: str, feature_position: str, patches: int,
                 noise_coords: str, feature_noise: str, stream: str) -> PatchSet:
    """Draw ``n`` planted examples for one replica (``PatchSet`` with K = 1). ``pools`` holds the
    feature vectors (N_j, D) of class +1 and class -1 of the split the examples come from."""
    g = generator(seed, stream)
    y, where = labels_and_positions(n, labels, feature_position, patches, g)
    D = pools[0].shape[1]
    free = torch.arange(d) if noise_coords == "all" else torch.arange(D, d)
    noise_idx, noise_val = sparse_noise(n, patches, free, s, sigma_p, g)  # (n, P, s) each
    own = torch.empty(n, D)  # u_i, the feature patch's image
    noise_img = torch.empty(n, patches, D)  # u' per patch, for the feature noise
    r = torch.rand(n, patches, generator=g)
    for j, pool, other in ((1.0, pools[0], pools[1]), (-1.0, pools[1], pools[0])):
        rows = (y == j).nonzero().flatten()
        if len(rows) > len(pool):
            raise ConfigError(f"data: {stream} needs {len(rows)} images of class y={j:+.0f} "
                              f"but the split has {len(pool)}; lower data.n / data.n_test")
        pick = torch.randperm(len(pool), generator=g)[: len(rows)]  # without replacement
        own[rows] = pool[pick]
        if feature_noise == "opposite":
            noise_img[rows] = other[(r[rows] * len(other)).long()]
        else:  # another image of the same class: skip the example's own image
            idx = (r[rows] * (len(pool) - 1)).long()
            noise_img[rows] = pool[idx + (idx >= pick[:, None]).long()]
    sign = 1.0 if feature_noise == "opposite" else -1.0
    index = torch.cat([noise_idx, torch.arange(D).expand(n, patches, D)], dim=2)  # (n, P, s+D)
    value = torch.cat([noise_val, sign * alpha * noise_img], dim=2)
    feat = torch.arange(patches)[None, :] == where[:, None]  # (n, P)
    index[feat] = torch.cat([torch.zeros(n, s, dtype=torch.long), torch.arange(D).expand(n, D)],
                            dim=1)
    value[feat] = torch.cat([torch.zeros(n, s), own], dim=1)
    return PatchSet(index[None], value[None], y[None], where[None], d)


class PlantedDataModule(SyntheticDataModule):
    """Planted real-image data for replicas ``seeds`` (each its own draw of images, positions
    and noise). For the alignment callback: ``features`` (K, 2, d), row 0 (class +1) and row 1
    (class -1) the unit-norm mean feature patch of that class in replica k's training set;
    ``train_noise`` the noise patches (K, n, P-1, ...); ``y_train`` (K, n)."""

    def __init__(self, seeds: list[int], *, dataset: str, root: str, download: bool,
                 classes: list[int], image_size: int | None, normalize: str, basis: str,
                 feature_k: int | None, noise_coords: str, feature_noise: str, d: int, n: int,
                 n_test: int, s: int, sigma_p: float | None, alpha: float, labels: str,
                 feature_position: str, patches: int, batch_size: int | None,
                 sparse: bool | None, max_steps: int, steps_per_batch: int) -> None:
        self.noise_coords, self.feature_noise, self.basis = noise_coords, feature_noise, basis
        self.pools = {}
        for stream, train in (("train", True), ("test", False)):
            images, y = subset(load(dataset, root, download, train), classes)
            x = to_float(images, image_size)
            self.image_shape = tuple(x.shape[1:])  # (C, side, side)
            if stream == "train":  # centering uses the training images' mean, in the basis
                mean = feature_vectors(x, basis, "none", None).mean(0)
            u = feature_vectors(x, basis, normalize, feature_k, mean)
            self.pools[stream] = (u[y == 0], u[y == 1])
            need = n if train else n_test
            if labels == "balanced" and need - need // 2 > min(len(p) for p in self.pools[stream]):
                raise ConfigError(f"data.{'n' if train else 'n_test'}={need} is not allowed: "
                                  f"the {stream} split has {len(self.pools[stream][0])} and "
                                  f"{len(self.pools[stream][1])} images of classes {classes}")
        D = self.pools["train"][0].shape[1]
        if sparse is None:  # sparse matrices pay off below ~25% nonzeros (as for Definition 3.1)
            k = feature_k or D
            nnz = k + (patches - 1) * (s + (k if alpha > 0 else 0))
            sparse = nnz / (patches * d) < 0.25
        if sigma_p is None and s == 0:
            sigma_p = 0.0  # no Gaussian noise at all: only the feature noise
        super().__init__(seeds, d=d, n=n, n_test=n_test, s=s, sigma_p=sigma_p, alpha=alpha,
                         v=None, labels=labels, feature_position=feature_position, patches=patches,
                         batch_size=batch_size, sparse=sparse, max_steps=max_steps,
                         steps_per_batch=steps_per_batch)
        self.D = D

    def make_set(self, seed: int, n: int, stream: str) -> PatchSet:
        return make_planted(seed, n, self.pools[stream], self.d, self.s, self.sigma_p,
                            self.alpha, self.labels, self.feature_position, self.patches,
                            self.noise_coords, self.feature_noise, stream)

    def first_layer_inputs(self, limit: int) -> tuple[Tensor, Tensor]:
        """Up to ``limit`` training and test examples, dense (K, N, P, d) (``first_layer``)."""
        return patch_inputs(self.train, self.test, limit)

    def filter_images(self, filters: Tensor) -> Tensor:
        """The image part of filters (K, F, d) as pictures (K, F, C, side, side): its first D
        coordinates, back from the DCT basis when the features are in it."""
        x = filters[..., : self.D].unflatten(-1, self.image_shape)
        if self.basis == "dct":
            m = dct_matrix(x.shape[-1])
            x = m.T @ x @ m  # the inverse of the orthonormal transform
        return x

    def feature_patches(self) -> Tensor:
        """The training feature patches' images u_i, (K, n, D)."""
        s, D = self.s, self.D
        pick = self.train.feature_patch[:, :, None, None].expand(-1, -1, 1, s + D)
        return self.train.value.gather(2, pick)[:, :, 0, s:]

    def class_features(self) -> Tensor:
        u, y = self.feature_patches(), self.train.y  # (K, n, D), (K, n)
        rows = []
        for j in (1.0, -1.0):
            mask = (y == j).float()[..., None]
            mean = (u * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(normalize(mean, "unit"))
        out = torch.zeros(len(self.seeds), 2, self.d)
        out[..., : self.D] = torch.stack(rows, dim=1)
        return out

    def summary_extras(self) -> dict[str, list[float]]:
        """Per replica, the density of the feature and noise patches (training set):
        ``mu_l1_l2`` mean ||u_i||_1/||u_i||_2, ``mu_mean_l1_l2`` the same for the class-mean
        directions, ``mu_cosine`` cos(mu_+1, mu_-1), ``xi_l1_l2`` mean ||xi||_1/||xi||_2 over
        the noise patches (feature noise included), ``mu_l2`` and ``xi_l2`` mean l2 norms."""
        u = self.feature_patches()
        mu = self.features[..., : self.D]
        out: dict[str, list[float]] = {k: [] for k in ("mu_l1_l2", "mu_mean_l1_l2", "mu_cosine",
                                                       "xi_l1_l2", "mu_l2", "xi_l2")}
        for k in range(len(self.seeds)):
            one = PatchSet(*(t[k:k + 1] for t in (self.train.index, self.train.value,
                                                   self.train.y, self.train.feature_patch)),
                           self.d)
            xi = one.noise_patches(sparse=False).flatten(0, 2)  # (n (P-1), d)
            out["mu_l1_l2"].append(float(ratio(u[k]).mean()))
            out["mu_mean_l1_l2"].append(float(ratio(mu[k]).mean()))
            out["mu_cosine"].append(float(mu[k, 0] @ mu[k, 1]))
            out["xi_l1_l2"].append(float(ratio(xi).mean()))
            out["mu_l2"].append(float(u[k].norm(dim=-1).mean()))
            out["xi_l2"].append(float(xi.norm(dim=-1).mean()))
        return out


def ratio(x: Tensor) -> Tensor:
    """||x||_1 / ||x||_2 of each row: between 1 (1-sparse) and sqrt(dim) (flat)."""
    return x.abs().sum(-1) / x.norm(dim=-1).clamp(min=1e-12)
