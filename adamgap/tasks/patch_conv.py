"""Section 3's two-layer CNN as a real convolution over whole images (plain ``nn.Module``).

    F_j(W, x) = sum_{r=1..m} sum_p sigma(<w_{j,r}, x_p>),   sigma(z) = max(z, 0)^q

with ``x_p`` every k x k patch of the image (all channels) at the given stride: stride 1 gives
overlapping patches, stride k the non-overlapping grid of ``data.task=image_patches``, where
this network equals :class:`adamgap.network.PatchCNN` on the same patches
(``tests/test_realcnn.py``). No biases, the second layer fixed (a sum over positions and
filters: sum pooling), ``w_{j,r}(0) ~ N(0, sigma_0^2 I)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchConvCNN(nn.Module):
    """``classes x m`` filters of shape (channels, k, k); returns the class scores F_j (B, C).
    Filter r of class j is output channel ``j m + r`` of ``conv``."""

    def __init__(self, channels: int, classes: int, m: int, q: float, sigma_0: float,
                 kernel: int, stride: int) -> None:
        super().__init__()
        self.classes, self.m, self.q = classes, m, q
        self.conv = nn.Conv2d(channels, classes * m, kernel, stride=stride, bias=False)
        nn.init.normal_(self.conv.weight, 0.0, sigma_0)

    def forward(self, x: Tensor) -> Tensor:
        z = self.conv(x)  # (B, C m, H', W'): <w_{j,r}, x_p> at every position p
        F = torch.relu(z).pow(self.q).sum(dim=(2, 3))  # sum pooling: (B, C m)
        return F.view(-1, self.classes, self.m).sum(-1)  # fixed second layer: (B, C)
