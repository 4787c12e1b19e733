"""Activation clustering: split each class's activations in two and judge the clusters.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava, "Detecting
Backdoor Attacks on Deep Neural Networks by Activation Clustering", SafeAI workshop at
AAAI 2019 (arXiv 1811.03728). Per class (the rows' training labels): the representation
of every row (``features`` by default, the inputs of the model's first ``nn.Linear``; or
``linear``, the inputs of its last), reduced to ``dims = 10`` dimensions, split by
2-means; the clusters are then judged.

Reduction: ``pca`` (default) keeps the top 10 principal components; ``ica`` is the
paper's (and ART's) FastICA to 10 components. FastICA first whitens to those same 10
principal components and then rotates them, so the two differ only in the whitening:
it gives every component unit variance, which lets k-means split the class along
low-variance noise. On three 10% BadNets digits victims (two architectures), PCA put
every poisoned row of the target class in one cluster (F1 1.00 each) where FastICA
reached F1 0.74, 0.00 and 0.89, at 20 to 60 times the cost.

Analyses of the two clusters (``analysis``):

- ``mix`` (default): a cluster is poisoned when its rows, each given to the nearest
  centroid of another class, spread over the other classes like the data does (total
  variation distance at most ``mix_threshold``; see
  :func:`advkit.defenses.data.scanning.mix_distance`). This is the paper's exclusionary
  reclassification (a model that never saw the cluster classifies poisoned rows as their
  source classes) with a nearest-centroid classifier for the retrained network and many
  source classes for one. It needs 3 or more classes.
- ``size``: the paper's relative size and silhouette analysis with ART's thresholds:
  the smaller cluster is poisoned when it holds at most ``size_threshold`` (0.35) of the
  class and the split's silhouette score is at least ``silhouette_threshold`` (0.10).
  It assumes the poison is a minority of its class. A 10% all-to-one attack on ten
  balanced classes makes it about half of the target class, and the size analysis then
  misses it (ART's defaults reached F1 0.28 on such a digits set).

Every class reports its silhouette, its clusters' relative sizes and their mix distances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
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
    seed_from,
    top_components,
)
from advkit.errors import AdvkitError
from advkit.registry import register

REDUCTIONS = ("pca", "ica")
ANALYSES = ("mix", "size")


def reduce(reps: Tensor, dims: int, method: str, seed: int) -> np.ndarray:
    """A class's representations reduced to ``dims`` columns (PCA, or FastICA as the paper)."""
    centred = reps - reps.mean(0)
    dims = min(dims, centred.shape[0] - 1, centred.shape[1])
    if method == "pca":
        _, vt = top_components(centred, dims)
        return (centred @ vt.T).numpy()
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FastICA(n_components=dims, whiten="unit-variance", random_state=seed, max_iter=400).fit_transform(centred.numpy())


def two_means(z: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """2-means labels (cluster 0 the larger) and the split's silhouette score."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z).labels_
    if np.bincount(labels, minlength=2)[1] > np.bincount(labels, minlength=2)[0]:
        labels = 1 - labels
    if len(np.unique(labels)) < 2:
        return labels, 0.0
    return labels, float(silhouette_score(z, labels))


@register(
    "activation-clustering",
    family="defense",
    knowledge="white",
    paper="Chen et al. Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering. SafeAI@AAAI 2019",
    atlas="AML.M0007",
    summary="per class, 2-means on the reduced activations; flag the cluster that looks like the other classes",
)
@dataclass(frozen=True)
class ActivationClustering:
    """Scan training rows by clustering each class's activations in two (see the module)."""

    layer: str = "features"
    dims: int = 10
    reduction: str = "pca"
    analysis: str = "mix"
    mix_threshold: float = MIX_THRESHOLD
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10
    batch_size: int = 512

    name = "activation-clustering"

    def __post_init__(self) -> None:
        where = self.name
        check_layer(self.layer, where)
        if self.reduction not in REDUCTIONS:
            raise AdvkitError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}; got {self.reduction!r}")
        if self.analysis not in ANALYSES:
            raise AdvkitError(f"{where}: analysis must be one of {', '.join(ANALYSES)}; got {self.analysis!r}")
        if isinstance(self.dims, bool) or not isinstance(self.dims, int) or self.dims < 1:
            raise AdvkitError(f"{where}: dims must be a positive integer; got {self.dims!r}")
        check_fraction(self.mix_threshold, "mix_threshold", where)
        check_fraction(self.size_threshold, "size_threshold", where, high=0.5)
        if not -1.0 <= float(self.silhouette_threshold) <= 1.0:
            raise AdvkitError(f"{where}: silhouette_threshold must be in [-1, 1]; got {self.silhouette_threshold!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise AdvkitError(f"{where}: batch_size must be a positive integer; got {self.batch_size!r}")

    @property
    def min_rows(self) -> int:
        return max(MIN_CLASS_ROWS, self.dims + 1)

    def __call__(self, model: ModelHandle, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> ScanResult:
        start = time.perf_counter()
        x, y = check_rows(model, x, y, self.name)
        classes = class_rows(y, model.num_classes, self.min_rows, self.name)
        reps = representations(model, x, self.layer, self.batch_size)
        mix = ClassMix(reps, y, model.num_classes) if self.analysis == "mix" else None
        seed = seed_from(generator)
        flagged = torch.zeros(x.shape[0], dtype=torch.bool)
        per_class = []
        for c, rows in classes:
            labels, silhouette = two_means(reduce(reps[rows], self.dims, self.reduction, seed), seed)
            clusters = [rows[torch.from_numpy(labels == k)] for k in (0, 1)]
            sizes = [int(part.numel()) / int(rows.numel()) for part in clusters]
            distances = [mix.distance(part, c) for part in clusters] if mix is not None else None
            poisoned = self._judge(sizes, silhouette, distances)
            for k in poisoned:
                flagged[clusters[k]] = True
            row: dict[str, Any] = {
                "class": c,
                "rows": int(rows.numel()),
                "flagged": sum(int(clusters[k].numel()) for k in poisoned),
                "silhouette": silhouette,
                "relative_sizes": sizes,
                "poisoned": bool(poisoned),
            }
            if distances is not None:
                row["mix_distances"] = distances
            per_class.append(row)
        details = {"layer": self.layer, "dims": self.dims, "reduction": self.reduction, "analysis": self.analysis}
        return finish(self.name, x.shape[0], flagged, per_class, time.perf_counter() - start, details=details)

    def _judge(self, sizes: list[float], silhouette: float, distances: list[float] | None) -> list[int]:
        """The clusters (0 the larger, 1 the smaller) judged poisoned."""
        if distances is not None:
            return [k for k in (0, 1) if sizes[k] > 0 and distances[k] <= self.mix_threshold]
        if sizes[1] > 0 and sizes[1] <= self.size_threshold and silhouette >= self.silhouette_threshold:
            return [1]
        return []


__all__ = ["ANALYSES", "REDUCTIONS", "ActivationClustering", "reduce", "two_means"]
