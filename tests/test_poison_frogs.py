"""Poison Frogs (Shafahi et al., NeurIPS 2018): feature collision, clean-label poisons, success.

Fast tests run on scikit-learn digits with the zoo's digits-cnn; the mnist5k acceptance
figures (one-shot transfer over 20 target/base pairs, end-to-end with the watermark) are
``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advkit.attacks.poisoning.poison_frogs import (
    PenultimateFeatures,
    PoisonFrogs,
    feature_collision,
    last_linear,
    scaled_beta,
    watermark,
)
from advkit.attacks.poisoning.poison_frogs_eval import poison_success, retrain_last_layer
from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError


def correct_pairs(model: ModelHandle, test, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Seeded random test rows the clean model gets right, each with a random other base class."""
    gen = torch.Generator().manual_seed(seed)
    correct = (model.predict(test.x).cpu() == test.y).nonzero().squeeze(1)
    rows = correct[torch.randperm(correct.numel(), generator=gen)[:count]]
    shift = torch.randint(1, 10, (count,), generator=gen)
    return [(int(r), int((test.y[r] + s) % 10)) for r, s in zip(rows, shift)]


def clean_control(data: PoisonedData, x_train: torch.Tensor) -> PoisonedData:
    """The same set with the unperturbed base rows appended instead of the poisons."""
    first = data.params["first_poison_row"]
    x = torch.cat([data.x[:first], x_train[data.params["base_rows"]]])
    return PoisonedData(x, data.y.clone(), data.poisoned.clone(), data.original_y.clone(), data.attack, data.target, data.params)


def test_features_are_the_input_of_the_last_linear(digits_model, digits_test):
    x = digits_test.x[:5]
    net = digits_model.net
    with torch.no_grad():
        expected = nn.Sequential(net.features, *list(net.classifier)[:-1])(x)
        got = PenultimateFeatures(digits_model.network)(x)
    assert last_linear(digits_model.network) is net.classifier[-1]
    assert got.shape == (5, 128)
    torch.testing.assert_close(got, expected)
    logreg = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # a linear model's features are its pixels
    torch.testing.assert_close(PenultimateFeatures(logreg)(x), x.flatten(1))


def test_collision_batch_shrinks_feature_distance_and_matches_single_runs(digits_model, digits_train, digits_test):
    features = PenultimateFeatures(digits_model.network)
    bases = digits_train.x[(digits_train.y == 3).nonzero().squeeze(1)[:6]]
    with torch.no_grad():
        targets = features(digits_test.x[[0, 1, 2]]).repeat_interleave(2, 0)  # 3 targets, 2 poisons each
    beta = scaled_beta(128, 64)
    batch = feature_collision(digits_model.network, bases, targets, beta=beta, steps=200)
    assert batch.poisons.shape == bases.shape
    assert float(batch.poisons.min()) >= 0.0 and float(batch.poisons.max()) <= 1.0
    assert bool((batch.feature_distance < batch.start_distance / 10).all()), (batch.start_distance, batch.feature_distance)
    single = feature_collision(digits_model.network, bases[4:5], targets[4], beta=beta, steps=200)
    torch.testing.assert_close(single.poisons, batch.poisons[4:5], atol=1e-4, rtol=0)  # each poison has its own schedule
    assert int(single.steps[0]) == int(batch.steps[4])


