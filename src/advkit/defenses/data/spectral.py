"""Spectral signatures: rows with a large projection on a class's top singular vector.

Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018 (Algorithm 1).
Per class (the rows' training labels): centre the representations (``features`` by
default, the inputs of the model's first ``nn.Linear``; or ``linear``), take the top right
singular vector ``v`` of the centred matrix, score each row by ``((r - mean) . v)^2``
and remove the ``ceil(1.5 * eps * n_class)`` rows with the highest scores, ``eps`` being
the expected poisoned share of the class. The paper's experiments put 5% and 10% of
the target class's size in poison (``eps`` relative to that class); ART's default is 0.33.

``classes="all"`` with ``expected_rate=eps`` is the paper's algorithm as written: every
class loses ``1.5 * eps`` of its rows, poisoned or not, so on a set where one class holds
the poison the clean classes pay for it (ART's defaults reached F1 0.29 on a 10% BadNets
digits set). Two further problems decide the default:

- A fixed ``eps`` is rarely right: an all-to-one attack on 10% of a set of ten balanced
  classes makes about *half* of the target class poison, not 10%.
- At half, the squared score cannot tell poison from clean: the two groups sit at
  ``+-|mean difference| / 2`` along ``v``, equally far from the class mean.

The default (``classes="judged"``, ``expected_rate=None``) therefore cleans only the
classes whose spectrum shows a signature, and measures its size: the class's rows are
split in two along ``v`` (the exact best 1-D 2-means split of the projections), and a
side is the poison when it passes the cross-class test the scanners share
(:func:`advkit.defenses.data.scanning.mix_distance`: its rows look like the other
classes in their proportions). The rows are then ranked by their projection towards
that side and the top ``ceil(1.5 * share * n_class)`` removed, ``share`` the side's
share of the class, or ``expected_rate`` when it is given. The 1.5 is the paper's
margin: the poison side plus half as many rows next to it. Classes without a
signature keep every row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.core import ModelHandle
from advkit.defenses.data.scanning import (
    MIN_CLASS_ROWS,
    MIX_THRESHOLD,
    ClassMix,
    ScanResult,
    check_fraction,
    check_layer,
    check_rows,
    class_rows,
    finish,
    representations,
    top_components,
)
from advkit.errors import AdvkitError
from advkit.registry import register

CLASS_CHOICES = ("judged", "all")


def spectral_scores(reps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed projections on the top singular vector, its singular values, and the vector."""
    centred = reps - reps.mean(0)
    values, vt = top_components(centred, 1)
    return centred @ vt[0], values, vt[0]


def best_split(projections: Tensor) -> Tensor:
    """Bool mask of the rows above the exact 1-D 2-means threshold of ``projections``."""
    ordered, order = torch.sort(projections)
    n = ordered.numel()
    sums, squares = torch.cumsum(ordered, 0), torch.cumsum(ordered**2, 0)
    left = torch.arange(1, n, dtype=ordered.dtype)
    within_left = squares[:-1] - sums[:-1] ** 2 / left
    within_right = (squares[-1] - squares[:-1]) - (sums[-1] - sums[:-1]) ** 2 / (n - left)
    cut = int(torch.argmin(within_left + within_right)) + 1  # rows order[cut:] are above
    above = torch.zeros(n, dtype=torch.bool)
    above[order[cut:]] = True
    return above


def removal_count(rate: float, multiplier: float, rows: int) -> int:
    return min(rows, math.ceil(multiplier * rate * rows - 1e-9))


