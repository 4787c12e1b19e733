"""STRIP: a trojaned input keeps its prediction when other images are laid over it.

Gao, Xu, Wang, Chen, Ranasinghe & Nepal, "STRIP: A Defence Against Trojan Attacks on
Deep Neural Networks", ACSAC 2019. Each input is superimposed with ``replicas`` (N,
the paper's 100) images drawn at random from clean data; its score is the mean Shannon
entropy (bits) of the model's predictions on the N superimposed images. A clean
input's superimpositions scatter over the classes (high entropy); a trojaned one's stay
with the target, the trigger surviving (low entropy). Only the model's output
probabilities are used (black box).

Superimposition (``superimpose``): ``sum`` (default) is the authors' code,
``cv2.addWeighted(x, 1, x', 1, 0)``: the two images added at weight 1 each, clipped to
the input bounds as that call saturates 8-bit images, so a trigger's saturated pixels
keep their full strength. ``blend`` is the 0.5/0.5 linear blend
``alpha * x + (1 - alpha) * x'``, which halves the trigger. On the eight 10% BadNets
victims of ``benchmarks/bench_scanners.py --study f1`` the scan's F1 was 0.79-1.00 with
the sum and 0.01-0.98 with the blend: the blend lost the 3x3 patch on 8x8 digits
(0.01-0.77) and was ahead only on one conv-BN mnist5k victim (0.98 against 0.79).

- :class:`StripFilter` is the paper's run-time detector: ``fit(model, x_clean)`` sets the
  threshold so that a share ``frr`` (false rejection rate, the paper's 1%) of the clean
  inputs falls under it; calling it on inputs flags those whose entropy is below it.
  The paper fits a normal distribution to the clean entropies; here the threshold is
  the empirical ``frr`` quantile, which does not assume the shape of the low tail.
- :class:`StripScan` scans training rows (the same test run offline): the images laid
  over them are drawn from the scanned rows themselves (never a row with itself), or
  from ``clean`` rows when given (then the threshold is their ``frr`` quantile, as the
  filter's). Without clean rows, each class's threshold is the ``frr`` quantile of the
  entropies of the rows of the *other* classes: an all-to-one attack labels every
  poisoned row with its target, so for the target class the other classes are clean
  held-out data, and for the other classes the pool holds the poison's low entropies,
  which lowers their threshold (fewer false alarms, never more). A fitted normal does
  not do here: the rows' entropies are skewed towards 0, and on mnist5k victims its
  1% point fell below every row. Poison spread over many classes (all-to-all) lowers
  every threshold, so the scan then misses rows rather than flagging clean ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.core import DetectionReport, ModelHandle, check_images
from advkit.defenses.data.scanning import MIN_CLASS_ROWS, ScanResult, check_fraction, check_rows, class_rows, finish
from advkit.errors import AdvkitError
from advkit.registry import register

SUPERIMPOSE = ("sum", "blend")
BLENDS_PER_PASS = 4096  # blended images made at once (rows x replicas); the model takes them batch_size at a time


def _check_settings(replicas: int, alpha: float, frr: float, batch_size: int, superimpose: str, where: str) -> None:
    if superimpose not in SUPERIMPOSE:
        raise AdvkitError(f"{where}: superimpose must be one of {', '.join(SUPERIMPOSE)}; got {superimpose!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise AdvkitError(f"{where}: replicas (blended images per input) must be a positive integer; got {replicas!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < float(alpha) < 1.0:
        raise AdvkitError(f"{where}: alpha (the input's weight in a blend) must be in (0, 1); got {alpha!r}")
    check_fraction(frr, "frr (false rejection rate)", where, high=0.5)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdvkitError(f"{where}: batch_size must be a positive integer; got {batch_size!r}")


def strip_entropies(
    model: ModelHandle,
    x: Tensor,
    pool: Tensor,
    *,
    replicas: int,
    alpha: float,
    generator: torch.Generator,
    same_rows: bool = False,
    superimpose: str = "sum",
    batch_size: int = 256,
) -> Tensor:
    """Mean prediction entropy (bits) of each row of ``x`` superimposed with ``replicas`` rows of ``pool``.

    ``same_rows``: ``pool`` is ``x`` itself, and no row is blended with itself.
    ``superimpose``: ``sum`` (``x + other`` clipped to the model's bounds) or ``blend``
    (``alpha * x + (1 - alpha) * other``; ``alpha`` is used by the blend only).
    """
    n, size = x.shape[0], pool.shape[0]
    if size < (2 if same_rows else 1):
        raise AdvkitError("STRIP needs at least one other image to blend each input with")
    chunk = max(1, BLENDS_PER_PASS // replicas)
    out = []
    for first in range(0, n, chunk):
        rows = x[first : first + chunk]
        if same_rows:
            picks = torch.randint(0, size - 1, (rows.shape[0], replicas), generator=generator)
            own = torch.arange(first, first + rows.shape[0]).unsqueeze(1)
            picks = picks + (picks >= own).long()
        else:
            picks = torch.randint(0, size, (rows.shape[0], replicas), generator=generator)
        if superimpose == "blend":
            blends = torch.lerp(pool[picks], rows.unsqueeze(1), alpha)
        else:
            blends = (pool[picks] + rows.unsqueeze(1)).clamp(*model.bounds)
        blends = blends.reshape(-1, *x.shape[1:])
        probs = torch.softmax(model.predict_logits(blends, batch_size).cpu().double(), 1)
        entropy = -(probs * torch.log2(probs.clamp_min(1e-300))).sum(1)
        out.append(entropy.view(rows.shape[0], replicas).mean(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _other_class_thresholds(entropies: Tensor, y: Tensor, classes: list[int], frr: float) -> dict[int, float]:
    """Per class, the ``frr`` quantile of the entropies of the rows of every other class."""
    out = {}
    for c in classes:
        others = entropies[y != c]
        out[c] = float(torch.quantile(others, frr)) if others.numel() else float("-inf")
    return out


@register(
    "strip",
    family="defense",
    knowledge="black",
    paper="Gao et al. STRIP: A Defence Against Trojan Attacks on Deep Neural Networks. ACSAC 2019 (offline scan)",
    atlas="AML.M0007",
    summary="flag training rows whose predictions stay put when other images are laid over them",
)
@dataclass(frozen=True)
class StripScan:
    """Scan training rows with STRIP's entropy test (see the module)."""

    replicas: int = 100
    alpha: float = 0.5
    frr: float = 0.01
    superimpose: str = "sum"
    batch_size: int = 256

    name = "strip"

    def __post_init__(self) -> None:
        _check_settings(self.replicas, self.alpha, self.frr, self.batch_size, self.superimpose, self.name)

    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        *,
        clean: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ScanResult:
        """Scan ``(x, y)``; ``clean`` rows, when given, are the images laid over them and set the threshold."""
        start = time.perf_counter()
        x, y = check_rows(model, x, y, self.name)
        classes = class_rows(y, model.num_classes, MIN_CLASS_ROWS, self.name)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        settings = {"replicas": self.replicas, "alpha": self.alpha, "generator": generator, "batch_size": self.batch_size, "superimpose": self.superimpose}
        details: dict[str, Any] = {"replicas": self.replicas, "alpha": self.alpha, "superimpose": self.superimpose, "frr": self.frr}
        if clean is None:
            entropies = strip_entropies(model, x, x, same_rows=True, **settings)
            thresholds = _other_class_thresholds(entropies, y, [c for c, _ in classes], self.frr)
            details["threshold_from"] = "rows of the other classes (quantile)"
        else:
            clean = check_images(clean, model.info, f"{self.name} clean images")
            if clean.shape[0] < 2:
                raise AdvkitError(f"{self.name}: clean rows must hold at least 2 images; got {clean.shape[0]}")
            reference = strip_entropies(model, clean, clean, same_rows=True, **settings)
            thresholds = dict.fromkeys([c for c, _ in classes], float(torch.quantile(reference, self.frr)))
            entropies = strip_entropies(model, x, clean, **settings)
            details["threshold_from"] = "clean rows (quantile)"
        flagged = torch.zeros(x.shape[0], dtype=torch.bool)
        per_class = []
        for c, rows in classes:
            flagged[rows] = entropies[rows] < thresholds[c]
            per_class.append(
                {
                    "class": c,
                    "rows": int(rows.numel()),
                    "flagged": int(flagged[rows].sum()),
                    "threshold": thresholds[c],
                    "mean_entropy": float(entropies[rows].mean()),
                }
            )
        return finish(self.name, x.shape[0], flagged, per_class, time.perf_counter() - start, details=details, scores=entropies)


@register(
    "strip-filter",
    family="defense",
    knowledge="black",
    paper="Gao et al. STRIP: A Defence Against Trojan Attacks on Deep Neural Networks. ACSAC 2019 (run-time filter)",
    atlas="AML.M0015",
    summary="reject inputs whose predictions stay put when clean images are laid over them",
)
@dataclass
class StripFilter:
    """STRIP's run-time filter: ``fit`` on clean data, then call on inputs (see the module)."""

    replicas: int = 100
    alpha: float = 0.5
    frr: float = 0.01
    superimpose: str = "sum"
    batch_size: int = 256
    overlays: Tensor | None = None
    threshold: float | None = None

    name = "strip-filter"

    def __post_init__(self) -> None:
        _check_settings(self.replicas, self.alpha, self.frr, self.batch_size, self.superimpose, self.name)

    def _settings(self, generator: torch.Generator | None) -> dict[str, Any]:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        return {"replicas": self.replicas, "alpha": self.alpha, "generator": generator, "batch_size": self.batch_size, "superimpose": self.superimpose}

    def fit(self, model: ModelHandle, x_clean: Tensor, *, generator: torch.Generator | None = None) -> StripFilter:
        """Keep ``x_clean`` as the blending pool; the threshold is its entropies' ``frr`` quantile."""
        x_clean = check_images(x_clean, model.info, f"{self.name} clean images")
        if x_clean.shape[0] < 2:
            raise AdvkitError(f"{self.name}: fitting needs at least 2 clean images; got {x_clean.shape[0]}")
        entropies = strip_entropies(model, x_clean, x_clean, same_rows=True, **self._settings(generator))
        self.overlays = x_clean.detach().clone()
        self.threshold = float(torch.quantile(entropies, self.frr))
        return self

    def __call__(self, model: ModelHandle, x: Tensor, *, generator: torch.Generator | None = None) -> DetectionReport:
        if self.overlays is None or self.threshold is None:
            raise AdvkitError(f"{self.name}: fit the filter on clean data first (fit(model, x_clean))")
        start = time.perf_counter()
        x = check_images(x, model.info, f"{self.name} input")
        if tuple(self.overlays.shape[1:]) != tuple(x.shape[1:]):
            raise AdvkitError(f"{self.name}: inputs have shape {list(x.shape[1:])} but the filter was fitted on {list(self.overlays.shape[1:])}")
        entropies = strip_entropies(model, x, self.overlays, **self._settings(generator))
        details = {"threshold": self.threshold, "frr": self.frr, "replicas": self.replicas, "alpha": self.alpha, "superimpose": self.superimpose}
        return DetectionReport(self.name, entropies, entropies < self.threshold, time.perf_counter() - start, details)


__all__ = ["SUPERIMPOSE", "StripFilter", "StripScan", "strip_entropies"]
