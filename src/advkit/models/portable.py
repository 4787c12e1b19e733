"""Models as plain payloads that travel to another process (a Ray worker) and back.

A :class:`PackedModel` holds a handle's metadata and its network: TorchScript networks
(which cannot be pickled) as the bytes of ``torch.jit.save``, every other ``nn.Module``
as its state (pickled by the transport). :meth:`PackedModel.unpack` rebuilds the handle
once per worker process, keyed by the weights' SHA-256, so a worker that runs many
tasks on one model builds it once (the Ray executor also fetches a shared value once
per worker process).
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advkit.core import ModelHandle, ModelInfo


@dataclass(frozen=True)
class PackedModel:
    info: ModelInfo
    kind: str  # "torchscript" or "module"
    payload: Any  # bytes (torchscript) or an nn.Module on the CPU
    key: str
    nbytes: int
    remote_copy = True  # unpacked on a worker: built on the device it is asked for

    def unpack(self, device: str | None = "cpu") -> ModelHandle:
        from advkit.engine import worker_cache

        return worker_cache(f"model:{self.key}:{device}", lambda: self._build(device))

    def _build(self, device: str | None) -> ModelHandle:
        if self.kind == "torchscript":
            net: nn.Module = torch.jit.load(io.BytesIO(self.payload), map_location="cpu")
        else:
            net = copy.deepcopy(self.payload)
        return ModelHandle(net, self.info, device=device)


@dataclass(frozen=True)
class ResidentModel:
    """A handle that stays in this process (the local executor): no copy, no reload."""

    handle: ModelHandle
    nbytes: int = 0
    remote_copy = False  # the driver's own handle, already on its device

    def unpack(self, device: str | None = None) -> ModelHandle:
        return self.handle


def share_model(executor: Any, handle: ModelHandle) -> Any:
    """Put ``handle`` in the executor's store once: packed for remote workers, as is locally."""
    return executor.put(pack(handle) if executor.remote else ResidentModel(handle))


def pack(handle: ModelHandle) -> PackedModel:
    """The handle's network and metadata as a payload (weights moved to the CPU)."""
    from advkit.models.finetune import weights_digest

    net = handle.net
    state = net.state_dict()
    digest = hashlib.sha256(weights_digest(net).encode())
    if isinstance(net, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(net, buffer)
        payload: Any = buffer.getvalue()
        digest.update(payload)
        return PackedModel(handle.info, "torchscript", payload, digest.hexdigest(), len(payload))
    module = copy.deepcopy(net).cpu() if handle.device.type != "cpu" else net
    size = sum(t.numel() * t.element_size() for t in state.values())
    digest.update(repr(module).encode())
    return PackedModel(handle.info, "module", module, digest.hexdigest(), size)
