"""Square Attack: score-based random search for Linf and L2.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020. Each iteration changes one random
square window of the perturbation and keeps the change only if the margin loss falls
(untargeted: ``log p_y - max_{k != y} log p_k``, equal to the logit margin; targeted:
cross-entropy of the target). The window's side shrinks on the paper's schedule
(``p_init`` halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
iterations, rescaled to the query budget). Linf: vertical-stripe start, then each
iteration sets a random window to +-eps per image and channel, drawing the signs again
while the window would change nothing (as the reference code does: an unchanged
candidate wastes a query); the window's place is shared by the batch in one iteration,
as in AutoAttack's PyTorch code. L2: a start of pseudo-Gaussian blocks, and each step moves the mass of a
second window into a fresh pseudo-Gaussian window (the paper's Algorithm 3), the windows
shared by the batch in one iteration, as in the reference code. Rows stop querying once
they succeed or their budget in the view is spent; the view counts the queries (the
start costs one).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom, Tag
from advkit.attacks.evasion.base import Clean, EvasionAttack
from advkit.attacks.evasion.steps import margin
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register


_SIGN_BLOCK = 64  # iterations whose per-row signs are drawn at once


def _schedule(p_init: float, iteration: int, iterations: int) -> float:
    """The paper's piecewise-constant share of pixels a window covers, rescaled to the budget."""
    it = int(iteration / max(iterations, 1) * 10000)
    bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, 10000)
    for k in range(len(bounds) - 1):
        if bounds[k] < it <= bounds[k + 1]:
            return p_init / 2 ** (k + 1)
    return p_init


