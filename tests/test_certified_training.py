"""Certified training (Gaussian, SmoothAdv, MACER), smoothing's known behaviour, and PACD."""

import pytest
import torch
from scipy.stats import norm

from advkit.attacks.poisoning import PACD, soft_radius
from advkit.certify.smoothing import Smoothed
from advkit.certify.training import (
    MACER,
    GaussianAugmentation,
    SmoothAdv,
    soft_smoothed_log_probs,
)
from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit


def fresh(seed: int = 0) -> ModelHandle:
    return ModelHandle(build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=seed), ModelInfo((1, 8, 8), 10, arch="digits-cnn"))


def test_radius_is_sigma_times_the_bound_when_votes_are_unanimous(digits_model, digits_test):
    """With every vote on the top class, pA = alpha^(1/n): the radius is sigma * Phi^-1 of it, linear in sigma."""
    n, alpha = 400, 0.001
    saturated = float(norm.ppf(alpha ** (1 / n)))
    for sigma in (0.02, 0.04):
        result = Smoothed(digits_model, sigma).certify_dataset(digits_test.x[:20], digits_test.y[:20], 50, n, alpha)
        cap = sigma * saturated
        assert bool((result.radius <= cap + 1e-6).all())  # no row beats the unanimous bound
        unanimous = (result.radius - cap).abs() <= 1e-6  # at this little noise nearly every row votes one way
        assert int(unanimous.sum()) >= 15


def test_more_noise_samples_fewer_abstentions(digits_model, digits_test):
    """A larger n tightens the Clopper-Pearson bound: fewer rows fall under pA = 1/2."""
    x, y = digits_test.x[:60], digits_test.y[:60]
    few = Smoothed(digits_model, 0.5).certify_dataset(x, y, 50, 60, 0.001)
    many = Smoothed(digits_model, 0.5).certify_dataset(x, y, 50, 3000, 0.001)
    assert many.abstain_rate < few.abstain_rate
    assert many.acr > few.acr


def test_noise_trained_model_abstains_less_under_heavy_noise(digits_model, digits_train, digits_test):
    """Cohen et al.: the base classifier must be trained under the noise; then the smoothed one commits."""
    trained = fresh()
    fit(trained.network, digits_train.x, digits_train.y, TrainConfig(epochs=20, lr=2e-3), GaussianAugmentation(0.5))
    x, y = digits_test.x[:80], digits_test.y[:80]
    plain = Smoothed(digits_model, 0.5).certify_dataset(x, y, 50, 400, 0.001)
    noisy = Smoothed(trained, 0.5).certify_dataset(x, y, 50, 400, 0.001)
    assert noisy.abstain_rate < plain.abstain_rate
    assert noisy.certified_accuracy(0.0) > plain.certified_accuracy(0.0)


def test_macer_robustness_loss_only_counts_correct_rows_inside_the_hinge():
    macer = MACER(sigma=0.25, gamma=8.0)
    y = torch.tensor([0, 0, 1])
    logits = torch.zeros(3, 4, 10)
    logits[0, :, 0] = 0.05  # correct, tiny margin: inside the hinge
    logits[1, :, 0] = 50.0  # correct, p = 1: margin infinite, outside (and no NaN)
    logits[2, :, 0] = 0.05  # wrong: not counted
    logits.requires_grad_(True)
    loss = macer.robustness_loss(logits, y, reduction="sum")
    p = torch.softmax(16 * logits[0, 0].detach(), 0)
    top = p.topk(2).values
    expected = 0.25 / 2 * (8.0 - (norm.ppf(float(top[0])) - norm.ppf(float(top[1]))))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and bool((grad[1:] == 0).all())


