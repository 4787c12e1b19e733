"""NES: score-based gradient estimation feeding the PGD loop.

Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
Information", ICML 2018: estimate the gradient of the attack loss from class scores
alone with natural evolution strategies — ``samples`` Gaussian directions ``u`` in
antithetic pairs, ``grad ~ 1/(samples * sigma) * sum_i L(x + sigma u_i) u_i`` — then take
the same projected step as white-box PGD (:func:`advkit.attacks.evasion.steps.pgd`).
This is the "estimate the gradient, then apply the gradient technique" recipe. The loss
is the cross-entropy on the observed log-probabilities (margin with ``loss="margin"``);
each step costs ``samples + 1`` queries per row (the estimate, and the scores at the
current point for best-iterate tracking).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.base import CleanForward, EvasionAttack
from advkit.attacks.evasion.steps import attack_loss, pgd
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register


@register(
    "nes",
    family="evasion",
    knowledge="score",
    paper="Ilyas, Engstrom, Athalye, Lin. Black-box Adversarial Attacks with Limited Queries and Information. ICML 2018",
    atlas="AML.T0043.001",
    summary="NES gradient estimates from class scores, fed to the PGD loop; query budget per image",
)
class NES(EvasionAttack):
    """PGD on NES gradient estimates; ``max_queries`` per image sets the number of steps."""

    name = "nes"
    knowledge = "score"

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        max_queries: int = 1000,
        samples: int = 50,
        sigma: float = 0.001,
        step_size: float | None = None,
        loss: str = "ce",
        batch_size: int = 100,
    ) -> None:
        super().__init__(threat, batch_size=batch_size)
        if samples < 2 or samples % 2:
            raise AdvkitError(f"NES samples must be an even number >= 2 (antithetic pairs); got {samples}")
        if max_queries < samples + 2:
            raise AdvkitError(f"--max-queries must allow one step of {samples} samples + 2 queries; got {max_queries}")
        if not sigma > 0:
            raise AdvkitError(f"NES sigma must be > 0; got {sigma}")
        if loss not in ("ce", "margin"):
            raise AdvkitError(f"NES loss must be ce or margin; got {loss!r}")
        self.max_queries, self.samples, self.sigma, self.loss = max_queries, samples, sigma, loss
        self.steps = (max_queries - 1) // (samples + 1)
        self.step_size = step_size

    def params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "samples": self.samples, "sigma": self.sigma, "steps": self.steps, "loss": self.loss}

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        generator: torch.Generator,
        clean: CleanForward,
    ) -> tuple[Tensor, Tensor | None]:
        assert threat.bounds is not None
        n = x.shape[0]
        half = self.samples // 2

        def log_scores(batch: Tensor) -> Tensor:
            return torch.log(model.probs(batch).clamp_min(1e-30))

        def estimate(point: Tensor) -> tuple[Tensor, Tensor]:
            u = torch.randn((n, half, *x.shape[1:]), generator=generator).to(x)
            u = torch.cat([u, -u], 1)  # antithetic pairs
            probes = (point.unsqueeze(1) + self.sigma * u).flatten(0, 1)
            scores = log_scores(probes).view(n, self.samples, -1)
            rep = lambda t: None if t is None else t.repeat_interleave(self.samples)  # noqa: E731
            losses = attack_loss(scores.flatten(0, 1), y.repeat_interleave(self.samples), rep(target), threat.goal, self.loss)
            grad = (losses.view(n, self.samples, 1, 1, 1) * u).mean(1) / self.sigma
            return log_scores(point), grad

        step = self.step_size if self.step_size is not None else 2.5 * threat.eps / max(self.steps, 1)
        run = pgd(
            log_scores,
            x,
            y,
            eps=threat.eps,
            norm=threat.norm,
            steps=self.steps,
            step_size=step,
            bounds=threat.bounds,
            goal=threat.goal,
            target=target,
            loss=self.loss,
            confidence=threat.confidence,
            estimate=estimate,
        )
        queries = torch.full((n,), self.steps * (self.samples + 1) + 1, dtype=torch.long)
        return run.best_x, queries
