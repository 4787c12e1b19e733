"""Mode-connectivity repair (Zhao et al., ICLR 2020) on Bezier curves (Garipov et al., 2018)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advkit.attacks.poisoning.backdoor import BadNets, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.curve import BezierCurve, recompute_batchnorm
from advkit.defenses.backdoor.mode_connectivity import (
    ModeConnectivityRepair,
    choose_t,
    evaluate_curve,
    point_on_curve,
    split_clean_rows,
)
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit


class OddNet(nn.Module):
    """An architecture advkit never built: BatchNorm, a ModuleDict, average pooling, one linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.body = nn.ModuleDict({"mix": nn.Conv2d(12, 16, 3, padding=1, bias=False), "norm": nn.BatchNorm2d(16)})
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.body["norm"](self.body["mix"](self.stem(x))))
        return self.head(F.avg_pool2d(x, 2).flatten(1))


def _handle(net: nn.Module) -> ModelHandle:
    return ModelHandle(net, ModelInfo((1, 8, 8), 10))


@pytest.fixture(scope="module")
def odd_model(digits_train) -> ModelHandle:
    torch.manual_seed(0)
    model = _handle(OddNet())
    fit(model.network, digits_train.x, digits_train.y, TrainConfig(epochs=4, lr=3e-3, seed=0))
    return model


def _accuracy(model: ModelHandle, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


QUICK = dict(endpoint_epochs=3, curve_epochs=4, points=5)


def test_a_trained_bezier_curve_removes_the_barrier_of_the_straight_line(digits_train, digits_test):
    """Two networks trained from different seeds: their weight average is poor, the curve's midpoint is not."""
    x, y = digits_train.x[:600], digits_train.y[:600]
    ends = []
    for seed in (0, 1):
        model = _handle(build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=seed))
        fit(model.network, x, y, TrainConfig(epochs=6, lr=3e-3, seed=seed))
        ends.append(model)
    path = BezierCurve(ends[0].network, ends[1].network)
    straight = _accuracy(point_on_curve(path, 0.5, x, ends[0]), digits_test.x, digits_test.y)
    ModeConnectivityRepair(curve_epochs=8, lr=0.1)._train_curve(path, x, y, 0, None)
    ends_accuracy = min(_accuracy(m, digits_test.x, digits_test.y) for m in ends)
    middle = _accuracy(point_on_curve(path, 0.5, x, ends[0]), digits_test.x, digits_test.y)
    assert straight < ends_accuracy - 0.2  # the barrier of the straight line between two modes (measured: 0.62 vs 0.94)
    assert middle > ends_accuracy - 0.03  # measured: 0.96
    # the ends stay where they were: only the bend is trained
    assert _accuracy(point_on_curve(path, 0.0, x, ends[0]), digits_test.x, digits_test.y) == pytest.approx(
        _accuracy(ends[0], digits_test.x, digits_test.y)
    )


def test_repair_works_on_an_unknown_batchnorm_module(odd_model, digits_test):
    x, y = digits_test.x[:120], digits_test.y[:120]
    before = {k: v.clone() for k, v in odd_model.net.state_dict().items()}
    result = ModeConnectivityRepair(**QUICK)(odd_model, x, y, generator=torch.Generator().manual_seed(0))
    assert [row["t"] for row in result.curve] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert result.t in [row["t"] for row in result.curve]
    assert all(torch.equal(before[k], v) for k, v in odd_model.net.state_dict().items())  # the suspect is untouched
    assert isinstance(result.model.net, OddNet)
    # BatchNorm statistics of the repaired model are those of its own weights on the fitting rows
    fresh = point_on_curve(result.path, result.t, result.fitting_x, odd_model)
    recompute_batchnorm(fresh.network, result.fitting_x)
    for name in ("stem.1.running_mean", "body.norm.running_var"):
        assert torch.allclose(result.model.net.state_dict()[name], fresh.net.state_dict()[name], atol=1e-5)
        assert not torch.allclose(result.model.net.state_dict()[name], before[name])
    # the chosen point keeps to the budget on the defender's held-out rows, and is a usable model
    assert result.clean_accuracy_after >= result.clean_accuracy_before - result.details["accuracy_tolerance"] - 1e-6
    assert _accuracy(result.model, digits_test.x[120:], digits_test.y[120:]) > 0.8


