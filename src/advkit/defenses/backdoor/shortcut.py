"""Shortcut audit: find a spurious mark a clean-labelled training set taught one class.

Occlusion sensitivity (Zeiler & Fergus, "Visualizing and Understanding Convolutional
Networks", ECCV 2014, section 4.2): slide a ``patch`` x ``patch`` occluder over every
clean held-out image of every class with ``stride``, and record how much the image's own
class loses at each location. A shortcut (the ruler marks of dermatology sets, Winkler et
al., JAMA Dermatology 2019; Geirhos et al., "Shortcut Learning in Deep Neural Networks",
Nature Machine Intelligence 2020) shows up as a place where one class loses much and the
other classes lose nothing: a mark sits where the class's images have no object of their
own, the same place on every image. The natural-trigger cross-check (Wang et al., "Neural
Cleanse", IEEE S&P 2019, section IV: a learned feature that a small patch can imitate is a
natural backdoor) asks whether the class's reversed trigger sits on the same region.

What advkit measures and decides (the numbers: benchmarks/bench_shortcut.py):

- **Evidence is log-odds**, ``z_y - logsumexp_{k != y} z_k``, not the paper's probability:
  a model that learned both the shape and the mark stays at p = 0.999 when either is
  hidden; only the log-odds show the mark's share.
- **Fill: the lower bound** by default. A fill must differ from the mark and add nothing;
  the per-pixel mean or median inserts typical content, so a class defined by an absence
  (the hole of a 0) loses as much as a shortcut class (false flags on clean models). For
  dark marks on a bright background use ``"upper"``; ``"median"``, ``"mean"`` or a number.
- **Exclusive content** (:func:`exclusivity`): a mark co-occurring with one class is
  content (``|x - fill|``) that class's images carry and the others' lack at that pixel; a
  stroke several digits share is not. The evidence is weighted by it.
- **Two scores per class**: ``concentration``, the share of the class's positive evidence
  inside its best patch-sized window of exclusive content (a small region carrying much
  of it), and ``specificity``, the largest robust z of its exclusive evidence against all
  classes' evidence at the same pixel, ``(E_c - median_k E_k) / (1.4826 MAD_k E_k + floor)``
  (floor: ``scale_floor`` times the median class's peak). The anomaly index is the mean of
  the two scores' MAD indices across classes (Neural Cleanse's rule, high side); flagged
  above 3. Unweighted, the zoo digits-cnn's 1 and 9 (a stroke, a loop) reached 5.1 and
  4.4; the z score alone reached 5.0 on a clean MNIST victim's 0. The mean stayed under 2.7
  on every clean model measured and over 3 on every planted mark (on seeds the constants
  were not chosen on); the weakest, a global-pooling victim that barely learned it, 3.05.
- **Region**: the bounding box of the pixels connected to the peak of the exclusive z map
  with at least half its value; ``consistency``: the share of the class's images whose own
  largest drop falls in it (a shortcut sits in the same place on every image).

Occlusion only sees evidence present in the images it is given: the held-out rows must
come from the same collection as the training rows (marks included, as they would be).
A mark the model needs but that does not suffice to flip other classes (most digits
victims) leaves Neural Cleanse's reversed trigger off the region: the cross-check reports
the overlap, it does not decide.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from advkit.core import ModelHandle, check_images, check_labels
from advkit.errors import AdvkitError
from advkit.registry import register

FILLS = ("lower", "upper", "median", "mean")
EVIDENCE = ("log-odds", "probability")
MIN_PATCH = 2
MIN_ROWS_PER_CLASS = 5
MAD_SCALE = 1.4826


@dataclass
class ShortcutResult:
    """What the audit found: flagged classes, one row per class, the per-class heat maps."""

    flagged: list[int]
    per_class: list[dict[str, Any]]
    heat_maps: Tensor
    seconds: float
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    cross_checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: no tensors (the heat maps are left out; ``heat_maps`` has them)."""
        return {"method": "shortcut", "flagged": list(self.flagged), "classes": [dict(row) for row in self.per_class],
                "seconds": self.seconds, "settings": dict(self.settings), "warnings": list(self.warnings),
                "cross_checks": dict(self.cross_checks)}


def _pixels(value: float | int, size: int, what: str) -> int:
    """A patch or stride in pixels: an int as is, a float in (0, 1] as that share of the side."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdvkitError(f"shortcut: {what} must be a number of pixels or a share of the side; got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise AdvkitError(f"shortcut: {what} must be >= 1 pixel; got {value}")
        return value
    if not 0.0 < value <= 1.0:
        raise AdvkitError(f"shortcut: {what} as a share of the side must be in (0, 1]; got {value}")
    return max(MIN_PATCH if what == "patch" else 1, round(value * size))


def locations(height: int, width: int, patch: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the occluder: every ``stride``, plus the last one flush with the edge."""
    rows = list(range(0, height - patch[0] + 1, stride[0]))
    cols = list(range(0, width - patch[1] + 1, stride[1]))
    if rows[-1] != height - patch[0]:
        rows.append(height - patch[0])
    if cols[-1] != width - patch[1]:
        cols.append(width - patch[1])
    return [(r, c) for r in rows for c in cols]