def test_smoothadv_point_is_in_the_l2_ball_and_raises_the_smoothed_loss(digits_model, digits_test):
    x, y = digits_test.x[:32], digits_test.y[:32]
    net = digits_model.network
    noise = torch.randn((32, 4, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.25
    captured = {}

    def spy(module, inputs, output):  # the final training batch: (x_adv + noise) flattened
        captured["x"] = inputs[0].detach()

    objective = SmoothAdv(sigma=0.25, eps=0.5, steps=4, samples=4)
    objective.draws = lambda x_, count, generator: noise  # the same draws for the check below
    hook = net.register_forward_hook(spy)
    try:
        objective(net, x, y, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
        net.eval()
    x_adv = (captured["x"].view(32, 4, 1, 8, 8) - noise)[:, 0]
    assert bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean = torch.nn.functional.nll_loss(soft_smoothed_log_probs(net, x, noise), y)
        adv = torch.nn.functional.nll_loss(soft_smoothed_log_probs(net, x_adv, noise), y)
    assert float(adv) > float(clean) + 0.1


@pytest.mark.parametrize(
    "objective,epochs", [(GaussianAugmentation(0.25), 4), (SmoothAdv(0.25, steps=1, samples=2), 4), (MACER(0.25, samples=4), 10)]
)
def test_each_certified_objective_trains_a_model(objective, epochs, digits_train, digits_test):
    model = fresh(1)
    fit(model.network, digits_train.x, digits_train.y, TrainConfig(epochs=epochs, lr=2e-3), objective)
    result = Smoothed(model, 0.25).certify_dataset(digits_test.x[:40], digits_test.y[:40], 30, 200, 0.01)
    assert result.certified_accuracy(0.0) >= 0.6, objective.name


def test_pacd_tiny_run_keeps_labels_and_budget_and_lowers_the_radius(digits_train, digits_test):
    """Clean-label, within eps and bounds, only target rows touched; the victim's target-class radius drops."""
    target, eps = 0, 0.2
    surrogate = build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=1000)
    half = digits_test.x.shape[0] // 2
    poisoned = PACD(target=target, eps=eps, outer_steps=40, pretrain_epochs=5)(
        surrogate, digits_train.x, digits_train.y, digits_test.x[:half], digits_test.y[:half], generator=torch.Generator().manual_seed(0)
    )
    delta = poisoned.x - digits_train.x
    assert torch.equal(poisoned.y, digits_train.y)
    assert torch.equal(poisoned.poisoned, digits_train.y == target)
    assert float(delta.abs().max()) <= eps + 1e-6 and float(delta[~poisoned.poisoned].abs().max()) == 0.0
    assert 0.0 <= float(poisoned.x.min()) and float(poisoned.x.max()) <= 1.0

    held = digits_test.y[half:] == target
    x_eval, y_eval = digits_test.x[half:][held], digits_test.y[half:][held]
    noise = torch.randn((x_eval.shape[0], 32, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 0.25
    radii = []
    for x_train in (digits_train.x, poisoned.x):
        victim = fresh(7)
        fit(victim.network, x_train, digits_train.y, TrainConfig(epochs=20, lr=2e-3, seed=7), GaussianAugmentation(0.25))
        with torch.no_grad():
            radii.append(float(soft_radius(victim.network, x_eval, y_eval, noise, 0.25, 16.0).mean()))
    assert radii[1] < 0.9 * radii[0], radii


def test_pacd_bad_settings():
    with pytest.raises(AdvkitError, match="eps"):
        PACD(target=0, eps=0)
    with pytest.raises(AdvkitError, match="method"):
        PACD(target=0, method="none")
    surrogate = build("digits-cnn", in_channels=1, num_classes=10, image_size=8)
    x, y = torch.rand(20, 1, 8, 8), torch.ones(20, dtype=torch.long)
    with pytest.raises(AdvkitError, match="no training rows of target class 3"):
        PACD(target=3)(surrogate, x, y, x, y)


@pytest.mark.slow
def test_macer_and_smoothadv_beat_gaussian_acr(digits_train, digits_test):
    """Acceptance 2: on the same epochs, MACER's ACR > Gaussian's (n = 10,000, 150 rows)."""
    x, y = digits_test.x[:150], digits_test.y[:150]
    acr = {}
    for objective in (GaussianAugmentation(0.25), MACER(0.25)):
        model = fresh()
        fit(model.network, digits_train.x, digits_train.y, TrainConfig(epochs=30, lr=2e-3), objective)
        acr[objective.name] = Smoothed(model, 0.25).certify_dataset(x, y, 100, 10_000, 0.001).acr
    assert acr["macer"] > acr["gaussian"], acr