def test_beta_eps_and_watermark_keep_poisons_near_their_base(digits_model, digits_train, digits_test):
    network = digits_model.network
    bases = digits_train.x[(digits_train.y == 5).nonzero().squeeze(1)[:4]]
    target = digits_test.x[digits_test.y == 1][:1]
    with torch.no_grad():
        target_features = PenultimateFeatures(network)(target)[0]

    def moved(result, anchor):
        return (result.poisons - anchor).flatten(1)

    loose = feature_collision(network, bases, target_features, beta=scaled_beta(128, 64), steps=150)
    tight = feature_collision(network, bases, target_features, beta=1000.0, steps=150)
    assert float(moved(tight, bases).norm(dim=1).mean()) < 0.5 * float(moved(loose, bases).norm(dim=1).mean())
    assert float(tight.feature_distance.mean()) > float(loose.feature_distance.mean())  # the trade-off beta sets
    boxed = feature_collision(network, bases, target_features, beta=0.0, eps=0.1, steps=150)
    assert float(moved(boxed, bases).abs().max()) <= 0.1 + 1e-6
    assert bool((boxed.feature_distance < boxed.start_distance).all())
    marked = watermark(bases, target, 0.3)
    torch.testing.assert_close(marked, 0.7 * bases + 0.3 * target)
    data = PoisonFrogs(target=int((digits_test.y == 1).nonzero()[0]), base_class=5, poisons=4, watermark=0.3, beta=1e6, steps=20)(
        digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y
    )
    anchors = watermark(digits_train.x[data.params["base_rows"]], target, 0.3)
    assert float((data.x[data.poisoned] - anchors).abs().max()) < 1e-3  # huge beta: the watermarked base itself


def test_poisoned_data_is_clean_label_and_appended(digits_model, digits_train, digits_test):
    (target, base_class), = correct_pairs(digits_model, digits_test, 1, seed=3)
    attack = PoisonFrogs(target=target, base_class=base_class, poisons=3, steps=50, base_choice="random")
    data = attack(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, generator=torch.Generator().manual_seed(7))
    n = len(digits_train.y)
    assert data.x.shape[0] == n + 3 and data.rows == [n, n + 1, n + 2]
    assert torch.equal(data.x[:n], digits_train.x) and torch.equal(data.y[:n], digits_train.y)
    assert data.y[n:].tolist() == [base_class] * 3 and torch.equal(data.original_y, data.y)  # clean label
    assert data.attack == "poison-frogs" and data.target == base_class
    params = json.loads(json.dumps(data.params))
    assert params["target_row"] == target and params["base_class"] == base_class
    assert params["target_class"] == int(digits_test.y[target]) and len(params["base_rows"]) == 3
    assert all(int(digits_train.y[r]) == base_class for r in params["base_rows"])
    again = attack(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.x, data.x)  # seeded: the same poisons


def test_one_shot_transfer_flips_easy_targets_and_clean_bases_do_not(digits_model, digits_train, digits_test):
    pairs = correct_pairs(digits_model, digits_test, 5, seed=1)
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1], steps=200)
    results = attack.craft_many(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y, pairs)
    wins, controls = 0, 0
    for (target, base_class), data in zip(pairs, results):
        assert data.params["target_row"] == target and data.params["base_class"] == base_class
        outcome = poison_success(digits_model, data, digits_test.x[target], x_eval=digits_test.x, y_eval=digits_test.y)
        assert outcome.clean_accuracy >= outcome.clean_accuracy_before - 0.02  # targeted: the rest is unharmed
        wins += outcome.success
        controls += poison_success(digits_model, clean_control(data, digits_train.x), digits_test.x[target]).success
    assert wins >= 4, f"one-shot transfer flipped {wins} of 5 targets"
    assert controls == 0, f"the unperturbed bases flipped {controls} of 5 targets"


def test_retrained_last_layer_keeps_the_feature_extractor(digits_model, digits_train):
    victim = retrain_last_layer(digits_model, digits_train.x[:300], digits_train.y[:300], init="cold", max_iter=20)
    for name, param in victim.net.named_parameters():
        frozen = dict(digits_model.net.named_parameters())[name]
        assert torch.equal(param, frozen) == (not name.startswith("classifier.3")), name