def _random_signs(random: RowRandom, tag: Tag, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """+-1 drawn uniformly per row (``shape`` excludes the row axis), on ``like``'s device and dtype."""
    return random.signs(tag, shape).to(like)


def _pseudo_gaussian_rectangle(rows: int, cols: int) -> Tensor:
    """Concentric rectangles weighted 1/(k+1)^2 around the centre, unit L2 norm."""
    delta = torch.zeros(rows, cols)
    r, c = rows // 2, cols // 2
    for k in range(max(r + 1, c + 1)):
        delta[max(r - k, 0) : min(r + k + 1, rows), max(c - k, 0) : min(c + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return delta / delta.norm()


def pseudo_gaussian_window(side: int, transpose: bool) -> Tensor:
    """Two opposite-signed pseudo-Gaussian halves (randomly transposed), unit L2 norm."""
    delta = torch.zeros(side, side)
    half = side // 2
    if half > 0:
        delta[:half] = _pseudo_gaussian_rectangle(half, side)
    delta[half:] = -_pseudo_gaussian_rectangle(side - half, side)
    delta = delta / delta.norm()
    if transpose:
        delta = delta.T
    return delta


@functools.lru_cache(maxsize=64)
def _window_pattern(side: int, transpose: bool) -> Tensor:
    """:func:`pseudo_gaussian_window`, cached (shared: never modify it in place)."""
    return pseudo_gaussian_window(side, transpose)


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
        random: RowRandom,
        clean: Clean,
    ) -> Tensor:
        assert threat.bounds is not None
        lo, hi = threat.bounds
        n, c, h, w = x.shape
        eps = threat.eps
        everyone = torch.arange(n, device=x.device)
        x_best = x.clone()
        loss = torch.full((n,), float("inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        first = everyone[model.budget_left(everyone) >= 1]
        if first.numel() == 0:
            return x_best
        linf = threat.norm == "linf"
        if linf:
            start = (x + eps * _random_signs(random, "start", (c, 1, w), x)).clamp(lo, hi)
        else:
            start = (x + self._l2_start(x, eps, random)).clamp(lo, hi)
        x_best[first] = start[first]
        probs = model.probs(x_best[first], rows=first)
        sub_target = None if target is None else target[first]
        loss[first] = self._loss(probs, y[first], sub_target)
        done[first] = self._success(probs, y[first], sub_target)
        started = torch.zeros(n, dtype=torch.bool, device=x.device)
        started[first] = True
        iterations = self.max_queries
        budget = model.budget_left(everyone)  # a standing row queries once per iteration: i queries made before iteration i
        # The rows still querying (``active``: open and with budget left) change only when a
        # row succeeds or reaches its budget; between such changes their state is kept
        # compact (``xa``, ``xb``, ``la``: their x, x_best and loss) and written back on each
        # change. The per-row signs of ``_SIGN_BLOCK`` iterations are drawn at once (the
        # same numbers as one draw per iteration: each is keyed by row and iteration).
        active: Tensor | None = None
        xa = xb = la = label = signs = None
        rnd = random
        next_drop = 0
        signs_from = signs_to = 1
        changed = True
        for i in range(1, iterations):
            if changed or i >= next_drop:
                if active is not None:
                    x_best[active] = xb
                    loss[active] = la.view(-1)
                open_rows = (~done & started).nonzero().squeeze(1)
                kept = open_rows[budget[open_rows] > i]
                if kept.numel() == 0:
                    active = None
                    break
                if signs is not None and active is not None and i < signs_to:
                    signs = signs[torch.searchsorted(active, kept)]  # kept is a sorted subset of active
                active, changed = kept, False
                xa, xb, la = x[active], x_best[active], loss[active].unsqueeze(1)
                label = (target if target is not None else y)[active].unsqueeze(1)
                rnd = random[active]
                next_drop = int(budget[active].min())
            if i >= signs_to:  # this iteration's block of sign draws
                signs_from, signs_to = i, min(i + _SIGN_BLOCK, iterations)
                signs = rnd.signs_block([("signs", j) for j in range(signs_from, signs_to)], (c, 1, 1)).to(x)
                if linf:
                    signs.mul_(eps)
            step_signs = signs[:, i - signs_from]
            p = _schedule(self.p_init, i - 1, iterations)
            if linf:
                side = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1 if h > 1 else 1)
                top, left = self._window(h, w, side, rnd, ("window", i))
                candidate, new, window = self._linf_candidate(xa, xb, step_signs, top, left, side, lo, hi, rnd, i, eps)
            else:
                side = max(int(round(math.sqrt(p * h * w))), 3)
                side += 1 - side % 2
                side = min(side, h - 1 if h > 1 else 1)
                candidate = self._l2_candidate(xa, xb, eps, side, rnd, i, step_signs).clamp_(lo, hi)
            cand_probs = model.probs(candidate, rows=active)
            logp = cand_probs.clamp_min(1e-30).log_()
            if target is not None:  # cross-entropy of the target
                cand_loss = logp.gather(1, label).neg_()
                success = cand_probs.argmax(1, keepdim=True) == label
            else:  # the margin: log p_y - max_{k != y} log p_k
                cand_loss = logp.gather(1, label) - logp.scatter(1, label, float("-inf")).amax(1, keepdim=True)
                success = cand_probs.argmax(1, keepdim=True) != label
            better = cand_loss < la
            torch.where(better, cand_loss, la, out=la)
            if linf:  # the candidate is x_best but for its window (``window``, a view of xb)
                torch.where(better.view(-1, 1, 1, 1), new, window, out=window)
            else:
                xb = torch.where(better.view(-1, 1, 1, 1), candidate, xb)
            won = better.logical_and_(success).view(-1)
            if bool(won.any()):
                done[active[won]] = True
                changed = True
        if active is not None:
            x_best[active] = xb
        return x_best

    @staticmethod
    def _window(h: int, w: int, side: int, random: RowRandom, tag: Tag) -> tuple[int, int]:
        """One window for every row (the reference's L2 step), drawn from the iteration's shared stream."""
        top, left = (bits % (1 << 30) for bits in random.shared_bits(tag, 2))  # randint(tag, 0, 2^30, (2,), shared=True)
        return top % (h - side + 1), left % (w - side + 1)

    def _linf_step(self, x: Tensor, x_best: Tensor, eps: float, side: int, random: RowRandom, i: int, lo: float, hi: float) -> Tensor:
        """The iteration's window set to +-eps per channel, signs drawn again while it would change nothing.

        The window's corner is drawn once per iteration for the whole batch (as in
        AutoAttack's PyTorch code; each image still sees a uniformly random window every
        iteration, from a stream keyed by the iteration, so no row depends on the others),
        and the signs per image and channel. With one channel exactly one of the two signs
        changes a window the other leaves unchanged (a pixel cannot sit at both bounds), so
        the redraw the reference code loops for is that sign: the same distribution
        without the loop. With more channels rows redraw until something changes.
        """
        n, c, h, w = x.shape
        top, left = self._window(h, w, side, random, ("window", i))
        step = eps * _random_signs(random, ("signs", i), (c, 1, 1), x)
        return self._linf_candidate(x, x_best, step, top, left, side, lo, hi, random, i, eps)[0]

    @staticmethod
    def _linf_candidate(
        x: Tensor, x_best: Tensor, step: Tensor, top: int, left: int, side: int, lo: float, hi: float, random: RowRandom, i: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_linf_step` with its window and its ``eps * signs`` (``step``) drawn: the
        candidate, its window (a view of the candidate) and that window of ``x_best`` (a view)."""
        c = x.shape[1]
        region = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        inside, best = x[region], x_best[region]
        candidate = x_best.clone()
        new = candidate[region]
        torch.add(inside, step, out=new).clamp_(lo, hi)
        unchanged = (new - best).abs_().flatten(1).amax(1) < 1e-7
        if c == 1:  # the other sign: it changes the window (see _linf_step)
            torch.where(unchanged.view(-1, 1, 1, 1), (inside - step).clamp_(lo, hi), new, out=new)
            return candidate, new, best
        redraw = unchanged.nonzero().squeeze(1)
        for attempt in range(100):  # the reference redraws until something changes; this bounds it
            if redraw.numel() == 0:
                break
            fresh_signs = _random_signs(random[redraw], ("signs", i, attempt), (c, 1, 1), x)
            fresh = (inside[redraw] + eps * fresh_signs).clamp_(lo, hi)
            new[redraw] = fresh
            redraw = redraw[(fresh - best[redraw]).abs().flatten(1).amax(1) < 1e-7]
        return candidate, new, best

    def _l2_start(self, x: Tensor, eps: float, random: RowRandom) -> Tensor:
        """Pseudo-Gaussian blocks of side h // 5 tiled over the image, random signs, norm eps."""
        n, c, h, w = x.shape
        side = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start_h, start_w = (h - side * (h // side)) // 2, (w - side * (w // side)) // 2
        for top in range(start_h, h - side + 1, side):
            for left in range(start_w, w - side + 1, side):
                flip = bool(random.uniform(("start-flip", top, left), shared=True) > 0.5)
                window = pseudo_gaussian_window(side, flip).to(x) if side > 1 else torch.ones(1, 1).to(x)
                signs = _random_signs(random, ("start-signs", top, left), (c, 1, 1), x)
                delta[:, :, top : top + side, left : left + side] += window * signs
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta / norms * eps

    def _l2_step(self, x: Tensor, x_best: Tensor, eps: float, side: int, random: RowRandom, i: int) -> Tensor:
        """Move the mass of window 2 and window 1 into a fresh pseudo-Gaussian window 1."""
        signs = _random_signs(random, ("signs", i), (x.shape[1], 1, 1), x)
        return self._l2_candidate(x, x_best, eps, side, random, i, signs)

    def _l2_candidate(self, x: Tensor, x_best: Tensor, eps: float, side: int, random: RowRandom, i: int, signs: Tensor) -> Tensor:
        """:meth:`_l2_step` with the iteration's per-row ``signs`` drawn."""
        n, c, h, w = x.shape
        delta = x_best - x
        top, left = self._window(h, w, side, random, ("window-1", i))
        top2, left2 = self._window(h, w, side, random, ("window-2", i))
        win1 = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        win2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
        old = delta[win1]
        norm_old = old.flatten(2).norm(dim=2).view(n, c, 1, 1)
        norm_image = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        both = torch.zeros_like(delta)
        both[win1] = 1
        both[win2] = 1
        norm_windows = (delta * both).flatten(2).norm(dim=2).view(n, c, 1, 1)
        flip = random.shared_bits(("flip", i), 1)[0] >> 8 > 1 << 23  # uniform(("flip", i), shared=True) > 0.5
        new = _window_pattern(side, flip).to(x).expand(n, c, side, side) * signs + old / (1e-10 + norm_old)
        budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / new.flatten(2).norm(dim=2).view(n, c, 1, 1).clamp_min(1e-12) * budget
        delta[win2] = 0
        delta[win1] = new
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return x + delta / norms * eps
