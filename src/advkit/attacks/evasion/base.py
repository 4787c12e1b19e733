"""The evasion-attack base class: validate, run, project, verify (DESIGN.md principles 2, 3).

An attack object holds only its settings; the model comes at call time. The base class
checks the inputs, hands the algorithm a view limited to the attack's knowledge — and,
for black-box attacks, holding the per-row query budget and counting every query per
original row — plus only the clean information that knowledge allows (logits with a
graph for white-box attacks, probabilities for score attacks, labels for label-only
ones). It then settles each row's answer: a non-finite candidate falls back to the clean
input; a candidate the final projection moves, or one the attack never queried, is
queried through the view when the row's budget allows and otherwise falls back to the
best goal-reaching point the attack did query (else the clean input). Rows where the
clean input already reaches the goal keep it (each row counts its worst case), unless
``keep_clean_successes`` is off (transfer attacks craft on every row). Success is
re-checked on the model itself and query counts come from the view, so no attack can
report a success it did not reach or a query count it did not pay. Design after foolbox
3 (Rauber et al., JOSS 2020).
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Union

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
from advkit.core.memory import rows_that_fit
from advkit.errors import AdvkitError
from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.verify import QueryLog, goal_reached, project
from advkit.metrics import perturbation_norms

Progress = Callable[[str, int, int], None]


@dataclass
class CleanForward:
    """White-box attacks' clean information: the base class's forward pass (inputs with a
    graph, and their logits), reusable for a first gradient step."""

    x: Tensor
    logits: Tensor


@dataclass
class CleanScores:
    """Score attacks' clean information: class probabilities and top-1 labels, no logits."""

    x: Tensor
    probs: Tensor
    labels: Tensor


@dataclass
class CleanLabels:
    """Label-only attacks' clean information: top-1 labels only."""

    x: Tensor
    labels: Tensor


Clean = Union[CleanForward, CleanScores, CleanLabels]


def clean_info(x: Tensor, logits: Tensor, knowledge: str) -> Clean:
    """What an attacker of ``knowledge`` may know about the clean batch (no graph below white)."""
    if knowledge == "white":
        return CleanForward(x, logits)
    labels = logits.detach().argmax(1)
    if knowledge == "score":
        return CleanScores(x, torch.softmax(logits.detach(), 1), labels)
    return CleanLabels(x, labels)


