"""Core types: the threat model, the model handle and the attack result.

The threat model follows the taxonomy of Papernot et al., "The Limitations of Deep
Learning in Adversarial Settings" (EuroS&P 2016): the attacker's *goal* (confidence
reduction, untargeted or targeted misclassification) and *knowledge* (gradients, scores,
labels only), plus the perturbation *norm* and *budget* of Madry et al. (ICLR 2018).

The model handle owns everything users get wrong in peer libraries: input
normalization (mean/std applied inside forward, so budgets and bounds are in pixel
space), train/eval mode (forced to eval while evaluating, the caller's mode restored),
the device, and the attacker's knowledge level (a view that exposes only gradients,
scores or labels, counts every row it is asked about, per original row, and refuses
queries past its budget).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from advkit.errors import AdvkitError, KnowledgeError, QueryBudgetExceeded

Norm = Literal["linf", "l2", "l0"]
Goal = Literal["untargeted", "targeted", "confidence"]
Knowledge = Literal["white", "score", "label"]

NORMS: tuple[str, ...] = ("linf", "l2", "l0")
GOALS: tuple[str, ...] = ("untargeted", "targeted", "confidence")
KNOWLEDGE_LEVELS: tuple[str, ...] = ("white", "score", "label")  # most to least access


def _lower_choice(value: str, choices: Sequence[str], what: str) -> str:
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
        object.__setattr__(self, "norm", _lower_choice(self.norm, NORMS, "norm"))
        object.__setattr__(self, "goal", _lower_choice(self.goal, GOALS, "goal"))
        object.__setattr__(
            self, "knowledge", _lower_choice(self.knowledge, KNOWLEDGE_LEVELS, "knowledge")
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


class NormalizedModel(nn.Module):
    """A classifier with its input normalization inside: ``net((x - mean) / std)``."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.net = net
        self.normalizes = mean is not None or std is not None
        channels = len(mean if mean is not None else (std or [1.0]))
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0] * channels)
        std_t = torch.tensor(list(std) if std is not None else [1.0] * channels)
        if (std_t <= 0).any():
            raise AdvkitError(f"normalization std must be > 0; got {list(std_t.tolist())}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.normalizes:
            x = (x - self.mean) / self.std
        return self.net(x)


@dataclass
class ModelInfo:
    """What a model expects and means: shapes, classes, pixel range, normalization."""

    input_shape: tuple[int, int, int]
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else [str(i) for i in range(self.num_classes)]


class ModelHandle:
    """A classifier as attacks and metrics see it.

    Owns normalization, device and mode: every evaluation runs in ``eval()`` and puts
    back the caller's mode afterwards. ``view(knowledge)`` gives the restricted,
    query-counting face an attack works through.
    """

    def __init__(self, net: nn.Module, info: ModelInfo, device: str | torch.device | None = None):
        self.info = info
        self.device = torch.device(device) if device is not None else _module_device(net)
        self.network = NormalizedModel(net, info.mean, info.std).to(self.device)
        self._eval_depth = 0

    # -- description -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    @property
    def bounds(self) -> tuple[float, float]:
        return self.info.bounds

    @property
    def net(self) -> nn.Module:
        """The user's network without the normalization wrapper."""
        return self.network.net

    # -- mode ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Evaluate in ``eval()`` mode; the caller's train/eval state is restored after."""
        if self._eval_depth:
            self._eval_depth += 1
            try:
                yield
            finally:
                self._eval_depth -= 1
            return
        modes = [(m, m.training) for m in self.network.modules()]
        self.network.eval()
        self._eval_depth = 1
        try:
            yield
        finally:
            self._eval_depth = 0
            for module, mode in modes:
                module.training = mode

    # -- evaluation ----------------------------------------------------------------------
    def to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, non_blocking=True)

    def logits(self, x: Tensor) -> Tensor:
        """Logits of a batch in eval mode; differentiable when grad mode is on."""
        with self.eval_mode():
            return self.network(self.to_device(x))

    def predict_logits(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Logits of any number of rows, batched, without gradients."""
        outs = []
        with torch.inference_mode(), self.eval_mode():
            for start in range(0, x.shape[0], batch_size):
                outs.append(self.network(self.to_device(x[start : start + batch_size])))
        if not outs:
            return torch.empty(0, self.num_classes, device=self.device)
        return torch.cat(outs)

    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Top-1 labels of any number of rows."""
        return self.predict_logits(x, batch_size).argmax(1)

    def view(
        self,
        knowledge: Knowledge,
        max_queries: int | None = None,
        *,
        rows: int | None = None,
        max_total: int | None = None,
        observer: Observer | None = None,
    ) -> ModelView:
        """A fresh query-counting view at the given knowledge level (see :class:`ModelView`)."""
        return ModelView(self, knowledge, max_queries, rows=rows, max_total=max_total, observer=observer)


# Called by a view after each answered query with (points, their logits, their rows); the
# attack base class uses it to see every point an attack queried (never handed to attacks).
Observer = Callable[[Tensor, Tensor, Tensor], None]

UNLIMITED = 2**62  # what ``budget_left`` reports for a view without a budget


class ModelView:
    """The model as an attacker with a given knowledge level sees it, and its query budget.

    ``white`` gives differentiable logits, ``score`` gives probabilities with no
    gradient path, ``label`` gives top-1 labels only. Asking for more raises
    :class:`KnowledgeError`. ``queries`` counts every point evaluated (calls x points).

    Per-row budget: an attack works on a batch of original rows and queries candidates
    derived from them. Each query names, with ``rows=``, the original row each queried
    point belongs to (one index per point; ``None`` means point ``i`` belongs to row
    ``i``). The view keeps a counter per row (``row_queries``) and refuses, with
    :class:`QueryBudgetExceeded` and before evaluating anything, a call that would take a
    row past ``max_queries``. ``max_total`` caps the sum over all rows (model theft).
    Attacks ask :meth:`budget_left` which rows may still query; the counts reported in
    results are the view's, never the attack's own arithmetic. Per-row counting is on
    when ``rows`` (the batch size) or ``max_queries`` is given; a view without ``rows``
    grows its counters to the largest row index it sees.
    """

    __slots__ = ("_handle", "knowledge", "queries", "max_queries", "max_total", "row_queries", "_fixed_rows", "_observer")

    def __init__(
        self,
        handle: ModelHandle,
        knowledge: Knowledge,
        max_queries: int | None = None,
        *,
        rows: int | None = None,
        max_total: int | None = None,
        observer: Observer | None = None,
    ):
        self._handle = handle
        self.knowledge: Knowledge = _lower_choice(knowledge, KNOWLEDGE_LEVELS, "knowledge")  # type: ignore[assignment]
        for name, value in (("max_queries", max_queries), ("max_total", max_total), ("rows", rows)):
            if value is not None and (int(value) != value or value < 0):
                raise AdvkitError(f"view {name} must be a whole number >= 0; got {value!r}")
        self.max_queries = None if max_queries is None else int(max_queries)
        self.max_total = None if max_total is None else int(max_total)
        self.queries = 0
        self._fixed_rows = rows is not None
        counting = rows is not None or max_queries is not None
        self.row_queries: Tensor | None = torch.zeros(int(rows or 0), dtype=torch.long, device=handle.device) if counting else None
        self._observer = observer

    @property
    def num_classes(self) -> int:
        return self._handle.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._handle.input_shape

    @property
    def device(self) -> torch.device:
        return self._handle.device

    # -- budget ---------------------------------------------------------------------------
    def budget_left(self, rows: Tensor | None = None) -> Tensor:
        """Queries each row may still make (``UNLIMITED`` without a per-row budget), capped by
        what the total budget leaves; ``rows`` picks rows (default: every counted row)."""
        counts = self.row_queries if self.row_queries is not None else torch.zeros(0, dtype=torch.long, device=self.device)
        if rows is not None:
            rows = rows.to(self.device, torch.long)
            used = torch.zeros(rows.shape, dtype=torch.long, device=self.device)
            known = rows < counts.numel()
            used[known] = counts[rows[known]]
        else:
            used = counts
        left = (self.max_queries - used) if self.max_queries is not None else torch.full_like(used, UNLIMITED)
        total = self.total_left()
        return left.clamp(max=total) if total is not None else left

    def total_left(self) -> int | None:
        """Queries the whole view may still make, or ``None`` without a total budget."""
        return None if self.max_total is None else self.max_total - self.queries

    def _charge(self, x: Tensor, rows: Tensor | None) -> Tensor:
        """Check the budget for a call on ``x`` and count it; returns the rows charged."""
        m = int(x.shape[0])
        if rows is None:
            rows = torch.arange(m, device=self.device)
        else:
            rows = rows.to(self.device, torch.long).reshape(-1)
            if rows.numel() != m:
                raise AdvkitError(f"a query names {rows.numel()} rows for {m} points; give one row per point")
            if m and int(rows.min()) < 0:
                raise AdvkitError("query rows must be >= 0")
        total = self.total_left()
        if total is not None and m > total:
            raise QueryBudgetExceeded(
                f"query budget spent: this view may make {self.max_total} queries in all, has made {self.queries} and was asked for {m} more"
            )
        if self.row_queries is not None and m:
            top = int(rows.max()) + 1
            if top > self.row_queries.numel():
                if self._fixed_rows:
                    raise AdvkitError(f"query names row {top - 1} but this view counts {self.row_queries.numel()} rows")
                grown = torch.zeros(top, dtype=torch.long, device=self.device)
                grown[: self.row_queries.numel()] = self.row_queries
                self.row_queries = grown
            asked = torch.bincount(rows, minlength=self.row_queries.numel())
            if self.max_queries is not None:
                over = self.row_queries + asked > self.max_queries
                if bool(over.any()):
                    row = int(over.nonzero()[0])
                    raise QueryBudgetExceeded(
                        f"query budget spent: row {row} has made {int(self.row_queries[row])} of its "
                        f"{self.max_queries} queries and was asked for {int(asked[row])} more"
                    )
            self.row_queries += asked
        self.queries += m
        return rows

    def _observe(self, x: Tensor, logits: Tensor, rows: Tensor) -> None:
        if self._observer is not None:
            with torch.inference_mode():
                self._observer(x.detach(), logits.detach(), rows)

    # -- queries ----------------------------------------------------------------------------
    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Differentiable logits (white-box only)."""
        self._require("white", "reading logits and gradients")
        rows = self._charge(x, rows)
        out = self._handle.logits(x)
        self._observe(x, out, rows)
        return out

    def probs(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Class probabilities with no gradient path (score-box or more)."""
        self._require("score", "reading class scores")
        rows = self._charge(x, rows)
        with torch.inference_mode():
            out = self._handle.logits(x)
            self._observe(x, out, rows)
            return torch.softmax(out, dim=1)

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Top-1 labels (any knowledge level)."""
        rows = self._charge(x, rows)
        with torch.inference_mode():
            out = self._handle.logits(x)
            self._observe(x, out, rows)
            return out.argmax(1)

    def _require(self, level: Knowledge, what: str) -> None:
        if KNOWLEDGE_LEVELS.index(self.knowledge) > KNOWLEDGE_LEVELS.index(level):
            raise KnowledgeError(
                f"{what} needs {level}-box access, but this attacker has {self.knowledge}-box knowledge"
            )


def _module_device(net: nn.Module) -> torch.device:
    for tensor in list(net.parameters()) + list(net.buffers()):
        return tensor.device
    return torch.device("cpu")


# -- input validation --------------------------------------------------------------------


def check_images(x: Tensor, info: ModelInfo, where: str = "input", bounds: tuple[float, float] | None = None) -> Tensor:
    """Check a batch against what the model expects; return it as float32.

    Raises one-line :class:`AdvkitError` for wrong rank or shape, non-finite pixels
    (naming the first bad row) and values outside the bounds.
    """
    if not isinstance(x, Tensor):
        raise AdvkitError(f"{where}: images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise AdvkitError(f"{where}: images must be [N, C, H, W]; got shape {list(x.shape)}")
    if tuple(x.shape[1:]) != tuple(info.input_shape):
        raise AdvkitError(
            f"{where}: images have shape {list(x.shape[1:])} per row but the model expects "
            f"{list(info.input_shape)}"
        )
    if not x.is_floating_point():
        raise AdvkitError(f"{where}: images must be floating point in the model's bounds; got {x.dtype}")
    x = x.float()
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise AdvkitError(f"{where}: row {row} has NaN or infinite pixels")
    lo, hi = bounds if bounds is not None else info.bounds
    tol = 1e-5 * (hi - lo)
    if x.numel() and (float(x.min()) < lo - tol or float(x.max()) > hi + tol):
        raise AdvkitError(
            f"{where}: pixel values span [{float(x.min()):.4g}, {float(x.max()):.4g}] "
            f"outside the bounds [{lo:g}, {hi:g}]"
        )
    return x


def check_labels(y: Tensor, n: int, num_classes: int, where: str = "labels") -> Tensor:
    """Check integer labels: one per row, each in ``[0, num_classes)``."""
    if not isinstance(y, Tensor):
        raise AdvkitError(f"{where}: must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise AdvkitError(f"{where}: expected {n} labels in a 1-D tensor; got shape {list(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise AdvkitError(f"{where}: labels must be integers; got {y.dtype}")
    y = y.long()
    if n:
        bad = (y < 0) | (y >= num_classes)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise AdvkitError(
                f"{where}: row {row} has label {int(y[row])}, outside the model's classes 0..{num_classes - 1}"
            )
    return y


# -- results -----------------------------------------------------------------------------


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
