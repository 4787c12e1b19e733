"""Square Attack: score-based random search for Linf and L2.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020. Each iteration changes one random
square window of the perturbation and keeps the change only if the margin loss falls
(untargeted: ``log p_y - max_{k != y} log p_k``, equal to the logit margin; targeted:
cross-entropy of the target). The window's side shrinks on the paper's schedule
(``p_init`` halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
iterations, rescaled to the query budget). Linf: vertical-stripe start, windows set to
+-eps per channel. L2: a start of pseudo-Gaussian blocks, and each step moves the mass
of a second window into a fresh pseudo-Gaussian window (the paper's Algorithm 3).
Windows are shared by the batch in one iteration, as in the reference code; rows stop
querying once they succeed. Queries are counted per row (the start counts one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.base import CleanForward, EvasionAttack
from advkit.attacks.evasion.steps import margin
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register


def _schedule(p_init: float, iteration: int, iterations: int) -> float:
    """The paper's piecewise-constant share of pixels a window covers, rescaled to the budget."""
    it = int(iteration / max(iterations, 1) * 10000)
    bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, 10000)
    for k in range(len(bounds) - 1):
        if bounds[k] < it <= bounds[k + 1]:
            return p_init / 2 ** (k + 1)
    return p_init


def _random_signs(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """+-1 drawn uniformly, on ``like``'s device and dtype."""
    return torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1).to(like)


