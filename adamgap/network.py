"""The two-layer patch CNN of Section 3 (plain ``nn.Module``, no Lightning).

    F_j(W, x) = sum_{r=1..m} sum_{p=1..P} sigma(<w_{j,r}, x_p>),   j in {+1, -1}
    sigma(z)  = max(z, 0)^q            (``linear``: sigma(z) = z, the convex control of Thm 4.2)
    f(W, x)   = F_{+1}(W, x) - F_{-1}(W, x)
    w_{j,r}(0) ~ N(0, sigma_0^2 I_d), no biases, second layer fixed.

One module holds K independent replicas (an ensemble over seeds): replica k's filters are
initialised from its own seed, exactly as a single run with that seed would be.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adamgap.data import generator
from adamgap.patches import SparsePatches, project


class PatchCNN(nn.Module):
    """K replicas of the patch CNN; ``forward`` returns f (K, B). With ``classes`` C > 2 (one
    filter group per class, for multi-class image patches) it returns the logits F_j (K, B, C)."""

    def __init__(self, d: int, m: int = 20, q: float = 3.0, sigma_0: float = 0.01,
                 seeds: list[int] | tuple[int, ...] = (0,), linear: bool = False,
                 classes: int = 2) -> None:
        super().__init__()
        self.d, self.m, self.q, self.linear = d, m, q, linear
        self.classes, self.replicas = classes, len(seeds)
        # Stored feature-major, (K, d, C, m) with C = 2 classes: a sparse patch product is then a
        # plain sparse-dense matmul against a (K*d, Cm) matrix. ``filters``: the (K, C, m, d) view.
        w0 = torch.stack([torch.randn(classes, m, d, generator=generator(k, "init"))
                          for k in seeds])
        self.weight = nn.Parameter((sigma_0 * w0).permute(0, 3, 1, 2).contiguous())

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
        F = self.sigma(self.activations(x)).sum(dim=(2, 4))  # (K, B, C): F_{+1}, F_{-1} (, ...)
        return F[..., 0] - F[..., 1] if self.classes == 2 else F
