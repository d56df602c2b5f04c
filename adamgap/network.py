"""The two-layer patch CNN of Section 3 (plain ``nn.Module``, no Lightning).

    F_j(W, x) = sum_{r=1..m} sum_{p=1..P} sigma(<w_{j,r}, x_p>),   j in {+1, -1}
    sigma(z)  = max(z, 0)^q            (``linear``: sigma(z) = z, the convex control of Thm 4.2)
    f(W, x)   = F_{+1}(W, x) - F_{-1}(W, x)
    w_{j,r}(0) ~ N(0, sigma_0^2 I_d), no biases, second layer fixed.

One module holds K independent replicas (an ensemble over seeds): replica k's filters are
initialised from its own seed, exactly as a single run with that seed would be. How the
replicas' weights are held (``layout``) is what an optimizer sees:

``ensemble``  one parameter W (K, d, C, m): the fastest for elementwise optimizers, which
              treat its K blocks as K runs;
``replicas``  one parameter per replica, its (C m, d) matrix: the weight of the patch
              convolution (C m output channels, kernel d) that a real CNN would give a matrix
              optimizer. ``weight`` is then their (K, d, C, m) stack (differentiable), and the
              state dict still holds ``weight``, so files and checkpoints read the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from adamgap.data import generator
from adamgap.patches import SparsePatches, project


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
    return x.transpose_matmul(dz.reshape(K * B * P, C * m)).view(K, d, C, m)


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


LAYOUTS = ("ensemble", "replicas")


class PatchCNN(nn.Module):
    """K replicas of the patch CNN; ``forward`` returns f (K, B). With ``classes`` C > 2 (one
    filter group per class, for multi-class image patches) it returns the logits F_j (K, B, C).
    ``layout``: how the replicas' weights are held (module docstring)."""

    def __init__(self, d: int, m: int, q: float, sigma_0: float,
                 seeds: list[int] | tuple[int, ...] | range, linear: bool = False,
                 classes: int = 2, layout: str = "ensemble") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: one of {', '.join(LAYOUTS)}")
        self.d, self.m, self.q, self.linear, self.layout = d, m, q, linear, layout
        self.classes, self.replicas = classes, len(seeds)
        # Stored feature-major, (K, d, C, m) with C = 2 classes: a sparse patch product is then a
        # plain sparse-dense matmul against a (K*d, Cm) matrix. ``filters``: the (K, C, m, d) view.
        w0 = torch.stack([torch.randn(classes, m, d, generator=generator(k, "init"))
                          for k in seeds]) * sigma_0  # (K, C, m, d)
        if layout == "ensemble":
            self.weight = nn.Parameter(w0.permute(0, 3, 1, 2).contiguous())
        else:
            self.replica_weights = nn.ParameterList(
                [nn.Parameter(w.reshape(classes * m, d).clone()) for w in w0])  # K x (C m, d)
            self.register_state_dict_post_hook(_stacked_state)
            self.register_load_state_dict_pre_hook(_split_state)
        self.register_buffer("class_sign", torch.tensor([1.0, -1.0]), persistent=False)

    @property
    def weight(self) -> Tensor:
        """W as (K, d, C, m): the parameter (``ensemble``), or the stack of the replicas' (C m, d)
        matrices (``replicas``: a new differentiable tensor on every access)."""
        if self.layout == "ensemble":
            if "weight" not in self._parameters:  # before __init__ registers it
                raise AttributeError("weight")
            return self._parameters["weight"]
        K, C, m, d = self.replicas, self.classes, self.m, self.d
        # each (C m, d) matrix transposed into a contiguous (K, d, C m) stack: the products
        # then run exactly as on the ensemble's parameter (same kernels, same sums)
        return torch.stack([w.t() for w in self.replica_weights]).view(K, d, C, m)

    @property
    def filters(self) -> Tensor:
        """W as (K, 2, m, d): ``filters[k, 0, r]`` is w_{+1,r}, ``filters[k, 1, r]`` is w_{-1,r}."""
        return self.weight.permute(0, 2, 3, 1)

    def replica_view(self, k: int) -> Tensor:
        """Replica k's W as a one-replica (1, d, C, m) view of its parameter (``replicas``)."""
        C, m, d = self.classes, self.m, self.d
        return self.replica_weights[k].view(C, m, d).permute(2, 0, 1)[None]

    def activations(self, x: Tensor | SparsePatches, weight: Tensor | None = None) -> Tensor:
        """``<w_{j,r}, x_p>`` for every replica, example, patch, class, filter: (K, B, P, C, m)."""
        weight = self.weight if weight is None else weight
        K, d, _, m = weight.shape
        z = project(x, weight.reshape(K, d, -1))  # (K, B, P, C m)
        return z.view(*z.shape[:-1], self.classes, m)

    def sigma(self, z: Tensor) -> Tensor:
        if self.linear:
            return z
        return torch.relu(z).pow(self.q)

    def forward(self, x: Tensor | SparsePatches, weight: Tensor | None = None,
                twice: bool = False) -> Tensor:
        """f (K, B) of the network, or with ``weight`` (K', d, C, m) of those weights (e.g. one
        replica's). ``twice``: through plain products, ReLU and power only, so that the
        gradient is itself differentiable (Hessian-vector products; the custom node's backward
        is not)."""
        weight = self.weight if weight is None else weight
        if isinstance(x, SparsePatches) and not twice:
            F = _SparsePatchSum.apply(weight, x, None if self.linear else self.q)
        elif isinstance(x, SparsePatches):
            K, d, C, m = weight.shape
            z = (x.matrix.to_torch() @ weight.reshape(K * d, C * m)).view(*x.shape[:3], C, m)
            F = self.sigma(z).sum(dim=(2, 4))
        else:
            F = self.sigma(self.activations(x, weight)).sum(dim=(2, 4))  # (K, B, C)
        return F @ self.class_sign if self.classes == 2 else F  # F_{+1} - F_{-1}: one node

    @torch.no_grad()
    def forward_with_vjp(self, x: SparsePatches, weight: Tensor | None = None
                         ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``forward(x, weight)`` for sparse x without an autograd graph, and the function that
        maps a cotangent of the output to the weight gradient (K, d, C, m) (as
        ``torch.func.vjp`` would, minus autograd's bookkeeping, which at the paper's sizes
        costs more than the arithmetic)."""
        weight = self.weight if weight is None else weight
        q = None if self.linear else self.q
        F, slope = sparse_patch_sums(weight, x, q)
        shape = weight.shape
        if self.classes != 2:
            return F, lambda dF: sparse_patch_sums_grad(x, slope, q, dF, shape)
        sign = self.class_sign
        return F @ sign, lambda df: sparse_patch_sums_grad(x, slope, q, df[..., None] * sign,
                                                            shape)


def _stacked_state(module: PatchCNN, state: dict, prefix: str, local_metadata) -> None:
    """``replicas`` layout: the state dict holds ``weight`` (K, d, C, m), as the ensemble's."""
    for k in range(module.replicas):
        state.pop(f"{prefix}replica_weights.{k}")
    state[f"{prefix}weight"] = module.weight.detach().contiguous()


def _split_state(module: PatchCNN, state: dict, prefix: str, *args) -> None:
    """``replicas`` layout: a state dict's ``weight`` (K, d, C, m) into the replicas' matrices."""
    weight = state.pop(f"{prefix}weight", None)
    if weight is not None:
        K, C, m, d = module.replicas, module.classes, module.m, module.d
        for k, w in enumerate(weight.permute(0, 2, 3, 1).reshape(K, C * m, d)):
            state[f"{prefix}replica_weights.{k}"] = w
