"""The in-memory dataset every loader returns, and the seeded train/test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from advkit.errors import AdvkitError


@dataclass
class Dataset:
    """Images ``x`` as float32 ``[N, C, H, W]`` in ``[0, 1]``, integer labels ``y``.

    ``preprocessing`` records how the images were made from the files when they were
    resized and cropped (``image_size``, ``crop_fraction``, ``resize_shorter_side``,
    ``interpolation``, ``crop``); ``None`` when the pixels are the files' own.
    """

    x: Tensor
    y: Tensor
    classes: list[str]
    name: str
    files: list[Path] = field(default_factory=list)
    preprocessing: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor | np.ndarray | slice) -> Dataset:
        """The rows at ``index`` (labels, class names, files and preprocessing kept)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        preprocessing = dict(self.preprocessing) if self.preprocessing is not None else None
        return Dataset(self.x[index], self.y[index], list(self.classes), self.name, list(self.files), preprocessing)

    def head(self, limit: int | None) -> Dataset:
        """The first ``limit`` rows (all rows for ``None``)."""
        if limit is None:
            return self
        if limit <= 0:
            raise AdvkitError(f"--limit must be a positive number of rows; got {limit}")
        return self.subset(slice(0, limit))


def from_arrays(
    x: np.ndarray, y: np.ndarray, name: str, classes: list[str] | None = None, files: list[Path] | None = None
) -> Dataset:
    """Build a :class:`Dataset` from numpy arrays, checking and scaling them.

    ``x`` may be ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (C in 1, 3);
    ``uint8`` pixels are scaled to ``[0, 1]``, float pixels must already lie there.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise AdvkitError(f"{name}: images must be [N, H, W] or [N, C, H, W]; got shape {list(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise AdvkitError(f"{name}: {x.shape[0]} images but labels have shape {list(y.shape)}")
    if x.shape[0] == 0:
        raise AdvkitError(f"{name}: the dataset has no rows")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise AdvkitError(f"{name}: labels must be integers; got dtype {y.dtype}")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.require(x, requirements=["C", "W"])).float().div_(255.0)
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        xt = torch.from_numpy(np.require(x, dtype=np.float32, requirements=["C", "W"]))
        finite = torch.isfinite(xt).flatten(1).all(1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise AdvkitError(f"{name}: row {row} has NaN or infinite pixels")
        if float(xt.min()) < 0.0 or float(xt.max()) > 1.0:
            raise AdvkitError(
                f"{name}: float pixels span [{float(xt.min()):.4g}, {float(xt.max()):.4g}]; "
                "store uint8 (0-255) or floats scaled to [0, 1]"
            )
    else:
        raise AdvkitError(f"{name}: unsupported pixel dtype {x.dtype}")
    yt = torch.from_numpy(y.astype(np.int64))
    if bool((yt < 0).any()):
        row = int((yt < 0).nonzero()[0])
        raise AdvkitError(f"{name}: row {row} has negative label {int(yt[row])}")
    count = int(yt.max()) + 1
    if classes is None:
        classes = [str(i) for i in range(count)]
    elif count > len(classes):
        row = int((yt >= len(classes)).nonzero()[0])
        raise AdvkitError(f"{name}: row {row} has label {int(yt[row])} but only {len(classes)} classes are named")
    return Dataset(xt, yt, list(classes), name, list(files or []))


def seeded_split(data: Dataset, split: str, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Stratified train/test split, the same for the same seed on every machine."""
    if split not in ("train", "test", "all"):
        raise AdvkitError(f"--split must be train, test or all; got {split!r}")
    if split == "all":
        return data
    return data.subset(split_index(data.y.numpy(), split, seed, data.name, data.classes, test_fraction))


def split_index(labels: np.ndarray, split: str, seed: int, name: str, classes: list[str], test_fraction: float = 0.25) -> np.ndarray:
    """The row indices of ``split`` (``train``/``test``) in :func:`seeded_split`'s order, from the labels alone."""
    _check_splittable(name, classes, labels, test_fraction)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    # Shuffled order (not sorted): files sorted by class would make --limit N one class.
    return train_idx if split == "train" else test_idx


def _check_splittable(name: str, classes: list[str], labels: np.ndarray, test_fraction: float) -> None:
    """One line when the rows are too few for a stratified train/test split.

    Each class must appear in both parts, so it needs at least two rows, and each part
    needs at least one row per class (the rule scikit-learn enforces with a traceback).
    """
    rows = len(labels)
    hint = "add rows, or use --split all to take every row unsplit"
    if rows < 2:
        raise AdvkitError(f"{name}: {rows} row cannot be split into train and test; {hint}")
    present, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        lonely = present[counts < 2]
        names = ", ".join(repr(classes[int(c)]) for c in lonely[:5]) + (" ..." if len(lonely) > 5 else "")
        raise AdvkitError(
            f"{name}: {'class' if len(lonely) == 1 else 'classes'} {names} {'has' if len(lonely) == 1 else 'have'} a single row; a stratified train/test split needs at least 2 rows per class; {hint}"
        )
    n_test = int(np.ceil(test_fraction * rows))
    n_train = rows - n_test
    if min(n_test, n_train) < len(present):
        raise AdvkitError(
            f"{name}: {rows} rows of {len(present)} classes are too few for a stratified split "
            f"({n_test} test and {n_train} train rows must each hold every class; needs about "
            f"{int(np.ceil(len(present) / min(test_fraction, 1 - test_fraction)))} rows); {hint}"
        )
