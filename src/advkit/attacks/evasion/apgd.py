"""Auto-PGD: step-size-free projected gradient ascent (APGD-CE, APGD-DLR, APGD-T).

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1 and Section 3).

Each run starts at a random point of the ball (Linf: ``x + eps * t / ||t||_inf`` with
``t`` uniform in ``[-1, 1]``; L2: a random direction of norm eps), takes a first plain
step of ``2 * eps`` (for L2 too, as in the reference code) and then steps with momentum
``alpha = 0.75``: ``z = P(x_k + eta * s(grad))``, ``x_{k+1} = P(x_k + alpha (z - x_k) +
(1 - alpha)(x_k - x_{k-1}))``, where ``s`` is the sign (Linf) or the normalised gradient
(L2) and ``P`` clips to the ball, then to the bounds. At the checkpoints
``w_j = ceil(p_j * N)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` a row halves its step and restarts
from its best point when (1) the loss grew on at most ``rho = 0.75`` of the steps since
the last checkpoint, or (2) the step was not halved at the last checkpoint and the best
loss has not improved since. Losses: cross-entropy (APGD-CE), the Difference of Logits
Ratio ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` (APGD-DLR) and its targeted form
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (APGD-T, one run per target class, the
top 9 other classes by clean logits, as in AutoAttack's standard version).

advkit's additions and simplifications:

- A row retires as soon as an iterate reaches the goal, judged on the logits the next
  gradient computation produced anyway (no extra forward pass); only the rows still
  standing pay for further steps, targets and restarts. A row keeps its first
  goal-reaching iterate, otherwise its highest-loss iterate.
- Checkpoints use the reference code's integer form (first period ``int(0.22 N)``,
  shrinking by ``int(0.03 N)`` down to ``int(0.06 N)``), equal to the paper's ``w_j`` at
  ``N = 100``. Condition (1) counts increases against the previous iterate's loss,
  including the start point for the first period (the reference compares the first step
  against an unset buffer).
- The base class's clean logits skip rows already misclassified and rank APGD-T's
  targets (the reference runs its own clean pass per target); the random start needs its
  own first pass. The last step needs no gradient, so its pass is forward only.
- No expectation over transformations (``eot_iter = 1``) and no L1 variant.
- With fewer than 4 (targeted DLR) or 3 (DLR) classes the DLR denominator uses the
  classes there are; with 2 classes it is 1 (the plain logit margin).
- ``on_every_row()`` (transfer attacks) runs every row for all steps and answers with
  its highest-loss point, the reference's ``best_loss`` mode.
- ``goal="targeted"`` with given targets ascends ``-CE(target)`` (APGD-CE) or the
  targeted DLR (APGD-DLR, APGD-T) and retires a row once its target wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from advkit.attacks.evasion.apgd_losses import (
    TARGET_CLASSES,
    RowLoss,
    ce_loss,
    ce_targeted_loss,
    dlr_loss,
    dlr_targeted_loss,
    misclassified,
    never,
    on_target,
    top_other_classes,
)
from advkit.attacks.evasion.apgd_schedule import INITIAL_STEP, MOMENTUM, RHO, apgd_start, checkpoint_fractions, checkpoints
from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import CleanForward, EvasionAttack, goal_reached
from advkit.attacks.evasion.steps import ascent_direction, project_delta
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register

Forward = Callable[[Tensor], Tensor]

__all__ = [
    "APGD",
    "APGDDLR",
    "INITIAL_STEP",
    "MOMENTUM",
    "RHO",
    "TARGET_CLASSES",
    "APGDRun",
    "APGDTargeted",
    "RowLoss",
    "apgd",
    "apgd_start",
    "ce_loss",
    "ce_targeted_loss",
    "checkpoint_fractions",
    "checkpoints",
    "dlr_loss",
    "dlr_targeted_loss",
    "misclassified",
    "never",
    "on_target",
    "top_other_classes",
]


@dataclass
class APGDRun:
    """One APGD run over a batch: per row, the best-loss point, its loss, and the goal point if found."""

    best_x: Tensor
    best_loss: Tensor
    adv_x: Tensor
    found: Tensor


def apgd(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    steps: int,
    loss: RowLoss,
    success: RowLoss,
    start: Tensor,
    target: Tensor | None = None,
    rho: float = RHO,
) -> APGDRun:
    """One Auto-PGD run from ``start`` (a point in the ball), retiring rows that reach the goal.

    ``loss(logits, y, target)`` is ascended per row; ``success(logits, y, target)`` says
    which rows reached the goal (judged on the logits of each gradient pass).
    """
    n = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    out_best = start.detach().clone()
    out_loss = torch.full((n,), float("-inf"), device=x.device)
    out_adv = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)

    def evaluate(x_in: Tensor, yy: Tensor, tt: Tensor | None, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        if need_grad:
            x_in = x_in.detach().requires_grad_(True)
            logits = forward(x_in)
            values = loss(logits, yy, tt)
            (grad,) = torch.autograd.grad(values.sum(), x_in)
            return logits.detach(), values.detach(), grad
        with torch.no_grad():
            logits = forward(x_in)
            return logits, loss(logits, yy, tt), None

    s: dict[str, Any] = {"idx": torch.arange(n, device=x.device), "x0": x, "y": y, "t": target}
    logits, value, grad = evaluate(start, y, target, steps > 0)
    s.update(
        x_adv=start.detach(),
        x_prev=start.detach(),
        grad=grad if grad is not None else torch.zeros_like(x),
        x_best=start.detach().clone(),
        loss_best=value.clone(),
        loss_prev=value.clone(),
        step=torch.full((n,), INITIAL_STEP * eps, device=x.device),
        increases=torch.zeros(n, device=x.device),
        best_at_check=value.clone(),
        reduced_last=torch.ones(n, dtype=torch.bool, device=x.device),
    )
    s["grad_best"] = s["grad"].clone()

    def retire(reached: Tensor) -> None:
        rows = s["idx"][reached]
        out_adv[rows] = s["x_adv"][reached]
        found[rows] = True
        out_best[rows] = s["x_best"][reached]
        out_loss[rows] = s["loss_best"][reached]
        keep = ~reached
        for key, v in s.items():
            if v is not None:
                s[key] = v[keep]

    reached = success(logits, y, target)
    if bool(reached.any()):
        retire(reached)
    marks = set(checkpoints(steps)[1:])
    last_mark = 0
    for i in range(steps):
        if s["idx"].numel() == 0:
            break
        x0, x_adv = s["x0"], s["x_adv"]
        a = MOMENTUM if i > 0 else 1.0
        z = x0 + project_delta(x_adv + s["step"].view(view) * ascent_direction(s["grad"], norm) - x0, x0, eps, norm, bounds)
        moved = x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - s["x_prev"])
        x_new = x0 + project_delta(moved - x0, x0, eps, norm, bounds)
        s["x_prev"], s["x_adv"] = x_adv, x_new
        logits, value, grad = evaluate(x_new, s["y"], s["t"], i < steps - 1)
        if grad is not None:
            s["grad"] = grad
        s["increases"] = s["increases"] + (value > s["loss_prev"]).float()
        s["loss_prev"] = value
        better = value > s["loss_best"]
        s["x_best"] = torch.where(better.view(view), x_new, s["x_best"])
        s["grad_best"] = torch.where(better.view(view), s["grad"], s["grad_best"])
        s["loss_best"] = torch.where(better, value, s["loss_best"])
        reached = success(logits, s["y"], s["t"])
        if bool(reached.any()):
            retire(reached)
        if i + 1 in marks:
            period = i + 1 - last_mark
            last_mark = i + 1
            oscillating = s["increases"] <= rho * period
            stalled = ~s["reduced_last"] & (s["best_at_check"] >= s["loss_best"])
            halve = oscillating | stalled
            s["step"] = torch.where(halve, s["step"] / 2.0, s["step"])
            s["x_adv"] = torch.where(halve.view(view), s["x_best"], s["x_adv"])
            s["grad"] = torch.where(halve.view(view), s["grad_best"], s["grad"])
            s["reduced_last"] = halve
            s["best_at_check"] = s["loss_best"].clone()
            s["increases"] = torch.zeros_like(s["increases"])
    rows = s["idx"]
    out_best[rows] = s["x_best"]
    out_loss[rows] = s["loss_best"]
    return APGDRun(out_best, out_loss, out_adv, found)


@register(
    "apgd-ce",
    family="evasion",
    knowledge="white",
    paper="Croce & Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks. ICML 2020",
    atlas="AML.T0043.000",
    summary="Auto-PGD on cross-entropy: step-size schedule from loss progress, momentum, Linf/L2",
)
class APGD(EvasionAttack):
    """Auto-PGD on the cross-entropy loss (AutoAttack's first component).

    ``steps`` iterations per run, ``restarts`` random-start runs on the rows still standing.
    """

    name = "apgd-ce"
    goals = ("untargeted", "targeted")
    loss_kind: ClassVar[str] = "ce"

    def __init__(self, threat: Threat | None = None, *, steps: int = 100, restarts: int = 1, rho: float = RHO, batch_size: int = 500) -> None:
        super().__init__(threat, batch_size=batch_size)
        if steps < 1:
            raise AdvkitError(f"{self.name}: steps must be >= 1; got {steps}")
        if restarts < 1:
            raise AdvkitError(f"{self.name}: restarts must be >= 1; got {restarts}")
        if not 0.0 < rho < 1.0:
            raise AdvkitError(f"{self.name}: rho must be in (0, 1); got {rho}")
        self.steps = steps
        self.restarts = restarts
        self.rho = rho

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss_kind,
            "rho": self.rho,
            "momentum": MOMENTUM,
            "initial_step": f"{INITIAL_STEP:g}*eps",
            "checkpoints": checkpoints(self.steps),
        }

    def losses(self, goal: str) -> tuple[RowLoss, RowLoss]:
        """(loss to ascend, success test) for the goal."""
        if goal == "targeted":
            return (ce_targeted_loss if self.loss_kind == "ce" else dlr_targeted_loss), on_target
        return (ce_loss if self.loss_kind == "ce" else dlr_loss), misclassified

    def target_plan(self, clean_logits: Tensor, y: Tensor, target: Tensor | None, threat: Threat) -> list[Tensor | None]:
        """The target tensor of each pass over the rows (one pass, untargeted, for APGD-CE/DLR)."""
        return [target]

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: CleanForward,
    ) -> tuple[Tensor, Tensor | None]:
        assert threat.bounds is not None
        out = x.clone()
        if threat.eps == 0:
            return out, None
        clean_logits = clean.logits.detach()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        loss, success = self.losses(threat.goal)
        if self.keep_clean_successes:
            done = goal_reached(clean_logits, y, target, threat)
        else:  # on_every_row(): every row runs all steps and answers with its highest-loss point
            done = torch.zeros_like(y, dtype=torch.bool)
            success = never
        for pass_index, tgt in enumerate(self.target_plan(clean_logits, y, target, threat)):
            for restart in range(self.restarts):
                rows = (~done).nonzero().squeeze(1)
                if rows.numel() == 0:
                    return out, None
                xr, yr = x[rows], y[rows]
                tr = tgt[rows] if tgt is not None else None
                res = apgd(
                    model.logits,
                    xr,
                    yr,
                    eps=threat.eps,
                    norm=threat.norm,
                    bounds=threat.bounds,
                    steps=self.steps,
                    loss=loss,
                    success=success,
                    start=apgd_start(xr, threat.eps, threat.norm, threat.bounds, random[rows], ("start", pass_index, restart)),
                    target=tr,
                    rho=self.rho,
                )
                hit = rows[res.found]
                out[hit] = res.adv_x[res.found]
                done[hit] = True
                # Rows left standing keep their highest-loss point (losses of one kind only).
                better = ~res.found & (res.best_loss > best_loss[rows])
                out[rows[better]] = res.best_x[better]
                best_loss[rows[better]] = res.best_loss[better]
        return out, None


@register(
    "apgd-dlr",
    family="evasion",
    knowledge="white",
    paper="Croce & Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks. ICML 2020",
    atlas="AML.T0043.000",
    summary="Auto-PGD on the Difference of Logits Ratio loss (shift- and scale-invariant), Linf/L2",
)
class APGDDLR(APGD):
    """Auto-PGD on the DLR loss (AutoAttack's ``plus`` version)."""

    name = "apgd-dlr"
    loss_kind = "dlr"


@register(
    "apgd-t",
    family="evasion",
    knowledge="white",
    paper="Croce & Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks. ICML 2020",
    atlas="AML.T0043.000",
    summary="Auto-PGD on the targeted DLR loss, one run per top-9 other class, to find any misclassification",
)
class APGDTargeted(APGD):
    """APGD-T: targeted DLR towards each of the top ``target_classes`` other classes in turn.

    Under the untargeted goal (AutoAttack's use) any misclassification retires a row; under
    the targeted goal the given target is the only one.
    """

    name = "apgd-t"
    loss_kind = "dlr-targeted"

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        steps: int = 100,
        restarts: int = 1,
        target_classes: int = TARGET_CLASSES,
        rho: float = RHO,
        batch_size: int = 500,
    ) -> None:
        super().__init__(threat, steps=steps, restarts=restarts, rho=rho, batch_size=batch_size)
        if target_classes < 1:
            raise AdvkitError(f"{self.name}: target_classes must be >= 1; got {target_classes}")
        self.target_classes = target_classes

    def params(self) -> dict[str, Any]:
        return {**super().params(), "target_classes": self.target_classes}

    def losses(self, goal: str) -> tuple[RowLoss, RowLoss]:
        return dlr_targeted_loss, (on_target if goal == "targeted" else misclassified)

    def target_plan(self, clean_logits: Tensor, y: Tensor, target: Tensor | None, threat: Threat) -> list[Tensor | None]:
        if threat.goal == "targeted":
            return [target]
        return top_other_classes(clean_logits, y, self.target_classes)
