"""The model as an attacker sees it: a knowledge-restricted, query-counting view.

A view exposes only what the attacker's knowledge allows (gradients, scores or labels),
counts every row it is asked about, per original row, and refuses queries past its
budget before evaluating anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advkit.core.threat import KNOWLEDGE_LEVELS, Knowledge, lower_choice
from advkit.errors import AdvkitError, KnowledgeError, QueryBudgetExceeded

if TYPE_CHECKING:
    from advkit.core.handle import ModelHandle

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
    ) -> None:
        self._handle = handle
        self.knowledge: Knowledge = lower_choice(knowledge, KNOWLEDGE_LEVELS, "knowledge")  # type: ignore[assignment]
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
            if rows.device != self.device or rows.dtype != torch.long:
                rows = rows.to(self.device, torch.long)
            if rows.dim() != 1:
                rows = rows.reshape(-1)
            if rows.numel() != m:
                raise AdvkitError(f"a query names {rows.numel()} rows for {m} points; give one row per point")
        asked = None
        if self.row_queries is not None and m:
            try:  # bincount refuses negative rows; its length says the largest row
                asked = torch.bincount(rows, minlength=self.row_queries.numel())
            except RuntimeError:
                if int(rows.min()) < 0:
                    raise AdvkitError("query rows must be >= 0") from None
                raise
        elif m and rows.numel() and int(rows.min()) < 0:
            raise AdvkitError("query rows must be >= 0")
        total = self.total_left()
        if total is not None and m > total:
            raise QueryBudgetExceeded(
                f"query budget spent: this view may make {self.max_total} queries in all, has made {self.queries} and was asked for {m} more"
            )
        if asked is not None:
            assert self.row_queries is not None
            top = asked.numel()
            if top > self.row_queries.numel():
                if self._fixed_rows:
                    raise AdvkitError(f"query names row {top - 1} but this view counts {self.row_queries.numel()} rows")
                grown = torch.zeros(top, dtype=torch.long, device=self.device)
                grown[: self.row_queries.numel()] = self.row_queries
                self.row_queries = grown
            self.row_queries += asked
            if self.max_queries is not None and int(self.row_queries.max()) > self.max_queries:
                self.row_queries -= asked  # refused: the call costs nothing
                over = self.row_queries + asked > self.max_queries
                row = int(over.nonzero()[0])
                raise QueryBudgetExceeded(
                    f"query budget spent: row {row} has made {int(self.row_queries[row])} of its "
                    f"{self.max_queries} queries and was asked for {int(asked[row])} more"
                )
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
            if self._observer is not None:
                self._observer(x.detach() if x.requires_grad else x, out, rows)
            return torch.softmax(out, dim=1)

    def labels(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Top-1 labels (any knowledge level)."""
        rows = self._charge(x, rows)
        with torch.inference_mode():
            out = self._handle.logits(x)
            if self._observer is not None:
                self._observer(x.detach() if x.requires_grad else x, out, rows)
            return out.argmax(1)

    def _require(self, level: Knowledge, what: str) -> None:
        if KNOWLEDGE_LEVELS.index(self.knowledge) > KNOWLEDGE_LEVELS.index(level):
            raise KnowledgeError(
                f"{what} needs {level}-box access, but this attacker has {self.knowledge}-box knowledge"
            )

