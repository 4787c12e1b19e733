"""Image folders read lazily: rows are listed from the files' headers and decoded in batches.

An image folder is one sub-folder per class (split by seed), or ``train/`` and ``val/``
(or ``test/``) each holding class folders: the ImageNet layout, taken as it is. Opening
one reads only file names and image headers (mode and size, no pixels), so the split,
``--limit`` and every check on sizes happen before a pixel is decoded:

- :func:`open_image_folder` returns :class:`FolderRows`, the split's rows in split order
  with their labels; ``head(N)`` keeps the first N rows (the split's order is a seeded
  stratified shuffle, so the first N are a stratified random sample).
- :meth:`FolderRows.batches` decodes rows batch by batch through a ``torch`` DataLoader
  whose workers decode the next batches while the caller computes (memory: a few
  batches, whatever the number of rows); :meth:`FolderRows.materialize` decodes every
  row into an in-memory :class:`~advkit.data.dataset.Dataset`, with the same pixels.

Decoding (greyscale/RGB conversion, resizing and centre-cropping with ``image_size``) is
that of :mod:`advkit.data.formats`. The folder is colour when any of its images is
(greyscale images then carry their grey value in each channel), else greyscale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advkit.data.dataset import Dataset, split_index
from advkit.data.formats import GREY_MODES, IMAGE_SUFFIXES, _decode, read_image, resize_settings
from advkit.errors import AdvkitError

ERROR = "__advkit_error__"


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dirs(folder: Path) -> tuple[Path, Path] | None:
    """``train/`` and ``val/`` (or ``test/``) each holding class folders: the ImageNet layout."""
    train = folder / "train"
    test = next((folder / name for name in ("val", "test") if (folder / name).is_dir()), None)
    if train.is_dir() and test is not None and class_dirs(train) and class_dirs(test):
        return train, test
    return None


def _list_images(dirs: list[Path], names: list[str]) -> tuple[list[Path], list[int]]:
    """Every image file under the class folders (sorted), labelled by its folder's index in ``names``."""
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in dirs:
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise AdvkitError(f"{class_dir}: class folder has no images")
        files += found
        labels += [names.index(class_dir.name)] * len(found)
    return files, labels


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and size from its header, without decoding its pixels."""
    return read_image(path, lambda img: (img.mode, img.size))


@dataclass
class FolderRows:
    """The rows of one split of an image folder, decoded on demand.

    ``files`` and ``y`` are in split order; ``all_files`` are every image of the folder
    (what provenance hashes); ``colour`` says whether rows decode to 3 channels;
    ``resize`` is ``(S, shorter side)`` with ``image_size``, else ``None``.
    """

    files: list[Path]
    y: Tensor
    classes: list[str]
    name: str
    colour: bool
    resize: tuple[int, int] | None
    all_files: list[Path] = field(default_factory=list)
    preprocessing: dict[str, Any] | None = None
    _shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self._shape = tuple(self.decode_row(0).shape)  # type: ignore[assignment]
        return self._shape  # type: ignore[return-value]

    def head(self, limit: int | None) -> FolderRows:
        """The first ``limit`` rows (all rows for ``None``)."""
        if limit is None:
            return self
        if limit <= 0:
            raise AdvkitError(f"--limit must be a positive number of rows; got {limit}")
        return replace(self, files=self.files[:limit], y=self.y[:limit])

    def decode_row(self, index: int) -> Tensor:
        """Row ``index`` as float32 ``[C, H, W]`` in ``[0, 1]``; a bad file is one line naming it."""
        path = self.files[index]
        arr = _decode(path, self.resize)
        if arr.dtype == np.uint8:
            pixels = torch.from_numpy(np.array(arr, copy=True)).float().div_(255.0)
        else:
            pixels = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
            if not bool(torch.isfinite(pixels).all()) or float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0:
                raise AdvkitError(f"{path}: float pixels must lie in [0, 1]")
        if pixels.ndim == 2:  # greyscale: one channel, or its grey value in each of 3 in a colour folder
            pixels = pixels[None].expand(3 if self.colour else 1, -1, -1)
        else:
            pixels = pixels.permute(2, 0, 1)
        pixels = pixels.contiguous()
        if self._shape is not None and tuple(pixels.shape) != self._shape:
            (_, h, w), (_, h0, w0) = pixels.shape, self._shape
            raise AdvkitError(
                f"{path}: image size {w}x{h} differs from {w0}x{h0} of the others; pass --image-size S "
                "(config: image_size) to resize and centre-crop every image to S x S"
            )
        return pixels

    def decode(self, indices: Any) -> Tensor:
        """The rows at ``indices`` decoded, ``[n, C, H, W]`` (in this process)."""
        rows = [self.decode_row(int(i)) for i in indices]
        if not rows:
            return torch.empty((0, *self.input_shape))
        return torch.stack(rows)

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(row ids, x, y)`` per batch of ``batch_size`` rows, in order, decoded ahead by ``workers`` processes.

        ``workers`` defaults to half the CPUs (at most 4); 0 decodes in this process.
        """
        if batch_size < 1:
            raise AdvkitError(f"--batch-size must be >= 1; got {batch_size}")
        _ = self.input_shape  # decode one row first: a folder of unreadable files fails here, in one line
        workers = default_workers() if workers is None else workers
        loader = torch.utils.data.DataLoader(
            _Decoder(self), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
            prefetch_factor=2 if workers else None, persistent_workers=False,
        )
        for batch in loader:
            if isinstance(batch, str):
                raise AdvkitError(batch)
            ids, x = batch
            yield ids, x, self.y[ids]

    def materialize(self) -> Dataset:
        """Every row decoded into memory: the same pixels as decoding batch by batch."""
        parts = [x for _, x, _ in self.batches(256, workers=0)] if len(self) else []
        x = torch.cat(parts) if parts else torch.empty((0, *self.input_shape))
        return Dataset(x, self.y.clone(), list(self.classes), self.name, list(self.all_files), self.preprocessing)


