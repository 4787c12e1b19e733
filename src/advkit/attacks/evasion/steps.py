"""The pieces every gradient attack and adversarial trainer shares.

Losses to ascend (cross-entropy of Goodfellow et al. 2015; the logit margin of Carlini
& Wagner, S&P 2017), the steepest-ascent step for each norm (sign for Linf, normalised
gradient for L2), random starts in the ball, and the projected-gradient loop of Madry
et al. (ICLR 2018) with per-row tracking of the best iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom, Tag

Forward = Callable[[Tensor], Tensor]


def margin(logits: Tensor, cls: Tensor) -> Tensor:
    """Per row ``max_{j != cls} z_j - z_cls``: positive when ``cls`` is not the top class."""
    own = logits.gather(1, cls[:, None]).squeeze(1)
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return others - own


def attack_loss(logits: Tensor, y: Tensor, target: Tensor | None, goal: str, kind: str) -> Tensor:
    """Per-row loss the attacker ascends, for the goal and loss kind (``ce``/``margin``)."""
    if goal == "targeted":
        assert target is not None
        if kind == "margin":
            return -margin(logits, target)
        return -F.cross_entropy(logits, target, reduction="none")
    if kind == "margin" and goal == "untargeted":
        return margin(logits, y)
    return F.cross_entropy(logits, y, reduction="none")


def progress_score(logits: Tensor, y: Tensor, target: Tensor | None, goal: str, confidence: float) -> Tensor:
    """Per-row progress towards the goal; positive exactly when the goal is reached."""
    if goal == "targeted":
        assert target is not None
        return -margin(logits, target)
    if goal == "confidence":
        return confidence - torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return margin(logits, y)


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent unit step: ``sign`` for Linf, the L2-normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def project_delta(delta: Tensor, x: Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> Tensor:
    """Project a perturbation into the eps-ball, then keep ``x + delta`` inside the bounds."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(*bounds) - x


Source = Union[torch.Generator, RowRandom]


def draw_uniform(source: Source, like: Tensor, tag: Tag = "start") -> Tensor:
    """Uniform ``[0, 1)`` of ``like``'s shape: per-row streams (attacks) or a generator (training)."""
    if isinstance(source, RowRandom):
        return source.uniform(tag, like.shape[1:]).to(like.device, like.dtype)
    return torch.rand(like.shape, generator=source).to(like.device, like.dtype)


def draw_normal(source: Source, like: Tensor, tag: Tag = "start") -> Tensor:
    """Standard normal of ``like``'s shape, from per-row streams or a generator."""
    if isinstance(source, RowRandom):
        return source.normal(tag, like.shape[1:]).to(like.device, like.dtype)
    return torch.randn(like.shape, generator=source).to(like.device, like.dtype)


