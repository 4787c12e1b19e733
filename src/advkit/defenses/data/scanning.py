"""Shared parts of the poisoned-data scanners: checked inputs, representations, results.

The scanners (:mod:`~advkit.defenses.data.activation_clustering`,
:mod:`~advkit.defenses.data.spectral`, :mod:`~advkit.defenses.data.strip`) take a model
trained on a (possibly poisoned) set and the training rows ``(x, y)`` in their order.
They never shuffle: ``flagged_rows`` are indices into the rows given.

- :func:`check_rows`: images and labels against the model (one-line ``AdvkitError``).
- :func:`class_rows`: the row indices of each class present, refusing a class with
  fewer than ``min_rows`` rows.
- :func:`representations`: per row the activations of a layer
  (:func:`advkit.defenses.backdoor.neurons.neuron_activations`; ``features``, the inputs
  of the model's first ``nn.Linear``, by default), in float64.
- :func:`mix_distance`: the cross-class test both clustering scanners share. Each row of a
  group is assigned to the nearest centroid of *another* class; the result is the total
  variation distance between the share of the group's rows each other class receives
  and that class's share of the data. A dirty-label all-to-one poison (BadNets, Blend)
  draws its rows from every other class, so in the representation (each unit scaled to
  unit variance over the rows scanned) its rows still look like those classes in their
  proportions (a small distance); a legitimate subgroup of a class, such as one writing
  style, resembles one or two look-alike classes (a large one). This is the multi-source
  form of Chen et al.'s *exclusionary reclassification* ("the poison is classified as
  its source class by a model that never saw it"), with a nearest-centroid classifier in
  place of a retrained network. A poison drawn from one source class only is not what
  it detects. The threshold, :data:`MIX_THRESHOLD` = 0.3, is empirical: over eight 10%
  BadNets victims (digits and mnist5k, four architectures, targets 0, 3 and 5) the
  poison's clusters measured 0.10-0.24 and every clean cluster 0.34 or more.
- :class:`ScanResult` and :func:`score_against`: flagged rows, per-class figures, time,
  and precision / recall / F1 against the known poisoned rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advkit.core import ModelHandle, check_images, check_labels
from advkit.errors import AdvkitError

LAYERS = ("features", "linear")
MIN_CLASS_ROWS = 10
MIX_THRESHOLD = 0.3


def check_rows(model: ModelHandle, x: Tensor, y: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """``x`` as float32 images the model takes and ``y`` as long labels in its classes."""
    if not isinstance(model, ModelHandle):
        raise AdvkitError(f"{where}: the model must be a ModelHandle; got {type(model).__name__}")
    x = check_images(x, model.info, f"{where} images")
    y = check_labels(y, x.shape[0], model.num_classes, f"{where} labels")
    if x.shape[0] == 0:
        raise AdvkitError(f"{where}: no rows to scan")
    return x, y


def check_layer(layer: str, where: str) -> str:
    if layer not in LAYERS:
        raise AdvkitError(f"{where}: layer must be one of {', '.join(LAYERS)}; got {layer!r}")
    return layer


def check_fraction(value: float, name: str, where: str, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a float in ``(low, high]`` (one-line error otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < float(value) <= high:
        raise AdvkitError(f"{where}: {name} must be a number in ({low:g}, {high:g}]; got {value!r}")
    return float(value)


def class_rows(y: Tensor, num_classes: int, min_rows: int, where: str) -> list[tuple[int, Tensor]]:
    """``(class, row indices)`` of every class present, in class order."""
    counts = torch.bincount(y, minlength=num_classes)
    out = []
    for c in range(num_classes):
        if int(counts[c]) == 0:
            continue
        if int(counts[c]) < min_rows:
            raise AdvkitError(f"{where}: class {c} has {int(counts[c])} rows; scanning a class needs at least {min_rows}")
        out.append((c, (y == c).nonzero().squeeze(1)))
    return out


def representations(model: ModelHandle, x: Tensor, layer: str, batch_size: int = 512) -> Tensor:
    """``[N, D]`` float64 activations of ``layer`` for every row, in row order."""
    from advkit.defenses.backdoor.neurons import neuron_activations

    reps = neuron_activations(model, x, layer, batch_size).to(torch.float64)
    if reps.shape[0] != x.shape[0]:
        raise AdvkitError(f"the model ran its '{layer}' layer {reps.shape[0]} times for {x.shape[0]} rows; scanning needs one pass per row")
    return reps


def seed_from(generator: torch.Generator | None) -> int:
    """An integer seed for scikit-learn drawn from ``generator`` (seed 0 when none)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def top_components(centred: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """Singular values (descending) and the top ``dims`` right singular vectors (rows) of centred data.

    From the eigen-decomposition of the smaller Gram matrix (rows x rows, or units x
    units), in float64: the same vectors as an SVD at a fraction of its cost on a class
    of a few hundred rows with thousands of units.
    """
    n, d = centred.shape
    dims = min(dims, n, d)
    if n <= d:
        values, vectors = torch.linalg.eigh(centred @ centred.T)
        values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
        singular = values.sqrt()
        vt = (centred.T @ vectors[:, :dims] / singular[:dims].clamp_min(1e-300)).T
    else:
        values, vectors = torch.linalg.eigh(centred.T @ centred)
        singular = values.flip(0).clamp_min(0.0).sqrt()
        vt = vectors.flip(1)[:, :dims].T
    # fix each vector's sign (largest-magnitude entry positive) so results never flip
    signs = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))
    return singular, vt * torch.where(signs == 0, torch.ones_like(signs), signs)


