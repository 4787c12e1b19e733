"""The clean-label backdoor must keep labels, harden target-class rows inside eps, carry the
trigger, and plant a backdoor that the plain trigger on the same rows does not."""

from __future__ import annotations

import pytest
import torch

from advkit.attacks.poisoning import PatchTrigger, backdoor_success_rate
from advkit.attacks.poisoning.clean_label import CleanLabel
from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit
from advkit.models.zoo import ZOO

EPS = 64 / 255
RATE = 0.05  # of all training rows: about half of the target class on digits


def retrained(x: torch.Tensor, y: torch.Tensor, seed: int) -> ModelHandle:
    recipe = ZOO["digits-cnn"]
    net = build(recipe.arch, in_channels=1, num_classes=10, image_size=8, seed=seed)
    fit(net, x, y, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed))
    return ModelHandle(net, ModelInfo((1, 8, 8), 10, arch=recipe.arch))


def test_poisons_are_hard_target_rows_with_the_trigger_and_labels_kept(digits_model, digits_train):
    trigger = PatchTrigger(size=3, position="bottom-right")
    out = CleanLabel(target=3, rate=RATE, eps=EPS, trigger=trigger)(digits_model, digits_train.x, digits_train.y)
    rows = out.poisoned
    assert int(rows.sum()) == round(RATE * len(digits_train)) and out.target == 3 and out.attack == "clean-label"
    assert bool((digits_train.y[rows] == 3).all()), "only target-class rows are poisoned"
    assert torch.equal(out.y, digits_train.y) and torch.equal(out.original_y, digits_train.y)
    assert torch.equal(out.x[~rows], digits_train.x[~rows])
    mask, pattern = trigger.mask_and_pattern((1, 8, 8))
    on = mask.bool().expand(1, 8, 8)
    assert torch.equal(out.x[rows][:, on], pattern[on].expand(int(rows.sum()), -1)), "trigger stamped"
    change = (out.x[rows] - digits_train.x[rows]).abs()[:, ~on]
    assert float(change.max()) <= EPS + 1e-6 and float(change.max()) > EPS / 2
    assert float(out.x.min()) >= 0.0 and float(out.x.max()) <= 1.0
    assert out.params["crafting_model_accuracy"] < 0.3, "the perturbation makes the rows hard for the clean model"
    assert abs(out.params["class_share"] - int(rows.sum()) / int((digits_train.y == 3).sum())) < 1e-9


def test_eps_zero_is_the_trigger_only_baseline_and_seeds_repeat(digits_model, digits_train):
    x, y = digits_train.x, digits_train.y
    plain = CleanLabel(target=5, rate=RATE, eps=0.0)(None, x, y, generator=torch.Generator().manual_seed(4))
    hard = CleanLabel(target=5, rate=RATE, eps=EPS)(digits_model, x, y, generator=torch.Generator().manual_seed(4))
    again = CleanLabel(target=5, rate=RATE, eps=EPS)(digits_model, x, y, generator=torch.Generator().manual_seed(4))
    other = CleanLabel(target=5, rate=RATE, eps=EPS)(digits_model, x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain.poisoned, hard.poisoned), "the same seed picks the same rows with and without perturbation"
    rows = plain.poisoned
    assert torch.equal(plain.x[rows], PatchTrigger().apply(x[rows])) and plain.params["max_perturbation"] == 0.0
    assert torch.equal(hard.x, again.x) and not torch.equal(hard.poisoned, other.poisoned)


def test_bad_inputs_are_rejected(digits_model, digits_train):
    x, y = digits_train.x, digits_train.y
    for kwargs in ({"rate": 0.0}, {"rate": 1.0}, {"rate": 1.5}, {"eps": -0.1}, {"steps": 0}, {"step_size": 0.0}):
        with pytest.raises(AdvkitError):
            CleanLabel(target=0, **kwargs)  # type: ignore[arg-type]
    for attack, model in (
        (CleanLabel(target=10), digits_model),  # unknown class
        (CleanLabel(target=-1), digits_model),
        (CleanLabel(target=0, rate=0.2), digits_model),  # more rows than the class has
        (CleanLabel(target=0, rate=0.0001), digits_model),  # rounds to no row
        (CleanLabel(target=0, eps=1.5), digits_model),  # beyond the pixel range
        (CleanLabel(target=0), None),  # perturbing needs a model
    ):
        with pytest.raises(AdvkitError):
            attack(model, x, y)
    with pytest.raises(AdvkitError):
        CleanLabel(target=0)(digits_model, x[0], y[:1])


def success_and_baseline(model, train, test, target: int, seed: int) -> tuple[float, float]:
    """Backdoor success of a victim trained on the clean-label poisons vs on the plain trigger, same rows."""
    rates = []
    for eps in (EPS, 0.0):
        attack = CleanLabel(target=target, rate=RATE, eps=eps)
        out = attack(model, train.x, train.y, generator=torch.Generator().manual_seed(seed))
        victim = retrained(out.x, out.y, seed=50 + seed)
        rates.append(backdoor_success_rate(victim, test.x, test.y, attack.trigger, target))
    return rates[0], rates[1]


@pytest.mark.slow
def test_clean_label_backdoor_beats_the_plain_trigger_end_to_end(digits_model, digits_train, digits_test):
    attacked, baseline = success_and_baseline(digits_model, digits_train, digits_test, target=3, seed=3)
    assert attacked > 0.4 and attacked > baseline + 0.3


@pytest.mark.slow
def test_clean_label_success_over_ten_targets(digits_model, digits_train, digits_test):
    """Acceptance: each class as the target once (10 runs, victim seeds differ), 5% of the rows, eps 64/255."""
    pairs = [success_and_baseline(digits_model, digits_train, digits_test, target=t, seed=t) for t in range(10)]
    for t, (a, b) in enumerate(pairs):
        print(f"target {t}: clean-label {a:.3f}  plain trigger {b:.3f}")
    attacked = sum(a for a, _ in pairs) / len(pairs)
    baseline = sum(b for _, b in pairs) / len(pairs)
    print(f"clean-label backdoor success {attacked:.3f} vs plain trigger {baseline:.3f}")
    assert attacked > 0.4 and attacked > baseline + 0.3
