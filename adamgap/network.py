"""The two-layer patch CNN of Section 3 (plain ``nn.Module``, no Lightning).

    F_j(W, x) = sum_{r=1..m} sum_{p=1..P} sigma(<w_{j,r}, x_p>),   j in {+1, -1}
    sigma(z)  = max(z, 0)^q            (``linear``: sigma(z) = z, the convex control of Thm 4.2)
    f(W, x)   = F_{+1}(W, x) - F_{-1}(W, x)
    w_{j,r}(0) ~ N(0, sigma_0^2 I_d), no biases, second layer fixed.

One module holds K independent replicas (an ensemble over seeds): replica k's filters are
initialised from its own seed, exactly as a single run with that seed would be.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from adamgap.data import generator
from adamgap.patches import SparsePatches, csr_matmul, project


def sparse_patch_sums(weight: Tensor, x: SparsePatches,
                      q: float | None) -> tuple[Tensor, Tensor | None]:
    """``F_j = sum_{p,r} sigma(<w_{j,r}, x_p>)`` (K, B, C) for sparse x, weight (K, d, C, m),
    sigma(z) = relu(z)^q (``q = None``: sigma(z) = z); and ``slope`` = sigma'(Z) / q, what
    :func:`sparse_patch_sums_grad` needs (None when sigma is linear)."""
    K, d, C, m = weight.shape
    z = project(x, weight.reshape(K, d, C * m)).unflatten(-1, (C, m))  # (K, B, P, C, m)
    if q is None:
        return z.sum(dim=(2, 4)), None
    a = z.clamp_min_(0)
    # relu(z)^(q-1); for q = 1 the step function (0^0 would give 1 where z <= 0)
    slope = a * a if q == 3 else (a > 0).to(a.dtype) if q == 1 else a.pow(q - 1)
    return (slope * a).sum(dim=(2, 4)), slope


def sparse_patch_sums_grad(x: SparsePatches, slope: Tensor | None, q: float | None, dF: Tensor,
                           shape: tuple[int, ...]) -> Tensor:
    """``dW = X^T (sigma'(Z) * dF)``, the gradient of ``<dF, F(W)>`` for the F and ``slope`` of
    :func:`sparse_patch_sums` (``shape``: W's (K, d, C, m)). Only the nonzeros of X are read."""
    K, d, C, m = shape
    B, P = x.shape[1:3]
    dF = dF[:, :, None, :, None]  # (K, B, 1, C, 1)
    dz = dF.expand(K, B, P, C, m) if slope is None else slope * (q * dF)
    return csr_matmul(x.transpose(), dz.reshape(K * B * P, C * m)).view(K, d, C, m)


class _SparsePatchSum(torch.autograd.Function):
    """:func:`sparse_patch_sums` with :func:`sparse_patch_sums_grad` as its backward: one
    autograd node instead of the product, ReLU, power and sum, whose per-op overhead costs
    about twice their arithmetic at the paper's sizes."""

    @staticmethod
    def forward(ctx, weight: Tensor, x: SparsePatches, q: float | None) -> Tensor:
        F, slope = sparse_patch_sums(weight, x, q)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(slope)
            ctx.x, ctx.q, ctx.shape = x, q, weight.shape
        return F

    @staticmethod
    def backward(ctx, dF: Tensor):
        (slope,) = ctx.saved_tensors
        return sparse_patch_sums_grad(ctx.x, slope, ctx.q, dF, ctx.shape), None, None


class PatchCNN(nn.Module):
    """K replicas of the patch CNN; ``forward`` returns f (K, B). With ``classes`` C > 2 (one
    filter group per class, for multi-class image patches) it returns the logits F_j (K, B, C)."""

    def __init__(self, d: int, m: int, q: float, sigma_0: float,
                 seeds: list[int] | tuple[int, ...] | range, linear: bool = False,
                 classes: int = 2) -> None:
        super().__init__()
        self.d, self.m, self.q, self.linear = d, m, q, linear
        self.classes, self.replicas = classes, len(seeds)
        # Stored feature-major, (K, d, C, m) with C = 2 classes: a sparse patch product is then a
        # plain sparse-dense matmul against a (K*d, Cm) matrix. ``filters``: the (K, C, m, d) view.
        w0 = torch.stack([torch.randn(classes, m, d, generator=generator(k, "init"))
                          for k in seeds])
        self.weight = nn.Parameter((sigma_0 * w0).permute(0, 3, 1, 2).contiguous())
        self.register_buffer("class_sign", torch.tensor([1.0, -1.0]), persistent=False)

    @property
    def filters(self) -> Tensor:
        """W as (K, 2, m, d): ``filters[k, 0, r]`` is w_{+1,r}, ``filters[k, 1, r]`` is w_{-1,r}."""
        return self.weight.permute(0, 2, 3, 1)

    def activations(self, x: Tensor | SparsePatches) -> Tensor:
        """``<w_{j,r}, x_p>`` for every replica, example, patch, class, filter: (K, B, P, C, m)."""
        K, d, _, m = self.weight.shape
        z = project(x, self.weight.view(K, d, -1))  # (K, B, P, C m)
        return z.view(*z.shape[:-1], self.classes, m)

    def sigma(self, z: Tensor) -> Tensor:
        if self.linear:
            return z
        return torch.relu(z).pow(self.q)

    def forward(self, x: Tensor | SparsePatches) -> Tensor:
        if isinstance(x, SparsePatches):
            F = _SparsePatchSum.apply(self.weight, x, None if self.linear else self.q)
        else:
            F = self.sigma(self.activations(x)).sum(dim=(2, 4))  # (K, B, C): F_{+1}, F_{-1}, ..
        return F @ self.class_sign if self.classes == 2 else F  # F_{+1} - F_{-1}: one node

    @torch.no_grad()
    def forward_with_vjp(self, x: SparsePatches) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``forward(x)`` for sparse x without an autograd graph, and the function that maps a
        cotangent of the output to the weight gradient (as ``torch.func.vjp`` would, minus
        autograd's bookkeeping, which at the paper's sizes costs more than the arithmetic)."""
        q = None if self.linear else self.q
        F, slope = sparse_patch_sums(self.weight, x, q)
        shape = self.weight.shape
        if self.classes != 2:
            return F, lambda dF: sparse_patch_sums_grad(x, slope, q, dF, shape)
        sign = self.class_sign
        return F @ sign, lambda df: sparse_patch_sums_grad(x, slope, q, df[..., None] * sign,
                                                            shape)