class _Decoder(torch.utils.data.Dataset):
    """One row per item for the DataLoader; an error travels back as its one-line message."""

    def __init__(self, rows: FolderRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, Tensor] | str:
        try:
            return index, self.rows.decode_row(index)
        except AdvkitError as exc:
            return ERROR + str(exc)


def _collate(items: list[Any]) -> tuple[Tensor, Tensor] | str:
    for item in items:
        if isinstance(item, str):
            return item[len(ERROR):]
    shapes = {tuple(x.shape) for _, x in items}
    if len(shapes) > 1:
        return "image sizes differ within the folder; pass --image-size S (config: image_size) to resize and centre-crop every image to S x S"
    return torch.tensor([i for i, _ in items]), torch.stack([x for _, x in items])


def default_workers() -> int:
    """Decoding processes: half the CPUs, at most 4 (at least 1 on a machine with 2 or more)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus // 2))


def open_image_folder(
    folder: Path, split: str, seed: int, image_size: int | None = None, crop_fraction: float = 0.875
) -> FolderRows:
    """List a folder's split without decoding: labels from folder names, modes and sizes from headers.

    Without ``image_size`` every image must have one size (checked on the headers, so a
    folder of mixed sizes fails before any work); with it, images are resized and cropped
    as :mod:`advkit.data.formats` describes.
    """
    preprocessing = resize_settings(image_size, crop_fraction) if image_size is not None else None
    resize = (image_size, preprocessing["resize_shorter_side"]) if image_size is not None and preprocessing else None
    layout = split_dirs(folder)
    if layout is not None:
        names = sorted({d.name for part in layout for d in class_dirs(part)})
        listed = [_list_images(class_dirs(part), names) for part in layout]
        parts = {"train": [0], "test": [1], "all": [0, 1]}.get(split)
        if parts is None:
            raise AdvkitError(f"--split must be train, test or all; got {split!r}")
        files = [f for i in parts for f in listed[i][0]]
        labels = [label for i in parts for label in listed[i][1]]
        all_files = listed[0][0] + listed[1][0]
        order = np.arange(len(files))
        name = f"{folder.name}:{split}"
    else:
        dirs = class_dirs(folder)
        if not dirs:
            raise AdvkitError(f"{folder}: not a known dataset layout (no IDX, CIFAR or class sub-folders)")
        names = [d.name for d in dirs]
        files, labels = _list_images(dirs, names)
        all_files = list(files)
        name = folder.name
        order = _split_order(np.array(labels, dtype=np.int64), names, name, split, seed)
    headers = {path: _header(path) for path in all_files}
    colour = any(mode not in GREY_MODES for mode, _ in headers.values())
    rows = [files[i] for i in order]
    if resize is None:  # a plain folder is one set; each part of the ImageNet layout is one (and "all" both)
        _check_one_size(files, headers)
    y = torch.tensor(labels, dtype=torch.long)[torch.from_numpy(order)]
    return FolderRows(rows, y, names, name, colour, resize, all_files, preprocessing)


def _split_order(labels: np.ndarray, names: list[str], name: str, split: str, seed: int) -> np.ndarray:
    """The row order of ``split``: the seeded stratified split of the labels alone."""
    if split not in ("train", "test", "all"):
        raise AdvkitError(f"--split must be train, test or all; got {split!r}")
    return np.arange(len(labels)) if split == "all" else split_index(labels, split, seed, name, names)


def _check_one_size(files: list[Path], headers: dict[Path, tuple[str, tuple[int, int]]]) -> None:
    """Without ``image_size`` every image of the split needs one size: one line naming the first that differs."""
    first = files[0]
    w0, h0 = headers[first][1]
    for path in files[1:]:
        w, h = headers[path][1]
        if (w, h) != (w0, h0):
            raise AdvkitError(
                f"{path}: image size {w}x{h} differs from {w0}x{h0} of the others; pass --image-size S "
                "(config: image_size) to resize and centre-crop every image to S x S"
            )


def load_image_folder(
    folder: Path, split: str, seed: int, image_size: int | None = None, crop_fraction: float = 0.875
) -> Dataset:
    """One sub-folder per class (sorted names), split by seed; or ``train/`` and ``val/`` each holding them.

    Without ``image_size`` nothing is resized and all images must share one size. With
    it, every image is resized so its shorter side is ``round(image_size / crop_fraction)``
    (Pillow bilinear, antialiased) and centre-cropped to ``image_size`` squared, the
    torchvision/timm evaluation convention; ``Dataset.preprocessing`` records it.
    Greyscale images load as one channel when every image is greyscale, else as RGB with
    the grey value in each channel; 16-bit greyscale keeps its full range. Only the
    split's rows are decoded.
    """
    return open_image_folder(folder, split, seed, image_size, crop_fraction).materialize()