def _pseudo_gaussian_rectangle(rows: int, cols: int) -> Tensor:
    """Concentric rectangles weighted 1/(k+1)^2 around the centre, unit L2 norm."""
    delta = torch.zeros(rows, cols)
    r, c = rows // 2, cols // 2
    for k in range(max(r + 1, c + 1)):
        delta[max(r - k, 0) : min(r + k + 1, rows), max(c - k, 0) : min(c + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return delta / delta.norm()


def pseudo_gaussian_window(side: int, generator: torch.Generator) -> Tensor:
    """Two opposite-signed pseudo-Gaussian halves (randomly transposed), unit L2 norm."""
    delta = torch.zeros(side, side)
    half = side // 2
    if half > 0:
        delta[:half] = _pseudo_gaussian_rectangle(half, side)
    delta[half:] = -_pseudo_gaussian_rectangle(side - half, side)
    delta = delta / delta.norm()
    if float(torch.rand((), generator=generator)) > 0.5:
        delta = delta.T
    return delta


@register(
    "square",
    family="evasion",
    knowledge="score",
    paper="Andriushchenko, Croce, Flammarion, Hein. Square Attack: a query-efficient black-box adversarial attack via random search. ECCV 2020",
    atlas="AML.T0043.001",
    summary="score-based random search over square windows (Linf and L2), query budget per image",
)
class SquareAttack(EvasionAttack):
    """Random-search attack on class scores; ``max_queries`` per image."""

    name = "square"
    knowledge = "score"
    goals = ("untargeted", "targeted")

    def __init__(self, threat: Threat | None = None, *, max_queries: int = 1000, p_init: float | None = None, batch_size: int = 500) -> None:
        super().__init__(threat, batch_size=batch_size)
        if max_queries < 1:
            raise AdvkitError(f"--max-queries must be >= 1; got {max_queries}")
        self.max_queries = max_queries
        self.p_init = p_init if p_init is not None else (0.05 if self.threat.norm == "linf" else 0.1)
        if not 0 < self.p_init <= 1:
            raise AdvkitError(f"p_init must be in (0, 1]; got {self.p_init}")

    def params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "p_init": self.p_init}

    @staticmethod
    def _loss(probs: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Lower is better; success when <= 0 (untargeted margin) or when the target wins."""
        logp = torch.log(probs.clamp_min(1e-30))
        if target is not None:
            return -logp.gather(1, target[:, None]).squeeze(1)
        return -margin(logp, y)

    @staticmethod
    def _success(probs: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return probs.argmax(1) == target if target is not None else probs.argmax(1) != y

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
        lo, hi = threat.bounds
        n, c, h, w = x.shape
        eps = threat.eps
        queries = torch.zeros(n, dtype=torch.long)
        if threat.norm == "linf":
            signs = _random_signs((n, c, 1, w), generator, x)
            x_best = (x + eps * signs).clamp(lo, hi)
        else:
            x_best = (x + self._l2_start(x, eps, generator)).clamp(lo, hi)
        probs = model.probs(x_best)
        queries += 1
        loss = self._loss(probs, y, target)
        done = self._success(probs, y, target)
        iterations = self.max_queries - 1
        for i in range(iterations):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, xb_ = x[active], x_best[active]
            p = _schedule(self.p_init, i, iterations)
            if threat.norm == "linf":
                side = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1 if h > 1 else 1)
                candidate = self._linf_step(xa, xb_, eps, side, generator).clamp(lo, hi)
            else:
                side = max(int(round(math.sqrt(p * h * w))), 3)
                side += 1 - side % 2
                side = min(side, h - 1 if h > 1 else 1)
                candidate = self._l2_step(xa, xb_, eps, side, generator).clamp(lo, hi)
            cand_probs = model.probs(candidate)
            queries[active.cpu()] += 1
            cand_loss = self._loss(cand_probs, y[active], None if target is None else target[active])
            better = cand_loss < loss[active]
            improved = active[better]
            x_best[improved] = candidate[better]
            loss[improved] = cand_loss[better]
            done[active] = done[active] | (better & self._success(cand_probs, y[active], None if target is None else target[active]))
        return x_best, queries

    @staticmethod
    def _window(h: int, w: int, side: int, generator: torch.Generator) -> tuple[int, int]:
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        return top, left

    def _linf_step(self, x: Tensor, x_best: Tensor, eps: float, side: int, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        delta = x_best - x
        top, left = self._window(h, w, side, generator)
        signs = _random_signs((n, c, 1, 1), generator, x)
        delta[:, :, top : top + side, left : left + side] = eps * signs
        return x + delta

    def _l2_start(self, x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        """Pseudo-Gaussian blocks of side h // 5 tiled over the image, random signs, norm eps."""
        n, c, h, w = x.shape
        side = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start_h, start_w = (h - side * (h // side)) // 2, (w - side * (w // side)) // 2
        for top in range(start_h, h - side + 1, side):
            for left in range(start_w, w - side + 1, side):
                window = pseudo_gaussian_window(side, generator).to(x) if side > 1 else torch.ones(1, 1).to(x)
                signs = _random_signs((n, c, 1, 1), generator, x)
                delta[:, :, top : top + side, left : left + side] += window * signs
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta / norms * eps

    def _l2_step(self, x: Tensor, x_best: Tensor, eps: float, side: int, generator: torch.Generator) -> Tensor:
        """Move the mass of window 2 and window 1 into a fresh pseudo-Gaussian window 1."""
        n, c, h, w = x.shape
        delta = x_best - x
        top, left = self._window(h, w, side, generator)
        top2, left2 = self._window(h, w, side, generator)
        win1 = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        win2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
        old = delta[win1]
        norm_old = old.flatten(2).norm(dim=2).view(n, c, 1, 1)
        norm_image = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        both = torch.zeros_like(delta)
        both[win1] = 1
        both[win2] = 1
        norm_windows = (delta * both).flatten(2).norm(dim=2).view(n, c, 1, 1)
        signs = _random_signs((n, c, 1, 1), generator, x)
        new = pseudo_gaussian_window(side, generator).to(x).expand(n, c, side, side) * signs + old / (1e-10 + norm_old)
        budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / new.flatten(2).norm(dim=2).view(n, c, 1, 1).clamp_min(1e-12) * budget
        delta[win2] = 0
        delta[win1] = new
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return x + delta / norms * eps
