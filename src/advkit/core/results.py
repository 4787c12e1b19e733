"""Results: a verified evasion outcome, a poisoned training set, a detector's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from advkit.core.threat import Threat


@dataclass
class AttackResult:
    """The verified outcome of one evasion attack on a batch.

    Every field is computed by the attack base class on the model itself, never taken
    from the algorithm. ``success`` is per row (goal reached on the adversarial input);
    metrics follow DESIGN.md principle 7.
    """

    attack: str
    threat: Threat
    x_adv: Tensor
    y: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    success: Tensor
    perturbation: Tensor
    seconds: float
    num_classes: int
    target: Tensor | None = None
    queries: Tensor | None = None
    clean_true_prob: Tensor | None = None
    adv_true_prob: Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    rows_attacked: int | None = None  # None: every row (an independent run)
    rows_carried: int = 0  # rows broken at a smaller budget of a sweep, carried with their example

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def clean_correct(self) -> Tensor:
        return self.clean_pred == self.y

    @property
    def clean_accuracy(self) -> float:
        from advkit.metrics import accuracy

        return accuracy(self.clean_pred, self.y)

    @property
    def adversarial_accuracy(self) -> float:
        from advkit.metrics import accuracy

        return accuracy(self.adv_pred, self.y)

    @property
    def attack_success_rate(self) -> float | None:
        from advkit.metrics import attack_success_rate

        return attack_success_rate(self.success, self.clean_correct)

    def per_class(self) -> list[dict[str, Any]]:
        from advkit.metrics import per_class_table

        return per_class_table(self.y, self.clean_pred, self.adv_pred, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form of DESIGN.md (keys are a contract: add, never rename)."""
        from advkit.metrics import query_summary

        ok = self.success & self.clean_correct
        return {
            "attack": self.attack,
            "threat": self.threat.to_dict(),
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "adversarial_accuracy": self.adversarial_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "queries": query_summary(self.queries, ok),
            "seconds": self.seconds,
            "per_class": self.per_class(),
            "params": self.params,
            "max_perturbation": float(self.perturbation.max()) if self.n else 0.0,
            "mean_perturbation_of_successes": float(self.perturbation[ok].mean()) if bool(ok.any()) else None,
            "rows_attacked": self.n if self.rows_attacked is None else self.rows_attacked,
            "rows_carried": self.rows_carried,
        }


@dataclass
class PoisonedData:
    """A training set after a poisoning attack, remembering which rows it touched.

    ``x``/``y`` are the full (poisoned) arrays; ``poisoned`` is a boolean mask of the rows
    the attack changed; ``original_y`` keeps the labels before the attack.
    """

    x: Tensor
    y: Tensor
    poisoned: Tensor
    original_y: Tensor
    attack: str
    target: int | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[int]:
        return [int(i) for i in self.poisoned.nonzero().squeeze(1).tolist()]

    @property
    def rate(self) -> float:
        return float(self.poisoned.float().mean()) if self.poisoned.numel() else 0.0


@dataclass
class DetectionReport:
    """What a detector found: a score per item (class or row) and the flagged mask."""

    method: str
    scores: Tensor
    flagged: Tensor
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged_ids(self) -> list[int]:
        return [int(i) for i in self.flagged.nonzero().squeeze(1).tolist()]
