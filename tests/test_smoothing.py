"""Randomized smoothing must match the paper's pseudocode and never count an abstention."""

import pytest
import torch
from scipy.stats import beta, norm

from advkit.certify.smoothing import ABSTAIN, Smoothed
from advkit.errors import AdvkitError


def reference_certify(model, x, sigma, n0, n, alpha, generator):
    """CERTIFY exactly as written in Cohen et al. 2019, one noise draw per call."""
    net = model.network.eval()
    with torch.no_grad():
        noise0 = torch.randn((n0, *x.shape), generator=generator) * sigma
        c_a = int(torch.bincount(net(x + noise0).argmax(1), minlength=model.num_classes).argmax())
        noise = torch.randn((n, *x.shape), generator=generator) * sigma
        n_a = int((net(x + noise).argmax(1) == c_a).sum())
    p_a = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
    if p_a < 0.5:
        return ABSTAIN, 0.0
    return c_a, sigma * norm.ppf(p_a)


def test_certify_matches_the_papers_pseudocode(digits_model, digits_test):
    smoothed = Smoothed(digits_model, sigma=0.25, batch_size=10_000)
    for i in range(12):
        x = digits_test.x[i]
        ours = smoothed.certify(x, 50, 500, 0.001, torch.Generator().manual_seed(i))
        ref = reference_certify(digits_model, x, 0.25, 50, 500, 0.001, torch.Generator().manual_seed(i))
        assert ours[0] == ref[0] and ours[1] == pytest.approx(ref[1], abs=1e-9)


def test_streaming_keeps_counts_and_abstentions_are_never_correct(digits_model, digits_test):
    small = Smoothed(digits_model, sigma=0.5, batch_size=7)
    counts = small.counts(digits_test.x[0], 100, torch.Generator().manual_seed(0))
    assert int(counts.sum()) == 100
    result = Smoothed(digits_model, sigma=1.0, batch_size=500).certify_dataset(
        digits_test.x[:40], digits_test.y[:40], 20, 200, 0.001
    )
    abstained = result.prediction == ABSTAIN
    assert bool(abstained.any()), "sigma=1 on 8x8 digits should make the smoothed model abstain somewhere"
    assert not bool(result.correct[abstained].any())
    assert bool((result.radius[abstained] == 0).all())
    # the same rows through the paper's pseudocode, each row on its own noise stream as
    # certify_dataset seeds it: one draw of the generator (seed 0 by default), then row i
    from advkit.engine import shard_seed

    base = shard_seed(int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0))))
    ref = [
        reference_certify(digits_model, digits_test.x[i], 1.0, 20, 200, 0.001, torch.Generator().manual_seed(shard_seed(base, i))) for i in range(40)
    ]
    ref_pred = torch.tensor([c for c, _ in ref])
    ref_radius = torch.tensor([r for _, r in ref], dtype=torch.float32)
    ref_correct = ref_pred == digits_test.y[:40]
    assert result.abstain_rate == pytest.approx(float((ref_pred == ABSTAIN).float().mean()))
    assert result.certified_accuracy(0.0) == pytest.approx(float(ref_correct.float().mean()))
    assert result.acr == pytest.approx(float((ref_radius * ref_correct).mean()), abs=1e-6)


def test_smoothed_model_is_accurate_at_small_sigma(digits_model, digits_test):
    result = Smoothed(digits_model, sigma=0.12).certify_dataset(digits_test.x[:60], digits_test.y[:60], 50, 500, 0.001)
    assert result.certified_accuracy(0.0) >= 0.8
    # 500 unanimous votes at alpha=0.001 bound pA by 0.001^(1/500): radius at most 0.12 * Phi^-1 of it
    ceiling = 0.12 * norm.ppf(0.001 ** (1 / 500))
    assert 0.25 < ceiling < 0.3 and float(result.radius.max()) <= ceiling + 1e-6
    assert result.certified_accuracy(0.25) >= 0.7  # most correct rows reach near that ceiling
    assert result.certified_accuracy(ceiling + 1e-3) == 0.0


def test_predict_abstains_only_when_undecided(digits_model, digits_test):
    smoothed = Smoothed(digits_model, sigma=0.12)
    assert smoothed.predict(digits_test.x[0], 400, 0.001, torch.Generator().manual_seed(0)) == int(digits_test.y[0])


@pytest.mark.parametrize("kwargs,needle", [({"sigma": 0}, "sigma"), ({"alpha": 1.5}, "alpha"), ({"n0": 300}, "n0")])
def test_bad_settings(digits_model, digits_test, kwargs, needle):
    settings = {"sigma": 0.25, "alpha": 0.001, "n0": 10, "n": 100} | kwargs
    with pytest.raises(AdvkitError, match=needle):
        Smoothed(digits_model, sigma=settings["sigma"]).certify_dataset(
            digits_test.x[:2], digits_test.y[:2], settings["n0"], settings["n"], settings["alpha"]
        )


def test_gaussian_augmentation_raises_certified_accuracy(digits_model, digits_train, digits_test):
    from advkit.certify.training import GaussianAugmentation
    from advkit.core import ModelHandle, ModelInfo
    from advkit.models import TrainConfig, build, fit

    net = build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=0)
    noisy = ModelHandle(net, ModelInfo((1, 8, 8), 10, arch="digits-cnn"))
    fit(noisy.network, digits_train.x, digits_train.y, TrainConfig(epochs=30, lr=2e-3), GaussianAugmentation(0.25))
    x, y = digits_test.x[:120], digits_test.y[:120]
    plain = Smoothed(digits_model, 0.25).certify_dataset(x, y, 50, 500, 0.001)
    trained = Smoothed(noisy, 0.25).certify_dataset(x, y, 50, 500, 0.001)
    assert trained.certified_accuracy(0.25) >= plain.certified_accuracy(0.25) + 0.05
    assert trained.acr > plain.acr
