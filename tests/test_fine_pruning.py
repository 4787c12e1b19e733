"""Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018): prune dormant units, then fine-tune."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advkit.attacks.poisoning.backdoor import BadNets, Blend, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.fine_pruning import FinePruning, dormant_order
from advkit.defenses.backdoor.neurons import neuron_activations
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit


class NormNet(nn.Module):
    """An architecture advkit never built: conv-BN-ReLU twice, a named body, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU()
        )
        self.out = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.avg_pool2d(self.body(x), 2).flatten(1))


def _accuracy(model: ModelHandle, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def _split(test):
    """The defender's rows (5 % of the training split's size, from the test split) and the held-out rest."""
    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(1))
    return order[:67], order[67:]


@pytest.fixture(scope="module")
def badnets_victim(digits_train):
    attack = BadNets(target=0, rate=0.1)
    poisoned = attack(digits_train.x, digits_train.y, num_classes=10, generator=torch.Generator().manual_seed(0))
    model = ModelHandle(build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=0), ModelInfo((1, 8, 8), 10))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=6, lr=2e-3, seed=0))
    return model, attack.trigger


@pytest.fixture(scope="module")
def norm_model(digits_train) -> ModelHandle:
    torch.manual_seed(0)
    model = ModelHandle(NormNet(), ModelInfo((1, 8, 8), 10))
    fit(model.network, digits_train.x, digits_train.y, TrainConfig(epochs=4, lr=3e-3, seed=0))
    return model


def test_fine_pruning_removes_a_badnets_backdoor_and_keeps_accuracy(badnets_victim, digits_test):
    model, trigger = badnets_victim
    mine, held = _split(digits_test)
    xd, yd, xe, ye = digits_test.x[mine], digits_test.y[mine], digits_test.x[held], digits_test.y[held]
    before_success = backdoor_success_rate(model, xe, ye, trigger, 0)
    assert before_success > 0.9
    result = FinePruning()(model, xd, yd, evaluate=lambda m: backdoor_success_rate(m, xe, ye, trigger, 0))
    assert result.asr_before == pytest.approx(before_success)
    assert result.asr_after < 0.2
    assert _accuracy(result.model, xe, ye) > _accuracy(model, xe, ye) - 0.04
    assert result.clean_accuracy_pruned >= result.clean_accuracy_before - 0.04 - 1e-6  # the pruning budget
    assert 0 < len(result.pruned) < result.units
    # the pruned feature neurons are still off after the fine-tune; the suspect model is untouched
    assert torch.count_nonzero(result.model.net.classifier[1].weight[:, result.pruned]) == 0
    assert torch.count_nonzero(model.net.classifier[1].weight[:, result.pruned]) > 0


def test_conv_pruning_switches_off_the_most_dormant_channels_of_an_unknown_batchnorm_model(norm_model, digits_test):
    x, y = digits_test.x[:150], digits_test.y[:150]
    result = FinePruning(layer="conv", max_accuracy_drop=0.04)(norm_model, x, y)
    order = dormant_order(norm_model, x, "conv")
    assert result.units == 24 and len(result.pruned) > 0
    assert result.pruned == sorted(order[: len(result.pruned)].tolist())  # in increasing order of clean activation
    norm = result.model.net.body[4]  # the BatchNorm after the last convolution is where channels are cut
    assert torch.count_nonzero(norm.weight[result.pruned]) == 0 and torch.count_nonzero(norm.bias[result.pruned]) == 0
    assert torch.count_nonzero(neuron_activations(result.model, x, "conv")[:, result.pruned]) == 0
    assert result.clean_accuracy_pruned >= result.clean_accuracy_before - 0.04 - 1e-6
    assert _accuracy(result.model, digits_test.x[150:], digits_test.y[150:]) > _accuracy(norm_model, digits_test.x[150:], digits_test.y[150:]) - 0.05


def test_the_same_call_gives_the_same_repair(norm_model, digits_test):
    x, y = digits_test.x[:120], digits_test.y[:120]
    runs = [FinePruning(layer="conv")(norm_model, x, y) for _ in range(2)]
    assert runs[0].pruned == runs[1].pruned
    for a, b in zip(runs[0].model.net.state_dict().values(), runs[1].model.net.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_input_is_one_line(norm_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; users still bring such models
        scripted = ModelHandle(torch.jit.trace(norm_model.net.eval(), x[:2]), ModelInfo((1, 8, 8), 10))
    cases = [
        lambda: FinePruning(layer="linear"),
        lambda: FinePruning(max_accuracy_drop=1.5),
        lambda: FinePruning(epochs=-1),
        lambda: FinePruning()(norm_model, x[y != 5], y[y != 5]),  # a class missing
        lambda: FinePruning()(norm_model, x[:5], y[:5]),  # too few rows
        lambda: FinePruning()(norm_model, x[:, :, 1:], y),
        lambda: FinePruning()(scripted, x, y),
    ]
    for case in cases:
        with pytest.raises(AdvkitError) as info:
            case()
        assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["digits", "mnist5k"])
@pytest.mark.parametrize("attack_class", [BadNets, Blend])
def test_acceptance_five_percent_clean_rows(data, attack_class):
    """The acceptance of benchmarks/bench_repair.py: at most 10 % backdoor success, at most 3 points lost."""
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    attack = attack_class(target=0, rate=0.1)
    poisoned = attack(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(0))
    arch, epochs = ("digits-cnn", 30) if data == "digits" else ("mnist-cnn", 12)
    size = train.x.shape[-1]
    model = ModelHandle(build(arch, in_channels=1, num_classes=10, image_size=size, seed=0), ModelInfo((1, size, size), 10))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=epochs, lr=2e-3, seed=0))
    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(1))
    mine, held = order[: round(0.05 * len(train.y))], order[round(0.05 * len(train.y)) :]
    xe, ye = test.x[held], test.y[held]
    result = FinePruning()(model, test.x[mine], test.y[mine])
    assert backdoor_success_rate(result.model, xe, ye, attack.trigger, 0) <= 0.10
    assert _accuracy(result.model, xe, ye) >= _accuracy(model, xe, ye) - 0.03
