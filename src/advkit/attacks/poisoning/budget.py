"""The poison budget as rows: a share of the training set drawn from one class.

Shared by the attacks that perturb rows of a single class in place (the clean-label
backdoor of Turner et al. 2019, gradient matching of Geiping et al. 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.errors import AdvkitError


def draw_class_rows(y: Tensor, cls: int, rate: float, generator: torch.Generator, attack: str) -> Tensor:
    """``round(rate * N)`` rows of class ``cls``, drawn at random with ``generator``, sorted.

    One-line errors when the rate poisons no row or asks for more rows than the class has.
    """
    eligible = (y == cls).nonzero().squeeze(1)
    count = int(round(rate * y.shape[0]))
    if count == 0:
        raise AdvkitError(f"{attack}: rate {rate} of {y.shape[0]} rows poisons no row")
    if count > eligible.numel():
        raise AdvkitError(f"{attack}: rate {rate} asks for {count} rows but class {cls} has {eligible.numel()}")
    return eligible[torch.randperm(eligible.numel(), generator=generator)[:count]].sort().values