class ClassMix:
    """The cross-class test of :func:`mix_distance`, fitted once on a set's representations."""

    def __init__(self, reps: Tensor, y: Tensor, num_classes: int) -> None:
        counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
        self.present = counts > 0
        if int(self.present.sum()) < 3:
            raise AdvkitError("the cross-class test needs rows of at least 3 classes; with fewer use the paper's size analysis")
        # every unit at unit variance: raw distances are ruled by a few loud units (a backdoor
        # amplifies its trigger's), which hides the rows' content the test is about
        scale = reps.std(0)
        live = scale > 1e-12 * float(scale.max().clamp_min(1e-300))
        self.reps = torch.where(live, (reps - reps.mean(0)) / torch.where(live, scale, torch.ones_like(scale)), torch.zeros_like(reps))
        sums = torch.zeros(num_classes, reps.shape[1], dtype=torch.float64).index_add_(0, y, self.reps)
        self.centroids = sums / counts.clamp_min(1).unsqueeze(1)
        self.counts = counts

    def distance(self, rows: Tensor, own_class: int) -> float:
        """Total variation between the rows' nearest-other-class mix and those classes' share."""
        if rows.numel() == 0:
            return 1.0
        dist = torch.cdist(self.reps[rows], self.centroids)
        dist[:, ~self.present] = float("inf")
        dist[:, own_class] = float("inf")
        nearest = torch.bincount(dist.argmin(1), minlength=self.centroids.shape[0]).to(torch.float64)
        prior = self.counts.clone()
        prior[own_class] = 0
        return float(0.5 * (nearest / nearest.sum() - prior / prior.sum()).abs().sum())


def mix_distance(reps: Tensor, y: Tensor, num_classes: int, rows: Tensor, own_class: int) -> float:
    """One-off form of :class:`ClassMix`: the distance of ``rows`` of class ``own_class``."""
    return ClassMix(reps, y, num_classes).distance(rows, own_class)


def _as_rows(rows: Sequence[int] | Tensor | np.ndarray, n: int, what: str) -> set[int]:
    if isinstance(rows, Tensor | np.ndarray):
        array = np.asarray(rows.detach().cpu() if isinstance(rows, Tensor) else rows)
        if array.dtype == bool:
            if array.shape != (n,):
                raise AdvkitError(f"{what}: a mask must have one entry per row ({n}); got shape {list(array.shape)}")
            return {int(i) for i in np.flatnonzero(array)}
        rows = array.reshape(-1).tolist()
    out = set()
    for row in rows:
        if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= int(row) < n:
            raise AdvkitError(f"{what}: row {row!r} is not an index into the {n} rows scanned")
        out.add(int(row))
    return out


def score_against(flagged_rows: Sequence[int] | Tensor, poisoned_rows: Sequence[int] | Tensor, n: int) -> dict[str, float | None]:
    """Precision, recall and F1 of ``flagged_rows`` against the known ``poisoned_rows`` of ``n`` rows.

    Either argument may be indices or a bool mask. Precision is ``None`` when nothing is
    flagged, recall and F1 are ``None`` when nothing is poisoned (undefined, not perfect).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise AdvkitError(f"score_against: n must be the number of rows scanned; got {n!r}")
    flagged = _as_rows(flagged_rows, n, "flagged rows")
    truth = _as_rows(poisoned_rows, n, "poisoned rows")
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else None
    recall = hits / len(truth) if truth else None
    if recall is None:
        f1 = None
    elif hits == 0:
        f1 = 0.0
    else:
        f1 = 2 * hits / (len(flagged) + len(truth))
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass
class ScanResult:
    """What a scanner flagged among ``n`` training rows.

    ``flagged_rows``: sorted indices into the rows given; ``per_class``: one dict per
    class present (``class``, ``rows``, ``flagged`` and the scanner's own figures);
    ``scores``: the scanner's per-row score where it has one (not part of the JSON).
    """

    method: str
    n: int
    flagged_rows: list[int]
    per_class: list[dict[str, Any]]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    scores: Tensor | None = None

    @property
    def flagged(self) -> Tensor:
        """The flagged rows as a bool mask ``[n]``."""
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[torch.tensor(self.flagged_rows, dtype=torch.long)] = True
        return mask

    def score(self, poisoned_rows: Sequence[int] | Tensor) -> dict[str, float | None]:
        return score_against(self.flagged_rows, poisoned_rows, self.n)

    def to_dict(self, poisoned_rows: Sequence[int] | Tensor | None = None) -> dict[str, Any]:
        """The JSON of a scan: ``method``, ``flagged_rows``, ``per_class``, ``seconds`` (and,
        given the known poisoned rows, ``precision``, ``recall``, ``f1``)."""
        out: dict[str, Any] = {
            "method": self.method,
            "flagged_rows": list(self.flagged_rows),
            "per_class": [dict(row) for row in self.per_class],
            "seconds": self.seconds,
        }
        if poisoned_rows is not None:
            out.update(self.score(poisoned_rows))
        return out


def finish(method: str, n: int, flagged: Tensor, per_class: list[dict[str, Any]], seconds: float, **extra: Any) -> ScanResult:
    """A :class:`ScanResult` from a bool mask of flagged rows."""
    rows = [int(i) for i in flagged.nonzero().squeeze(1).tolist()]
    return ScanResult(method, n, rows, per_class, seconds, **extra)


__all__ = [
    "LAYERS",
    "MIN_CLASS_ROWS",
    "MIX_THRESHOLD",
    "ClassMix",
    "ScanResult",
    "check_fraction",
    "check_layer",
    "check_rows",
    "class_rows",
    "finish",
    "mix_distance",
    "representations",
    "score_against",
    "seed_from",
    "top_components",
]
