"""Sphere and slab data sanitisation: drop training rows far from their class centroid.

Steinhardt, Koh & Liang, "Certified Defenses for Data Poisoning Attacks", NeurIPS 2017
(section 4, the *sphere* and *slab* defenses), with thresholds set as in Koh, Steinhardt &
Liang, "Stronger Data Poisoning Attacks Break Data Sanitization Defenses", Machine
Learning 2022 (arXiv 2018). Every image is flattened to a vector ``x``; ``mu_y`` is the
centroid of class ``y``.

- **sphere**: remove ``(x, y)`` when ``||x - mu_y||_2 > r_y``;
- **slab**: remove ``(x, y)`` when ``|<x - mu_y, v_y>| > s_y`` with ``v_y`` a unit vector.
  For two classes ``v_y`` is the line between the two centroids (the paper's slab). For
  ``K > 2`` it is the line from ``mu_y`` to the centroid of all rows, ``mu``:
  ``v_y = (mu_y - mu) / ||mu_y - mu||`` — for ``K = 2`` this is the paper's vector up to
  its sign, so the binary case is exactly the paper's. (Steinhardt's own multiclass
  MATLAB code uses one slab per *pair* of classes; that variant is not implemented.)

Thresholds: per class and method, the ``1 - remove`` quantile (linear interpolation, like
``numpy.percentile``) of the distances of the *reference* rows of that class, so the rule
removes about ``remove`` of each clean class per method. ``remove`` defaults to 0.05,
the largest share Koh et al.'s defense tests remove (``max_frac_to_remove = 0.05``).

Two defenders: with ``reference=(x_clean, y_clean)`` the centroids and thresholds come
from the given clean rows (the paper's *oracle* defender, "true centroids"); without it
they come from the rows being sanitised (the *data-dependent* defender, "empirical
centroids", the only one that can run on a set of unknown provenance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.errors import AdvkitError
from advkit.registry import register

METHODS = ("sphere", "slab")
DEFAULT_REMOVE = 0.05


_CHUNK = 4096  # rows per float64 pass, so a large set is never copied whole in float64


def _check_rows(x: Tensor, y: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """``x`` as ``[N, D]`` (any image shape flattened, its own float dtype), ``y`` as long ``[N]``."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise AdvkitError(f"{where}: images and labels must be torch tensors")
    if x.dim() < 2:
        raise AdvkitError(f"{where}: images must be [N, ...] with one row per image; got shape {list(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise AdvkitError(f"{where}: expected {x.shape[0]} labels in a 1-D tensor; got shape {list(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise AdvkitError(f"{where}: labels must be integers; got {y.dtype}")
    if x.shape[0] == 0:
        raise AdvkitError(f"{where}: no rows")
    if not x.is_floating_point():
        raise AdvkitError(f"{where}: images must be floating point; got {x.dtype}")
    flat = x.detach().reshape(x.shape[0], -1)
    if not bool(torch.isfinite(flat).all()):
        raise AdvkitError(f"{where}: images hold NaN or infinite pixels")
    y = y.detach().long()
    if bool((y < 0).any()):
        raise AdvkitError(f"{where}: labels must be >= 0; got {int(y.min())}")
    return flat, y


def check_methods(methods: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """The sanitisation methods as a tuple (``"sphere,slab"`` is accepted); one-line error otherwise."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(dict.fromkeys(str(m).lower() for m in methods))
    if not methods:
        raise AdvkitError(f"sanitize: name at least one method of {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AdvkitError(f"sanitize: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    return methods


def _check_remove(remove: float) -> float:
    if not 0.0 <= float(remove) < 1.0:
        raise AdvkitError(f"sanitize: remove (share of each clean class cut per method) must be in [0, 1); got {remove}")
    return float(remove)


@dataclass(frozen=True)
class SphereSlab:
    """A fitted sphere + slab defense: per class its centroid, slab direction and thresholds.

    Tensors are float64; ``present[c]`` says class ``c`` had reference rows. The feasible
    set of class ``c`` is ``{x : ||x - centroids[c]|| <= sphere_radii[c],
    |<x - centroids[c], directions[c]>| <= slab_widths[c]}``.
    """

    centroids: Tensor
    directions: Tensor
    sphere_radii: Tensor
    slab_widths: Tensor
    present: Tensor
    remove: float

    @property
    def num_classes(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(cls, x: Tensor, y: Tensor, *, num_classes: int | None = None, remove: float = DEFAULT_REMOVE) -> SphereSlab:
        """Centroids and ``1 - remove`` quantile thresholds of the rows ``(x, y)``."""
        remove = _check_remove(remove)
        flat, y = _check_rows(x, y, "sanitize reference")
        k = int(y.max()) + 1 if num_classes is None else int(num_classes)
        if k < 1 or int(y.max()) >= k:
            raise AdvkitError(f"sanitize: label {int(y.max())} is outside the classes 0..{k - 1}")
        counts = torch.bincount(y, minlength=k)
        present = counts > 0
        centroids = torch.zeros(k, flat.shape[1], dtype=torch.float64)
        for start in range(0, flat.shape[0], _CHUNK):
            centroids.index_add_(0, y[start : start + _CHUNK], flat[start : start + _CHUNK].to(torch.float64))
        overall = centroids.sum(0) / flat.shape[0]
        centroids /= counts.clamp_min(1).unsqueeze(1).to(torch.float64)
        if int(present.sum()) == 2:  # the paper's binary slab: the line between the two centroids
            a, b = present.nonzero().squeeze(1).tolist()
            line = centroids[a] - centroids[b]
            directions = torch.zeros_like(centroids)
            directions[a], directions[b] = line, -line
        else:
            directions = centroids - overall
        norms = directions.norm(dim=1, keepdim=True)
        directions = torch.where(norms > 1e-12, directions / norms.clamp_min(1e-12), torch.zeros_like(directions))
        directions[~present] = 0.0
        partial = cls(centroids, directions, torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64), present, remove)
        dists = partial.distances(flat, y)
        radii = torch.zeros(k, dtype=torch.float64)
        widths = torch.zeros(k, dtype=torch.float64)
        for c in present.nonzero().squeeze(1).tolist():
            rows = y == c
            radii[c] = torch.quantile(dists["sphere"][rows], 1.0 - remove)
            widths[c] = torch.quantile(dists["slab"][rows], 1.0 - remove)
        return cls(centroids, directions, radii, widths, present, remove)

    def distances(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per row, its sphere distance ``||x - mu_y||`` and slab distance ``|<x - mu_y, v_y>|`` (float64)."""
        flat = x.detach().reshape(x.shape[0], -1)
        if flat.shape[1] != self.centroids.shape[1]:
            raise AdvkitError(f"sanitize: rows have {flat.shape[1]} features but the defense was fitted on {self.centroids.shape[1]}")
        y = y.detach().long()
        unknown = (y >= self.num_classes) | ~self.present[y.clamp_max(self.num_classes - 1)]
        if bool(unknown.any()):
            missing = int(y[unknown][0])
            raise AdvkitError(f"sanitize: class {missing} has rows to sanitise but no reference rows to fit its centroid")
        sphere, slab = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
        for start in range(0, flat.shape[0], _CHUNK):
            rows = y[start : start + _CHUNK]
            centred = flat[start : start + _CHUNK].to(torch.float64) - self.centroids[rows]
            sphere.append(centred.norm(dim=1))
            slab.append((centred * self.directions[rows]).sum(1).abs())
        return {"sphere": torch.cat(sphere), "slab": torch.cat(slab)}

    def thresholds(self, method: str) -> Tensor:
        return self.sphere_radii if method == "sphere" else self.slab_widths

    def removed(self, x: Tensor, y: Tensor, methods: tuple[str, ...] = METHODS) -> dict[str, Tensor]:
        """Per method, the bool mask of rows outside that method's threshold."""
        dists = self.distances(x, y)
        y = y.detach().long()
        return {m: dists[m] > self.thresholds(m)[y] for m in check_methods(methods)}

    def feasible(self, x: Tensor, y: Tensor, methods: tuple[str, ...] = METHODS) -> Tensor:
        """Bool mask of rows that every method keeps."""
        removed = self.removed(x, y, methods)
        return ~torch.stack(list(removed.values())).any(0)


@dataclass
class Sanitization:
    """What :func:`sanitize` kept: ``keep`` (bool [N]), per method the rows it removed."""

    keep: Tensor
    removed_by: dict[str, Tensor]
    defense: SphereSlab
    centroids_from: str

    def details(self, y: Tensor | None = None) -> dict[str, Any]:
        """A JSON-serialisable summary (with ``y``: rows removed per class)."""
        out: dict[str, Any] = {
            "methods": list(self.removed_by),
            "remove": self.defense.remove,
            "centroids_from": self.centroids_from,
            "rows": int(self.keep.numel()),
            "rows_kept": int(self.keep.sum()),
            "rows_removed": int((~self.keep).sum()),
            "removed_by_method": {m: int(mask.sum()) for m, mask in self.removed_by.items()},
        }
        if y is not None:
            counts = torch.bincount(y[~self.keep].long(), minlength=self.defense.num_classes)
            out["removed_per_class"] = [int(c) for c in counts]
        return out


def sanitize(
    x: Tensor,
    y: Tensor,
    methods: tuple[str, ...] | list[str] | str = METHODS,
    *,
    remove: float = DEFAULT_REMOVE,
    reference: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
) -> Sanitization:
    """Sphere and/or slab sanitisation of ``(x, y)``; ``.keep`` marks the rows to train on.

    ``reference=(x_clean, y_clean)`` fits the centroids and thresholds on those rows (the
    oracle defender); without it on ``(x, y)`` itself (the data-dependent defender).
    """
    methods = check_methods(methods)
    _check_remove(remove)
    flat, labels = _check_rows(x, y, "sanitize")
    if reference is None:
        defense = SphereSlab.fit(flat, labels, num_classes=num_classes, remove=remove)
        source = "data"
    else:
        ref_x, ref_y = reference
        ref_flat, ref_labels = _check_rows(ref_x, ref_y, "sanitize reference")
        if ref_flat.shape[1] != flat.shape[1]:
            raise AdvkitError(f"sanitize: reference rows have {ref_flat.shape[1]} features, the data {flat.shape[1]}")
        k = num_classes if num_classes is not None else max(int(labels.max()), int(ref_labels.max())) + 1
        defense = SphereSlab.fit(ref_flat, ref_labels, num_classes=k, remove=remove)
        source = "reference"
    removed = defense.removed(flat, labels, methods)
    keep = ~torch.stack(list(removed.values())).any(0)
    return Sanitization(keep, removed, defense, source)


@register(
    "sphere-slab",
    family="defense",
    knowledge="data",
    paper="Steinhardt, Koh, Liang. Certified Defenses for Data Poisoning Attacks. NeurIPS 2017 (sphere and slab defenses)",
    atlas="AML.M0007",
    summary="drop training rows far from their class centroid (sphere) or along the centroid line (slab)",
)
@dataclass(frozen=True)
class SphereSlabSanitizer:
    """:func:`sanitize` as a configured defense: ``methods`` and the ``remove`` share."""

    methods: tuple[str, ...] = METHODS
    remove: float = DEFAULT_REMOVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_methods(self.methods))
        _check_remove(self.remove)

    def __call__(self, x: Tensor, y: Tensor, *, reference: tuple[Tensor, Tensor] | None = None, num_classes: int | None = None) -> Sanitization:
        return sanitize(x, y, self.methods, remove=self.remove, reference=reference, num_classes=num_classes)


__all__ = ["DEFAULT_REMOVE", "METHODS", "Sanitization", "SphereSlab", "SphereSlabSanitizer", "check_methods", "sanitize"]
