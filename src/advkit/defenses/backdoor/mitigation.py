"""Mitigations driven by a reverse-engineered trigger (Neural Cleanse, section VI).

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
Networks", IEEE S&P 2019:

- **Input filter**: neurons of the second-to-last layer that the reversed trigger
  excites most; an input whose mean activation on them exceeds the clean data's
  ``1 - fpr`` quantile is flagged.
- **Neuron pruning**: switch those neurons off one by one (zero their outgoing weights)
  until the reversed trigger's success rate falls under a threshold, or stop before
  clean accuracy drops by more than a budget.
- **Unlearning**: fine-tune on clean data where a share of the rows carries the reversed
  trigger *with their correct label*, so the model learns to ignore it.

"Neurons" are the inputs of the model's first ``nn.Linear`` (``features``, the default
for pruning: on a CNN that flattens its last feature map these are one neuron per
channel *and position*, so a patch trigger's neurons are ones clean images barely use),
the inputs of its last ``nn.Linear`` (``linear``, the second-to-last layer of the paper)
or the channels of its last convolution on the main path (``conv``; the paper found
the last convolutional layer more effective for some attacks). On a residual network
that is the last block's last main-path convolution, not a shortcut's 1x1 projection
(registered, and run, after it), and where a ``BatchNorm2d`` follows it the channels
are measured and switched off at the BatchNorm's output: zeroing the convolution alone
would leave each channel at the BatchNorm's shift, not off. On advkit's small CNNs pruning
``linear`` or ``conv`` neurons costs 5-16 points of clean accuracy before the real
trigger fails, because those neurons also carry the clean function; pruning
``features`` neurons does not (``benchmarks/study_neural_cleanse.py``). Each mitigation
returns a new model and the figures before and after.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.attacks.poisoning.backdoor import backdoor_success_rate
from advkit.core import DetectionReport, ModelHandle
from advkit.defenses.backdoor.neural_cleanse import ReversedTrigger
from advkit.defenses.backdoor.neurons import (
    LAYERS,
    SHORTCUT_NAMES,
    neuron_activations,
    neuron_layer,
    rank_neurons,
    switch_off,
    takes_inputs,
)
from advkit.errors import AdvkitError
from advkit.models.train import TrainConfig, fit
from advkit.registry import register

__all__ = [
    "LAYERS",
    "SHORTCUT_NAMES",
    "Evaluate",
    "MitigationResult",
    "NeuronPruning",
    "TriggerInputFilter",
    "Unlearning",
    "neuron_activations",
    "neuron_layer",
    "rank_neurons",
    "switch_off",
]

Evaluate = Callable[[ModelHandle], float]


@dataclass
class MitigationResult:
    """A repaired model with its clean accuracy and backdoor success before and after.

    ``clean_accuracy_*`` and ``reversed_asr_*`` are measured on the defender's clean data,
    which unlearning and pruning's recovery also fine-tune on: after a repair they are
    optimistic. Judge a repair by the caller's ``evaluate`` (``asr_*``, e.g. the real
    trigger on held-out rows) and by accuracy on held-out rows, as the audit does.
    """

    name: str
    model: ModelHandle
    clean_accuracy_before: float
    clean_accuracy_after: float
    reversed_asr_before: float
    reversed_asr_after: float
    asr_before: float | None = None
    asr_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mitigation": self.name,
            "defender_data_clean_accuracy_before": self.clean_accuracy_before,
            "defender_data_clean_accuracy_after": self.clean_accuracy_after,
            "defender_data_reversed_trigger_success_before": self.reversed_asr_before,
            "defender_data_reversed_trigger_success_after": self.reversed_asr_after,
            "attack_success_rate_before": self.asr_before,
            "attack_success_rate_after": self.asr_after,
            **self.details,
        }


def _accuracy(model: ModelHandle, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on the rows."""
    return float((model.predict(x).cpu() == y.cpu()).float().mean())


def _trigger_success(model: ModelHandle, trigger: ReversedTrigger, x: Tensor, y: Tensor) -> float:
    """How often the reversed trigger sends a row of another class to its target."""
    return backdoor_success_rate(model, x, y, trigger, trigger.target)  # type: ignore[arg-type]


def _copy(model: ModelHandle) -> ModelHandle:
    """An independent copy of the model (network and metadata); TorchScript through its own serialisation."""
    from advkit.models.finetune import copy_network

    return ModelHandle(copy_network(model.net), copy.deepcopy(model.info), device=model.device)


