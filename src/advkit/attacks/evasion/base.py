"""The evasion-attack base class: validate, run, project, verify (DESIGN.md principle 3).

An attack object holds only its settings; the model comes at call time. The base class
checks the inputs, hands the algorithm a query-counting view limited to the attack's
knowledge, projects whatever comes back into the budget and the bounds, keeps the clean
input for rows where it already reaches the goal (each row counts its worst case), and
re-checks success on the model itself. No attack can report a success it did not reach.
Design after foolbox 3 (Rauber et al., JOSS 2020).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advkit.core import (
    KNOWLEDGE_LEVELS,
    AttackResult,
    ModelHandle,
    ModelView,
    Threat,
    check_images,
    check_labels,
)
from advkit.errors import AdvkitError
from advkit.metrics import perturbation_norms

Progress = Callable[[str, int, int], None]


@dataclass
class CleanForward:
    """The base class's forward pass on a clean batch: inputs and logits (maybe with a graph)."""

    x: Tensor
    logits: Tensor


def project(x_adv: Tensor, x: Tensor, threat: Threat) -> Tensor:
    """Bring ``x_adv`` into the threat's ball around ``x`` and into its bounds."""
    assert threat.bounds is not None
    lo, hi = threat.bounds
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    elif threat.norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (threat.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
    elif threat.norm == "l0":
        k = int(threat.eps)
        pixel_change = delta.abs().amax(1).flatten(1)  # [N, H*W]
        if k < pixel_change.shape[1]:
            keep = torch.zeros_like(pixel_change, dtype=torch.bool)
            if k > 0:
                keep.scatter_(1, pixel_change.topk(k, dim=1).indices, True)
            delta = delta * keep.view(delta.shape[0], 1, *delta.shape[2:])
    return (x + delta).clamp(lo, hi)


def goal_reached(logits: Tensor, y: Tensor, target: Tensor | None, threat: Threat) -> Tensor:
    """Per row: did these logits reach the threat's goal?"""
    if threat.goal == "targeted":
        assert target is not None
        return logits.argmax(1) == target
    if threat.goal == "confidence":
        return torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1) < threat.confidence
    return logits.argmax(1) != y


