"""Small image classifiers that train from scratch in seconds on the builtin data.

- ``SmallCNN``: the two-convolution network of the Madry et al. (ICLR 2018) MNIST
  challenge, narrowed for CPU training; ``digits-cnn`` (8x8, one pooling) and
  ``mnist-cnn`` (28x28, two poolings) are its two zoo configurations.
- ``ResNetSmall``: the CIFAR ResNet of He et al. (CVPR 2016, section 4.2) with
  ``6n + 2`` layers (``n=1`` gives ResNet-8, ``n=3`` ResNet-20) for 32x32 inputs.
- ``LogisticRegression`` (``logreg``): flatten + one linear layer, for any image shape:
  the linear victim of the data-poisoning literature (Steinhardt, Koh & Liang, "Certified
  Defenses for Data Poisoning Attacks", NeurIPS 2017; Biggio et al., ICML 2012).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advkit.errors import AdvkitError


class SmallCNN(nn.Module):
    """conv-relu(-pool) blocks, then a hidden dense layer and the class scores."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        widths: tuple[int, ...] = (32, 64),
        pool_after: tuple[bool, ...] = (True, True),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if len(widths) != len(pool_after):
            raise AdvkitError("SmallCNN: widths and pool_after must have the same length")
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width, pool in zip(widths, pool_after):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        if size < 1:
            raise AdvkitError(f"SmallCNN: image size {image_size} is too small for {sum(pool_after)} poolings")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet with three stages of ``n`` basic blocks (16/32/64 channels)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, n: int = 1, width: int = 16) -> None:
        super().__init__()
        del image_size  # global pooling makes the network size-agnostic
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the flattened pixels: ``W vec(x) + b``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


def _digits_cnn(**kw: Any) -> nn.Module:
    return SmallCNN(widths=(32, 64), pool_after=(False, True), hidden=128, **kw)


def _mnist_cnn(**kw: Any) -> nn.Module:
    return SmallCNN(widths=(32, 64), pool_after=(True, True), hidden=128, **kw)


def _resnet8(**kw: Any) -> nn.Module:
    return ResNetSmall(n=1, **kw)


def _resnet20(**kw: Any) -> nn.Module:
    return ResNetSmall(n=3, **kw)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits-cnn": _digits_cnn,
    "mnist-cnn": _mnist_cnn,
    "resnet8": _resnet8,
    "resnet20": _resnet20,
    "logreg": LogisticRegression,
}


def build(arch: str, *, in_channels: int, num_classes: int, image_size: int, seed: int | None = 0) -> nn.Module:
    """A fresh network of a named architecture, initialised from ``seed``."""
    if arch not in ARCHITECTURES:
        raise AdvkitError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return ARCHITECTURES[arch](in_channels=in_channels, num_classes=num_classes, image_size=image_size)
