"""Readers for the dataset formats users bring, each refusing bad files with one line.

- IDX (LeCun et al., the MNIST family incl. Fashion-/K-MNIST), plain or gzip.
- CIFAR-10 binary batches (Krizhevsky 2009): records of 1 label byte + 3,072 pixels.
- ``.npz`` with arrays ``x``, ``y`` (or ``x_train``/``y_train``/``x_test``/``y_test``),
  read with ``allow_pickle=False``.
- An image folder: one sub-folder per class, or ``train/`` and ``val/`` each holding them
  (the ImageNet layout), read with Pillow. Without ``image_size`` the pixels are the
  files' own and every image must have one size. With ``image_size`` S each image is
  decoded, converted (greyscale/RGB as below), resized so its shorter side is
  ``round(S / crop_fraction)`` and centre-cropped to S x S, one image at a time, so
  memory holds only the cropped images. That is the torchvision/timm evaluation
  convention, ``Resize(round(S / 0.875))`` + ``CenterCrop(S)`` (256 then 224 for
  ImageNet), done with Pillow exactly as torchvision does on PIL images:
  ``Image.resize(size, BILINEAR, reducing_gap=None)`` (bilinear, antialiased when
  downscaling), the longer side ``int(R * long / short)``, the crop's corner at
  ``round((side - S) / 2)``. Arrays (builtin sets, IDX, CIFAR, ``.npz``) are never
  resized.
"""

from __future__ import annotations

import gzip
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from advkit.data.dataset import Dataset, from_arrays, seeded_split
from advkit.errors import AdvkitError