class EvasionAttack(ABC):
    """Base of every test-time attack: ``attack(model, x, y, target=, generator=)``.

    Subclasses set ``name``, ``knowledge`` (what the algorithm needs), ``norms`` and
    ``goals`` they support, and implement :meth:`run` on one batch through a view. A
    black-box attack's ``max_queries`` (see :meth:`query_budget`) becomes its view's
    per-row budget. ``keep_clean_successes`` (default on): a row whose clean input already
    reaches the goal answers with it; :meth:`on_every_row` gives a copy that answers with
    its own candidate on every row.
    """

    name: ClassVar[str]
    knowledge: ClassVar[str] = "white"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    goals: ClassVar[tuple[str, ...]] = ("untargeted", "targeted", "confidence")
    keep_clean_successes: bool = True

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

    def params_for(self, threat: Threat) -> dict[str, Any]:
        """The settings as they apply to ``threat`` with its bounds resolved (default: :meth:`params`)."""
        return self.params()

    def query_budget(self) -> int | None:
        """Queries allowed per row (``max_queries`` of black-box attacks); ``None``: no budget."""
        budget = getattr(self, "max_queries", None)
        return None if self.knowledge == "white" or budget is None else int(budget)

    def on_every_row(self) -> EvasionAttack:
        """A copy that answers with its own (verified) candidate on every row, even where
        the clean input already reaches the goal: a transfer attack crafts on every row."""
        twin = copy.copy(self)
        twin.keep_clean_successes = False
        return twin

    @abstractmethod
    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: Clean,
    ) -> Tensor | tuple[Tensor, Any]:
        """Attack one batch; return candidate adversarial inputs, one per row.

        ``model`` is the view: a black-box attack passes ``rows=`` (the batch row each
        queried point belongs to) with each query and stops querying a row once
        ``model.budget_left(rows)`` is spent; the view counts and enforces. Return points
        the attack queried (the base class queries any other, budget permitting). ``clean``
        is what the attack's knowledge allows about the clean batch: :class:`CleanForward`
        (white-box: a differentiable forward pass a first gradient step can reuse),
        :class:`CleanScores` or :class:`CleanLabels`. A ``(candidates, anything)`` tuple is
        accepted too; its second element is ignored (the counts are the view's). Every
        random draw comes from ``random`` (one stream per row, keyed by the row's id), so a
        row's attack does not depend on the other rows of its batch.
        """

    def clean_forward(self, handle: ModelHandle, x: Tensor) -> CleanForward:
        """The differentiable forward pass on a clean batch (white-box attacks)."""
        x_in = x.clone().requires_grad_(True)
        return CleanForward(x_in, handle.logits(x_in))

    def choose_targets(self, handle: ModelHandle, x: Tensor, y: Tensor, clean_logits: Tensor, random: RowRandom) -> Tensor:
        """Targets when the goal is targeted and none are given: a random other class."""
        offset = random.randint("targets", 1, handle.num_classes).to(y.device)
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
        rows: Tensor | None = None,
    ) -> AttackResult:
        """Attack every row; ``rows`` are their ids in the caller's data (default ``0..n-1``).

        A row's random draws are keyed by its id and one draw of ``generator``, so the same
        row with the same seed gets the same attack whatever else is in the call.
        """
        handle, threat, x, y, target, generator = self.prepare(model, x, y, target, generator)
        random = self.row_random(generator, rows, x)
        black_box = self.knowledge != "white"
        start = time.perf_counter()
        clean_logits = torch.empty(x.shape[0], handle.num_classes, device=x.device)
        targets = torch.empty_like(y) if threat.goal == "targeted" else None
        x_adv = torch.empty_like(x)
        queries = torch.zeros(x.shape[0], dtype=torch.long) if black_box else None
        # the memory cap (core.memory) may split a white-box batch further; every draw is keyed by the row, so the numbers stay
        batch_size = self.batch_size if black_box else rows_that_fit(handle, self.batch_size, what=self.name)
        with handle.eval_mode():
            for first in range(0, x.shape[0], batch_size):
                batch = slice(first, first + batch_size)
                xb, yb = x[batch], y[batch]
                if black_box:
                    with torch.inference_mode():
                        logits_b = handle.logits(xb)
                    clean: Clean = clean_info(xb, logits_b, self.knowledge)
                else:
                    clean = self.clean_forward(handle, xb)
                    logits_b = clean.logits.detach()
                clean_logits[batch] = logits_b
                tb = None
                if targets is not None:
                    tb = target[batch] if target is not None else self.choose_targets(handle, xb, yb, clean_logits[batch], random[batch])
                    if bool((tb == yb).any()):
                        row = first + int((tb == yb).nonzero()[0])
                        raise AdvkitError(f"targets: row {row} targets its own true class {int(y[row])}")
                    targets[batch] = tb
                log = QueryLog(xb, yb, tb, threat) if black_box else None
                view = handle.view(
                    self.knowledge,  # type: ignore[arg-type]
                    self.query_budget(),
                    rows=xb.shape[0] if black_box else None,
                    observer=log,
                )
                out = self.run(view, xb, yb, tb, threat, random[batch], clean)
                candidate = out[0] if isinstance(out, tuple) else out
                del clean
                x_adv[batch] = self._settle(handle, view, log, candidate, xb, yb, tb, threat)
                if queries is not None:
                    assert view.row_queries is not None
                    queries[batch] = view.row_queries.cpu()
                if progress is not None:
                    progress(self.name, min(first + batch_size, x.shape[0]), x.shape[0])
            if handle.precision != "fp32":  # the attack ran in reduced precision; every verdict is taken in float32
                clean_logits = handle.predict_logits(x, self.batch_size)
            clean_success = goal_reached(clean_logits, y, targets, threat)
            if self.keep_clean_successes:  # each row counts its worst case: the clean input is a candidate too
                x_adv[clean_success] = x[clean_success]
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
            params=self.params_for(threat),
        )
        if threat.goal == "confidence":
            result.clean_true_prob = torch.softmax(clean_logits, 1).gather(1, y[:, None]).squeeze(1)
            result.adv_true_prob = torch.softmax(adv_logits, 1).gather(1, y[:, None]).squeeze(1)
        return result

    @staticmethod
    def row_random(generator: torch.Generator, rows: Tensor | None, x: Tensor) -> RowRandom:
        """The per-row streams of one call: ``rows`` (default ``0..n-1``) keyed by a draw of ``generator``."""
        if rows is None:
            rows = torch.arange(x.shape[0])
        elif tuple(rows.shape) != (x.shape[0],):
            raise AdvkitError(f"rows: expected {x.shape[0]} row ids, got shape {list(rows.shape)}")
        return RowRandom.from_generator(generator, rows, x.device)

    def prepare(
        self, model: ModelHandle | nn.Module, x: Tensor, y: Tensor, target: Tensor | None, generator: torch.Generator | None
    ) -> tuple[ModelHandle, Threat, Tensor, Tensor, Tensor | None, torch.Generator]:
        """Checked inputs on the model's device: the handle, the threat with its bounds, x, y, targets, a generator."""
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
        return handle, threat, x, y, target, generator

    def _settle(
        self,
        handle: ModelHandle,
        view: ModelView,
        log: QueryLog | None,
        candidate: Tensor,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
    ) -> Tensor:
        """Each row's answer: finite, inside the threat and (black box) queried and counted."""
        if not isinstance(candidate, Tensor) or tuple(candidate.shape) != tuple(x.shape):
            got = list(candidate.shape) if isinstance(candidate, Tensor) else type(candidate).__name__
            raise AdvkitError(f"{self.name} returned candidates of shape {got} for a batch of {list(x.shape)}")
        candidate = candidate.detach().to(x.device, x.dtype)
        finite = torch.isfinite(candidate).flatten(1).all(1)
        candidate = torch.where(finite.view(-1, 1, 1, 1), candidate, x)  # a broken candidate: the clean input
        projected = project(candidate, x, threat)
        if log is None:
            return projected
        clean_rows = (candidate == x).flatten(1).all(1)
        settled = clean_rows | (log.inside(candidate, x) & log.queried(candidate))
        answer = torch.where(settled.view(-1, 1, 1, 1), candidate, projected)
        open_rows = (~settled).nonzero().squeeze(1)
        if open_rows.numel():
            affordable = view.budget_left(open_rows) >= 1
            ask = open_rows[affordable]
            if ask.numel():
                view.labels(answer[ask], rows=ask)  # counted, and seen by the log
            stuck = open_rows[~affordable]
            answer[stuck] = x[stuck]
        with torch.inference_mode():
            reached = goal_reached(handle.logits(answer), y, target, threat)
        better = ~reached & log.has_best & finite  # a queried success beats an answer that misses the goal
        answer[better] = log.best[better]
        return answer


def as_handle(model: ModelHandle | nn.Module) -> ModelHandle:
    """Accept a handle, or a bare module that must already carry ``advkit_info``."""
    if isinstance(model, ModelHandle):
        return model
    raise AdvkitError(
        "attacks take an advkit ModelHandle: wrap the network with ModelHandle(net, ModelInfo(input_shape=..., num_classes=...))"
    )
