"""The model handle: a classifier with its normalization, device and eval mode inside.

It owns everything users get wrong in peer libraries: input normalization (mean/std
applied inside forward, so budgets and bounds are in pixel space), train/eval mode
(forced to eval while evaluating, the caller's mode restored) and the device.
``ModelHandle.view`` gives the attacker's restricted face (:mod:`advkit.core.view`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advkit.core.threat import Knowledge
from advkit.core.view import ModelView, Observer
from advkit.errors import AdvkitError


class NormalizedModel(nn.Module):
    """A classifier with its input normalization inside: ``net((x - mean) / std)``."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.net = net
        self.channels_last = False  # set by ModelHandle: inputs are laid out NHWC before the net
        self.normalizes = mean is not None or std is not None
        channels = len(mean if mean is not None else (std or [1.0]))
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0] * channels)
        std_t = torch.tensor(list(std) if std is not None else [1.0] * channels)
        if (std_t <= 0).any():
            raise AdvkitError(f"normalization std must be > 0; got {list(std_t.tolist())}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.normalizes:
            x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


@dataclass
class ModelInfo:
    """What a model expects and means: shapes, classes, pixel range, normalization."""

    input_shape: tuple[int, int, int]
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else [str(i) for i in range(self.num_classes)]


PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelHandle:
    """A classifier as attacks and metrics see it.

    Owns normalization, device and mode: every evaluation runs in ``eval()`` and puts
    back the caller's mode afterwards. ``view(knowledge)`` gives the restricted,
    query-counting face an attack works through.
    """

    def __init__(self, net: nn.Module, info: ModelInfo, device: str | torch.device | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise AdvkitError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.precision = precision
        self.info = info
        self.device = torch.device(device) if device is not None else _module_device(net)
        self.network = NormalizedModel(net, info.mean, info.std).to(self.device)
        if self.device.type == "cpu" and any(p.dim() == 4 for p in net.parameters()):
            # oneDNN's CPU convolutions and pooling run NHWC: the same numbers (up to float
            # rounding) at 1.1-3x the speed of NCHW for advkit's CNNs (measured, 1-2 threads)
            self.network.to(memory_format=torch.channels_last)
            self.network.channels_last = True
        self._eval_depth = 0

    # -- description -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    @property
    def bounds(self) -> tuple[float, float]:
        return self.info.bounds

    @property
    def net(self) -> nn.Module:
        """The user's network without the normalization wrapper."""
        return self.network.net

    # -- mode ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Evaluate in ``eval()`` mode; the caller's train/eval state is restored after."""
        if self._eval_depth:
            self._eval_depth += 1
            try:
                yield
            finally:
                self._eval_depth -= 1
            return
        modes = [(m, m.training) for m in self.network.modules()]
        self.network.eval()
        self._eval_depth = 1
        try:
            yield
        finally:
            self._eval_depth = 0
            for module, mode in modes:
                module.training = mode

    # -- evaluation ----------------------------------------------------------------------
    def to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Reduced precision (``precision`` bf16/fp16) for the attack's own passes; a no-op at fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def logits(self, x: Tensor) -> Tensor:
        """Logits of a batch in eval mode; differentiable when grad mode is on.

        These are the passes an attack computes its steps with: under a reduced
        ``precision`` they run in autocast and come back as float32.
        """
        with self.eval_mode(), self.autocast():
            out = self.network(self.to_device(x))
        return out.float() if out.dtype != torch.float32 else out

    def predict_logits(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Logits of any number of rows, batched, without gradients, always in float32.

        Every verdict (clean prediction, the adversarial example's prediction and success)
        comes from here, so reduced precision can make an attack neither stronger nor weaker
        than it is on the model in float32.
        """
        outs = []
        with torch.inference_mode(), self.eval_mode():
            for start in range(0, x.shape[0], batch_size):
                outs.append(self.network(self.to_device(x[start : start + batch_size])).float())
        if not outs:
            return torch.empty(0, self.num_classes, device=self.device)
        return torch.cat(outs)

    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Top-1 labels of any number of rows."""
        return self.predict_logits(x, batch_size).argmax(1)

    def view(
        self,
        knowledge: Knowledge,
        max_queries: int | None = None,
        *,
        rows: int | None = None,
        max_total: int | None = None,
        observer: Observer | None = None,
    ) -> ModelView:
        """A fresh query-counting view at the given knowledge level (see :class:`ModelView`)."""
        return ModelView(self, knowledge, max_queries, rows=rows, max_total=max_total, observer=observer)


def _module_device(net: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``net`` (CPU for a stateless net)."""
    for tensor in list(net.parameters()) + list(net.buffers()):
        return tensor.device
    return torch.device("cpu")

