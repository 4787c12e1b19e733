"""Gradient matching (Witches' Brew) must align the poisons' gradient with the target's
adversarial gradient inside the budget, and flip targets of victims retrained from scratch."""

from __future__ import annotations

import pytest
import torch

from advkit.attacks.poisoning.gradient_matching import GradientMatching, target_success
from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit
from advkit.models.zoo import ZOO

TARGET_ROW = 382  # a test "7" the zoo model gets right
ADVERSARIAL = 9


def retrained(x: torch.Tensor, y: torch.Tensor, seed: int) -> ModelHandle:
    """A victim of the zoo's digits recipe trained from scratch (fresh init ``seed``) on ``(x, y)``."""
    recipe = ZOO["digits-cnn"]
    net = build(recipe.arch, in_channels=1, num_classes=10, image_size=8, seed=seed)
    fit(net, x, y, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed))
    return ModelHandle(net, ModelInfo((1, 8, 8), 10, arch=recipe.arch))


def random_targets(test_y: torch.Tensor, count: int, seed: int = 123) -> list[tuple[int, int]]:
    """``count`` (test row, adversarial class) pairs drawn at random, the class never the row's own."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        row = int(torch.randint(0, test_y.shape[0], (1,), generator=gen))
        adversarial = (int(test_y[row]) + 1 + int(torch.randint(0, 9, (1,), generator=gen))) % 10
        pairs.append((row, adversarial))
    return pairs


def test_alignment_rises_inside_the_budget_with_labels_kept(digits_model, digits_train, digits_test):
    eps = 16 / 255
    attack = GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, eps=eps, steps=60, restarts=1)
    out = attack(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, generator=torch.Generator().manual_seed(0))
    p = out.params
    assert p["alignment_final"] > p["alignment_start"] + 0.2, p["alignment_history"][::10]
    assert p["alignment_final"] > 0.7
    rows = out.poisoned
    assert int(rows.sum()) == round(0.01 * len(digits_train)) == p["budget"]
    assert bool((digits_train.y[rows] == ADVERSARIAL).all()), "poisons come from the adversarial class"
    assert torch.equal(out.y, digits_train.y) and torch.equal(out.original_y, digits_train.y)
    assert torch.equal(out.x[~rows], digits_train.x[~rows])
    change = (out.x - digits_train.x).abs()
    assert float(change.max()) <= eps + 1e-6 and float(change[rows].max()) > eps / 2
    assert float(out.x.min()) >= 0.0 and float(out.x.max()) <= 1.0
    assert out.target == ADVERSARIAL and p["target_rows"] == [TARGET_ROW] and out.attack == "gradient-matching"


def test_same_seed_same_poisons_and_restarts_keep_the_best(digits_model, digits_train, digits_test):
    def brew(seed: int, restarts: int = 1):
        attack = GradientMatching(target_row=(TARGET_ROW, 36), adversarial_class=ADVERSARIAL, eps=32 / 255, steps=8, restarts=restarts)
        return attack(digits_model, digits_train.x, digits_train.y, digits_test.x, generator=torch.Generator().manual_seed(seed))

    a, b, c = brew(1), brew(1), brew(2)
    assert torch.equal(a.x, b.x) and torch.equal(a.poisoned, b.poisoned)
    assert not torch.equal(a.x, c.x)
    several = brew(3, restarts=3)
    assert several.params["alignment_final"] == max(several.params["alignment_per_restart"])


def test_an_ensemble_of_surrogates_is_matched_at_once(digits_model, digits_train, digits_test):
    attack = GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, steps=4, restarts=1)
    out = attack([digits_model, digits_model.network], digits_train.x, digits_train.y, digits_test.x)
    assert out.params["ensemble"] == 2 and int(out.poisoned.sum()) == 13


def test_bad_inputs_are_rejected(digits_model, digits_train, digits_test):
    x, y, xt, yt = digits_train.x, digits_train.y, digits_test.x, digits_test.y
    for kwargs in ({"rate": 0.0}, {"rate": 1.0}, {"rate": -0.1}, {"eps": 0.0}, {"eps": 2.0}, {"steps": 0}, {"restarts": 0}, {"lr": 0.0}):
        with pytest.raises(AdvkitError):
            GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(AdvkitError):
        GradientMatching(target_row=(), adversarial_class=ADVERSARIAL)
    bad_calls = [
        GradientMatching(target_row=TARGET_ROW, adversarial_class=10),  # unknown class
        GradientMatching(target_row=TARGET_ROW, adversarial_class=-1),
        GradientMatching(target_row=len(xt), adversarial_class=ADVERSARIAL),  # unknown test row
        GradientMatching(target_row=-1, adversarial_class=ADVERSARIAL),
        GradientMatching(target_row=TARGET_ROW, adversarial_class=int(yt[TARGET_ROW])),  # already that class
        GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, rate=0.0001),  # rounds to no row
        GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, rate=0.5),  # more than the class has
    ]
    for attack in bad_calls:
        with pytest.raises(AdvkitError):
            attack(digits_model, x, y, xt, yt)
    with pytest.raises(AdvkitError):
        GradientMatching(target_row=0, adversarial_class=1)(digits_model, x, y, torch.zeros(3, 1, 4, 4))


@pytest.mark.slow
def test_poisons_flip_a_target_of_a_victim_retrained_from_scratch(digits_model, digits_train, digits_test):
    """End to end on one target; the same budget spent on random signs (no matching) flips nothing."""
    eps = 128 / 255
    attack = GradientMatching(target_row=TARGET_ROW, adversarial_class=ADVERSARIAL, eps=eps, restarts=2)
    out = attack(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, generator=torch.Generator().manual_seed(0))
    target = digits_test.x[[TARGET_ROW]]
    assert target_success(retrained(out.x, out.y, seed=100), target, ADVERSARIAL) == 1.0
    noise = digits_train.x.clone()
    rows = out.poisoned
    signs = torch.randint(0, 2, noise[rows].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise[rows] = (noise[rows] + eps * signs).clamp(0, 1)
    assert target_success(retrained(noise, out.y, seed=100), target, ADVERSARIAL) == 0.0


@pytest.mark.slow
def test_gradient_matching_success_over_ten_random_targets(digits_model, digits_train, digits_test):
    """Acceptance: 10 random (target, adversarial class) pairs, 1% of the rows, eps 128/255 on
    8x8 digits, a fresh victim per target; the paper reports ~90% on CIFAR-10 at 16/255."""
    eps = 128 / 255
    wins = []
    for k, (row, adversarial) in enumerate(random_targets(digits_test.y, 10)):
        attack = GradientMatching(target_row=row, adversarial_class=adversarial, eps=eps, restarts=2)
        out = attack(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, generator=torch.Generator().manual_seed(k))
        victim = retrained(out.x, out.y, seed=100 + k)
        wins.append(target_success(victim, digits_test.x[[row]], adversarial))
        print(f"target {row} -> {adversarial}: alignment {out.params['alignment_start']:.3f} -> {out.params['alignment_final']:.3f}, success {wins[-1]:.0f}")
    rate = sum(wins) / len(wins)
    print(f"gradient matching success over {len(wins)} targets: {rate:.2f}")
    assert rate >= 0.4