def _evidence(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """The labelled class's log-odds or probability; ``labels`` broadcast against ``logits[..., 0]``."""
    index = labels.unsqueeze(-1)
    if kind == "probability":
        return torch.softmax(logits, -1).gather(-1, index).squeeze(-1)
    own = logits.gather(-1, index).squeeze(-1)
    return own - logits.scatter(-1, index, float("-inf")).logsumexp(-1)


def occlusion_drops(
    model: ModelHandle,
    x: Tensor,
    y: Tensor,
    masks: Tensor,
    fill: Tensor,
    evidence: str = "log-odds",
    batch_size: int = 4096,
    progress: Any = None,
) -> Tensor:
    """[N, L]: how much each row's own class loses when location ``l`` (``masks`` [L, H, W]) is filled."""
    count = masks.shape[0]
    device = model.device
    masks, fill = masks.to(device).unsqueeze(1).unsqueeze(1), fill.to(device)
    base = _evidence(model.predict_logits(x, batch_size), y.to(device), evidence)
    rows = max(1, batch_size // count)
    drops = torch.empty(x.shape[0], count, device=device)
    for first in range(0, x.shape[0], rows):
        xb = x[first : first + rows].to(device)
        occluded = torch.lerp(xb.unsqueeze(0), fill, masks).flatten(0, 1)  # [L * B, C, H, W], location-major
        logits = model.predict_logits(occluded, batch_size).view(count, xb.shape[0], -1)
        after = _evidence(logits, y[first : first + rows].to(device).unsqueeze(0).expand(count, -1), evidence)
        drops[first : first + xb.shape[0]] = (base[first : first + xb.shape[0]].unsqueeze(0) - after).T
        if progress is not None:
            progress("shortcut", min(first + rows, x.shape[0]), x.shape[0])
    return drops.cpu()


def location_z(maps: Tensor, scale_floor: float) -> Tensor:
    """[K, P]: each class's evidence against every class's at the same pixel (robust z)."""
    median = maps.median(0).values
    mad = MAD_SCALE * (maps - median).abs().median(0).values
    typical_peak = float(maps.max(1).values.median())
    floor = max(scale_floor * typical_peak, 1e-12)
    return (maps - median) / (mad + floor)


def exclusivity(x: Tensor, y: Tensor, fill: Tensor, classes: int) -> Tensor:
    """[K, H, W]: the share of a class's content at a pixel that the other classes' images lack.

    Content is ``|x - fill|`` (ink, with the lower-bound fill), averaged over a class's rows
    and the channels; a class's exclusivity is ``max(0, own - mean of the others) / own``
    (0 where it has no content). A mark that co-occurs with one class is content only that
    class has, at 1; a stroke several digits share is not.
    """
    content = (x - fill).abs().mean(1)
    per_class = torch.stack([content[y == c].mean(0) for c in range(classes)])
    others = (per_class.sum(0, keepdim=True) - per_class) / (classes - 1)
    return (per_class - others).clamp(min=0) / per_class.clamp(min=1e-12)


def window_share(heat: Tensor, exclusive: Tensor, patch: tuple[int, int]) -> np.ndarray:
    """[K]: the share of a class's positive evidence on exclusive content inside its best patch-sized window."""
    evidence = heat.clamp(min=0)
    windows = F.avg_pool2d((evidence * exclusive).unsqueeze(1), patch, stride=1).flatten(1).max(1).values * patch[0] * patch[1]
    total = evidence.flatten(1).sum(1)
    return torch.where(total > 0, windows / total.clamp(min=1e-12), torch.zeros_like(total)).numpy().astype(np.float64)


def anomaly_index(scores: np.ndarray) -> np.ndarray:
    """Signed MAD index across classes: ``(s - median) / (1.4826 MAD)`` (inf above a zero MAD)."""
    median = np.median(scores)
    mad = MAD_SCALE * np.median(np.abs(scores - median))
    if mad == 0:
        return np.where(scores > median, np.inf, np.where(scores < median, -np.inf, 0.0))
    return (scores - median) / mad


def _region(z: Tensor) -> dict[str, int]:
    """The bounding box of the pixels connected to the peak of ``z`` [H, W] with at least half its value."""
    table = z.numpy()
    best = np.unravel_index(int(np.argmax(table)), table.shape)
    peak = table[best]
    labels, _ = ndimage.label(table >= 0.5 * peak if peak > 0 else table >= peak)
    rows, cols = np.nonzero(labels == labels[best])
    top, left = int(rows.min()), int(cols.min())
    return {"top": top, "left": left, "height": int(rows.max()) + 1 - top, "width": int(cols.max()) + 1 - left}


def box_mask(box: dict[str, int], height: int, width: int) -> Tensor:
    """[H, W] bool mask of a ``{top, left, height, width}`` box."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[box["top"] : box["top"] + box["height"], box["left"] : box["left"] + box["width"]] = True
    return mask


def mask_overlap(mask: Tensor, box: dict[str, int]) -> dict[str, float]:
    """A reversed trigger's mask against a region: its L1 share inside (chance: the region's area share), IoU of its strong pixels."""
    mask = mask.detach().float().cpu().reshape(mask.shape[-2], mask.shape[-1])
    inside = box_mask(box, *mask.shape)
    total = float(mask.abs().sum())
    strong = mask >= 0.5 * float(mask.max()) if total > 0 else torch.zeros_like(inside)
    union = int((strong | inside).sum())
    return {
        "mask_share_in_region": float(mask[inside].abs().sum()) / total if total > 0 else 0.0,
        "mask_iou": int((strong & inside).sum()) / union if union else 0.0,
        "region_area_share": int(inside.sum()) / inside.numel(),
    }


@register(
    "shortcut",
    family="inspection",
    knowledge="white",
    paper="Zeiler & Fergus ECCV 2014 (occlusion); Wang et al. S&P 2019 (natural triggers)",
    atlas="AML.M0008",
    summary="occlusion maps per class on clean held-out rows; flag a class whose evidence sits where no other class has any",
)
@dataclass
class ShortcutAudit:
    """Settings of the occlusion audit; the model and the clean held-out rows come at call time.

    ``patch`` and ``stride`` are pixels (int) or shares of the image side (float); the
    default patch is 1/7 of the side (at least 2 pixels), the stride half the patch.
    """

    patch: float | int = 1 / 7
    stride: float | int | None = None
    fill: str | float = "lower"
    evidence: str = "log-odds"
    anomaly_threshold: float = 3.0
    scale_floor: float = 0.25
    batch_size: int = 4096
    with_neural_cleanse: bool = False
    neural_cleanse: Any = None
    with_k_arm: bool = False
    k_arm: Any = None

    name = "shortcut"

    def __post_init__(self) -> None:
        if (self.fill not in FILLS) if isinstance(self.fill, str) else (not isinstance(self.fill, (int, float)) or isinstance(self.fill, bool)):
            raise AdvkitError(f"shortcut: fill must be one of {', '.join(FILLS)} or a number; got {self.fill!r}")
        if self.evidence not in EVIDENCE:
            raise AdvkitError(f"shortcut: evidence must be one of {', '.join(EVIDENCE)}; got {self.evidence!r}")
        if not self.anomaly_threshold > 0 or not self.scale_floor > 0 or self.batch_size < 1:
            raise AdvkitError("shortcut: anomaly_threshold and scale_floor must be > 0 and batch_size >= 1")

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Patch and stride in pixels for ``height`` x ``width`` images (one line if they do not fit)."""
        patch = (_pixels(self.patch, height, "patch"), _pixels(self.patch, width, "patch"))
        if patch[0] > height or patch[1] > width:
            raise AdvkitError(f"shortcut: patch {patch[0]}x{patch[1]} is larger than the {height}x{width} images")
        if self.stride is None:
            stride = (max(1, patch[0] // 2), max(1, patch[1] // 2))
        else:
            stride = (_pixels(self.stride, height, "stride"), _pixels(self.stride, width, "stride"))
        if stride[0] > patch[0] or stride[1] > patch[1]:
            raise AdvkitError(f"shortcut: stride {stride[0]}x{stride[1]} exceeds the patch {patch[0]}x{patch[1]}: some pixels would never be occluded")
        return patch, stride

    def fill_image(self, model: ModelHandle, x: Tensor) -> Tensor:
        """[C, H, W] the occluder's pixels."""
        lo, hi = model.bounds
        if self.fill == "median":
            return x.median(0).values
        if self.fill == "mean":
            return x.mean(0)
        value = lo if self.fill == "lower" else hi if self.fill == "upper" else float(self.fill)
        if not lo <= value <= hi:
            raise AdvkitError(f"shortcut: fill {value} is outside the model's bounds [{lo:g}, {hi:g}]")
        return torch.full(tuple(x.shape[1:]), value)

    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        progress: Any = None,
    ) -> ShortcutResult:
        """Occlusion maps per class, flags by the MAD rule; the optional cross-checks take ``generator``."""
        start = time.perf_counter()
        messages: list[str] = []
        x = check_images(x, model.info, "shortcut clean images")
        if x.shape[0] == 0:
            raise AdvkitError("shortcut: the clean data is empty")
        y = check_labels(y, x.shape[0], model.num_classes, "shortcut labels").cpu()
        classes = model.num_classes
        if classes < 3:
            raise AdvkitError(f"shortcut: the MAD rule needs at least 3 classes; the model has {classes}")
        counts = torch.bincount(y, minlength=classes)
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        if empty:
            raise AdvkitError(f"shortcut: class {empty[0]} has no clean rows ({len(empty)} classes empty); every class needs some")
        if int(counts.min()) < MIN_ROWS_PER_CLASS:
            messages.append(f"only {int(counts.min())} clean rows for class {int(counts.argmin())} (fewer than {MIN_ROWS_PER_CLASS}): its map is noisy")
            warnings.warn(messages[-1], stacklevel=2)
        _, height, width = model.input_shape
        patch, stride = self.geometry(height, width)
        grid = locations(height, width, patch, stride)
        masks = torch.stack([box_mask({"top": r, "left": c, "height": patch[0], "width": patch[1]}, height, width) for r, c in grid]).float()
        fill = self.fill_image(model, x.cpu())
        drops = occlusion_drops(model, x, y, masks, fill, self.evidence, self.batch_size, progress)
        maps = torch.stack([drops[y == c].mean(0) for c in range(classes)])  # [K, L]
        heat = torch.einsum("kl,lhw->khw", maps, masks) / masks.sum(0)  # each pixel: the mean over the patches covering it
        exclusive = exclusivity(x.cpu(), y, fill, classes)
        concentration = window_share(heat, exclusive, patch)
        z = location_z(heat.flatten(1), self.scale_floor).view(classes, height, width) * exclusive
        specificity = z.flatten(1).max(1).values.numpy().astype(np.float64)
        index = (anomaly_index(concentration) + anomaly_index(specificity)) / 2
        flagged = [c for c in range(classes) if index[c] > self.anomaly_threshold]
        rows = []
        for c in range(classes):
            box = _region(z[c])
            inside = box_mask(box, height, width)
            hits = [float((masks[i] * inside).sum()) >= 0.5 * patch[0] * patch[1] for i in drops[y == c].argmax(1).tolist()]
            positive = heat[c].clamp(min=0)
            rows.append(
                {
                    "class": c,
                    "rows": int(counts[c]),
                    "concentration": float(concentration[c]),
                    "specificity": float(specificity[c]),
                    "anomaly_index": float(index[c]) if np.isfinite(index[c]) else None,
                    "flagged": c in flagged,
                    "region": box,
                    "peak_evidence": float(heat[c][inside].max()),
                    "evidence_share": float(positive[inside].sum() / positive.sum()) if float(positive.sum()) > 0 else 0.0,
                    "consistency": float(np.mean(hits)),
                }
            )
        cross: dict[str, Any] = {}
        if self.with_neural_cleanse:
            cross["neural-cleanse"] = self._cross_check("neural-cleanse", model, x, y, rows, generator, messages)
        if self.with_k_arm:
            cross["k-arm"] = self._cross_check("k-arm", model, x, y, rows, generator, messages)
        settings = {
            "patch": list(patch),
            "stride": list(stride),
            "locations": len(grid),
            "fill": self.fill,
            "evidence": self.evidence,
            "anomaly_threshold": self.anomaly_threshold,
            "scale_floor": self.scale_floor,
            "forwards": int(x.shape[0]) * (len(grid) + 1),
        }
        return ShortcutResult(flagged, rows, heat, time.perf_counter() - start, settings, messages, cross)

    def _cross_check(
        self,
        method: str,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        rows: list[dict[str, Any]],
        generator: torch.Generator | None,
        messages: list[str],
    ) -> dict[str, Any] | None:
        """Reverse-engineer triggers (Neural Cleanse or K-Arm) and put each class's mask against its region."""
        if method == "neural-cleanse":
            from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse

            detector = self.neural_cleanse if self.neural_cleanse is not None else NeuralCleanse()
        else:
            try:
                from advkit.defenses.backdoor.k_arm import KArm
            except Exception as error:  # another module's import failure must not sink the audit
                messages.append(f"k-arm cross-check skipped: it does not import ({type(error).__name__}: {error})")
                return None
            detector = self.k_arm if self.k_arm is not None else KArm()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        report = detector(model, x, y, generator=generator)
        index = report.details["anomaly_index"]
        for row in rows:
            c = row["class"]
            trigger = report.details["triggers"][c]
            value = float(index[c])
            row[method] = {
                "l1": trigger.l1,
                "anomaly_index": value if np.isfinite(value) else None,
                "flagged": bool(report.flagged[c]),
                **mask_overlap(trigger.mask, row["region"]),
            }
        return {"flagged": report.flagged_ids, "median_l1": report.details["median_l1"], "seconds": report.seconds}