@pytest.mark.parametrize(
    "kwargs, where",
    [
        ({"target": 10_000, "base_class": "other"}, "target row 10000 is outside"),
        ({"target": 0, "base_class": 12}, "base class 12 is outside"),
        ({"target": 0, "base_class": "own"}, "own class"),
        ({"target": 0, "base_class": "other", "poisons": 500}, "need as many base-class rows"),
    ],
)
def test_bad_targets_and_classes_are_one_line_errors(digits_model, digits_train, digits_test, kwargs, where):
    own = int(digits_test.y[0])
    classes = {"own": own, "other": (own + 1) % 10}
    kwargs = {**kwargs, "base_class": classes.get(kwargs["base_class"], kwargs["base_class"])}
    with pytest.raises(AdvkitError, match=where) as info:
        PoisonFrogs(**kwargs, steps=1)(digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"watermark": 1.0}, {"watermark": -0.1}, {"poisons": 0}, {"steps": 0}, {"beta": -1.0}, {"eps": 0.0}, {"base_choice": "nearest"}],
)
def test_bad_settings_are_refused_up_front(kwargs):
    with pytest.raises(AdvkitError, match="poison-frogs"):
        PoisonFrogs(target=0, base_class=1, **kwargs)


def test_bad_victims_and_settings_are_refused(digits_model, digits_train, digits_test):
    with pytest.raises(AdvkitError, match="no nn.Linear"):
        PenultimateFeatures(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    data = PoisonFrogs(target=0, base_class=int(digits_test.y[0] + 1) % 10, steps=1)(
        digits_model, digits_train.x, digits_train.y, digits_test.x, digits_test.y
    )
    with pytest.raises(AdvkitError, match="setting must be one of"):
        poison_success(digits_model, data, digits_test.x[0], setting="scratch")
    with pytest.raises(AdvkitError, match="one image"):
        poison_success(digits_model, data, digits_test.x[:2])


def test_registered_as_white_box_poisoning():
    from advkit.registry import REGISTRY

    entry = REGISTRY["poison-frogs"]
    assert entry.family == "poisoning" and entry.knowledge == "white" and entry.factory is PoisonFrogs
    assert entry.atlas == "AML.T0020, AML.T0018.000" and "Poison Frogs" in entry.paper


@pytest.mark.slow
def test_mnist_one_shot_transfer_kills_most_targets(mnist_model, mnist_test):
    """Acceptance: >= 70 % one-shot success over 20 target/base pairs (mnist5k, mnist-cnn)."""
    from advkit.data import load_dataset

    train = load_dataset("mnist5k", split="train")
    pairs = correct_pairs(mnist_model, mnist_test, 20, seed=0)
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1])
    results = attack.craft_many(mnist_model, train.x, train.y, mnist_test.x, mnist_test.y, pairs)
    outcomes = [poison_success(mnist_model, data, mnist_test.x[t]) for (t, _), data in zip(pairs, results)]
    controls = [poison_success(mnist_model, clean_control(data, train.x), mnist_test.x[t]) for (t, _), data in zip(pairs, results)]
    rate = sum(o.success for o in outcomes) / len(outcomes)
    assert rate >= 0.7, f"one-shot transfer success {rate:.2f}"
    assert sum(c.success for c in controls) <= 2
    shrink = [d.params["feature_distance"][0] / d.params["start_feature_distance"][0] for d in results]
    assert max(shrink) < 0.2


@pytest.mark.slow
def test_mnist_end_to_end_needs_many_watermarked_poisons(mnist_model, mnist_test):
    """End to end (whole network fine-tuned): 50 watermarked poisons beat 1 on a few targets."""
    from advkit.data import load_dataset

    train = load_dataset("mnist5k", split="train")
    pairs = correct_pairs(mnist_model, mnist_test, 3, seed=0)
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1], poisons=50, watermark=0.3, steps=300)
    results = attack.craft_many(mnist_model, train.x, train.y, mnist_test.x, mnist_test.y, pairs)
    many, one = 0, 0
    for (target, _), data in zip(pairs, results):
        first = data.params["first_poison_row"]
        single = PoisonedData(data.x[: first + 1], data.y[: first + 1], data.poisoned[: first + 1], data.original_y[: first + 1],
                              data.attack, data.target, data.params)
        many += poison_success(mnist_model, data, mnist_test.x[target], setting="end-to-end").success
        one += poison_success(mnist_model, single, mnist_test.x[target], setting="end-to-end").success
    assert many >= 1 and many > one, f"50 poisons flipped {many} of 3 targets, 1 poison {one}"
