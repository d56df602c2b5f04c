"""ResNet-18 for 32x32 images (plain ``nn.Module``): torchvision's network with the stem He et
al. (2016, Sec. 4.2) use for CIFAR (3x3 stride-1 first convolution, no max-pool). The whole-image
task that trains it is ``adamgap.tasks.images``."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18


def resnet18_cifar(num_classes: int, channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem and no max-pool; logits (B, classes)."""
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
