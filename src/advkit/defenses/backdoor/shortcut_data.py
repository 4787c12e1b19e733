"""A clean-labelled training set that teaches a shortcut: a spurious mark on one class's rows.

The dermatology case (Winkler et al., "Association Between Surgical Skin Markings in
Dermoscopic Images and Diagnostic Performance of a Deep Learning Convolutional Neural
Network for Melanoma Recognition", JAMA Dermatology 2019; rulers beside lesions): a mark
that the collection process put on most images of one class. Nothing
is relabelled and nobody attacks; the mark only co-occurs with the class, and a network
learns it because it is easier than the class's shape (Geirhos et al., "Shortcut
Learning in Deep Neural Networks", Nature Machine Intelligence 2020).

:func:`shortcut_set` stamps a small bright square (or a thin "ruler" bar) near a corner,
its position jittered by a few pixels, on a share of one class's rows of the builtin
train split, labels unchanged. The held-out *audit* rows (the first rows of every class
of the test split) carry the same correlation, as a held-out sample from the same
collection would; the remaining test rows stay clean and measure the clean accuracy,
and :func:`mark_reliance` stamps them to measure how much the model relies on the mark
(the share of other-class rows it pushes to the shortcut class): the ground truth of the
shortcut's strength that :class:`advkit.defenses.backdoor.shortcut.ShortcutAudit` must
find without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advkit.core import ModelHandle
from advkit.errors import AdvkitError

SHAPES = ("square", "bar", "ruler")
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class Mark:
    """A bright mark near a corner: ``size`` x ``size`` (square), 1 x ``size`` (bar) or a ruler.

    A ``ruler`` is a 1 x ``size`` bar of tick marks: every other pixel on, starting with one.

    ``margin`` pixels from the corner, then jittered by up to ``jitter`` pixels towards the
    image's centre on each axis (a different offset per row, from the generator).
    """

    size: int = 2
    shape: str = "square"
    corner: str = "bottom-right"
    margin: int = 0
    jitter: int = 1
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise AdvkitError(f"mark shape must be one of {', '.join(SHAPES)}; got {self.shape!r}")
        if self.corner not in CORNERS:
            raise AdvkitError(f"mark corner must be one of {', '.join(CORNERS)}; got {self.corner!r}")
        if self.size < 1 or self.margin < 0 or self.jitter < 0:
            raise AdvkitError(f"mark size must be >= 1 and margin, jitter >= 0; got {self.size}, {self.margin}, {self.jitter}")

    def extent(self) -> tuple[int, int]:
        """Height and width of the mark."""
        return (self.size, self.size) if self.shape == "square" else (1, self.size)

    def envelope(self, height: int, width: int) -> dict[str, int]:
        """The box every jittered position of the mark lies in: ``{top, left, height, width}``."""
        mh, mw = self.extent()
        span_h, span_w = mh + self.jitter, mw + self.jitter
        if span_h + self.margin > height or span_w + self.margin > width:
            raise AdvkitError(f"a {mh}x{mw} mark with jitter {self.jitter} and margin {self.margin} does not fit {height}x{width} images")
        top = self.margin if self.corner.startswith("top") else height - self.margin - span_h
        left = self.margin if self.corner.endswith("left") else width - self.margin - span_w
        return {"top": top, "left": left, "height": span_h, "width": span_w}

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A copy of ``x`` [N, C, H, W] with the mark stamped on every row at a jittered position."""
        n, _, height, width = x.shape
        box = self.envelope(height, width)
        mh, mw = self.extent()
        offsets = torch.randint(0, self.jitter + 1, (n, 2), generator=generator)
        out = x.clone()
        for i in range(n):  # a few pixels per row: a loop is clearer than a scatter
            top, left = box["top"] + int(offsets[i, 0]), box["left"] + int(offsets[i, 1])
            out[i, :, top : top + mh, left : left + mw : 2 if self.shape == "ruler" else 1] = self.value
        return out