T = TypeVar("T")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
CIFAR_RECORD = 1 + 3 * 32 * 32
WIDE_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
GREY_MODES = {"L", "LA", "1", *WIDE_GREY}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise AdvkitError(f"{path}: no such file") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise AdvkitError(f"{path}: cannot read ({exc.__class__.__name__}: {exc}); truncated or not gzip?") from None
    except OSError as exc:
        raise AdvkitError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file; check its magic number, rank and that its size matches the header."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise AdvkitError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero1 or zero2 or code not in IDX_DTYPES or ndim == 0:
        raise AdvkitError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    if expect_ndim is not None and ndim != expect_ndim:
        raise AdvkitError(
            f"{path}: IDX magic number 0x{magic:08x} says {ndim}-D data, expected {expect_ndim}-D"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AdvkitError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        state = "truncated" if found < expected else "has trailing bytes"
        raise AdvkitError(f"{path}: IDX file {state}: header promises {expected} data bytes, found {found}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_one(folder: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def _idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    images = _find_one(folder, [f"{prefix}-images-idx3-ubyte*", f"{prefix}-images.idx3-ubyte*", f"{prefix}*images*idx3*"])
    labels = _find_one(folder, [f"{prefix}-labels-idx1-ubyte*", f"{prefix}-labels.idx1-ubyte*", f"{prefix}*labels*idx1*"])
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = "images" if images is None else "labels"
        raise AdvkitError(f"{folder}: found {prefix} {'labels' if images is None else 'images'} but no {prefix} {missing} IDX file")
    return images, labels


def is_idx_dir(folder: Path) -> bool:
    return any(folder.glob("*idx3*")) or any(folder.glob("*idx1*"))


def load_idx_dir(folder: Path, split: str) -> Dataset:
    """An MNIST-family directory: ``train-*`` for the train split, ``t10k-*`` for test."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise AdvkitError(f"{folder}: IDX data has train and test parts; --split must be train or test")
    pair = _idx_pair(folder, prefix)
    if pair is None:
        raise AdvkitError(f"{folder}: no {prefix}-images-idx3-ubyte / {prefix}-labels-idx1-ubyte files")
    images, labels = read_idx(pair[0], expect_ndim=3), read_idx(pair[1], expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise AdvkitError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return from_arrays(images, labels.astype(np.int64), f"{folder.name}:{split}", files=list(pair))


def is_cifar_dir(folder: Path) -> bool:
    return any(folder.glob("data_batch_*.bin")) or (folder / "test_batch.bin").is_file()


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: ``[N, 3, 32, 32]`` uint8 pixels and labels."""
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise AdvkitError(
            f"{path}: CIFAR-10 binary batches hold records of {CIFAR_RECORD} bytes; "
            f"{len(raw)} bytes is not a whole number of records (truncated?)"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return table[:, 1:].reshape(-1, 3, 32, 32), table[:, 0].astype(np.int64)


def load_cifar_dir(folder: Path, split: str) -> Dataset:
    """A CIFAR-10 binary directory; class names from ``batches.meta.txt`` when present."""
    if split == "train":
        files = sorted(folder.glob("data_batch_*.bin"))
    elif split == "test":
        files = [folder / "test_batch.bin"] if (folder / "test_batch.bin").is_file() else []
    else:
        raise AdvkitError(f"{folder}: CIFAR data has train and test parts; --split must be train or test")
    if not files:
        raise AdvkitError(f"{folder}: no CIFAR-10 {split} batch files")
    parts = [read_cifar_batch(f) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    classes = None
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        try:
            text = _read_bytes(meta).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AdvkitError(f"{meta}: class names must be UTF-8 text, one per line; byte {exc.start} is not") from None
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    return from_arrays(x, y, f"{folder.name}:{split}", classes, files=files + ([meta] if classes else []))


def load_npz(path: Path, split: str, seed: int) -> Dataset:
    """``x``/``y`` arrays (split by seed) or explicit ``x_train``... arrays; never unpickles."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise AdvkitError(f"{path}: no such file") from None
    except ValueError as exc:
        if "pickle" in str(exc):
            # numpy's own message advises allow_pickle=True; advkit never takes that advice.
            raise AdvkitError(f"{path}: not an .npz archive: it reads as Python objects (a pickle), which advkit never loads") from None
        raise AdvkitError(f"{path}: not a readable .npz archive ({' '.join(str(exc).split())[:200]})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise AdvkitError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise AdvkitError(f"{path}: holds a single .npy array, not an .npz archive of arrays 'x' and 'y' (np.savez)")
    with archive:
        keys = set(archive.files)

        def get(key: str) -> np.ndarray:
            try:
                return archive[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise AdvkitError(
                        f"{path}: array {key!r} holds Python objects (pickles), which advkit never loads; store numeric arrays"
                    ) from None
                raise AdvkitError(f"{path}: array {key!r} is unreadable ({' '.join(str(exc).split())[:200]}); truncated?") from None
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
                raise AdvkitError(f"{path}: array {key!r} is unreadable ({exc}); truncated?") from None

        classes = [str(c) for c in get("classes").tolist()] if "classes" in keys else None
        if split in ("train", "test") and {f"x_{split}", f"y_{split}"} <= keys:
            return from_arrays(get(f"x_{split}"), get(f"y_{split}"), f"{path.name}:{split}", classes, [path])
        if not {"x", "y"} <= keys:
            raise AdvkitError(f"{path}: expected arrays 'x' and 'y'; found {sorted(keys)}")
        data = from_arrays(get("x"), get("y"), path.name, classes, [path])
    return seeded_split(data, split, seed)


def resize_settings(image_size: int, crop_fraction: float) -> dict[str, Any]:
    """What resizing to ``image_size`` does, as recorded in :attr:`Dataset.preprocessing`."""
    return {
        "image_size": image_size,
        "crop_fraction": crop_fraction,
        "resize_shorter_side": max(image_size, round(image_size / crop_fraction)),
        "interpolation": "bilinear, antialiased",
        "crop": "centre",
    }


def _resize_crop(img: Any, size: int, shorter: int) -> Any:
    """Shorter side to ``shorter`` (bilinear, antialiased), then the centre ``size`` x ``size``.

    The arithmetic of torchvision's ``Resize(int)`` and ``CenterCrop`` on PIL images.
    """
    from PIL import Image

    w, h = img.size
    new_w, new_h = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _pixels(img: Any, resize: tuple[int, int] | None) -> np.ndarray:
    """One image as ``[H, W]`` (greyscale) or ``[H, W, 3]`` (colour): uint8, or float in [0, 1] for 16-bit grey.

    Greyscale modes become ``L``, others ``RGB`` (alpha dropped), before any resize
    (``resize`` = (S, shorter side)). Pillow's own ``convert("L")`` clips 16-bit values at
    255 instead of scaling them, so 16-bit grey is divided by 65535 here and resized as
    floats (mode ``F``).
    """
    from PIL import Image

    if img.mode in WIDE_GREY:
        grey = np.asarray(img, dtype=np.float64)
        if img.mode != "F":  # float TIFF: must already lie in [0, 1]
            grey = grey / 65535.0
        grey = grey.astype(np.float32)
        if resize is None:
            return grey
        resized = np.asarray(_resize_crop(Image.fromarray(grey), *resize), dtype=np.float32)
        # Bilinear weights are positive and sum to one: clipping to the input's range only
        # removes float rounding (a 1.0000001 would fail the [0, 1] check).
        return np.clip(resized, grey.min(), grey.max())
    img = img.convert("L" if img.mode in GREY_MODES else "RGB")
    if resize is not None:
        img = _resize_crop(img, *resize)
    return np.asarray(img, dtype=np.uint8)


def read_image(path: Path, use: Callable[[Any], T]) -> T:
    """``use(img)`` on the opened image; a bad file (unreadable, a decompression bomb) is one line naming it.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; both are refused.
    Reading only the header (mode, size) and decoding the pixels share these guards.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return use(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise AdvkitError(f"{path}: refused as a possible decompression bomb ({' '.join(str(exc).split())})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise AdvkitError(f"{path}: unreadable image ({' '.join(str(exc).split())[:200]})") from None


def _decode(path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file into :func:`_pixels`; a bad file is one line naming it."""

    def pixels(img: Any) -> np.ndarray:
        img.load()
        return _pixels(img, resize)

    return read_image(path, pixels)