@register(
    "nc-filter",
    family="defense",
    knowledge="white",
    paper="Wang et al. Neural Cleanse. IEEE S&P 2019 (input filter)",
    atlas="AML.M0015",
    summary="flag inputs whose penultimate activations match the reversed trigger's",
)
@dataclass
class TriggerInputFilter:
    """Flag inputs that excite the reversed trigger's top neurons beyond clean levels.

    The score is the mean activation of the ``top_fraction`` neurons the reversed trigger
    raises most (at least one); the threshold is the clean data's ``1 - fpr`` quantile.
    On ``features`` neurons (the default) it caught every real-trigger input of 10 BadNets
    models (digits, mnist5k) at 0.5-6.7% false positives on held-out clean rows; on the
    paper's penultimate ``linear`` neurons it caught 4-98%.
    """

    fpr: float = 0.05
    top_fraction: float = 0.01
    layer: str = "features"
    neurons: Tensor | None = None
    threshold: float | None = None

    def fit(self, model: ModelHandle, trigger: ReversedTrigger, x: Tensor, y: Tensor) -> TriggerInputFilter:
        """Choose the neurons and the threshold (the clean ``1 - fpr`` quantile)."""
        if not 0.0 < self.fpr < 1.0:
            raise AdvkitError(f"filter false-positive rate must be in (0, 1); got {self.fpr}")
        ranking = rank_neurons(model, trigger, x, y, self.layer)
        count = max(1, int(round(self.top_fraction * ranking.numel())))
        self.neurons = ranking[:count]
        scores = self._scores(model, x)
        self.threshold = float(torch.quantile(scores, 1.0 - self.fpr))
        return self

    def _scores(self, model: ModelHandle, x: Tensor) -> Tensor:
        assert self.neurons is not None
        return neuron_activations(model, x, self.layer)[:, self.neurons].mean(1)

    def __call__(self, model: ModelHandle, x: Tensor) -> DetectionReport:
        if self.neurons is None or self.threshold is None:
            raise AdvkitError("the input filter must be fitted on clean data first")
        scores = self._scores(model, x)
        return DetectionReport("nc-filter", scores, scores > self.threshold, 0.0, {"threshold": self.threshold})


