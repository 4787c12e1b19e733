"""Fine-pruning: prune the channels clean data leaves dormant, then fine-tune on clean data.

Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks", RAID 2018. A backdoor tends to live in neurons that clean inputs
barely use. The defender, with a few clean rows and no trigger:

1. measures each unit's mean activation on the clean rows, at the flattened last
   feature map (``layer="features"``, the default: one neuron per channel *and
   position*, the inputs of the first ``nn.Linear``) or at the channels of the last
   convolution (``layer="conv"``, the paper's choice: after the ReLU, averaged over
   space, taken after the BatchNorm that follows it; see
   :mod:`advkit.defenses.backdoor.neurons`);
2. switches channels off in increasing order of that activation, measuring clean
   accuracy on the rows after each group, and stops before the group that would cost
   more than ``max_accuracy_drop`` (the paper's 4 %) or at ``max_fraction`` of the layer;
3. fine-tunes the pruned model on the clean rows with the pruned weights held at
   exactly zero, so the channels stay removed.

Measured (``benchmarks/bench_repair.py``, 5 % clean rows, BadNets and blend at 10 %):
the paper's whole-channel pruning of the last convolution leaves 50-100 % backdoor
success on advkit's two-convolution CNNs, whose 64 channels carry both the clean and
the triggered signal; position-wise ``features`` pruning removes the trigger's units.
The fine-tune is gentle (Adam, ``lr=1e-4``, 5 epochs): it only has to win back what
pruning cost, and at ``1e-3`` (or 20 epochs) it also won a blend trigger back
(digits: 5 % success after pruning, 30-57 % after the fine-tune).

The pruning decisions are taken on rows the model was never trained on; after the
fine-tune the defender's accuracy figure is optimistic (it trains on those rows), so a
repair is judged on held-out rows, as ``benchmarks/bench_repair.py`` does.
Simplification: the paper prunes one channel at a time; on layers wider than ``rounds``
units, ``rounds`` equal groups are pruned instead (one at a time on the 64-channel
convolutions of advkit's CNNs).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advkit.core import ModelHandle
from advkit.defenses.backdoor.mode_connectivity import check_clean_rows
from advkit.defenses.backdoor.neurons import neuron_activations, neuron_layer, switch_off, takes_inputs
from advkit.errors import AdvkitError
from advkit.models.train import Progress, TrainConfig, fit
from advkit.registry import register

__all__ = ["FinePruning", "FinePruningResult", "dormant_order"]

FINE_PRUNING_LAYERS = ("conv", "features")
Evaluate = Callable[[ModelHandle], float]


@dataclass
class FinePruningResult:
    """The pruned and fine-tuned model, with the defender's clean accuracy at each stage.

    ``asr_before``/``asr_after`` are the caller's ``evaluate`` of the suspect and the
    repaired model (e.g. the real trigger on held-out rows), ``None`` without one.
    """

    name: str
    model: ModelHandle
    clean_accuracy_before: float
    clean_accuracy_pruned: float
    clean_accuracy_after: float
    pruned: list[int]
    units: int
    seconds: float
    asr_before: float | None = None
    asr_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mitigation": self.name,
            "defender_data_clean_accuracy_before": self.clean_accuracy_before,
            "defender_data_clean_accuracy_pruned": self.clean_accuracy_pruned,
            "defender_data_clean_accuracy_after": self.clean_accuracy_after,
            "pruned_units": len(self.pruned),
            "of_units": self.units,
            "attack_success_rate_before": self.asr_before,
            "attack_success_rate_after": self.asr_after,
            "seconds": self.seconds,
            **self.details,
        }


def dormant_order(model: ModelHandle, x: Tensor, layer: str) -> Tensor:
    """The layer's units in increasing order of mean activation on ``x`` (ties by index)."""
    mean = neuron_activations(model, x, layer).mean(0)
    return torch.argsort(mean, stable=True)


