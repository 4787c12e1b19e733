"""HopSkipJump: a label-only (decision-based) attack that walks along the boundary.

Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack",
IEEE S&P 2020. From a start that reaches the goal, repeat: binary-search to the
decision boundary, estimate the boundary's normal from the signs of ``B0 * sqrt(t)``
random probes at radius ``delta`` (with the mean of the signs as baseline), step along
it (geometric step-size search from ``dist / sqrt(t)``), and binary-search back towards
the original. L2 uses the estimate itself, Linf its sign; the bisection tolerance is
``gamma / d^(3/2)`` (L2) or ``gamma / d^2`` (Linf) of the distance, as in the paper.

The start: untargeted, uniform noise the model misclassifies (up to ``init_tries``
draws); targeted, as in the paper and the reference code (Jianbo-Lab/HSJA), an image of
the data the model classifies as the target: another row of the batch whose clean label
is the target (known from the clean labels, no query), with uniform noise only for a row
whose target no image of the batch carries. Every row runs in lockstep inside a batch;
a row stops once its budget in the view cannot pay for its next iteration (the view
refuses any query past it). The attack minimises the distance:
give a threat with a large ``eps`` to read the distances it reaches from
``AttackResult.perturbation``, or a real budget to score success inside it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import Clean, EvasionAttack
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.metrics import perturbation_norms
from advkit.registry import register


@register(
    "hopskipjump",
    family="evasion",
    knowledge="label",
    paper="Chen, Jordan, Wainwright. HopSkipJumpAttack: A Query-Efficient Decision-Based Attack. IEEE S&P 2020",
    atlas="AML.T0043.001",
    summary="label-only boundary walk with sign-based gradient estimates (L2 and Linf)",
)
class HopSkipJump(EvasionAttack):
    """Decision-based minimal-perturbation attack; ``max_queries`` per image."""

    name = "hopskipjump"
    knowledge = "label"
    goals = ("untargeted", "targeted")

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        max_queries: int = 1000,
        init_evals: int = 100,
        max_evals: int = 10_000,
        gamma: float = 1.0,
        init_tries: int = 50,
        query_chunk: int = 100,
        batch_size: int = 100,
    ) -> None:
        super().__init__(threat, batch_size=batch_size)
        if max_queries < 1:
            raise AdvkitError(f"--max-queries must be >= 1; got {max_queries}")
        if init_evals < 1 or max_evals < init_evals or not gamma > 0 or init_tries < 1:
            raise AdvkitError("hopskipjump needs init_evals >= 1, max_evals >= init_evals, gamma > 0, init_tries >= 1")
        self.max_queries, self.init_evals, self.max_evals, self.gamma, self.init_tries = max_queries, init_evals, max_evals, gamma, init_tries
        self.query_chunk = max(1, query_chunk)

    def params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "init_evals": self.init_evals, "gamma": self.gamma}

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
        lo, hi = threat.bounds
        n = x.shape[0]
        d = x[0].numel()
        theta = self.gamma / (d ** 1.5 if threat.norm == "l2" else d**2)
        bisection_steps = max(1, math.ceil(math.log2(1 / theta)))

        def adversarial(points: Tensor, rows: Tensor) -> Tensor:
            # chunked: one call on tens of thousands of probes is memory-bound and slower per row
            labels = torch.cat(
                [
                    model.labels(points[i : i + self.query_chunk], rows=rows[i : i + self.query_chunk])
                    for i in range(0, points.shape[0], self.query_chunk)
                ]
            )
            return labels == target[rows] if target is not None else labels != y[rows]

        def budget(rows: Tensor) -> Tensor:
            return model.budget_left(rows).to(x.device)

        # 1. a start that reaches the goal
        start = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        if target is not None:
            found = self._target_images(x, target, clean.labels.to(x.device), start, random)
        for attempt in range(self.init_tries):
            rows = (~found).nonzero().squeeze(1)
            rows = rows[budget(rows) >= 1] if rows.numel() else rows
            if rows.numel() == 0:
                break
            noise = random[rows].uniform(("init", attempt), x.shape[1:]).to(x) * (hi - lo) + lo
            hit = adversarial(noise, rows)
            start[rows[hit]] = noise[hit]
            found[rows[hit]] = True
        current = start.clone()  # rows without a budget for the first bisection keep their start
        everyone = torch.arange(n, device=x.device)
        found &= budget(everyone) >= bisection_steps
        rows = found.nonzero().squeeze(1)
        if rows.numel() == 0:
            return current
        current[rows] = self._bisect(x[rows], start[rows], rows, adversarial, threat.norm, bisection_steps, lo, hi)
        for t in range(1, 10_000):
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            cost = 2 * bisection_steps + evals + 10
            rows = (found & (budget(everyone) >= cost)).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            xr, cr = x[rows], current[rows]
            dist = perturbation_norms(cr - xr, threat.norm)
            delta = (
                torch.full_like(dist, 0.1 * (hi - lo))
                if t == 1
                else dist * (math.sqrt(d) if threat.norm == "l2" else d) * theta
            )
            grad = self._estimate(cr, rows, delta, evals, adversarial, threat.norm, random[rows], t, lo, hi)
            update = grad if threat.norm == "l2" else grad.sign()
            step = dist / math.sqrt(t)
            moved = cr.clone()
            pending = torch.ones(rows.numel(), dtype=torch.bool, device=x.device)
            for _ in range(10):  # geometric step-size search (at most 10 halvings)
                idx = pending.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                trial = (cr[idx] + step[idx].view(-1, 1, 1, 1) * update[idx]).clamp(lo, hi)
                ok = adversarial(trial, rows[idx])
                moved[idx[ok]] = trial[ok]
                pending[idx[ok]] = False
                step[idx[~ok]] /= 2
            current[rows] = self._bisect(xr, moved, rows, adversarial, threat.norm, bisection_steps, lo, hi)
        return current

    @staticmethod
    def _target_images(x: Tensor, target: Tensor, clean_labels: Tensor, start: Tensor, random: RowRandom) -> Tensor:
        """Start each row at a random other row of the batch the model labels as its target.

        The donor depends on the batch's other rows (the one place where a row's attack does).
        """
        n = x.shape[0]
        donors = (clean_labels.view(1, n) == target.view(n, 1)) & ~torch.eye(n, dtype=torch.bool, device=x.device)
        found = donors.any(1)
        if bool(found.any()):
            weights = random.uniform("donor", (n,)).to(x.device) * donors  # a random donor per row
            pick = weights.argmax(1)
            start[found] = x[pick[found]]
        return found

    @staticmethod
    def _blend(x: Tensor, x_adv: Tensor, alpha: Tensor, norm: str) -> Tensor:
        """The point at relative position ``alpha`` from ``x`` towards ``x_adv``."""
        a = alpha.view(-1, 1, 1, 1)
        if norm == "l2":
            return (1 - a) * x + a * x_adv
        radius = (x_adv - x).flatten(1).abs().amax(1).view(-1, 1, 1, 1) * a
        return torch.minimum(torch.maximum(x_adv, x - radius), x + radius)

    def _bisect(self, x: Tensor, x_adv: Tensor, rows: Tensor, adversarial: Any, norm: str, steps: int, lo: float, hi: float) -> Tensor:
        """Binary search on the segment (L2) or the shrinking box (Linf) for the boundary."""
        low = torch.zeros(x.shape[0], device=x.device)
        high = torch.ones(x.shape[0], device=x.device)
        for _ in range(steps):
            mid = (low + high) / 2
            ok = adversarial(self._blend(x, x_adv, mid, norm).clamp(lo, hi), rows)
            high = torch.where(ok, mid, high)
            low = torch.where(ok, low, mid)
        # the very points that were queried: x_adv itself where no midpoint reached the goal
        return torch.where((high == 1).view(-1, 1, 1, 1), x_adv, self._blend(x, x_adv, high, norm).clamp(lo, hi))

    def _estimate(
        self, point: Tensor, rows: Tensor, delta: Tensor, evals: int, adversarial: Any, norm: str, random: RowRandom, t: int, lo: float, hi: float
    ) -> Tensor:
        """Monte Carlo estimate of the boundary normal at ``point`` from ``evals`` label queries per row."""
        m = point.shape[0]
        shape = (evals, *point.shape[1:])
        probes = random.normal(("probes", t), shape) if norm == "l2" else random.uniform(("probes", t), shape) * 2 - 1
        probes = probes.to(point)
        probes = probes / probes.flatten(2).norm(dim=2).clamp_min(1e-12).view(m, evals, 1, 1, 1)
        perturbed = (point.unsqueeze(1) + delta.view(-1, 1, 1, 1, 1) * probes).clamp(lo, hi)
        probes = (perturbed - point.unsqueeze(1)) / delta.view(-1, 1, 1, 1, 1).clamp_min(1e-12)
        signs = adversarial(perturbed.flatten(0, 1), rows.repeat_interleave(evals)).float().view(m, evals) * 2 - 1
        mean = signs.mean(1, keepdim=True)
        centred = torch.where((mean.abs() == 1), signs, signs - mean)  # baseline unless all agree
        grad = (centred.view(m, evals, 1, 1, 1) * probes).mean(1)
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
