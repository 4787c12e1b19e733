"""Training recipes: how advkit builds, trains and labels a model for an architecture.

``advkit train`` and the audit's training steps (adversarial training, certified
training, the poisoned model of a backdoor scenario) do the same things: build a fresh
network of a named architecture from a seed, take the learning rate and the epochs
from the zoo's recipe for that architecture when none is given, build the defense
objective with its warm-up (the first tenth of the epochs, counted in optimiser steps)
and write the metadata saved with the model. This module is that one place; it prints
nothing and reports progress through the callback it is given.

- :func:`train_recipe` trains a model; it returns a :class:`TrainedModel`.
- :func:`objective_for` is the training objective for a defense name (``None`` for
  standard training), :func:`warmup_steps` its warm-up.
- :func:`training_metadata` is the ``extra`` metadata ``advkit train`` saves.
- :func:`default_arch`, :func:`zoo_lr`, :func:`zoo_epochs`: the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.data.dataset import Dataset
    from advkit.models.train import Objective, Progress, TrainReport

DEFAULT_LR = 2e-3
"""Learning rate of an architecture the zoo has no recipe for."""
DEFAULT_EPOCHS = 20
"""Epochs of an architecture the zoo has no recipe for."""
DEFAULT_BATCH_SIZE = 64
STANDARD = ("none", "standard")
"""Names of plain empirical risk minimisation (no defense objective)."""


@dataclass(frozen=True)
class TrainedModel:
    """A freshly trained model and its training report."""

    handle: ModelHandle
    report: TrainReport

    @property
    def metadata(self) -> dict[str, Any]:
        """The ``extra`` metadata saved with the model."""
        return self.handle.info.extra


def defense_names() -> tuple[str, ...]:
    """Every name ``--defense`` takes: ``none``, the adversarial and the certified objectives."""
    from advkit.certify.training import CERTIFIED_TRAINING
    from advkit.defenses.adversarial_training import DEFENSES

    return ("none", *DEFENSES, *CERTIFIED_TRAINING)


def check_defense(defense: str, option: str = "--defense") -> None:
    """Raise an :class:`AdvkitError` naming the choices when ``defense`` is not one of them."""
    names = defense_names()
    if defense not in names:
        raise AdvkitError(f"{option} must be one of {', '.join(names)}; got {defense!r}")


def is_adversarial(defense: str) -> bool:
    """Whether ``defense`` is an adversarial-training objective (it takes ``eps``)."""
    from advkit.defenses.adversarial_training import DEFENSES

    return defense in DEFENSES


def is_certified(defense: str) -> bool:
    """Whether ``defense`` is a certified-training objective (it takes ``sigma``)."""
    from advkit.certify.training import CERTIFIED_TRAINING

    return defense in CERTIFIED_TRAINING


def default_arch(image_size: int) -> str:
    """The zoo architecture for an image size (a grey-box attacker's guess when none is named)."""
    return "digits-cnn" if image_size == 8 else "mnist-cnn" if image_size == 28 else "resnet8"


def zoo_lr(arch: str) -> float:
    """The zoo recipe's learning rate for ``arch``, else :data:`DEFAULT_LR`."""
    from advkit.models.zoo import ZOO

    return ZOO[arch].lr if arch in ZOO else DEFAULT_LR


def zoo_epochs(arch: str) -> int:
    """The zoo recipe's epochs for ``arch``, else :data:`DEFAULT_EPOCHS`."""
    from advkit.models.zoo import ZOO

    return ZOO[arch].epochs if arch in ZOO else DEFAULT_EPOCHS


def warmup_steps(rows: int, epochs: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Optimiser steps in the first tenth of the epochs (at least one epoch)."""
    return -(-rows // batch_size) * max(1, epochs // 10)


def objective_for(
    defense: str,
    *,
    rows: int,
    epochs: int,
    eps: float = 0.2,
    norm: str = "linf",
    sigma: float = 0.25,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Objective | None:
    """The training objective of a defense; ``None`` (cross-entropy) for ``none``/``standard``.

    Adversarial objectives (``adv-pgd``, ``adv-fast``, ``trades``) take ``eps`` and ``norm``
    and ramp the budget over :func:`warmup_steps`; certified ones (``gaussian``,
    ``smoothadv``, ``macer``) take ``sigma`` (SmoothAdv ramps its eps the same way).
    ``rows`` and ``batch_size`` count the optimiser steps of an epoch.
    """
    from advkit.certify.training import CERTIFIED_TRAINING, certified_objective
    from advkit.defenses.adversarial_training import DEFENSES

    if defense in STANDARD:
        return None
    if defense in CERTIFIED_TRAINING:
        return certified_objective(defense, sigma, rows=rows, epochs=epochs, batch_size=batch_size)
    if defense in DEFENSES:
        return DEFENSES[defense](eps=eps, norm=norm, warmup_steps=warmup_steps(rows, epochs, batch_size))
    raise AdvkitError(f"unknown training objective {defense!r}; known: {', '.join(defense_names())}")


def training_metadata(defense: str, *, eps: float | None = None, sigma: float | None = None, trained_on: str | None = None) -> dict[str, Any]:
    """The ``extra`` metadata ``advkit train`` saves: where it trained, the objective, its eps and sigma.

    ``eps`` is recorded for adversarial objectives only (``None`` otherwise); ``sigma``
    is added for certified ones; ``trained_on`` (e.g. ``digits:train``) comes first when given.
    """
    metadata: dict[str, Any] = {} if trained_on is None else {"trained_on": trained_on}
    metadata["objective"] = defense
    metadata["eps"] = eps if is_adversarial(defense) else None
    if is_certified(defense):
        metadata["sigma"] = sigma
    return metadata


def data_info(dataset: Dataset) -> ModelInfo:
    """The :class:`ModelInfo` template of a model trained on ``dataset`` (its shape and classes)."""
    return ModelInfo(input_shape=dataset.input_shape, num_classes=dataset.num_classes, classes=dataset.classes)


def train_recipe(
    arch: str,
    like: ModelInfo,
    x: Tensor,
    y: Tensor,
    *,
    defense: str = "none",
    epochs: int | None = None,
    lr: float | None = None,
    eps: float = 0.2,
    norm: str = "linf",
    sigma: float = 0.25,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None,
    trained_on: str | None = None,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> TrainedModel:
    """Train a fresh ``arch`` network on ``(x, y)`` with a defense objective.

    ``like`` gives the input shape, classes, bounds and normalization of the new model
    (the audited model's info, or :func:`data_info` of the train split). ``epochs`` and
    ``lr`` default to the zoo's recipe for ``arch`` (:func:`zoo_epochs`, :func:`zoo_lr`).
    The network is initialised from ``seed`` and batches are shuffled from ``seed``, so
    the same call gives the same weights. ``metadata`` (default:
    :func:`training_metadata` of ``defense``, ``eps``, ``sigma``, ``trained_on``) is
    saved with the model. The caller saves and evaluates the returned handle.
    """
    from advkit.models import TrainConfig, build, fit

    epochs = zoo_epochs(arch) if epochs is None else epochs
    lr = zoo_lr(arch) if lr is None else lr
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, precision=precision)
    c, h, _ = like.input_shape
    net = build(arch, in_channels=c, num_classes=like.num_classes, image_size=h, seed=seed)
    extra = metadata if metadata is not None else training_metadata(defense, eps=eps, sigma=sigma, trained_on=trained_on)
    info = ModelInfo(
        input_shape=like.input_shape, num_classes=like.num_classes, bounds=like.bounds, mean=like.mean, std=like.std,
        classes=like.classes, arch=arch, extra=extra,
    )
    handle = ModelHandle(net, info, device=device)
    objective = objective_for(defense, rows=int(x.shape[0]), epochs=epochs, eps=eps, norm=norm, sigma=sigma, batch_size=batch_size)
    report = fit(handle.network, x, y, config, objective, progress=progress)
    return TrainedModel(handle, report)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "TrainedModel",
    "check_defense",
    "data_info",
    "default_arch",
    "defense_names",
    "is_adversarial",
    "is_certified",
    "objective_for",
    "train_recipe",
    "training_metadata",
    "warmup_steps",
    "zoo_epochs",
    "zoo_lr",
]