class EvasionAttack(ABC):
    """Base of every test-time attack: ``attack(model, x, y, target=, generator=)``.

    Subclasses set ``name``, ``knowledge`` (what the algorithm needs), ``norms`` and
    ``goals`` they support, and implement :meth:`run` on one batch through a view.
    """

    name: ClassVar[str]
    knowledge: ClassVar[str] = "white"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    goals: ClassVar[tuple[str, ...]] = ("untargeted", "targeted", "confidence")

    def __init__(self, threat: Threat | None = None, *, batch_size: int = 500) -> None:
        threat = threat or Threat()
        if threat.norm not in self.norms:
            raise AdvkitError(f"{self.name} supports norms {', '.join(self.norms)}; got {threat.norm}")
        if threat.goal not in self.goals:
            raise AdvkitError(f"{self.name} supports goals {', '.join(self.goals)}; got {threat.goal}")
        if KNOWLEDGE_LEVELS.index(threat.knowledge) > KNOWLEDGE_LEVELS.index(self.knowledge):
            raise AdvkitError(
                f"{self.name} needs {self.knowledge}-box access but the threat allows only {threat.knowledge}-box"
            )
        if batch_size <= 0:
            raise AdvkitError(f"batch size must be positive; got {batch_size}")
        self.threat = threat
        self.batch_size = batch_size

    def params(self) -> dict[str, Any]:
        """The attack's settings, as recorded in results."""
        return {}

    @abstractmethod
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
        """Attack one batch; return candidate adversarial inputs and per-row queries (or None).

        ``clean`` holds the base class's own forward pass on the clean batch; for
        white-box attacks it is differentiable, so a first gradient step can reuse it
        instead of paying for the same forward pass twice.
        """

    def clean_forward(self, handle: ModelHandle, x: Tensor) -> CleanForward:
        """The verified forward pass on a clean batch (with a graph for white-box attacks)."""
        if self.knowledge == "white":
            x_in = x.clone().requires_grad_(True)
            return CleanForward(x_in, handle.logits(x_in))
        with torch.inference_mode():
            return CleanForward(x, handle.logits(x))

    def choose_targets(self, handle: ModelHandle, x: Tensor, y: Tensor, clean_logits: Tensor, generator: torch.Generator) -> Tensor:
        """Targets when the goal is targeted and none are given: a random other class."""
        offset = torch.randint(1, handle.num_classes, y.shape, generator=generator).to(y.device)
        return (y + offset) % handle.num_classes

    def __call__(
        self,
        model: ModelHandle | nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> AttackResult:
        handle = as_handle(model)
        threat = self.threat.with_bounds(handle.bounds)
        x = check_images(x, handle.info, "images", threat.bounds)
        y = check_labels(y, x.shape[0], handle.num_classes)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        x, y = handle.to_device(x), handle.to_device(y)
        if threat.goal != "targeted" and target is not None:
            raise AdvkitError(f"targets were given but the goal is {threat.goal}; use goal=targeted")
        if target is not None:
            target = handle.to_device(check_labels(target, x.shape[0], handle.num_classes, "targets"))
        start = time.perf_counter()
        clean_logits = torch.empty(x.shape[0], handle.num_classes, device=x.device)
        targets = torch.empty_like(y) if threat.goal == "targeted" else None
        x_adv = torch.empty_like(x)
        queries: Tensor | None = None
        with handle.eval_mode():
            for first in range(0, x.shape[0], self.batch_size):
                rows = slice(first, first + self.batch_size)
                xb, yb = x[rows], y[rows]
                clean_forward = self.clean_forward(handle, xb)
                clean_logits[rows] = clean_forward.logits.detach()
                tb = None
                if targets is not None:
                    tb = target[rows] if target is not None else self.choose_targets(handle, xb, yb, clean_logits[rows], generator)
                    if bool((tb == yb).any()):
                        row = first + int((tb == yb).nonzero()[0])
                        raise AdvkitError(f"targets: row {row} targets its own true class {int(y[row])}")
                    targets[rows] = tb
                view = handle.view(self.knowledge)  # type: ignore[arg-type]
                candidate, q = self.run(view, xb, yb, tb, threat, generator, clean_forward)
                x_adv[rows] = project(candidate.detach().to(x.device), xb, threat)
                del clean_forward
                if q is not None:
                    queries = torch.zeros(x.shape[0], dtype=torch.long) if queries is None else queries
                    queries[rows] = q.cpu()
                if progress is not None:
                    progress(self.name, min(first + self.batch_size, x.shape[0]), x.shape[0])
            # Each row counts its worst case: the clean input is a candidate too.
            clean_success = goal_reached(clean_logits, y, targets, threat)
            x_adv[clean_success] = x[clean_success]
            if queries is not None:
                queries[clean_success.cpu()] = 0
            adv_logits = handle.predict_logits(x_adv, self.batch_size)
        seconds = time.perf_counter() - start
        success = goal_reached(adv_logits, y, targets, threat)
        result = AttackResult(
            attack=self.name,
            threat=threat,
            x_adv=x_adv,
            y=y,
            clean_pred=clean_logits.argmax(1),
            adv_pred=adv_logits.argmax(1),
            success=success,
            perturbation=perturbation_norms(x_adv - x, threat.norm),
            seconds=seconds,
            num_classes=handle.num_classes,
            target=targets,
            queries=queries,
            params=self.params(),
        )
        if threat.goal == "confidence":
            result.clean_true_prob = torch.softmax(clean_logits, 1).gather(1, y[:, None]).squeeze(1)
            result.adv_true_prob = torch.softmax(adv_logits, 1).gather(1, y[:, None]).squeeze(1)
        return result


def as_handle(model: ModelHandle | nn.Module) -> ModelHandle:
    """Accept a handle, or a bare module that must already carry ``advkit_info``."""
    if isinstance(model, ModelHandle):
        return model
    raise AdvkitError(
        "attacks take an advkit ModelHandle: wrap the network with ModelHandle(net, ModelInfo(input_shape=..., num_classes=...))"
    )
