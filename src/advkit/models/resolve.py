"""Model specs: the one place a ``--model`` string becomes a model or a file.

A spec is ``zoo:NAME`` (a zoo model, trained on first use and then read from the
cache, see :mod:`advkit.models.zoo`) or the path of a model file (loaded safely by
:func:`advkit.models.io.load_model`). This module builds on both; neither imports it.
"""

from __future__ import annotations

from pathlib import Path

from advkit.core import ModelHandle
from advkit.models import io, zoo

ZOO_PREFIX = "zoo:"


def zoo_name(spec: str) -> str | None:
    """The zoo model a spec names (``zoo:digits-cnn`` -> ``digits-cnn``), or ``None`` for a path."""
    return spec[len(ZOO_PREFIX) :] if spec.startswith(ZOO_PREFIX) else None


def resolve(
    spec: str,
    *,
    sample_shape: tuple[int, int, int] | None = None,
    device: str | None = None,
) -> ModelHandle:
    """The model a spec names, as a :class:`ModelHandle`.

    ``zoo:NAME`` trains and caches the zoo model the first time, then reads the cache;
    a path loads through :func:`advkit.models.io.load_model`, where ``sample_shape``
    (the data's ``[C, H, W]``) lets it infer what a TorchScript or ONNX file without
    metadata expects.
    """
    name = zoo_name(spec)
    if name is not None:
        return zoo.pretrained(name, device=device)
    return io.load_model(spec, device=device, sample_shape=sample_shape)


def model_file(spec: str) -> Path:
    """The file a spec's weights live in: the zoo cache file (trained first if it is not
    there yet) for ``zoo:NAME``, the path itself otherwise."""
    name = zoo_name(spec)
    if name is not None:
        return zoo.cached(name)
    return Path(spec)

