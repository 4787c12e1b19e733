"""The one training loop every trainer reuses (standard, adversarial, certified).

A training method is an :class:`Objective`: given the network (normalization inside),
a batch and the run's generator, it returns the loss to minimise. Plain empirical
risk minimisation is :class:`CrossEntropy`; adversarial training (Madry 2018, Wong
2020, Zhang 2019) and certified training plug in their own objectives.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.errors import AdvkitError

Progress = Callable[[str, int, int], None]


class Objective(Protocol):
    """A training loss; ``name`` is recorded in the model's metadata."""

    name: str

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor: ...


@dataclass
class CrossEntropy:
    """Standard training: mean cross-entropy on the clean batch."""

    name: str = "standard"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        return F.cross_entropy(network(x), y)


@dataclass
class TrainConfig:
    """Optimiser and schedule; the same seed gives the same model."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "cosine"
    seed: int = 0
    precision: str = "fp32"  # fp32, or bf16/fp16 autocast of the objective's passes (fp16 with a gradient scaler on CUDA)

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise AdvkitError(f"epochs and batch size must be positive; got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise AdvkitError(f"learning rate must be a positive number; got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise AdvkitError(f"optimizer must be adam or sgd; got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise AdvkitError(f"schedule must be cosine or constant; got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise AdvkitError(f"precision must be fp32, bf16 or fp16; got {self.precision!r}")


@dataclass
class TrainReport:
    objective: str
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def fit(
    network: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig | None = None,
    objective: Objective | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train ``network`` in place on ``(x, y)``; returns the per-epoch mean losses.

    Batches are shuffled by a generator seeded from ``config.seed``; the objective gets
    the same generator for its own randomness (random starts, noise), so a run is
    reproducible. The network is left in ``eval()`` mode.
    """
    config = config or TrainConfig()
    objective = objective or CrossEntropy()
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise AdvkitError("the model has no trainable parameters")
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = int(y.shape[0])
    if n == 0:
        raise AdvkitError("cannot train on an empty dataset")
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
        if config.schedule == "cosine"
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 and device.type == "cuda" else None
    report = TrainReport(objective=getattr(objective, "name", type(objective).__name__), epochs=config.epochs, seconds=0.0)
    start = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        running = torch.zeros((), device=device)
        for first in range(0, n, config.batch_size):
            idx = order[first : first + config.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            network.train()
            with autocast:
                loss = objective(network, xb, yb, generator).float()
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
            running += loss.detach() * yb.shape[0]
            step += 1
            if progress is not None:
                progress(report.objective, step, total)
        report.losses.append(float(running) / n)
        if not math.isfinite(report.losses[-1]):
            raise AdvkitError(f"training diverged at epoch {epoch + 1} (loss is {report.losses[-1]}); lower the learning rate")
    network.eval()
    report.seconds = time.perf_counter() - start
    return report
