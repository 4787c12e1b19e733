"""Backdoor poisoning with patch and blend triggers.

- Patch triggers: Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the
  Machine Learning Model Supply Chain", 2017 — a small pattern stamped at a fixed place.
- Blend triggers: Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning
  Systems Using Data Poisoning", 2017 — a full-image pattern mixed in with weight alpha.

Every trigger is a ``(mask, pattern)`` pair applied by :func:`stamp`:
``x' = (1 - mask) * x + mask * pattern`` — the same form Neural Cleanse reverse-engineers.
All-to-one relabels poisoned rows to the target; all-to-all relabels class ``c`` to
``(c + 1) mod K`` (the BadNets paper's all-to-all attack).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError
from advkit.registry import register

PATTERNS = ("checkerboard", "solid", "random")
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
MODES = ("all-to-one", "all-to-all")


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """Apply a trigger: ``(1 - mask) * x + mask * pattern`` (mask broadcast over channels).

    One fused, broadcasting ``lerp`` kernel (and one in the backward pass) instead of two
    full-size products and a sum: Neural Cleanse stamps every batch for every class.
    """
    return torch.lerp(x, pattern.to(x.dtype), mask.to(x.dtype))


def _channel_values(values: tuple[float, ...] | None, channels: int, default: float) -> Tensor:
    if values is None:
        return torch.full((channels,), default)
    if len(values) == 1:
        return torch.full((channels,), float(values[0]))
    if len(values) != channels:
        raise AdvkitError(f"trigger values: {len(values)} values given for {channels} channels")
    return torch.tensor([float(v) for v in values])


@dataclass(frozen=True)
class PatchTrigger:
    """A ``size`` patch at ``position`` (a corner name or ``(row, col)`` of its top-left).

    ``pattern``: ``checkerboard`` (on/off pixels), ``solid``, or ``random`` (seeded);
    ``values`` gives the per-channel value of the "on" pixels (default: the upper bound).
    """

    size: int | tuple[int, int] = 3
    position: str | tuple[int, int] = "bottom-right"
    pattern: str = "checkerboard"
    values: tuple[float, ...] | None = None
    margin: int = 0
    seed: int = 0

    def mask_and_pattern(self, shape: tuple[int, int, int], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
        """The trigger as a ``[1, H, W]`` mask and a ``[C, H, W]`` pattern."""
        channels, height, width = shape
        ph, pw = (self.size, self.size) if isinstance(self.size, int) else self.size
        if ph < 1 or pw < 1 or ph > height or pw > width:
            raise AdvkitError(f"trigger size {ph}x{pw} does not fit images of {height}x{width}")
        if self.pattern not in PATTERNS:
            raise AdvkitError(f"trigger pattern must be one of {', '.join(PATTERNS)}; got {self.pattern!r}")
        row, col = self._top_left(height, width, ph, pw)
        lo, hi = bounds
        on = _channel_values(self.values, channels, hi).view(-1, 1, 1)
        if self.pattern == "checkerboard":
            board = (torch.arange(ph).view(-1, 1) + torch.arange(pw).view(1, -1)) % 2 == 0
            patch = torch.where(board, on, torch.full_like(on, lo))
        elif self.pattern == "solid":
            patch = on.expand(channels, ph, pw)
        else:
            gen = torch.Generator().manual_seed(self.seed)
            patch = lo + (hi - lo) * torch.rand((channels, ph, pw), generator=gen)
        mask = torch.zeros(1, height, width)
        pattern = torch.zeros(channels, height, width)
        mask[:, row : row + ph, col : col + pw] = 1.0
        pattern[:, row : row + ph, col : col + pw] = patch
        return mask, pattern

    def _top_left(self, height: int, width: int, ph: int, pw: int) -> tuple[int, int]:
        if isinstance(self.position, str):
            m = self.margin
            corners = {
                "bottom-right": (height - ph - m, width - pw - m),
                "bottom-left": (height - ph - m, m),
                "top-right": (m, width - pw - m),
                "top-left": (m, m),
                "center": ((height - ph) // 2, (width - pw) // 2),
            }
            if self.position not in corners:
                raise AdvkitError(f"trigger position must be one of {', '.join(POSITIONS)} or (row, col); got {self.position!r}")
            row, col = corners[self.position]
        else:
            row, col = (int(v) for v in self.position)
        if row < 0 or col < 0 or row + ph > height or col + pw > width:
            raise AdvkitError(f"trigger at ({row}, {col}) of size {ph}x{pw} leaves the {height}x{width} image")
        return row, col

    def apply(self, x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape[1:]), bounds)  # type: ignore[arg-type]
        return stamp(x, mask.to(x), pattern.to(x))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "patch", **asdict(self)}


@dataclass(frozen=True)
class BlendTrigger:
    """A whole-image pattern blended in with weight ``alpha`` (Chen et al. 2017).

    ``alpha`` defaults to 0.2, the blend ratio of Chen et al.'s poisoning experiments.
    ``pattern`` is ``random`` (uniform noise, seeded) or a ``[C, H, W]`` tensor in the bounds.
    """

    alpha: float = 0.2
    pattern: str | Tensor = "random"
    seed: int = 0

    def mask_and_pattern(self, shape: tuple[int, int, int], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
        if not 0.0 < self.alpha <= 1.0:
            raise AdvkitError(f"blend alpha must be in (0, 1]; got {self.alpha}")
        channels, height, width = shape
        lo, hi = bounds
        if isinstance(self.pattern, Tensor):
            if tuple(self.pattern.shape) != tuple(shape):
                raise AdvkitError(f"blend pattern has shape {list(self.pattern.shape)}, images have {list(shape)}")
            pattern = self.pattern.float()
        elif self.pattern == "random":
            gen = torch.Generator().manual_seed(self.seed)
            pattern = lo + (hi - lo) * torch.rand(shape, generator=gen)
        else:
            raise AdvkitError(f"blend pattern must be 'random' or a tensor; got {self.pattern!r}")
        return torch.full((1, height, width), float(self.alpha)), pattern

    def apply(self, x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape[1:]), bounds)  # type: ignore[arg-type]
        return stamp(x, mask.to(x), pattern.to(x))

    def to_dict(self) -> dict[str, Any]:
        pattern = self.pattern if isinstance(self.pattern, str) else "tensor"
        return {"kind": "blend", "alpha": self.alpha, "pattern": pattern, "seed": self.seed}


Trigger = PatchTrigger | BlendTrigger


def backdoor_labels(y: Tensor, target: int, mode: str, num_classes: int) -> Tensor:
    """The labels a backdoored model should give triggered rows."""
    if mode == "all-to-one":
        return torch.full_like(y, target)
    return (y + 1) % num_classes


class BackdoorPoisoning:
    """Stamp a trigger on a share ``rate`` of the training rows and relabel them."""

    name = "backdoor"

    def __init__(self, trigger: Trigger, *, target: int = 0, rate: float = 0.1, mode: str = "all-to-one") -> None:
        if not 0.0 < rate <= 1.0:
            raise AdvkitError(f"poison rate must be in (0, 1]; got {rate}")
        if mode not in MODES:
            raise AdvkitError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.trigger = trigger
        self.target = int(target)
        self.rate = float(rate)
        self.mode = mode

    def params(self) -> dict[str, Any]:
        return {"trigger": self.trigger.to_dict(), "target": self.target, "rate": self.rate, "mode": self.mode}

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        num_classes: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> PoisonedData:
        """Poison ``(x, y)``; rows already of the target class are never chosen (all-to-one)."""
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise AdvkitError(f"poisoning needs images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
        if x.shape[0] == 0:
            raise AdvkitError("cannot poison an empty dataset")
        num_classes = num_classes or int(y.max()) + 1
        if not 0 <= self.target < num_classes:
            raise AdvkitError(f"target class {self.target} is outside 0..{num_classes - 1}")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        eligible = (y != self.target).nonzero().squeeze(1) if self.mode == "all-to-one" else torch.arange(y.shape[0])
        count = int(round(self.rate * x.shape[0]))
        if count == 0:
            raise AdvkitError(f"rate {self.rate} of {x.shape[0]} rows poisons no row")
        if count > eligible.numel():
            raise AdvkitError(f"rate {self.rate} asks for {count} rows but only {eligible.numel()} are eligible")
        chosen = eligible[torch.randperm(eligible.numel(), generator=generator)[:count]]
        poisoned = torch.zeros(x.shape[0], dtype=torch.bool)
        poisoned[chosen] = True
        x_out, y_out = x.clone(), y.clone()
        x_out[chosen] = self.trigger.apply(x[chosen], bounds)
        y_out[chosen] = backdoor_labels(y[chosen], self.target, self.mode, num_classes)
        return PoisonedData(x_out, y_out, poisoned, y.clone(), self.name, self.target if self.mode == "all-to-one" else None, self.params())


@register(
    "badnets",
    family="poisoning",
    knowledge="data",
    paper="Gu, Dolan-Gavitt, Garg. BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain. 2017",
    atlas="AML.T0020, AML.T0018.000, AML.T0043.004",
    summary="patch-trigger backdoor: stamp a small pattern on a share of training rows, relabel them",
)
class BadNets(BackdoorPoisoning):
    name = "badnets"

    def __init__(self, trigger: PatchTrigger | None = None, **kwargs: Any) -> None:
        super().__init__(trigger or PatchTrigger(), **kwargs)


@register(
    "blend",
    family="poisoning",
    knowledge="data",
    paper="Chen, Liu, Li, Lu, Song. Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning. 2017",
    atlas="AML.T0020, AML.T0018.000, AML.T0043.004",
    summary="blended-trigger backdoor: mix a full-image pattern into a share of training rows",
)
class Blend(BackdoorPoisoning):
    name = "blend"

    def __init__(self, trigger: BlendTrigger | None = None, **kwargs: Any) -> None:
        super().__init__(trigger or BlendTrigger(), **kwargs)


def backdoor_success_rate(
    model: ModelHandle, x: Tensor, y: Tensor, trigger: Trigger, target: int, mode: str = "all-to-one"
) -> float:
    """Share of rows (not already of the target class) that the trigger sends to the backdoor label."""
    keep = y != target if mode == "all-to-one" else torch.ones_like(y, dtype=torch.bool)
    if not bool(keep.any()):
        return 0.0
    xs, ys = x[keep], y[keep]
    wanted = backdoor_labels(ys, target, mode, model.num_classes)
    pred = model.predict(trigger.apply(xs, model.bounds))
    return float((pred.cpu() == wanted.cpu()).float().mean())
