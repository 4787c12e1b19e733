"""A peak-memory cap: batched work splits its batch so that a step fits, or says in one line that it cannot.

The cap defaults to half of the machine's RAM; ``ADVKIT_MAX_MEMORY_GB`` (or the audit's
``max_memory_gb``, through :func:`set_memory_cap`) sets another. What one row costs is
measured, not guessed: :func:`row_bytes` runs one forward+backward pass of two rows
through the model and adds up the storage autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``; TorchScript and onnx2torch graphs save
through the same hooks), times :data:`BACKWARD_OVERHEAD` for the gradients that live
while it runs. :func:`rows_that_fit` turns that into a batch size against the memory the
process has left under the cap.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch

from advkit.errors import AdvkitError

BACKWARD_OVERHEAD = 1.3  # activation gradients alive during the backward pass, beyond the saved tensors
ENV = "ADVKIT_MAX_MEMORY_GB"

_cap_override: int | None = None
_row_bytes: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def total_memory() -> int:
    """Bytes of RAM on this machine (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def set_memory_cap(gigabytes: float | None) -> None:
    """Cap this process at ``gigabytes`` (``None``: back to the environment or the default)."""
    global _cap_override
    if gigabytes is not None and not gigabytes > 0:
        raise AdvkitError(f"the memory cap must be a positive number of GB; got {gigabytes}")
    _cap_override = None if gigabytes is None else int(gigabytes * 2**30)


def memory_cap() -> int:
    """The cap in bytes: :func:`set_memory_cap`, else ``ADVKIT_MAX_MEMORY_GB``, else half the RAM."""
    if _cap_override is not None:
        return _cap_override
    raw = os.environ.get(ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise AdvkitError(f"{ENV}={raw!r}: must be a number of gigabytes") from None
        if not value > 0:
            raise AdvkitError(f"{ENV}={raw!r}: must be a positive number of gigabytes")
        return int(value * 2**30)
    return total_memory() // 2 or 8 * 2**30


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def row_bytes(model: Any) -> int:
    """Bytes one row costs in a forward+backward pass of ``model`` (a ModelHandle), measured once per handle."""
    if model in _row_bytes:
        return _row_bytes[model]
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    x = torch.rand((2, *model.input_shape), device=model.device).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model.logits(x)
        (grad,) = torch.autograd.grad(logits.float().sum(), x)
    del logits, grad
    per_row = int(BACKWARD_OVERHEAD * total / 2) + 2 * x[0].numel() * x.element_size()
    _row_bytes[model] = max(per_row, 1)
    return _row_bytes[model]


def rows_that_fit(model: Any, wanted: int, *, copies: int = 1, what: str = "the attack") -> int:
    """The batch size (at most ``wanted``) whose forward+backward pass fits under the cap.

    ``copies`` is how many model inputs one row becomes at once (Neural Cleanse: one per
    class in the batch). On a GPU the device's own memory is the limit and the cap does
    not apply. One row that cannot fit is an :class:`AdvkitError` naming the figures.
    """
    if wanted < 1 or model.device.type != "cpu":
        return max(wanted, 1)
    per_row = row_bytes(model) * copies
    cap = memory_cap()
    free = cap - resident_bytes()
    fit = free // per_row
    if fit < 1:
        raise AdvkitError(
            f"{what}: one row of this {list(model.input_shape)} model needs about {per_row / 2**30:.2f} GB for a forward+backward pass, "
            f"but only {max(free, 0) / 2**30:.2f} GB of the {cap / 2**30:.1f} GB memory cap is free; raise {ENV} (audit: max_memory_gb) "
            "or use smaller images (--image-size)"
        )
    return int(min(wanted, fit))
