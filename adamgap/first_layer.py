"""First-layer alignment without a planted feature: how much of each first-layer filter lies in
the subspace the data's patches occupy, and whether the filters respond more to the training
images than to fresh ones.

Figure 1 of Zou et al. shows that the model Adam trains is visibly "noisier" than SGD's; on the
synthetic data (Definition 3.1) Figure 2 says it with the planted v and xi. On real images there
is no planted v, so the measure comes from the data itself:

- the **feature subspace** S is spanned by the top principal directions of the training set's
  image patches (every k x k patch a convolution reads, or every patch of the patch CNN), as
  many as explain the share ``align.variance`` (e.g. 95%) of their energy; the **noise
  subspace** is its orthogonal complement. The directions are those of the patches' second
  moment E[x_p x_p^T] (their uncentred principal components, the SVD of the patch matrix):
  a filter acts through <w, x_p>, so what counts is where the patches' energy lies, their
  mean included;
- per filter w_r: ``first_layer_feature_energy`` ||P_S w_r||^2 / ||w_r||^2 and
  ``first_layer_noise_energy`` ||P_{S^perp} w_r||^2 / ||w_r||^2 (they sum to 1), summarised as
  the mean over filters. A random filter has feature energy dim(S) / D; a filter built from
  the data's structure close to 1; a filter made of directions no patch uses (noise) close to 0;
- the **memorization score** compares the filters' responses on training and on test images:
  per filter the response R_r(X) = mean over images of max over patches relu(<w_r, x_p>) (the
  best match of the filter in each image), and ``first_layer_memorization`` = sum_r R_r(train)
  / sum_r R_r(test) - 1 over the training images trained on and as many test images: 0 when the
  filters respond to both alike, > 0 when they respond more to the images they were trained on
  (a filter that memorized a training patch matches it exactly, and nothing in a test image).
  The ratio of sums (not the mean of per-filter ratios) keeps filters that respond to nothing
  from dominating; per-filter ratios go to ``alignment.pt``.

It applies to any network whose first layer is a convolution over image patches: an image
network (its first ``nn.Conv2d``) or the patch CNN (:class:`adamgap.network.PatchCNN`, whose
patches are its inputs), with a datamodule that gives its inputs (``first_layer_inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamgap.data import PatchSet
from adamgap.network import PatchCNN

FIRST_LAYER_KEYS = (
    "first_layer_feature_energy",  # mean_r ||P_S w_r||^2 / ||w_r||^2
    "first_layer_noise_energy",  # mean_r ||P_{S^perp} w_r||^2 / ||w_r||^2 (1 - the above)
    "first_layer_memorization",  # sum_r R_r(train) / sum_r R_r(test) - 1
    "first_layer_subspace_dims",  # dim S
)
CHUNK = 100  # examples per pass when accumulating the patches' second moment (memory only)


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    """The first convolution of an image network (registration order: torchvision's and ours
    register the stem first), or None."""
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def applies(net: nn.Module, dm) -> bool:
    """Whether ``net``'s first layer is a convolution over patches the datamodule can give."""
    return hasattr(dm, "first_layer_inputs") and (
        isinstance(net, PatchCNN) or first_conv(net) is not None)


def filters_of(net: nn.Module) -> Tensor:
    """The first layer's filters as vectors, (K, F, D): a convolution's (F, C, k, k) weight
    flattened like its patches (one replica); the patch CNN's w_{j,r}, class by class."""
    if isinstance(net, PatchCNN):
        return net.filters.flatten(1, 2)
    return first_conv(net).weight.flatten(1)[None]


def patches_of(net: nn.Module, x: Tensor) -> Tensor:
    """Every patch the first layer reads, (K, N, L, D): for a convolution its k x k windows of
    images x (N, C, H, W) (``F.unfold``, the convolution's padding and stride); for the patch
    CNN the inputs themselves, x (K, N, P, d) dense."""
    if isinstance(net, PatchCNN):
        return x
    conv = first_conv(net)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols.transpose(1, 2)[None]  # (1, N, L, C k k)


def responses(net: nn.Module, x: Tensor) -> Tensor:
    """R_r(x) (K, F): per filter the mean over examples of max over patches relu(<w_r, x_p>)
    (biases left out: the filter's own match)."""
    if isinstance(net, PatchCNN):
        z = torch.einsum("knpd,kfd->knpf", x, filters_of(net))
        return z.amax(2).clamp_min(0).mean(1)
    conv = first_conv(net)
    z = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return z.amax(dim=(2, 3)).clamp_min(0).mean(0)[None]


