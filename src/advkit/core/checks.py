"""Input validation: a batch of images and its labels against what the model expects."""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.core.handle import ModelInfo
from advkit.errors import AdvkitError


def check_images(x: Tensor, info: ModelInfo, where: str = "input", bounds: tuple[float, float] | None = None) -> Tensor:
    """Check a batch against what the model expects; return it as float32.

    Raises one-line :class:`AdvkitError` for wrong rank or shape, non-finite pixels
    (naming the first bad row) and values outside the bounds.
    """
    if not isinstance(x, Tensor):
        raise AdvkitError(f"{where}: images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise AdvkitError(f"{where}: images must be [N, C, H, W]; got shape {list(x.shape)}")
    if tuple(x.shape[1:]) != tuple(info.input_shape):
        raise AdvkitError(
            f"{where}: images have shape {list(x.shape[1:])} per row but the model expects "
            f"{list(info.input_shape)}"
        )
    if not x.is_floating_point():
        raise AdvkitError(f"{where}: images must be floating point in the model's bounds; got {x.dtype}")
    x = x.float()
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise AdvkitError(f"{where}: row {row} has NaN or infinite pixels")
    lo, hi = bounds if bounds is not None else info.bounds
    tol = 1e-5 * (hi - lo)
    if x.numel() and (float(x.min()) < lo - tol or float(x.max()) > hi + tol):
        raise AdvkitError(
            f"{where}: pixel values span [{float(x.min()):.4g}, {float(x.max()):.4g}] "
            f"outside the bounds [{lo:g}, {hi:g}]"
        )
    return x


def check_labels(y: Tensor, n: int, num_classes: int, where: str = "labels") -> Tensor:
    """Check integer labels: one per row, each in ``[0, num_classes)``."""
    if not isinstance(y, Tensor):
        raise AdvkitError(f"{where}: must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise AdvkitError(f"{where}: expected {n} labels in a 1-D tensor; got shape {list(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise AdvkitError(f"{where}: labels must be integers; got {y.dtype}")
    y = y.long()
    if n:
        bad = (y < 0) | (y >= num_classes)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise AdvkitError(
                f"{where}: row {row} has label {int(y[row])}, outside the model's classes 0..{num_classes - 1}"
            )
    return y

