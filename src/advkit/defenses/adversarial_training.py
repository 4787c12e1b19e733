"""Adversarial training objectives for the one training loop (proactive defense).

- ``PGDTraining``: Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018: minimise the cross-entropy of PGD examples (random start).
- ``FastFGSMTraining``: Wong, Rice & Kolter, "Fast is better than free", ICLR 2020:
  FGSM from a uniform random start with step 1.25*eps.
- ``TRADESTraining``: Zhang et al., "Theoretically Principled Trade-off between
  Robustness and Accuracy", ICML 2019: CE(clean) + beta * KL(f(x) || f(x')), x'
  maximising the KL from a small Gaussian start.

Simplification: examples are crafted with the network in ``eval()`` mode (BatchNorm
statistics frozen while attacking), then the loss is taken in ``train()`` mode, as in
the TRADES reference code. An optional linear eps warm-up over the first epochs
(``warmup_steps`` optimiser steps) stabilises training on tiny images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.attacks.evasion.steps import (
    ascent_direction,
    pgd,
    project_delta,
    random_start,
)
from advkit.errors import AdvkitError
from advkit.registry import register


@dataclass
class _Budget:
    eps: float
    norm: str = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)
    warmup_steps: int = 0
    _calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise AdvkitError(f"adversarial training needs eps > 0; got {self.eps}")
        if self.norm not in ("linf", "l2"):
            raise AdvkitError(f"adversarial training supports linf and l2; got {self.norm}")

    def current_eps(self) -> float:
        """eps after the linear warm-up (full eps once warm-up is over)."""
        self._calls += 1
        if self.warmup_steps <= 0:
            return self.eps
        return self.eps * min(1.0, self._calls / self.warmup_steps)


@register(
    "adv-pgd",
    family="defense",
    knowledge="white",
    paper="Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018",
    atlas="AML.M0003",
    summary="adversarial training on PGD examples (random start)",
)
@dataclass
class PGDTraining(_Budget):
    """Madry's min-max: cross-entropy on PGD examples crafted each batch."""

    steps: int = 10
    name: str = "adv-pgd"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        eps = self.current_eps()
        network.eval()
        run = pgd(
            network,
            x,
            y,
            eps=eps,
            norm=self.norm,
            steps=self.steps,
            step_size=2.5 * eps / self.steps,
            bounds=self.bounds,
            init=random_start(x, eps, self.norm, self.bounds, generator),
            track_best=False,
        )
        network.train()
        return F.cross_entropy(network(run.final_x), y)


@register(
    "adv-fast",
    family="defense",
    knowledge="white",
    paper="Wong, Rice, Kolter. Fast is better than free: Revisiting adversarial training. ICLR 2020",
    atlas="AML.M0003",
    summary="fast adversarial training: FGSM from a random start, step 1.25 eps",
)
@dataclass
class FastFGSMTraining(_Budget):
    """One FGSM step of 1.25*eps from a uniform random start, projected back to eps."""

    alpha: float = 1.25
    name: str = "adv-fast"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        eps = self.current_eps()
        network.eval()
        delta = random_start(x, eps, self.norm, self.bounds, generator).requires_grad_(True)
        loss = F.cross_entropy(network(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = project_delta(delta.detach() + self.alpha * eps * ascent_direction(grad, self.norm), x, eps, self.norm, self.bounds)
        network.train()
        return F.cross_entropy(network(x + delta), y)


@register(
    "trades",
    family="defense",
    knowledge="white",
    paper="Zhang et al. Theoretically Principled Trade-off between Robustness and Accuracy. ICML 2019",
    atlas="AML.M0003",
    summary="TRADES: clean cross-entropy + beta x KL between clean and adversarial predictions",
)
@dataclass
class TRADESTraining(_Budget):
    """TRADES with the reference settings: beta=6, 10 steps of eps/4, start x + 0.001 N(0, I)."""

    beta: float = 6.0
    steps: int = 10
    name: str = "trades"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        eps = self.current_eps()
        network.eval()
        with torch.no_grad():
            clean_prob = torch.softmax(network(x), 1)
        start = 0.001 * torch.randn(x.shape, generator=generator).to(x.device)
        delta = project_delta(start, x, eps, self.norm, self.bounds)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(network(x + delta), 1), clean_prob, reduction="sum")
            (grad,) = torch.autograd.grad(kl, delta)
            delta = project_delta(delta.detach() + eps / 4 * ascent_direction(grad, self.norm), x, eps, self.norm, self.bounds)
        network.train()
        logits = network(x)
        robust = F.kl_div(F.log_softmax(network(x + delta), 1), torch.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust


DEFENSES = {"adv-pgd": PGDTraining, "adv-fast": FastFGSMTraining, "trades": TRADESTraining}