@register(
    "spectral-signatures",
    family="defense",
    knowledge="white",
    paper="Tran, Li, Madry. Spectral Signatures in Backdoor Attacks. NeurIPS 2018",
    atlas="AML.M0007",
    summary="per class, remove the rows projecting furthest on the top singular vector of the representations",
)
@dataclass(frozen=True)
class SpectralSignatures:
    """Scan training rows for spectral signatures (see the module for the defaults)."""

    layer: str = "features"
    expected_rate: float | None = None
    multiplier: float = 1.5
    classes: str = "judged"
    mix_threshold: float = MIX_THRESHOLD
    batch_size: int = 512

    name = "spectral-signatures"

    def __post_init__(self) -> None:
        where = self.name
        check_layer(self.layer, where)
        if self.expected_rate is not None:
            check_fraction(self.expected_rate, "expected_rate (the expected poisoned share of a class)", where, high=0.5)
        if self.classes not in CLASS_CHOICES:
            raise AdvkitError(f"{where}: classes must be one of {', '.join(CLASS_CHOICES)}; got {self.classes!r}")
        if self.classes == "all" and self.expected_rate is None:
            raise AdvkitError(f"{where}: classes='all' (the paper's rule on every class) needs an expected_rate")
        check_fraction(self.multiplier, "multiplier", where, high=10.0)
        check_fraction(self.mix_threshold, "mix_threshold", where)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise AdvkitError(f"{where}: batch_size must be a positive integer; got {self.batch_size!r}")

    def __call__(self, model: ModelHandle, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> ScanResult:
        """Scan ``(x, y)``; ``generator`` is accepted for a uniform scanner call (nothing here is random)."""
        start = time.perf_counter()
        x, y = check_rows(model, x, y, self.name)
        classes = class_rows(y, model.num_classes, MIN_CLASS_ROWS, self.name)
        reps = representations(model, x, self.layer, self.batch_size)
        mix = ClassMix(reps, y, model.num_classes) if self.classes == "judged" else None
        flagged = torch.zeros(x.shape[0], dtype=torch.bool)
        scores = torch.zeros(x.shape[0], dtype=torch.float64)
        per_class = []
        for c, rows in classes:
            projections, values, _ = spectral_scores(reps[rows])
            scores[rows] = projections**2
            row: dict[str, Any] = {
                "class": c,
                "rows": int(rows.numel()),
                "top_singular_value": float(values[0]),
                "top_variance_share": float(values[0] ** 2 / (values**2).sum().clamp_min(1e-300)),
            }
            ranking, rate = self._ranking(projections, rows, c, mix, row)
            count = removal_count(rate, self.multiplier, int(rows.numel())) if rate else 0
            chosen = torch.argsort(ranking, descending=True, stable=True)[:count]
            flagged[rows[chosen]] = True
            row["flagged"] = count
            row["rate_used"] = rate
            row["score_threshold"] = float(ranking[chosen].min()) if count else None
            per_class.append(row)
        details = {"layer": self.layer, "expected_rate": self.expected_rate, "multiplier": self.multiplier, "classes": self.classes}
        return finish(self.name, x.shape[0], flagged, per_class, time.perf_counter() - start, details=details, scores=scores)

    def _ranking(self, projections: Tensor, rows: Tensor, c: int, mix: ClassMix | None, row: dict[str, Any]) -> tuple[Tensor, float]:
        """The score to rank a class's rows by and the poisoned share to remove (0: none)."""
        if mix is None:  # the paper: squared projections, the fixed expected rate
            return projections**2, float(self.expected_rate or 0.0)
        above = best_split(projections)
        sides = [above, ~above]
        distances = [mix.distance(rows[side], c) for side in sides]
        row["side_rows"] = [int(side.sum()) for side in sides]
        row["mix_distances"] = distances
        poison = min((0, 1), key=lambda k: distances[k])
        row["poisoned"] = distances[poison] <= self.mix_threshold
        if not row["poisoned"]:
            return projections**2, 0.0
        toward = projections if poison == 0 else -projections
        share = float(sides[poison].sum()) / int(rows.numel())
        return toward, float(self.expected_rate) if self.expected_rate is not None else share


__all__ = ["CLASS_CHOICES", "SpectralSignatures", "best_split", "removal_count", "spectral_scores"]