@register(
    "nc-prune",
    family="defense",
    knowledge="white",
    paper="Wang et al. Neural Cleanse. IEEE S&P 2019 (neuron pruning)",
    atlas="AML.M0003",
    summary="switch off the penultimate neurons the reversed trigger excites most",
)
@dataclass
class NeuronPruning:
    """Prune ranked neurons until the reversed trigger fails or accuracy would drop too far.

    Neurons are switched off in ``rounds`` groups of equal size (one at a time when the
    layer has at most ``rounds`` neurons); after each group the reversed trigger's success
    and the clean accuracy are measured on the defender's data. Pruning stops once the
    success is under ``success_threshold``; a group that would cost more than
    ``max_accuracy_drop`` is put back and pruning ends there.

    With ``recover_epochs > 0`` the pruned model is then fine-tuned on the clean data with
    the pruned weights held at zero (the recovery step of fine-pruning, Liu, Dolan-Gavitt &
    Garg, RAID 2018). The default ``recover_epochs=0`` is the paper's plain pruning: on
    ``features`` neurons a recovery fine-tune gives the real trigger back some of its
    success (digits: up to 17% from 6%) and the defender's accuracy figure turns
    optimistic, as recovery trains on those rows.
    """

    success_threshold: float = 0.02
    max_accuracy_drop: float = 0.03
    max_fraction: float = 0.9
    layer: str = "features"
    rounds: int = 128
    recover_epochs: int = 0
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.recover_epochs < 0:
            raise AdvkitError(f"nc-prune: rounds must be >= 1 and recover_epochs >= 0; got {self.rounds} and {self.recover_epochs}")
        if not (0.0 <= self.success_threshold <= 1.0 and 0.0 <= self.max_accuracy_drop <= 1.0 and 0.0 < self.max_fraction <= 1.0):
            raise AdvkitError("nc-prune: success_threshold and max_accuracy_drop must be in [0, 1], max_fraction in (0, 1]")

    def __call__(
        self, model: ModelHandle, trigger: ReversedTrigger, x: Tensor, y: Tensor, evaluate: Evaluate | None = None
    ) -> MitigationResult:
        repaired = _copy(model)
        module = neuron_layer(repaired.net, self.layer)
        ranking = rank_neurons(model, trigger, x, y, self.layer)
        acc0, rev0 = _accuracy(model, x, y), _trigger_success(model, trigger, x, y)
        pruned: list[int] = []
        acc, rev = acc0, rev0
        candidates = ranking[: int(self.max_fraction * ranking.numel())].tolist()
        step = max(1, -(-ranking.numel() // self.rounds))
        for start in range(0, len(candidates), step):
            if rev < self.success_threshold:
                break
            group = candidates[start : start + step]
            undo = switch_off(module, group, self.layer)
            new_acc = _accuracy(repaired, x, y)
            if acc0 - new_acc > self.max_accuracy_drop:
                undo()  # one group too many: keep the last good model
                break
            pruned += group
            acc, rev = new_acc, _trigger_success(repaired, trigger, x, y)
        details = {"layer": self.layer, "pruned_neurons": len(pruned), "of_neurons": int(ranking.numel())}
        if self.recover_epochs > 0 and pruned:
            details["before_recovery"] = {"clean_accuracy": acc, "reversed_trigger_success": rev}
            self._recover(repaired, module, pruned, x, y)
            acc, rev = _accuracy(repaired, x, y), _trigger_success(repaired, trigger, x, y)
        return MitigationResult(
            "nc-prune",
            repaired,
            acc0,
            acc,
            rev0,
            rev,
            evaluate(model) if evaluate else None,
            evaluate(repaired) if evaluate else None,
            details,
        )

    def _recover(self, model: ModelHandle, module: nn.Module, pruned: list[int], x: Tensor, y: Tensor) -> None:
        """Fine-tune on clean data; gradient hooks keep the pruned weights at exactly zero."""
        hooks = []
        for param in (module.weight, module.bias):
            if param is None:
                continue
            keep = torch.ones_like(param)
            if takes_inputs(self.layer):
                if param is module.bias:
                    continue
                keep[:, pruned] = 0
            else:
                keep[pruned] = 0
            hooks.append(param.register_hook(lambda grad, keep=keep: grad * keep))
        try:
            config = TrainConfig(epochs=self.recover_epochs, lr=self.lr, batch_size=32, seed=self.seed, schedule="constant")
            fit(model.network, x, y, config)
        finally:
            for hook in hooks:
                hook.remove()


@dataclass
class _UnlearningObjective:
    mask: Tensor
    pattern: Tensor
    fraction: float
    name: str = "nc-unlearn"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        chosen = (torch.rand(x.shape[0], generator=generator) < self.fraction).to(x.device)
        stamped = (1 - self.mask) * x + self.mask * self.pattern
        x = torch.where(chosen.view(-1, 1, 1, 1), stamped, x)
        return F.cross_entropy(network(x), y)  # correct labels, never the target


@register(
    "nc-unlearn",
    family="defense",
    knowledge="white",
    paper="Wang et al. Neural Cleanse. IEEE S&P 2019 (unlearning)",
    atlas="AML.M0003",
    summary="fine-tune on clean data, a share stamped with the reversed trigger and its correct label",
)
@dataclass
class Unlearning:
    """Fine-tune with the reversed trigger on ``fraction`` of the clean rows, labels kept."""

    fraction: float = 0.2
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def __call__(
        self, model: ModelHandle, trigger: ReversedTrigger, x: Tensor, y: Tensor, evaluate: Evaluate | None = None
    ) -> MitigationResult:
        if not 0.0 < self.fraction < 1.0:
            raise AdvkitError(f"unlearning fraction must be in (0, 1); got {self.fraction}")
        repaired = _copy(model)
        objective = _UnlearningObjective(trigger.mask.to(model.device), trigger.pattern.to(model.device), self.fraction)
        config = TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed, schedule="constant")
        fit(repaired.network, x, y, config, objective)
        return MitigationResult(
            "nc-unlearn",
            repaired,
            _accuracy(model, x, y),
            _accuracy(repaired, x, y),
            _trigger_success(model, trigger, x, y),
            _trigger_success(repaired, trigger, x, y),
            evaluate(model) if evaluate else None,
            evaluate(repaired) if evaluate else None,
            {"epochs": self.epochs, "fraction": self.fraction},
        )
