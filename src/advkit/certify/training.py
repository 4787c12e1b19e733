"""Certified training objectives for the one training loop.

Each objective trains the *base* classifier so that its Gaussian-smoothed version
(randomized smoothing, Cohen et al. 2019) certifies large L2 radii:

- ``GaussianAugmentation``: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness
  via Randomized Smoothing", ICML 2019 — cross-entropy on ``x + N(0, sigma^2 I)``.
- ``SmoothAdv``: Salman et al., "Provably Robust Deep Learning via Adversarially Trained
  Smoothed Classifiers", NeurIPS 2019 — an L2 PGD attack on the *soft* smoothed
  classifier (``m`` noise draws held fixed during the attack), then cross-entropy on
  the adversarial point under those same draws; eps ramps up linearly during warm-up.
- ``MACER``: Zhai et al., "MACER: Attack-free and Scalable Robust Training via
  Maximizing Certified Radius", ICLR 2020 — cross-entropy of the soft smoothed
  classifier (``k`` draws) plus ``lbd * sigma/2 * hinge(gamma - margin)`` where margin is
  ``Phi^-1(p1) - Phi^-1(p2)`` of the top-two classes of the inverse-temperature-``beta``
  soft classifier, over the rows it gets right (the reference code's defaults:
  k=16, beta=16, gamma=8, lbd=12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.attacks.evasion.steps import ascent_direction, project_delta
from advkit.errors import AdvkitError
from advkit.registry import register


@dataclass
class _Noise:
    sigma: float = 0.25

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise AdvkitError(f"--sigma must be > 0; got {self.sigma}")

    def draws(self, x: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` noise tensors per row, shaped [N, count, C, H, W]."""
        return (torch.randn((x.shape[0], count, *x.shape[1:]), generator=generator) * self.sigma).to(x.device)


def noisy_logits(network: nn.Module, x: Tensor, noise: Tensor) -> Tensor:
    """Logits of every row under each of its noise draws ([N, draws, C, H, W]) in one batch: [N, draws, classes]."""
    n, count = noise.shape[:2]
    return network((x.unsqueeze(1) + noise).flatten(0, 1)).view(n, count, -1)


def soft_smoothed_log_probs(network: nn.Module, x: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
    """log of the mean softmax over the noise draws: the soft smoothed classifier, [N, classes]."""
    return torch.log(torch.softmax(noisy_logits(network, x, noise) * temperature, 2).mean(1).clamp_min(1e-10))


@register(
    "gaussian",
    family="defense",
    knowledge="white",
    paper="Cohen, Rosenfeld, Kolter. Certified Adversarial Robustness via Randomized Smoothing. ICML 2019",
    atlas="AML.M0003",
    summary="Gaussian data augmentation: train the base classifier under the smoothing noise",
)
@dataclass
class GaussianAugmentation(_Noise):
    """Cross-entropy on Gaussian-noised inputs (noise unclipped, as in the paper)."""

    name: str = "gaussian"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device) * self.sigma
        return F.cross_entropy(network(x + noise), y)


@register(
    "smoothadv",
    family="defense",
    knowledge="white",
    paper="Salman et al. Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers. NeurIPS 2019",
    atlas="AML.M0003",
    summary="adversarial training of the smoothed classifier: L2 PGD on the soft smoothed loss, then train on it",
)
@dataclass
class SmoothAdv(_Noise):
    """SmoothAdv-PGD with ``samples`` noise draws per row, L2 budget ``eps``, ``steps`` steps of 2*eps/steps."""

    eps: float = 0.5
    steps: int = 2
    samples: int = 4
    bounds: tuple[float, float] = (0.0, 1.0)
    warmup_steps: int = 0
    name: str = "smoothadv"
    _calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps > 0 or self.steps < 1 or self.samples < 1:
            raise AdvkitError(f"smoothadv needs eps > 0, steps >= 1, samples >= 1; got {self.eps}, {self.steps}, {self.samples}")

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        self._calls += 1
        eps = self.eps * min(1.0, self._calls / self.warmup_steps) if self.warmup_steps > 0 else self.eps
        noise = self.draws(x, self.samples, generator)
        network.eval()
        x_adv = x.clone()
        step = 2 * eps / self.steps
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.nll_loss(soft_smoothed_log_probs(network, x_adv, noise), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x + project_delta(x_adv.detach() + step * ascent_direction(grad, "l2") - x, x, eps, "l2", self.bounds)
        network.train()
        x_adv = x + (x_adv - x).detach()  # the attack's step is a constant of the loss (Danskin)
        count = noise.shape[1]
        logits = network((x_adv.unsqueeze(1) + noise).flatten(0, 1))
        return F.cross_entropy(logits, y.repeat_interleave(count))


@register(
    "macer",
    family="defense",
    knowledge="white",
    paper="Zhai et al. MACER: Attack-free and Scalable Robust Training via Maximizing Certified Radius. ICLR 2020",
    atlas="AML.M0003",
    summary="maximise the soft smoothed classifier's certified radius directly (no attack)",
)
@dataclass
class MACER(_Noise):
    """Soft smoothed cross-entropy + ``lbd`` x the hinge on the certified-radius surrogate."""

    samples: int = 16
    beta: float = 16.0
    gamma: float = 8.0
    lbd: float = 12.0
    name: str = "macer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 1 or not self.beta > 0 or not self.gamma > 0 or self.lbd < 0:
            raise AdvkitError("macer needs samples >= 1, beta > 0, gamma > 0, lbd >= 0")

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        logits = noisy_logits(network, x, self.draws(x, self.samples, generator))
        n = logits.shape[0]
        classification = F.nll_loss(torch.log(torch.softmax(logits, 2).mean(1) + 1e-10), y, reduction="sum")
        return (classification + self.lbd * self.robustness_loss(logits, y, reduction="sum")) / n

    def robustness_loss(self, logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """sigma/2 x (gamma - margin) over rows classified correctly with 0 <= margin < gamma."""
        top2 = torch.softmax(logits * self.beta, 2).mean(1).topk(2, dim=1)
        with torch.no_grad():  # choose the rows first: ndtri's gradient is infinite at p = 1
            margin = torch.special.ndtri(top2.values[:, 0]) - torch.special.ndtri(top2.values[:, 1])
            inside = (top2.indices[:, 0] == y) & torch.isfinite(margin) & (margin <= self.gamma)
        chosen = top2.values[inside]
        hinge = self.gamma - (torch.special.ndtri(chosen[:, 0]) - torch.special.ndtri(chosen[:, 1]))
        total = hinge.sum() * self.sigma / 2
        return total if reduction == "sum" else total / max(1, logits.shape[0])


CERTIFIED_TRAINING = {"gaussian": GaussianAugmentation, "smoothadv": SmoothAdv, "macer": MACER}


def certified_objective(name: str, sigma: float, *, rows: int, epochs: int, batch_size: int = 64) -> _Noise:
    """A certified-training objective by name; SmoothAdv ramps eps over the first tenth of
    the epochs (Salman et al.), counted in optimiser steps of ``batch_size`` rows."""
    objective = CERTIFIED_TRAINING[name](sigma=sigma)
    if isinstance(objective, SmoothAdv):
        objective.warmup_steps = -(-rows // batch_size) * max(1, epochs // 10)
    return objective