def principal_directions(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The eigenvectors (K, D, D) of the patches' second moment, by decreasing eigenvalue
    (column i the i-th principal direction), and the eigenvalues (K, D); x as in
    :func:`patches_of`, taken CHUNK examples at a time, in float64."""
    moment = None
    count = 0
    for part in x.split(CHUNK, dim=1 if isinstance(net, PatchCNN) else 0):  # examples
        p = patches_of(net, part).flatten(1, 2).double()  # (K, N' L, D)
        m = p.transpose(1, 2) @ p
        moment = m if moment is None else moment + m
        count += p.shape[1]
    values, vectors = torch.linalg.eigh(moment / count)  # ascending
    return vectors.flip(-1), values.flip(-1).clamp_min(0)


def subspace_dims(values: Tensor, share: float) -> Tensor:
    """dim S per replica (K,): the fewest top directions whose eigenvalues reach ``share`` of
    the total."""
    cumulative = values.cumsum(-1) / values.sum(-1, keepdim=True).clamp_min(1e-300)
    return (cumulative < share - 1e-12).sum(-1) + 1


def energies(filters: Tensor, vectors: Tensor, dims: Tensor) -> tuple[Tensor, Tensor]:
    """Per filter the share of its energy in the feature subspace (the first ``dims`` columns
    of ``vectors``) and in the noise subspace (the others): (K, F) each, summing to 1."""
    coef = torch.einsum("kfd,kde->kfe", filters.double(), vectors) ** 2  # (K, F, D)
    inside = torch.arange(coef.shape[-1]) < dims[:, None, None]  # (K, 1, D)
    norm = (filters.double() ** 2).sum(-1).clamp_min(1e-300)
    feature = (coef * inside).sum(-1) / norm
    noise = (coef * ~inside).sum(-1) / norm
    return feature.float(), noise.float()


def patch_inputs(train: PatchSet, test: PatchSet, limit: int) -> tuple[Tensor, Tensor]:
    """The first ``limit`` training and test examples of a patch task, dense (K, N, P, d)."""
    return tuple(s.inputs(False, torch.arange(min(limit, s.y.shape[1])).expand(s.y.shape[0], -1))
                 for s in (train, test))


@dataclass
class Measure:
    """One record: per filter (K, F) and summarised per replica (K,)."""

    per_filter: dict[str, Tensor]
    summary: dict[str, Tensor]


class FirstLayerProbe:
    """The feature subspace of the training patches (computed once) and the inputs the filters
    are measured on: ``measure(net)`` is one record of the first layer's alignment."""

    def __init__(self, net: nn.Module, dm, share: float, images: int) -> None:
        self.train, self.test = dm.first_layer_inputs(images)
        vectors, values = principal_directions(net, self.train)
        self.vectors, self.dims = vectors, subspace_dims(values, share)

    @torch.no_grad()
    def measure(self, net: nn.Module) -> Measure:
        device = filters_of(net).device
        self.train, self.test = self.train.to(device), self.test.to(device)
        filters = filters_of(net).detach().float().cpu()
        feature, noise = energies(filters, self.vectors, self.dims)
        train = responses(net, self.train).float().cpu()
        test = responses(net, self.test).float().cpu()
        ratio = train / test.clamp_min(1e-30) - 1
        pooled = train.sum(-1) / test.sum(-1).clamp_min(1e-30) - 1
        return Measure(
            {"feature_energy": feature, "noise_energy": noise, "response_train": train,
             "response_test": test, "memorization": ratio},
            {"first_layer_feature_energy": feature.mean(-1),
             "first_layer_noise_energy": noise.mean(-1), "first_layer_memorization": pooled,
             "first_layer_subspace_dims": self.dims.float()})


def filter_images(net: nn.Module, dm) -> Tensor:
    """The first layer's filters to draw, replica by replica: (K, F, C, h, w) pictures where
    they have one (a convolution's kernels; the patch CNN's through the datamodule's
    ``filter_images``, e.g. the image part of a planted filter), else (K, F, D) vectors."""
    filters = filters_of(net).detach().float().cpu().clone()  # a copy, not a view of W
    if not isinstance(net, PatchCNN):
        return filters.view_as(first_conv(net).weight)[None]
    return dm.filter_images(filters) if hasattr(dm, "filter_images") else filters
