"""Attacks must work on trained models and never leave the budget or the bounds."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advkit.attacks.evasion import BIM, FGSM, ILLC, PGD
from advkit.core import ModelHandle, ModelInfo, Threat
from advkit.errors import AdvkitError


def test_digits_zoo_model_is_accurate_and_falls_to_pgd(digits_model, digits_test):
    result = PGD(Threat(eps=0.3))(digits_model, digits_test.x, digits_test.y)
    assert result.clean_accuracy >= 0.97
    assert result.adversarial_accuracy <= 0.05
    assert float(result.perturbation.max()) <= 0.3 + 1e-6


def test_eps_curve_is_monotone_on_digits(digits_model, digits_test):
    accs = [PGD(Threat(eps=e), restarts=1)(digits_model, digits_test.x, digits_test.y).adversarial_accuracy for e in (0.05, 0.1, 0.2, 0.3)]
    assert accs == sorted(accs, reverse=True)
    assert 0.3 < accs[1] < 0.85  # eps=0.1 leaves a standard digits CNN partly standing


def test_mnist_zoo_model_falls_to_pgd(mnist_model, mnist_test):
    x, y = mnist_test.x[:400], mnist_test.y[:400]
    result = PGD(Threat(eps=0.3), restarts=1)(mnist_model, x, y)
    assert result.clean_accuracy >= 0.95
    assert result.adversarial_accuracy <= 0.01


@pytest.mark.parametrize("norm,eps,goal", [("linf", 0.1, "untargeted"), ("l2", 0.8, "untargeted"), ("linf", 0.15, "targeted"), ("l2", 1.2, "targeted")])
def test_one_step_never_breaks_a_row_pgd_leaves_standing(digits_model, digits_test, norm, eps, goal):
    threat = Threat(norm=norm, eps=eps, goal=goal)
    x, y = digits_test.x, digits_test.y
    target = (y + 3) % 10 if goal == "targeted" else None
    one = FGSM(threat)(digits_model, x, y, target=target)
    multi = PGD(threat)(digits_model, x, y, target=target)
    assert int((one.success & ~multi.success).sum()) == 0
    assert multi.attack_success_rate > one.attack_success_rate


def test_targeted_and_confidence_goals(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    target = (y + 1) % 10
    res = PGD(Threat(eps=0.3, goal="targeted"))(digits_model, x, y, target=target)
    assert res.attack_success_rate >= 0.9
    assert bool((res.adv_pred[res.success] == target[res.success]).all())
    conf = PGD(Threat(eps=0.1, goal="confidence"))(digits_model, x, y)
    assert float(conf.adv_true_prob.mean()) < float(conf.clean_true_prob.mean()) - 0.2
    assert bool((conf.adv_true_prob[conf.success] < 0.5).all())


def test_bim_and_illc(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    bim = BIM(Threat(eps=0.2))(digits_model, x, y)
    assert bim.params["steps"] == 55 and bim.attack_success_rate >= 0.8
    illc = ILLC(Threat(eps=0.3))(digits_model, x, y)
    least_likely = digits_model.predict_logits(x).scatter(1, y[:, None], float("inf")).argmin(1)
    assert torch.equal(illc.target, least_likely)
    assert illc.attack_success_rate >= 0.5


def test_input_errors_are_one_line(digits_model, digits_test):
    attack = FGSM(Threat(eps=0.1))
    x, y = digits_test.x[:4], digits_test.y[:4]
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(AdvkitError, match="row 1 has NaN"):
        attack(digits_model, bad, y)
    with pytest.raises(AdvkitError, match="label 12"):
        attack(digits_model, x, torch.tensor([0, 1, 12, 3]))
    with pytest.raises(AdvkitError, match="expects"):
        attack(digits_model, torch.rand(4, 1, 28, 28), y)
    with pytest.raises(AdvkitError, match="outside the bounds"):
        attack(digits_model, x * 3 + 0.5, y)
    with pytest.raises(AdvkitError, match="supports goals"):
        ILLC(Threat(goal="confidence"))


class TinyNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attack=st.sampled_from([FGSM, PGD, BIM]),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 2.0),
    goal=st.sampled_from(["untargeted", "targeted", "confidence"]),
    normalized=st.booleans(),
    channels=st.sampled_from([1, 3]),
    lo=st.sampled_from([0.0, -1.0]),
    seed=st.integers(0, 2**16),
)
def test_adversarial_images_stay_in_the_ball_and_the_bounds(attack, norm, eps, goal, normalized, channels, lo, seed):
    torch.manual_seed(seed)
    info = ModelInfo(
        input_shape=(channels, 6, 6),
        num_classes=5,
        bounds=(lo, 1.0),
        mean=[0.45] * channels if normalized else None,
        std=[0.2] * channels if normalized else None,
    )
    handle = ModelHandle(TinyNet(channels).eval(), info)
    x = torch.rand(12, channels, 6, 6) * (1.0 - lo) + lo
    y = torch.randint(0, 5, (12,))
    kwargs = {"steps": 3} if attack is not FGSM else {}
    if attack is PGD:
        kwargs["restarts"] = 2
    result = attack(Threat(norm=norm, eps=eps, goal=goal), **kwargs)(handle, x, y, generator=torch.Generator().manual_seed(seed))
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(result.x_adv.min()) >= lo and float(result.x_adv.max()) <= 1.0
    assert bool(torch.isfinite(result.x_adv).all())
    recomputed = handle.predict(result.x_adv)
    assert torch.equal(recomputed, result.adv_pred)  # reported predictions are the model's own


def test_same_seed_same_numbers(digits_model, digits_test):
    x, y = digits_test.x[:150], digits_test.y[:150]
    runs = [PGD(Threat(eps=0.1))(digits_model, x, y, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
