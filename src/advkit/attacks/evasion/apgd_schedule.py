"""Auto-PGD's step-size schedule and start point (Croce & Hein, ICML 2020, Algorithm 1).

The checkpoints ``w_j`` at which a row may halve its step, the momentum and the first
step of ``2 * eps``, and the random start in the ball; :mod:`advkit.attacks.evasion.apgd`
runs the loop that follows them.
"""

from __future__ import annotations

from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom, Tag
from advkit.attacks.evasion.steps import draw_normal, draw_uniform

MOMENTUM = 0.75
RHO = 0.75
INITIAL_STEP = 2.0  # times eps, Linf and L2 (as in the reference code)


def checkpoint_fractions() -> list[float]:
    """The paper's ``p_j`` in ``[0, 1]``: 0, 0.22, then ``p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    points = [0.0, 0.22]
    while True:
        nxt = round(points[-1] + max(points[-1] - points[-2] - 0.03, 0.06), 10)
        if nxt > 1.0:
            return points
        points.append(nxt)


def checkpoints(steps: int) -> list[int]:
    """Iterations after which the step-size conditions are checked (the first is 0).

    The reference code's integer form of ``w_j = ceil(p_j * steps)``: periods of
    ``int(0.22 steps)``, each ``int(0.03 steps)`` shorter, never under ``int(0.06 steps)``
    (every count at least 1). For ``steps = 100``: 0, 22, 41, 57, 70, 80, 87, 93, 99.
    """
    period = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    points = [0]
    while points[-1] + period <= steps:
        points.append(points[-1] + period)
        period = max(period - shrink, shortest)
    return points


def apgd_start(x: Tensor, eps: float, norm: str, bounds: tuple[float, float], random: RowRandom, tag: Tag = "start") -> Tensor:
    """The reference start: Linf ``eps * t / ||t||_inf`` (t uniform), L2 a direction of norm eps; clipped to the bounds."""
    if norm == "linf":
        t = draw_uniform(random, x, tag) * 2 - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    else:
        t = draw_normal(random, x, tag)
        t = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + eps * t).clamp(*bounds)