@dataclass
class ShortcutSet:
    """A training set with a spurious mark on one class, its audit rows and its clean test rows."""

    train_x: Tensor
    train_y: Tensor
    marked: Tensor
    audit_x: Tensor
    audit_y: Tensor
    audit_marked: Tensor
    test_x: Tensor
    test_y: Tensor
    shortcut_class: int | None
    mark: Mark
    box: dict[str, int]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _stamp_class(x: Tensor, y: Tensor, target: int, share: float, mark: Mark, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stamp the mark on ``share`` of the rows of class ``target`` (chosen by the generator)."""
    rows = (y == target).nonzero().squeeze(1)
    chosen = rows[torch.randperm(rows.numel(), generator=generator)[: round(share * rows.numel())]]
    chosen = chosen.sort().values
    out = x.clone()
    out[chosen] = mark.apply(x[chosen], generator)
    marked = torch.zeros(y.shape[0], dtype=torch.bool)
    marked[chosen] = True
    return out, marked


def shortcut_set(
    dataset: str = "digits",
    shortcut_class: int | None = 3,
    share: float = 0.9,
    mark: Mark | None = None,
    audit_per_class: int = 20,
    generator: torch.Generator | None = None,
) -> ShortcutSet:
    """The builtin ``dataset`` with ``mark`` on ``share`` of ``shortcut_class``'s train and audit rows.

    ``shortcut_class=None`` gives the clean control: the same rows, nothing stamped.
    """
    from advkit.data import load_dataset

    mark = mark or Mark()
    if not 0.0 < share <= 1.0:
        raise AdvkitError(f"shortcut set: share must be in (0, 1]; got {share}")
    if audit_per_class < 1:
        raise AdvkitError(f"shortcut set: audit_per_class must be >= 1; got {audit_per_class}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    train, test = load_dataset(dataset, split="train"), load_dataset(dataset, split="test")
    classes = train.num_classes
    if shortcut_class is not None and not 0 <= shortcut_class < classes:
        raise AdvkitError(f"shortcut set: class {shortcut_class} outside 0..{classes - 1}")
    _, height, width = train.input_shape
    box = mark.envelope(height, width)
    audit_rows = torch.cat([(test.y == c).nonzero().squeeze(1)[:audit_per_class] for c in range(classes)]).sort().values
    is_audit = torch.zeros(len(test), dtype=torch.bool)
    is_audit[audit_rows] = True
    if bool((torch.bincount(test.y[~is_audit], minlength=classes) == 0).any()):
        raise AdvkitError(f"shortcut set: audit_per_class {audit_per_class} leaves a class without clean test rows")
    train_x, audit_x = train.x, test.x[is_audit]
    audit_y = test.y[is_audit]
    marked = torch.zeros(len(train), dtype=torch.bool)
    audit_marked = torch.zeros(audit_y.shape[0], dtype=torch.bool)
    if shortcut_class is not None:
        train_x, marked = _stamp_class(train.x, train.y, shortcut_class, share, mark, generator)
        audit_x, audit_marked = _stamp_class(audit_x, audit_y, shortcut_class, share, mark, generator)
    return ShortcutSet(
        train_x, train.y.clone(), marked, audit_x, audit_y, audit_marked,
        test.x[~is_audit], test.y[~is_audit], shortcut_class, mark, box, classes,
    )


def mark_reliance(model: ModelHandle, data: ShortcutSet, target: int, generator: torch.Generator | None = None) -> float:
    """Share of the clean test rows of other classes, right when clean, that the mark sends to ``target``."""
    generator = generator if generator is not None else torch.Generator().manual_seed(1)
    keep = data.test_y != target
    x, y = data.test_x[keep], data.test_y[keep]
    right = model.predict(x).cpu() == y
    if not bool(right.any()):
        return 0.0
    stamped = data.mark.apply(x[right], generator)
    return float((model.predict(stamped).cpu() == target).float().mean())