def _accuracy(model: ModelHandle, x: Tensor, y: Tensor) -> float:
    return float((model.predict(x).cpu() == y.cpu()).float().mean())


@register(
    "fine-pruning",
    family="defense",
    knowledge="white",
    paper="Liu, Dolan-Gavitt, Garg. Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks. RAID 2018",
    atlas="AML.M0003",
    summary="prune the last convolution's channels clean data leaves dormant, then fine-tune on clean data",
)
@dataclass
class FinePruning:
    """Prune dormant units within an accuracy budget, then fine-tune with them held at zero."""

    layer: str = "features"
    max_accuracy_drop: float = 0.04
    max_fraction: float = 0.95
    rounds: int = 128
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layer not in FINE_PRUNING_LAYERS:
            raise AdvkitError(f"fine-pruning: layer must be one of {', '.join(FINE_PRUNING_LAYERS)}; got {self.layer!r}")
        if not (0.0 <= self.max_accuracy_drop <= 1.0 and 0.0 < self.max_fraction <= 1.0):
            raise AdvkitError("fine-pruning: max_accuracy_drop must be in [0, 1] and max_fraction in (0, 1]")
        if self.rounds < 1 or self.epochs < 0 or self.batch_size < 1:
            raise AdvkitError("fine-pruning: rounds and batch_size must be >= 1, epochs >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise AdvkitError(f"fine-pruning: lr must be a positive number; got {self.lr}")

    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        *,
        evaluate: Evaluate | None = None,
        progress: Progress | None = None,
    ) -> FinePruningResult:
        """Repair ``model`` with the defender's clean rows ``(x, y)``; no triggered row is seen."""
        check_clean_rows(model, x, y, "fine-pruning", per_class=1)
        start = time.perf_counter()
        y = y.long()
        repaired = ModelHandle(copy.deepcopy(model.net), copy.deepcopy(model.info), device=model.device)
        module = neuron_layer(repaired.net, self.layer)
        order = dormant_order(model, x, self.layer)
        units = int(order.numel())
        before = _accuracy(model, x, y)
        candidates = order[: int(self.max_fraction * units)].tolist()
        step = max(1, -(-units // self.rounds))
        pruned: list[int] = []
        accuracy = before
        for first in range(0, len(candidates), step):
            group = candidates[first : first + step]
            undo = switch_off(module, group, self.layer)
            new_accuracy = _accuracy(repaired, x, y)
            if before - new_accuracy > self.max_accuracy_drop + 1e-9:
                undo()  # one group too many: keep the last model within the budget
                break
            pruned += group
            accuracy = new_accuracy
        if self.epochs > 0:
            self._fine_tune(repaired, module, pruned, x, y, progress)
        return FinePruningResult(
            "fine-pruning",
            repaired,
            before,
            accuracy,
            _accuracy(repaired, x, y),
            sorted(pruned),
            units,
            time.perf_counter() - start,
            evaluate(model) if evaluate else None,
            evaluate(repaired) if evaluate else None,
            {"layer": self.layer, "max_accuracy_drop": self.max_accuracy_drop, "epochs": self.epochs},
        )

    def _fine_tune(
        self, model: ModelHandle, module: nn.Module, pruned: list[int], x: Tensor, y: Tensor, progress: Progress | None
    ) -> None:
        """Fine-tune on the clean rows; gradient hooks keep the pruned weights at exactly zero."""
        hooks = []
        if pruned:
            for param in (module.weight, module.bias):
                if param is None or (takes_inputs(self.layer) and param is module.bias):
                    continue
                keep = torch.ones_like(param)
                if takes_inputs(self.layer):
                    keep[:, pruned] = 0
                else:
                    keep[pruned] = 0
                hooks.append(param.register_hook(lambda grad, keep=keep: grad * keep))
        try:
            config = TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed)
            fit(model.network, x, y, config, progress=progress)
        finally:
            for hook in hooks:
                hook.remove()
