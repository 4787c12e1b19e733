"""FGSM: the fast gradient sign method.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples",
ICLR 2015: one step of size eps along the sign of the loss gradient. The L2 variant
steps along the normalised gradient (the "fast gradient method"). Targeted: descend the
cross-entropy of the target class (Kurakin et al. 2017's "step l.l." with any target).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import CleanForward, EvasionAttack
from advkit.attacks.evasion.steps import ascent_direction, attack_loss
from advkit.core import ModelView, Threat
from advkit.registry import register


@register(
    "fgsm",
    family="evasion",
    knowledge="white",
    paper="Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples. ICLR 2015",
    atlas="AML.T0043.000",
    summary="one gradient-sign step of size eps (Linf) or normalised-gradient step (L2)",
)
class FGSM(EvasionAttack):
    """One step of size eps up the cross-entropy (down it towards a target)."""

    name = "fgsm"

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
        # The gradient at x comes from the base class's own differentiable clean pass.
        loss = attack_loss(clean.logits, y, target, threat.goal, "ce").sum()
        (grad,) = torch.autograd.grad(loss, clean.x)
        return x + threat.eps * ascent_direction(grad, threat.norm), None

    def params(self) -> dict[str, Any]:
        return {"loss": "ce"}
