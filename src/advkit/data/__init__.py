"""Datasets: builtin sets that ship in packages and readers for users' files.

``load_dataset(spec, split)`` is the one entry point: ``spec`` is a builtin name
(``digits``, ``mnist5k``) or a path (IDX directory, CIFAR-10 binary directory, ``.npz``,
image folder). Builtin, npz and folder data are split by a fixed seed (``split_seed``),
independent of the experiment seed, so the test split never overlaps training rows.
"""

from __future__ import annotations

from pathlib import Path

from advkit.data.builtin import BUILTIN
from advkit.data.dataset import Dataset, from_arrays, seeded_split
from advkit.data.formats import (
    is_cifar_dir,
    is_idx_dir,
    load_cifar_dir,
    load_idx_dir,
    load_image_folder,
    load_npz,
    read_idx,
)
from advkit.errors import AdvkitError

__all__ = ["Dataset", "from_arrays", "load_dataset", "read_idx", "seeded_split"]


def load_dataset(spec: str, split: str = "test", limit: int | None = None, split_seed: int = 0) -> Dataset:
    """Load a builtin name or a path, pick the split, keep the first ``limit`` rows."""
    if split not in ("train", "test", "all"):
        raise AdvkitError(f"--split must be train, test or all; got {split!r}")
    if spec in BUILTIN:
        data = seeded_split(BUILTIN[spec](), split, split_seed)
    else:
        path = Path(spec)
        if not path.exists():
            raise AdvkitError(
                f"--data {spec}: no such file or directory (builtin sets: {', '.join(BUILTIN)})"
            )
        if path.is_file():
            if path.suffix.lower() != ".npz":
                raise AdvkitError(f"--data {spec}: unsupported file type (expected .npz or a directory)")
            data = load_npz(path, split, split_seed)
        elif is_idx_dir(path):
            data = load_idx_dir(path, split)
        elif is_cifar_dir(path):
            data = load_cifar_dir(path, split)
        else:
            data = load_image_folder(path, split, split_seed)
    return data.head(limit)
