"""Each reliability check must trip on a model broken in its way, and pass a sound one."""

import torch
from torch import nn

from advkit.attacks.evasion import PGD
from advkit.core import ModelHandle, ModelInfo, Threat
from advkit.attacks.sanity import check_blackbox_vs_whitebox, run_checks


def _by_check(report):
    return {f.check: f.ok for f in report.findings}


def test_sound_model_passes_every_check(digits_model, digits_test):
    report = run_checks(digits_model, digits_test.x, digits_test.y, PGD(Threat(eps=0.1), restarts=1))
    assert report.reliable, report.reasons


class RandomizedNet(nn.Module):
    """Dropout forced on at inference: a randomised defense."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(nn.functional.dropout(x, 0.5, training=True))


class QuantizedInputNet(nn.Module):
    """Rounds its input to 1 bit first: gradients are zero everywhere (masking)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x))


def test_random_forward_and_eps_zero_trip_on_a_randomised_model(digits_model, digits_test):
    handle = ModelHandle(RandomizedNet(digits_model.net), digits_model.info)
    checks = _by_check(run_checks(handle, digits_test.x, digits_test.y, PGD(Threat(eps=0.1), restarts=1)))
    assert checks["random_forward"] is False
    assert checks["eps_zero"] is False


def test_masked_gradients_trip_on_a_quantizing_model(digits_model, digits_test):
    handle = ModelHandle(QuantizedInputNet(digits_model.net), digits_model.info)
    report = run_checks(handle, digits_test.x, digits_test.y)
    assert _by_check(report)["masked_gradients"] is False
    assert not report.reliable and any("masked" in r for r in report.reasons)


def test_train_mode_trips(digits_train):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    handle = ModelHandle(net, ModelInfo(input_shape=(1, 8, 8), num_classes=10))
    assert _by_check(run_checks(handle, digits_train.x, digits_train.y))["train_mode"] is False
    net.eval()
    assert _by_check(run_checks(handle, digits_train.x, digits_train.y))["train_mode"] is True


def test_blackbox_beating_whitebox_is_flagged(digits_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    weak = PGD(Threat(eps=0.05), restarts=1)(digits_model, x, y)
    strong = PGD(Threat(eps=0.3), restarts=1)(digits_model, x, y)
    assert check_blackbox_vs_whitebox(weak, strong).ok is False
    assert check_blackbox_vs_whitebox(strong, weak).ok is True