def linf_box(x: Tensor, eps: float, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Per-pixel ``[lower, upper]`` for a Linf perturbation: inside the eps-cube and keeping
    ``x + delta`` inside the bounds, so one clamp does both projections."""
    return (bounds[0] - x).clamp_(min=-eps), (bounds[1] - x).clamp_(max=eps)


def random_start(x: Tensor, eps: float, norm: str, bounds: tuple[float, float], source: Source, tag: Tag = "start") -> Tensor:
    """A uniformly random perturbation in the Linf cube or the L2 ball, inside the bounds."""
    if norm == "linf":
        delta = (draw_uniform(source, x, tag) * 2 - 1) * eps
    else:
        direction = draw_normal(source, x, (tag, "direction") if isinstance(source, RowRandom) else tag)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        dims = x[0].numel()
        if isinstance(source, RowRandom):
            u = source.uniform((tag, "radius")).to(x.device, x.dtype)
        else:
            u = torch.rand(x.shape[0], generator=source).to(x.device, x.dtype)
        delta = direction * (u ** (1.0 / dims) * eps).view(-1, 1, 1, 1)
    return (x + delta).clamp(*bounds) - x


@dataclass
class PGDRun:
    """One projected-gradient run: the best iterate per row, its score, the last iterate,
    and (with ``early_stop``) the forward passes each row took to reach the goal (0 where
    it never did)."""

    best_x: Tensor
    best_score: Tensor
    final_x: Tensor
    reached_at: Tensor | None = None


def pgd(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    bounds: tuple[float, float],
    goal: str = "untargeted",
    target: Tensor | None = None,
    loss: str = "ce",
    init: Tensor | None = None,
    first_step: float | None = None,
    first_forward: tuple[Tensor, Tensor] | None = None,
    confidence: float = 0.5,
    track_best: bool = True,
    evaluate_final: bool = True,
    early_stop: bool = False,
) -> PGDRun:
    """Projected gradient ascent of ``loss`` from ``x + init``.

    ``first_step`` overrides the size of step one (``eps`` makes iterate one the exact
    FGSM/FGM point). With ``track_best`` each iterate is scored from the logits the next
    step computes anyway, so tracking costs no extra forward pass; the final iterate is
    scored by one extra forward only when ``evaluate_final``. ``first_forward`` is an
    already computed differentiable ``(x, logits)`` pair at the start point (no ``init``),
    reused for step one instead of a second identical forward pass. With ``early_stop`` a
    row retires the step its iterate reaches the goal, judged on the logits that step
    computed anyway; the batch shrinks, and the row's ``final_x`` is that iterate.
    """
    if first_forward is not None and init is not None:
        raise ValueError("first_forward is the clean point's pass; it cannot be used with a random init")
    delta = init.clone() if init is not None else torch.zeros_like(x)
    box = linf_box(x, eps, bounds) if norm == "linf" else None  # the ball and the bounds as one per-pixel interval
    best_x = x.clone()
    best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
    final_x = x.clone()
    active = torch.arange(x.shape[0], device=x.device)
    reached_at = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if early_stop else None
    xa, ya, ta = x, y, target
    for step in range(steps):
        if step == 0 and first_forward is not None:
            x_in, logits = first_forward
        else:
            x_in = (xa + delta).requires_grad_(True)
            logits = forward(x_in)
        per_row = attack_loss(logits, ya, ta, goal, loss)
        if track_best or early_stop:
            score = progress_score(logits.detach(), ya, ta, goal, confidence)
            if track_best:
                better = score > best_score[active]
                best_x[active[better]] = x_in.detach()[better]
                best_score[active] = torch.where(better, score, best_score[active])
            if early_stop and bool((reached := score > 0).any()):
                final_x[active[reached]] = x_in.detach()[reached]
                assert reached_at is not None
                reached_at[active[reached]] = step + 1
                keep = ~reached
                if not bool(keep.any()):
                    active = active[:0]
                    break
                (grad,) = torch.autograd.grad(per_row[keep].sum(), x_in)
                grad, active, xa, ya, delta = grad[keep], active[keep], xa[keep], ya[keep], delta[keep]
                ta = ta[keep] if ta is not None else None
                box = (box[0][keep], box[1][keep]) if box is not None else None
            else:
                (grad,) = torch.autograd.grad(per_row.sum(), x_in)
        else:
            (grad,) = torch.autograd.grad(per_row.sum(), x_in)
        size = first_step if (step == 0 and first_step is not None) else step_size
        if box is not None:  # Linf, in place: delta += size * sign(grad), clipped to the interval
            delta = delta.add_(grad.sign_(), alpha=size).clamp_(box[0], box[1])
        else:
            delta = project_delta(delta + size * ascent_direction(grad, norm), xa, eps, norm, bounds)
    if active.numel():
        last = (xa + delta).detach()
        final_x[active] = last
        if track_best and evaluate_final:
            with torch.no_grad():
                score = progress_score(forward(last), ya, ta, goal, confidence)
            better = score > best_score[active]
            best_x[active[better]] = last[better]
            best_score[active] = torch.where(better, score, best_score[active])
    return PGDRun(best_x, best_score, final_x, reached_at)