def test_t_is_chosen_without_triggered_data(odd_model, digits_test):
    """The repair takes no trigger; its t follows the validation-accuracy rule alone."""
    assert set(inspect.signature(ModeConnectivityRepair.__call__).parameters) == {"self", "model", "x", "y", "generator", "progress"}
    table = [{"t": t, "clean_accuracy": a} for t, a in [(0.0, 0.95), (0.25, 0.94), (0.5, 0.80), (0.75, 0.93), (1.0, 0.96)]]
    assert choose_t(table, 0.95, 0.03) == (0.25, None)  # the farthest from both ends within the budget
    assert choose_t(table, 0.95, 0.2) == (0.5, None)
    t, warning = choose_t(table, 0.99, 0.01)
    assert t == 1.0 and "no point" in warning
    result = ModeConnectivityRepair(**QUICK)(odd_model, digits_test.x[:120], digits_test.y[:120])
    assert (result.t, None) == choose_t(result.curve, result.clean_accuracy_before, result.details["accuracy_tolerance"])


def test_the_same_generator_gives_the_same_repair(odd_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    runs = [ModeConnectivityRepair(**QUICK)(odd_model, x, y, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert runs[0].t == runs[1].t and runs[0].curve == runs[1].curve
    for a, b in zip(runs[0].model.net.state_dict().values(), runs[1].model.net.state_dict().values()):
        assert torch.equal(a, b)
    fitting, validation = split_clean_rows(y, 0.25, torch.Generator().manual_seed(3))
    assert set(fitting.tolist()).isdisjoint(validation.tolist()) and fitting.numel() + validation.numel() == 100
    assert set(y[validation].tolist()) == set(range(10))  # every class in both parts


def test_bad_input_is_one_line(odd_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    keep = y != 3
    missing_one = torch.cat([x[keep], x[~keep][:1]]), torch.cat([y[keep], y[~keep][:1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; users still bring such models
        scripted = ModelHandle(torch.jit.trace(odd_model.net.eval(), x[:2]), ModelInfo((1, 8, 8), 10))
    cases = [
        lambda: ModeConnectivityRepair(points=2),
        lambda: ModeConnectivityRepair(validation_fraction=1.0),
        lambda: ModeConnectivityRepair()(odd_model, x[:15], y[:15]),  # too few rows
        lambda: ModeConnectivityRepair()(odd_model, x[keep], y[keep]),  # a class missing
        lambda: ModeConnectivityRepair()(odd_model, *missing_one),  # a class with one row: none to hold out
        lambda: ModeConnectivityRepair()(odd_model, x[:, :, :4], y),
        lambda: ModeConnectivityRepair()(odd_model, x, y + 10),
        lambda: ModeConnectivityRepair()(scripted, x, y),
    ]
    for case in cases:
        with pytest.raises(AdvkitError) as info:
            case()
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_hard_tuned_ends_remove_a_badnets_backdoor_at_an_accuracy_cost():
    """The measured trade-off on digits (benchmarks/bench_repair.py): with the reference's
    settings the fine-tuned ends share the suspect's basin and the backdoor stays; with
    ends fine-tuned hard enough to leave it, the backdoor goes and accuracy drops."""
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    attack = BadNets(target=0, rate=0.1)
    poisoned = attack(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(0))
    model = _handle(build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=0))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=30, lr=2e-3, seed=0))
    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(1))
    mine, held = order[:67], order[67:]
    xe, ye = test.x[held], test.y[held]
    assert backdoor_success_rate(model, xe, ye, attack.trigger, 0) > 0.95
    plain = ModeConnectivityRepair()(model, test.x[mine], test.y[mine])
    assert backdoor_success_rate(plain.model, xe, ye, attack.trigger, 0) > 0.8
    hard = ModeConnectivityRepair(endpoint_lr=0.05, weight_decay=0.02)(model, test.x[mine], test.y[mine])
    curve = evaluate_curve(hard, xe, ye, attack.trigger, 0)
    chosen = next(row for row in curve if row["chosen"])
    assert chosen["backdoor_success"] < 0.25  # measured: 0.13
    assert _accuracy(model, xe, ye) - 0.12 < chosen["clean_accuracy"] < _accuracy(model, xe, ye) - 0.03  # measured: -7 points
