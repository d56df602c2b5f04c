"""A small CNN for a CPU: DeepOBS's Fashion-MNIST network ``2c2d`` (plain ``nn.Module``).

Schneider, Balles & Hennig (2019), "DeepOBS: a deep learning optimizer benchmark suite",
problem ``fmnist_2c2d``: two 5x5 convolutions (32 and 64 filters, "same" padding, ReLU, 2x2
max-pooling each) and two dense layers (1024 ReLU units, then the classes). Weights are
Xavier-normal and biases 0.05, as in DeepOBS's PyTorch version. ``width`` scales every layer
(conv1 ``width``, conv2 ``2 width``, dense ``32 width``); 32 is DeepOBS's network.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CNN2c2d(nn.Module):
    """conv5x5(width) - pool - conv5x5(2 width) - pool - dense(32 width) - dense(classes) on
    (B, channels, side, side) images; returns the logits (B, classes)."""

    def __init__(self, channels: int, side: int, classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc1 = nn.Linear(2 * width * (side // 4) ** 2, 32 * width)
        self.fc2 = nn.Linear(32 * width, classes)
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.xavier_normal_(layer.weight)
            nn.init.constant_(layer.bias, 0.05)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, width, side/2, side/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2 width, side/4, side/4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))
