"""The threat model: norm and budget, valid pixel range, the attacker's goal and knowledge.

It follows the taxonomy of Papernot et al., "The Limitations of Deep Learning in
Adversarial Settings" (EuroS&P 2016): the attacker's *goal* (confidence reduction,
untargeted or targeted misclassification) and *knowledge* (gradients, scores, labels
only), plus the perturbation *norm* and *budget* of Madry et al. (ICLR 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from advkit.errors import AdvkitError

Norm = Literal["linf", "l2", "l0"]
Goal = Literal["untargeted", "targeted", "confidence"]
Knowledge = Literal["white", "score", "label"]

NORMS: tuple[str, ...] = ("linf", "l2", "l0")
GOALS: tuple[str, ...] = ("untargeted", "targeted", "confidence")
KNOWLEDGE_LEVELS: tuple[str, ...] = ("white", "score", "label")  # most to least access


def lower_choice(value: str, choices: Sequence[str], what: str) -> str:
    """``value`` stripped and lower-cased; a one-line error when it is not one of ``choices``."""
    text = str(value).strip().lower()
    if text not in choices:
        raise AdvkitError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return text


@dataclass(frozen=True)
class Threat:
    """What the attacker may do: norm and budget, valid pixel range, goal and knowledge.

    ``norm`` is read case-insensitively (RobustBench's ``Linf``/``L2`` work). ``bounds``
    of ``None`` means "the model's bounds". ``confidence`` is the true-class probability
    under which a ``confidence``-reduction attack counts as a success.
    """

    norm: Norm = "linf"
    eps: float = 0.3
    goal: Goal = "untargeted"
    knowledge: Knowledge = "white"
    bounds: tuple[float, float] | None = None
    confidence: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", lower_choice(self.norm, NORMS, "norm"))
        object.__setattr__(self, "goal", lower_choice(self.goal, GOALS, "goal"))
        object.__setattr__(
            self, "knowledge", lower_choice(self.knowledge, KNOWLEDGE_LEVELS, "knowledge")
        )
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise AdvkitError(f"eps must be a number; got {self.eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise AdvkitError(f"eps must be a finite number >= 0; got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        if self.bounds is not None:
            lo, hi = (float(b) for b in self.bounds)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise AdvkitError(f"bounds must be two finite numbers low < high; got {self.bounds!r}")
            object.__setattr__(self, "bounds", (lo, hi))
        if not 0.0 < float(self.confidence) <= 1.0:
            raise AdvkitError(f"confidence must be in (0, 1]; got {self.confidence!r}")

    def with_bounds(self, bounds: tuple[float, float]) -> Threat:
        """This threat with its bounds filled in from the model when it has none."""
        return self if self.bounds is not None else replace(self, bounds=bounds)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used in reports (``norm``, ``eps``, ``goal``, ``knowledge``)."""
        out: dict[str, Any] = {
            "norm": self.norm,
            "eps": self.eps,
            "goal": self.goal,
            "knowledge": self.knowledge,
        }
        if self.bounds is not None:
            out["bounds"] = list(self.bounds)
        return out

