"""Denoised smoothing (Salman et al. 2020) must raise the certified radius of a frozen classifier."""

import math

import pytest
import torch

from advkit.certify.denoised import (
    DenoisedClassifier,
    Denoiser,
    denoised_handle,
    denoiser_from_settings,
    train_denoiser,
)
from advkit.certify.smoothing import Smoothed
from advkit.errors import AdvkitError

SMALL = {"depth": 6, "width": 32}  # a narrower DnCNN than the default keeps the test fast


@pytest.mark.shown
def test_denoiser_raises_the_acr_of_the_frozen_classifier(digits_model, digits_train, digits_test):
    network = digits_model.network
    before = {k: v.clone() for k, v in network.state_dict().items()}
    modes = [m.training for m in network.modules()]
    flags = [p.requires_grad for p in network.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in network.parameters()]  # a shared fixture: earlier tests may have left some
    steps = []
    report = train_denoiser(network, digits_train.x, 0.25, epochs=12, **SMALL, progress=lambda *a: steps.append(a))
    # the classifier is untouched: bit-identical weights and buffers, same modes and flags, no gradients
    after = network.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in network.modules()] == modes
    assert [p.requires_grad for p in network.parameters()] == flags
    assert all((g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad)) for g, p in zip(grads, network.parameters(), strict=True))
    # the paper's recipe: MSE warm-up (a quarter of the epochs), then the stability objective
    assert report.mse_epochs == 3 and report.phases == ["mse"] * 3 + ["stability"] * 9
    assert len(report.losses) == 12 and all(math.isfinite(v) for v in report.losses)
    total = 12 * math.ceil(digits_train.x.shape[0] / 64)
    assert steps[0] == ("denoiser", 1, total) and steps[-1] == ("denoiser", total, total) and len(steps) == total
    assert not report.denoiser.training

    x, y = digits_test.x[:100], digits_test.y[:100]
    plain = Smoothed(digits_model, 0.25).certify_dataset(x, y, 50, 500, 0.001)
    denoised = Smoothed(denoised_handle(digits_model, report.denoiser), 0.25).certify_dataset(x, y, 50, 500, 0.001)
    print(f"sigma 0.25, 100 test rows, n0=50, n=500, alpha=0.001: ACR frozen {plain.acr:.3f}, denoised {denoised.acr:.3f}")
    # measured: 0.328 -> ~0.38; an untrained (identity) denoiser gives exactly the frozen ACR
    assert denoised.acr >= plain.acr + 0.03
    assert denoised.certified_accuracy(0.25) >= plain.certified_accuracy(0.25) + 0.05


def test_classifier_in_train_mode_with_batchnorm_stays_frozen():
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 3)
    ).train()
    classifier[3].bias.requires_grad_(False)  # mixed flags: each must come back as it was
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    report = train_denoiser(classifier, torch.rand(40, 1, 8, 8), 0.5, epochs=3, batch_size=16, depth=3, width=8)
    assert report.phases == ["mse", "stability", "stability"]
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())  # BN statistics too
    assert all(m.training for m in classifier.modules())
    assert [p.requires_grad for p in classifier.parameters()] == [True, True, True, True, True, False]
    assert all(p.grad is None for p in classifier.parameters())
    mse = train_denoiser(classifier, torch.rand(40, 1, 8, 8), 0.5, epochs=2, objective="mse", depth=3, width=8)
    assert mse.phases == ["mse", "mse"] and mse.mse_epochs == 2


def test_fresh_denoiser_is_the_identity_and_any_size_works():
    denoiser = Denoiser(3, depth=4, width=8).eval()
    x = torch.rand(2, 3, 11, 7) * 1.6 - 0.3  # noisy pixels lie outside [0, 1]
    assert torch.allclose(denoiser(x), x)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    assert DenoisedClassifier(denoiser, classifier)(x).shape == (2, 4)


def test_same_seed_same_denoiser_and_settings_rebuild_it(digits_model, digits_train):
    x = digits_train.x[:96]
    kwargs = {"epochs": 2, "batch_size": 32, "depth": 3, "width": 8}
    first = train_denoiser(digits_model.network, x, 0.25, seed=3, **kwargs).denoiser
    second = train_denoiser(digits_model.network, x, 0.25, seed=3, **kwargs).denoiser
    other = train_denoiser(digits_model.network, x, 0.25, seed=4, **kwargs).denoiser
    state = first.state_dict()
    assert all(torch.equal(state[k], v) for k, v in second.state_dict().items())
    assert not all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    assert all(type(v) is torch.Tensor for v in state.values())
    rebuilt = denoiser_from_settings(first.settings())
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    noisy = x[:8] + 0.25 * torch.randn(x[:8].shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rebuilt(noisy), first(noisy))
    with pytest.raises(AdvkitError, match="settings"):
        denoiser_from_settings({"channels": 1, "depth": 3})


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.5}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"epochs": 0}, "epochs"),
        ({"objective": "denoise"}, "objective"),
        ({"x": torch.rand(4, 8, 8)}, r"\[N, C, H, W\]"),
        ({"x": torch.rand(0, 1, 8, 8)}, "no rows"),
        ({"x": torch.rand(4, 1, 8, 8).index_put_((torch.tensor([2]),), torch.tensor(float("nan")))}, "row 2"),
        ({"mse_epochs": 5}, "mse_epochs"),
        ({"objective": "stability+mse", "epochs": 1}, r"stability\+mse"),
    ],
)
def test_bad_input(digits_model, change, needle):
    settings = {"x": torch.rand(4, 1, 8, 8), "sigma": 0.25, "epochs": 2} | change
    x, sigma = settings.pop("x"), settings.pop("sigma")
    with pytest.raises(AdvkitError, match=needle) as error:
        train_denoiser(digits_model.network, x, sigma, **settings)
    assert "\n" not in str(error.value)
