"""Certified training objectives for the one training loop.

- ``GaussianAugmentation``: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness
  via Randomized Smoothing", ICML 2019 — train on ``x + N(0, sigma^2 I)`` so the base
  classifier is accurate under the noise the smoothed classifier adds.

SmoothAdv (Salman et al., NeurIPS 2019) and MACER (Zhai et al., ICLR 2020) are not
built yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.errors import AdvkitError
from advkit.registry import register


@register(
    "gaussian",
    family="defense",
    knowledge="white",
    paper="Cohen, Rosenfeld, Kolter. Certified Adversarial Robustness via Randomized Smoothing. ICML 2019",
    atlas="AML.M0003",
    summary="Gaussian data augmentation: train the base classifier under the smoothing noise",
)
@dataclass
class GaussianAugmentation:
    """Cross-entropy on Gaussian-noised inputs (noise unclipped, as in the paper)."""

    sigma: float = 0.25
    name: str = "gaussian"

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise AdvkitError(f"--sigma must be > 0; got {self.sigma}")

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device) * self.sigma
        return F.cross_entropy(network(x + noise), y)
