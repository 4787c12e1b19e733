"""Datasets: builtin sets that ship in packages and readers for users' files.

``load_dataset(spec, split)`` is the one entry point: ``spec`` is a builtin name
(``digits``, ``mnist5k``) or a path (IDX directory, CIFAR-10 binary directory, ``.npz``,
image folder). Builtin, npz and folder data are split by a fixed seed (``split_seed``),
independent of the experiment seed, so the test split never overlaps training rows.
``image_size`` resizes and centre-crops an image folder's images (of any sizes) to one
square size; arrays are never resized.

``open_rows`` is the streaming entry point: an image folder comes back as
:class:`~advkit.data.folder.FolderRows` (listed from the file headers, decoded batch by
batch), any other data as the in-memory :class:`Dataset`. :func:`streams` says whether a
command should read it batch by batch (decoded, it would take more than
:data:`STREAM_ABOVE_BYTES`) or decode it whole: the pixels are the same either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advkit.data.builtin import BUILTIN
from advkit.data.dataset import Dataset, from_arrays, seeded_split
from advkit.data.folder import FolderRows, load_image_folder, open_image_folder
from advkit.data.formats import (
    is_cifar_dir,
    is_idx_dir,
    load_cifar_dir,
    load_idx_dir,
    load_npz,
    read_idx,
    resize_settings,
)
from advkit.errors import AdvkitError

__all__ = ["Dataset", "FolderRows", "from_arrays", "load_dataset", "open_rows", "read_idx", "seeded_split", "streams"]

STREAM_ABOVE_BYTES = 256 * 2**20
"""Folders whose decoded rows would take more than this are read batch by batch."""


def streams(rows: Dataset | FolderRows) -> bool:
    """Whether ``rows`` are read batch by batch (a folder too large to decode whole), not held in memory."""
    if not isinstance(rows, FolderRows):
        return False
    c, h, w = rows.input_shape
    return len(rows) * c * h * w * 4 > STREAM_ABOVE_BYTES


def open_rows(
    spec: str,
    split: str = "test",
    limit: int | None = None,
    split_seed: int = 0,
    *,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> Dataset | FolderRows:
    """Like :func:`load_dataset`, but an image folder's rows stay on disk until read (``--limit``: only N of them)."""
    if split not in ("train", "test", "all"):
        raise AdvkitError(f"--split must be train, test or all; got {split!r}")
    path = Path(spec)
    if spec not in BUILTIN and path.is_dir() and not is_idx_dir(path) and not is_cifar_dir(path):
        image_size, crop_fraction = _check_resize(image_size, crop_fraction)
        return open_image_folder(path, split, split_seed, image_size, crop_fraction).head(limit)
    return load_dataset(spec, split, limit, split_seed, image_size=image_size, crop_fraction=crop_fraction)


def load_dataset(
    spec: str,
    split: str = "test",
    limit: int | None = None,
    split_seed: int = 0,
    *,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> Dataset:
    """Load a builtin name or a path, pick the split, keep the first ``limit`` rows.

    ``image_size`` S makes an image folder's images S x S: each is resized so its shorter
    side is ``round(S / crop_fraction)`` with Pillow's bilinear filter (antialiased when
    downscaling, ``Image.resize(..., BILINEAR, reducing_gap=None)``), then its centre
    S x S is cropped: the torchvision/timm evaluation convention ``Resize(round(S / 0.875))``
    + ``CenterCrop(S)``, recorded in ``Dataset.preprocessing``. Data stored as arrays
    (builtin sets, IDX, CIFAR-10, ``.npz``) have a fixed size: an ``image_size`` equal
    to it changes nothing, any other is refused. Without ``image_size`` nothing is
    resized and a folder of images of several sizes is refused.
    """
    if split not in ("train", "test", "all"):
        raise AdvkitError(f"--split must be train, test or all; got {split!r}")
    image_size, crop_fraction = _check_resize(image_size, crop_fraction)
    kind = None
    if spec in BUILTIN:
        data = seeded_split(BUILTIN[spec](), split, split_seed)
        kind = f"the builtin set {spec}"
    else:
        path = Path(spec)
        if not path.exists():
            raise AdvkitError(
                f"--data {spec}: no such file or directory (builtin sets: {', '.join(BUILTIN)})"
            )
        if path.is_file():
            if path.suffix.lower() != ".npz":
                raise AdvkitError(f"--data {spec}: unsupported file type (expected .npz or a directory)")
            data, kind = load_npz(path, split, split_seed), ".npz data"
        elif is_idx_dir(path):
            data, kind = load_idx_dir(path, split), "IDX data"
        elif is_cifar_dir(path):
            data, kind = load_cifar_dir(path, split), "CIFAR-10 data"
        else:
            data = load_image_folder(path, split, split_seed, image_size=image_size, crop_fraction=crop_fraction)
    if kind is not None and image_size is not None:
        _check_fixed_size(data, spec, kind, image_size)
    return data.head(limit)


def _check_resize(image_size: int | None, crop_fraction: float) -> tuple[int | None, float]:
    """``image_size`` a whole number >= 1, ``crop_fraction`` in (0, 1], the resized images not absurdly large.

    Returns them as a plain ``int`` (or ``None``) and ``float``, as the record keeps them.
    """
    if not isinstance(crop_fraction, int | float) or isinstance(crop_fraction, bool) or not 0 < crop_fraction <= 1:
        raise AdvkitError(f"crop_fraction must be in (0, 1] (0.875: the ImageNet evaluation crop); got {crop_fraction!r}")
    if image_size is None:
        return None, float(crop_fraction)
    if not isinstance(image_size, int | np.integer) or isinstance(image_size, bool) or image_size < 1:
        raise AdvkitError(f"--image-size (config: image_size) must be a whole number >= 1; got {image_size!r}")
    from PIL import Image

    shorter = resize_settings(int(image_size), crop_fraction)["resize_shorter_side"]
    if Image.MAX_IMAGE_PIXELS is not None and shorter * shorter > Image.MAX_IMAGE_PIXELS:
        raise AdvkitError(
            f"--image-size {image_size} with crop_fraction {crop_fraction:g} resizes images to a shorter side of {shorter} pixels, "
            f"over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels per image; choose a smaller size"
        )
    return int(image_size), float(crop_fraction)


def _check_fixed_size(data: Dataset, spec: str, kind: str, image_size: int) -> None:
    """Arrays are never resized: ``image_size`` must be their own (square) size."""
    h, w = data.input_shape[1:]
    if (h, w) != (image_size, image_size):
        hint = f"pass {h} or leave it out" if h == w else "leave it out"
        raise AdvkitError(
            f"--data {spec}: {kind} has a fixed image size of {w}x{h}; --image-size {image_size} (config: image_size) "
            f"resizes image folders only ({hint})"
        )
