"""NES: score-based gradient estimation feeding projected gradient steps.

Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
Information", ICML 2018: estimate the gradient of the attack loss from class scores
alone with natural evolution strategies — ``samples`` Gaussian directions ``u`` in
antithetic pairs, ``grad ~ 1/(samples * sigma) * sum_i L(x + sigma u_i) u_i`` — then take
a projected step along it (``sign`` for Linf, the normalised direction for L2). As in the
reference code (labsix/limited-blackbox-attacks, ``attacks.py``) the step follows the
momentum average ``g = 0.9 g + 0.1 grad``, and each row's learning rate starts at
``max_lr`` and is halved (never under ``min_lr``) when the loss over the last 5 steps
did not improve (a plateau). The reference's defaults are ``max_lr = 1e-2`` and
``min_lr = 5e-5`` at ``eps = 0.05``; here ``max_lr = 0.2 eps`` and
``min_lr = max_lr / 200`` (its ``--min-lr-ratio``), the same ratios at any budget.
The loss is the cross-entropy on the observed log-probabilities (margin with
``loss="margin"``).

Every iteration first queries the current point (one query per row): a row that reaches
the goal stops there, as the reference does, so each row's count is what it really
cost. A row stops too when its budget in the view cannot pay for another estimate and
a look at the point it leads to (``samples + 1`` queries). The answer is the queried point with the most progress.
Simplification: the reference's partial-information and label-only variants are not
implemented, and there is no line search (the reference's is a no-op in the
query-limited setting).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import Clean, EvasionAttack
from advkit.attacks.evasion.steps import ascent_direction, attack_loss, progress_score, project_delta
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register

MOMENTUM = 0.9  # reference --momentum
PLATEAU_LENGTH = 5  # reference --plateau-length
PLATEAU_DROP = 2.0  # reference --plateau-drop
MIN_LR_RATIO = 200  # reference --min-lr-ratio: max_lr 1e-2 / min_lr 5e-5
MAX_LR_PER_EPS = 0.2  # reference max_lr 1e-2 at epsilon 0.05


@register(
    "nes",
    family="evasion",
    knowledge="score",
    paper="Ilyas, Engstrom, Athalye, Lin. Black-box Adversarial Attacks with Limited Queries and Information. ICML 2018",
    atlas="AML.T0043.001",
    summary="NES gradient estimates from class scores, momentum and plateau-decayed steps; query budget per image",
)
class NES(EvasionAttack):
    """Projected steps on NES gradient estimates; ``max_queries`` per image."""

    name = "nes"
    knowledge = "score"

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        max_queries: int = 1000,
        samples: int = 50,
        sigma: float = 0.001,
        max_lr: float | None = None,
        min_lr: float | None = None,
        momentum: float = MOMENTUM,
        plateau_length: int = PLATEAU_LENGTH,
        plateau_drop: float = PLATEAU_DROP,
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
        if not 0.0 <= momentum < 1.0 or plateau_length < 2 or not plateau_drop > 1.0:
            raise AdvkitError("NES needs momentum in [0, 1), plateau_length >= 2 and plateau_drop > 1")
        for what, value in (("max_lr", max_lr), ("min_lr", min_lr)):
            if value is not None and not value > 0:
                raise AdvkitError(f"NES {what} must be > 0; got {value}")
        self.max_queries, self.samples, self.sigma, self.loss = max_queries, samples, sigma, loss
        self.max_lr, self.min_lr = max_lr, min_lr
        self.momentum, self.plateau_length, self.plateau_drop = momentum, plateau_length, plateau_drop

    def learning_rates(self, threat: Threat) -> tuple[float, float]:
        """``(max_lr, min_lr)`` for this threat: the given ones, else the reference's ratios."""
        max_lr = self.max_lr if self.max_lr is not None else MAX_LR_PER_EPS * threat.eps
        min_lr = self.min_lr if self.min_lr is not None else max_lr / MIN_LR_RATIO
        return max_lr, min(min_lr, max_lr)

    def params(self) -> dict[str, Any]:
        return self.params_for(self.threat)

    def params_for(self, threat: Threat) -> dict[str, Any]:
        max_lr, min_lr = self.learning_rates(threat)
        return {
            "max_queries": self.max_queries,
            "samples": self.samples,
            "sigma": self.sigma,
            "loss": self.loss,
            "max_lr": max_lr,
            "min_lr": min_lr,
            "momentum": self.momentum,
            "plateau_length": self.plateau_length,
            "plateau_drop": self.plateau_drop,
        }

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: Clean,
    ) -> Tensor:
        assert threat.bounds is not None
        n = x.shape[0]
        half = self.samples // 2
        max_lr, min_lr = self.learning_rates(threat)
        delta = torch.zeros_like(x)
        g = torch.zeros_like(x)
        lr = torch.full((n,), max_lr, device=x.device)
        history = torch.zeros(n, self.plateau_length, device=x.device)  # recent losses, oldest first
        seen = torch.zeros(n, dtype=torch.long, device=x.device)
        best_x = x.clone()
        best_score = torch.full((n,), float("-inf"), device=x.device)
        open_rows = torch.ones(n, dtype=torch.bool, device=x.device)
        everyone = torch.arange(n, device=x.device)

        def sub(t: Tensor | None, idx: Tensor) -> Tensor | None:
            return None if t is None else t[idx]

        for iteration in range(self.max_queries):  # each pass costs a row at least one query
            rows = everyone[open_rows]
            rows = rows[model.budget_left(rows) >= 1] if rows.numel() else rows
            if rows.numel() == 0:
                break
            point = x[rows] + delta[rows]
            logp = torch.log(model.probs(point, rows=rows).clamp_min(1e-30))
            score = progress_score(logp, y[rows], sub(target, rows), threat.goal, threat.confidence)
            better = score > best_score[rows]
            best_x[rows[better]] = point[better]
            best_score[rows[better]] = score[better]
            open_rows[rows[score > 0]] = False  # reached the goal: stop querying this row
            keep = (score <= 0) & (model.budget_left(rows) >= self.samples + 1)
            open_rows[rows[~keep]] = False  # no budget for another estimate and a look at where it leads
            rows, point = rows[keep], point[keep]
            if rows.numel() == 0:
                continue
            m = rows.numel()
            u = random[rows].normal(("probes", iteration), (half, *x.shape[1:])).to(x)
            u = torch.cat([u, -u], 1)  # antithetic pairs
            probes = (point.unsqueeze(1) + self.sigma * u).flatten(0, 1)
            scores = torch.log(model.probs(probes, rows=rows.repeat_interleave(self.samples)).clamp_min(1e-30))
            rep = sub(target, rows)
            losses = attack_loss(
                scores, y[rows].repeat_interleave(self.samples), None if rep is None else rep.repeat_interleave(self.samples), threat.goal, self.loss
            ).view(m, self.samples)
            grad = (losses.view(m, self.samples, 1, 1, 1) * u).mean(1) / self.sigma
            g[rows] = self.momentum * g[rows] + (1.0 - self.momentum) * grad
            # plateau: the loss (ascended) at the end of the window is below its start
            history[rows] = torch.cat([history[rows, 1:], losses.mean(1, keepdim=True)], 1)
            seen[rows] += 1
            plateau = (seen[rows] >= self.plateau_length) & (history[rows, -1] < history[rows, 0])
            drop = rows[plateau]
            lr[drop] = (lr[drop] / self.plateau_drop).clamp_min(min_lr)
            seen[drop] = 0
            step = lr[rows].view(-1, 1, 1, 1) * ascent_direction(g[rows], threat.norm)
            delta[rows] = project_delta(delta[rows] + step, x[rows], threat.eps, threat.norm, threat.bounds)
        return best_x
