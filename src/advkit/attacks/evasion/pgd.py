"""Iterative gradient attacks: PGD, BIM and the iterative least-likely class method.

- PGD: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018. Linf and L2, step 2.5*eps/steps.
- BIM and ILLC: Kurakin, Goodfellow & Bengio, "Adversarial Examples in the Physical
  World", ICLR workshop 2017: no random start, step 1/255 of the pixel range,
  min(eps*255 + 4, 1.25*eps*255) steps (eps in 0-255 units of that range); ILLC targets
  the least-likely class. The range is the threat's bounds once resolved at call time
  (the model's, e.g. 0-255), so the count and step follow the model unless given.

Defaults chosen so PGD does not under-report (cf. Croce & Hein, ICML 2020): restart 1
starts at the clean point with cross-entropy and a first step of size eps, so its first
iterate *is* the FGSM point and a one-step attack can never break a row PGD leaves
standing; the other restarts start at random points and ascend the logit margin
(Carlini & Wagner 2017). Later restarts only attack the rows still standing, and each
row keeps its best iterate over all steps and restarts. With ``early_stop`` (default) a
row retires the step it reaches the goal, judged on logits the step computed anyway, so
the batch shrinks as rows fall; ``early_stop=False`` runs every row for every step (the
maximum-loss iterate, e.g. for transfer). The base class's verification decides success
either way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.base import CleanForward, EvasionAttack
from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.steps import pgd, random_start
from advkit.core import ModelHandle, ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register

LOSSES = ("auto", "ce", "margin")


@register(
    "pgd",
    family="evasion",
    knowledge="white",
    paper="Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018",
    atlas="AML.T0043.000",
    summary="projected gradient descent, Linf/L2, clean + random restarts, CE and margin losses",
)
class PGD(EvasionAttack):
    """Projected gradient descent with restarts, keeping each row's best iterate."""

    name = "pgd"

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 3,
        loss: str = "auto",
        random_start: bool = True,
        early_stop: bool = True,
        batch_size: int = 500,
    ) -> None:
        super().__init__(threat, batch_size=batch_size)
        if steps < 1:
            raise AdvkitError(f"{self.name}: steps must be >= 1; got {steps}")
        if restarts < 1:
            raise AdvkitError(f"{self.name}: restarts must be >= 1; got {restarts}")
        if loss not in LOSSES:
            raise AdvkitError(f"{self.name}: loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        if step_size is not None and not step_size > 0:
            raise AdvkitError(f"{self.name}: step size must be > 0; got {step_size}")
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.loss = loss
        self.random_start = random_start
        self.early_stop = early_stop

    def params(self) -> dict[str, Any]:
        return self.params_for(self.threat)

    def params_for(self, threat: Threat) -> dict[str, Any]:
        return {
            "steps": self.steps_for(threat),
            "step_size": self.step_size_for(threat),
            "restarts": self.restarts,
            "loss": self.loss,
            "random_start": self.random_start,
            "early_stop": self.early_stop,
        }

    def steps_for(self, threat: Threat) -> int:
        """Iterations per restart under ``threat`` (its bounds resolved)."""
        return self.steps

    def step_size_for(self, threat: Threat) -> float:
        return self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps_for(threat)

    def restart_plan(self, restart: int, threat: Threat) -> tuple[str, bool, float | None]:
        """(loss, random start?, first step size) of one restart."""
        if restart == 0:
            return ("ce" if self.loss == "auto" else self.loss), False, threat.eps
        loss = self.loss
        if loss == "auto":
            loss = "ce" if threat.goal == "confidence" else "margin"
        return loss, self.random_start, None

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
        best_x = x.clone()
        best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for restart in range(self.restarts):
            rows = (best_score <= 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            loss, start_random, first_step = self.restart_plan(restart, threat)
            xr, yr = x[rows], y[rows]
            last = restart == self.restarts - 1
            run = pgd(
                model.logits,
                xr,
                yr,
                eps=threat.eps,
                norm=threat.norm,
                steps=self.steps_for(threat),
                step_size=self.step_size_for(threat),
                bounds=threat.bounds,
                goal=threat.goal,
                target=target[rows] if target is not None else None,
                loss=loss,
                init=random_start(xr, threat.eps, threat.norm, threat.bounds, random[rows], ("restart", restart)) if start_random else None,
                first_step=first_step,
                first_forward=(clean.x, clean.logits) if not start_random and restart == 0 else None,
                confidence=threat.confidence,
                evaluate_final=not last,
                early_stop=self.early_stop,
            )
            better = run.best_score > best_score[rows]
            best_x[rows[better]] = run.best_x[better]
            best_score[rows[better]] = run.best_score[better]
            if last:  # the final iterate is scored by the base class's verification
                open_rows = run.best_score <= 0
                best_x[rows[open_rows]] = run.final_x[open_rows]
        return best_x, None


def kurakin_steps(eps: float, pixel_range: float) -> int:
    """Kurakin et al.'s iteration count, min(eps + 4, 1.25 eps) with eps in 0-255 units."""
    eps255 = eps / pixel_range * 255.0
    return max(1, int(round(min(eps255 + 4.0, 1.25 * eps255))))


@register(
    "bim",
    family="evasion",
    knowledge="white",
    paper="Kurakin, Goodfellow, Bengio. Adversarial Examples in the Physical World. ICLR workshop 2017",
    atlas="AML.T0043.000",
    summary="basic iterative method: small clipped gradient-sign steps from the clean point",
)
class BIM(PGD):
    """Basic iterative method: PGD from the clean point with Kurakin's step and count.

    Unless given, the count and the step (1/255 of the pixel range) are resolved at call
    time from the threat's bounds, i.e. the model's when the threat names none.
    """

    name = "bim"

    def __init__(
        self, threat: Threat | None = None, *, steps: int | None = None, step_size: float | None = None, early_stop: bool = True, batch_size: int = 500
    ) -> None:
        super().__init__(
            threat,
            steps=steps if steps is not None else 1,  # placeholder: resolved per call when not given
            step_size=step_size,
            restarts=1,
            loss="ce",
            random_start=False,
            early_stop=early_stop,
            batch_size=batch_size,
        )
        self.given_steps = steps

    @staticmethod
    def _range(threat: Threat) -> float:
        lo, hi = threat.bounds or (0.0, 1.0)
        return hi - lo

    def steps_for(self, threat: Threat) -> int:
        return self.given_steps if self.given_steps is not None else kurakin_steps(threat.eps, self._range(threat))

    def step_size_for(self, threat: Threat) -> float:
        return self.step_size if self.step_size is not None else self._range(threat) / 255.0

    def restart_plan(self, restart: int, threat: Threat) -> tuple[str, bool, float | None]:
        return "ce", False, None


@register(
    "illc",
    family="evasion",
    knowledge="white",
    paper="Kurakin, Goodfellow, Bengio. Adversarial Examples in the Physical World. ICLR workshop 2017",
    atlas="AML.T0043.000",
    summary="iterative least-likely class: BIM steps towards the class the model finds least likely",
)
class ILLC(BIM):
    """BIM descending the cross-entropy of each row's least-likely class (a targeted goal)."""

    name = "illc"
    goals = ("targeted",)

    def __init__(self, threat: Threat | None = None, **kwargs: Any) -> None:
        threat = threat or Threat()
        if threat.goal == "untargeted":
            threat = replace(threat, goal="targeted")
        super().__init__(threat, **kwargs)

    def choose_targets(self, handle: ModelHandle, x: Tensor, y: Tensor, clean_logits: Tensor, random: RowRandom) -> Tensor:
        return clean_logits.scatter(1, y[:, None], float("inf")).argmin(1)
