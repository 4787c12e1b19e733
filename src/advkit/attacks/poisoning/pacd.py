"""PACD: Poisoning Against Certified Defenses.

Mehra, Kailkhura, Chen & Hamm, "How Robust are Randomized Smoothing based Defenses to
Data Poisoning?", CVPR 2021. A clean-label, grey-box attack (the attacker knows the
victim's architecture and certified-training method, not its weights) posed as a
bilevel problem:

- upper level: over perturbations ``delta`` of the target class's training rows,
  ``||delta||_inf <= eps`` and pixels kept in bounds, minimise the certified-radius
  surrogate of the target class's validation rows — the soft smoothed classifier's
  ``sigma/2 * (Phi^-1(p_y) - Phi^-1(max_{c != y} p_c))`` (MACER's radius, inverse
  temperature ``beta``), so the victim certifies them with small radii or not at all;
- lower level: the victim's certified training (Gaussian augmentation, SmoothAdv or
  MACER; :mod:`advkit.certify.training`) of a surrogate network on the poisoned set.

It is solved with ApproxGrad (Mehra & Hamm, "Penalty Method for Inversion-Free Deep
Bilevel Optimization", ACML 2021, the solver the paper uses): alternate a few lower-level
optimiser steps on the surrogate with one poison update along the approximate implicit
gradient ``-d/d(delta) [grad_theta L . q]``, where ``q`` approximately solves
``H q = grad_theta U`` (``H`` the lower-level Hessian) by minimising ``||H q - grad_theta U||^2``
— here with conjugate gradients on that least-squares problem (CGLS, two Hessian-vector
products per iteration), warm-started from the previous ``q``. Poison steps are signed
(Linf) and projected to the budget and the bounds after every update.

Simplification: for SmoothAdv the inner PGD point is treated as a constant of the
poison when differentiating (its own dependence on ``delta`` is dropped), as
Danskin's theorem suggests for the max of the inner attack.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advkit.certify.training import CERTIFIED_TRAINING, noisy_logits
from advkit.core import PoisonedData
from advkit.errors import AdvkitError
from advkit.models.train import TrainConfig, fit
from advkit.registry import register

Progress = Callable[[str, int, int], None]


def soft_radius(network: nn.Module, x: Tensor, y: Tensor, noise: Tensor, sigma: float, beta: float) -> Tensor:
    """Per row, MACER's certified-radius surrogate of the soft smoothed classifier.

    ``sigma/2 * (Phi^-1(p_y) - Phi^-1(max_{c != y} p_c))`` with ``p`` the mean softmax of
    ``beta * logits`` over the noise draws ``noise`` ([N, draws, C, H, W]). Negative when
    the row is misclassified; probabilities are clamped away from 0 and 1 so it stays finite.
    """
    p = torch.softmax(beta * noisy_logits(network, x, noise), 2).mean(1).clamp(1e-4, 1 - 1e-4)
    p_true = p.gather(1, y.view(-1, 1)).squeeze(1)
    p_other = p.scatter(1, y.view(-1, 1), 0.0).amax(1).clamp_min(1e-4)
    return sigma / 2 * (torch.special.ndtri(p_true) - torch.special.ndtri(p_other))


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((u * v).sum() for u, v in zip(a, b))  # type: ignore[return-value]


@register(
    "pacd",
    family="poisoning",
    knowledge="grey",
    paper="Mehra, Kailkhura, Chen, Hamm. How Robust are Randomized Smoothing based Defenses to Data Poisoning? CVPR 2021",
    atlas="AML.T0020",
    summary="clean-label bilevel poisons (ApproxGrad) that shrink the certified radius of a target class",
)
@dataclass
class PACD:
    """Poison the ``target`` class's training rows against ``method`` certified training.

    ``network`` handed to :meth:`__call__` is the attacker's *surrogate*: the victim's
    architecture freshly initialised (grey box), trained here on the poisoned data
    alongside the poisons. ``x_val``/``y_val`` are the attacker's own rows of the target
    class whose certified radius the poisons attack. The surrogate's SmoothAdv/MACER
    objective draws ``surrogate_samples`` noise copies per row (the victim may draw more):
    every outer step differentiates it twice, so the draws dominate the attack's cost.
    """

    target: int
    eps: float = 0.2
    method: str = "gaussian"
    sigma: float = 0.25
    outer_steps: int = 150
    lower_steps: int = 4
    linsys_steps: int = 4
    batch_size: int = 64
    poison_batch: int = 256
    lr: float = 2e-3
    step_size: float | None = None
    pretrain_epochs: int = 10
    upper_samples: int = 8
    beta: float = 16.0
    damping: float = 1e-3
    surrogate_samples: int = 4
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not 0 < self.eps <= self.bounds[1] - self.bounds[0]:
            raise AdvkitError(f"PACD eps must be in (0, {self.bounds[1] - self.bounds[0]}]; got {self.eps}")
        if self.method not in CERTIFIED_TRAINING:
            raise AdvkitError(f"PACD method must be one of {', '.join(CERTIFIED_TRAINING)}; got {self.method!r}")
        if min(self.outer_steps, self.lower_steps, self.batch_size, self.poison_batch) < 1 or self.linsys_steps < 0:
            raise AdvkitError("PACD step counts and batch sizes must be >= 1 (linsys_steps >= 0)")
        if not self.sigma > 0:
            raise AdvkitError(f"PACD sigma must be > 0; got {self.sigma}")

    def __call__(
        self,
        network: nn.Module,
        x: Tensor,
        y: Tensor,
        x_val: Tensor,
        y_val: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> PoisonedData:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        rows = (y == self.target).nonzero().squeeze(1)
        val = y_val == self.target
        if rows.numel() == 0:
            raise AdvkitError(f"PACD: no training rows of target class {self.target}")
        if int(val.sum()) == 0:
            raise AdvkitError(f"PACD: no validation rows of target class {self.target}")
        x_val, y_val = x_val[val], y_val[val]
        surrogate = copy.deepcopy(network)
        device = next(surrogate.parameters()).device
        lower = CERTIFIED_TRAINING[self.method](sigma=self.sigma)
        if hasattr(lower, "samples"):  # fewer noise draws than the victim's: second derivatives are costly
            lower.samples = self.surrogate_samples
        fit(surrogate, x, y, TrainConfig(epochs=self.pretrain_epochs, lr=self.lr, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator))), lower)
        params = [p for p in surrogate.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        delta = torch.zeros_like(x[rows])
        step = self.step_size if self.step_size is not None else self.eps / 20
        q: list[Tensor] | None = None
        upper_noise = torch.randn((x_val.shape[0], self.upper_samples, *x_val.shape[1:]), generator=generator) * self.sigma
        history: list[float] = []
        for outer in range(self.outer_steps):
            poisoned_x = x.clone()
            poisoned_x[rows] = x[rows] + delta
            for _ in range(self.lower_steps):  # follow the lower-level solution
                idx = torch.randint(0, x.shape[0], (self.batch_size,), generator=generator)
                surrogate.train()
                loss = lower(surrogate, poisoned_x[idx].to(device), y[idx].to(device), generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            surrogate.eval()
            upper = soft_radius(surrogate, x_val.to(device), y_val.to(device), upper_noise.to(device), self.sigma, self.beta).mean()
            grad_upper = [g.detach() for g in torch.autograd.grad(upper, params)]
            history.append(float(upper.detach()))
            # lower-level gradient on a batch holding poisons, kept differentiable in delta and theta
            chosen = torch.randperm(rows.numel(), generator=generator)[: self.poison_batch]
            clean = torch.randint(0, x.shape[0], (self.batch_size,), generator=generator)
            d = delta[chosen].clone().requires_grad_(True)
            batch_x = torch.cat([x[rows[chosen]] + d, poisoned_x[clean]]).to(device)
            batch_y = torch.cat([y[rows[chosen]], y[clean]]).to(device)
            surrogate.train()
            grad_lower = torch.autograd.grad(lower(surrogate, batch_x, batch_y, generator), params, create_graph=True)
            q = self._solve(grad_lower, params, grad_upper, q)
            (hyper,) = torch.autograd.grad(_dot(list(grad_lower), q), d)
            # dU/d(delta) = -d/d(delta)[grad_theta L . q]; descend on U with a signed step
            delta[chosen] = (delta[chosen] + step * hyper.sign()).clamp(-self.eps, self.eps)
            delta[chosen] = (x[rows[chosen]] + delta[chosen]).clamp(*self.bounds) - x[rows[chosen]]
            if progress is not None:
                progress("pacd", outer + 1, self.outer_steps)
        poisoned = x.clone()
        poisoned[rows] = x[rows] + delta
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[rows] = True
        params_out: dict[str, Any] = {
            "eps": self.eps,
            "method": self.method,
            "sigma": self.sigma,
            "outer_steps": self.outer_steps,
            "upper_objective_first": history[0],
            "upper_objective_last": history[-1],
            "max_perturbation": float(delta.abs().max()),
        }
        return PoisonedData(poisoned, y.clone(), mask, y.clone(), "pacd", self.target, params_out)

    def _solve(self, grad_lower: tuple[Tensor, ...], params: list[Tensor], b: list[Tensor], q0: list[Tensor] | None) -> list[Tensor]:
        """Approximately solve ``(H + damping I) q = b`` as least squares (CGLS), warm start ``q0``."""

        def hvp(v: list[Tensor]) -> list[Tensor]:
            hv = torch.autograd.grad(_dot(list(grad_lower), v), params, retain_graph=True)
            return [h.detach() + self.damping * u for h, u in zip(hv, v)]

        if self.linsys_steps == 0:  # no solve: H taken as the identity (q = grad U)
            return [t.clone() for t in b]
        q = [t.clone() for t in q0] if q0 is not None else [torch.zeros_like(t) for t in b]
        r = [bi - hi for bi, hi in zip(b, hvp(q))]
        s = hvp(r)
        p = [t.clone() for t in s]
        gamma = _dot(s, s)
        for _ in range(self.linsys_steps):
            t = hvp(p)
            tt = _dot(t, t)
            if float(tt) <= 1e-30:
                break
            alpha = gamma / tt
            q = [qi + alpha * pi for qi, pi in zip(q, p)]
            r = [ri - alpha * ti for ri, ti in zip(r, t)]
            s = hvp(r)
            gamma_new = _dot(s, s)
            p = [si + gamma_new / gamma * pi for si, pi in zip(s, p)]
            gamma = gamma_new
        return q
