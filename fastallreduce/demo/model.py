"""The demo's model: a small residual CNN built from torchvision-style basic blocks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import BasicBlock


class SmallResNet(nn.Module):
    """A residual CNN for small one-channel images (8x8 digits, 28x28 IDX sets): stem, two blocks at
    the stem's resolution, two at half, global average pool, linear.

    ``stem_stride`` 2 halves the resolution in the stem, as ResNet's stem does on ImageNet (the demo
    uses it for images of 16 pixels and more: a quarter of the compute for 28x28 images).
    """

    def __init__(self, width: int = 16, num_classes: int = 10, stem_stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
