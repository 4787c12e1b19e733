"""BadNets must plant a working backdoor; Neural Cleanse must find it and the repairs remove it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advkit.attacks.poisoning import (
    BadNets,
    Blend,
    BlendTrigger,
    PatchTrigger,
    backdoor_success_rate,
)
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.mitigation import (
    NeuronPruning,
    TriggerInputFilter,
    Unlearning,
    neuron_layer,
)
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse, anomaly_indices
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, build, fit
from advkit.models.zoo import ZOO


def train_on(data: str, x, y, seed: int = 0) -> ModelHandle:
    recipe = ZOO[f"{'digits' if data == 'digits' else 'mnist'}-cnn"]
    net = build(recipe.arch, in_channels=1, num_classes=10, image_size=x.shape[-1], seed=seed)
    handle = ModelHandle(net, ModelInfo(tuple(x.shape[1:]), 10, arch=recipe.arch))
    fit(handle.network, x, y, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed))
    return handle


def backdoored(data: str, attack, seed: int = 0):
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    poisoned = attack(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(seed))
    return train_on(data, poisoned.x, poisoned.y, seed), poisoned, test


@pytest.fixture(scope="module")
def digits_backdoor():
    attack = BadNets(PatchTrigger(size=3, position="bottom-right"), target=4, rate=0.1)
    model, poisoned, test = backdoored("digits", attack)
    return attack, model, poisoned, test


@pytest.fixture(scope="module")
def digits_reversed(digits_backdoor):
    """The defender's half of the test split, the held-out half and the reversed trigger."""
    attack, model, _, test = digits_backdoor
    half = test.x.shape[0] // 2
    xd, yd, xe, ye = test.x[:half], test.y[:half], test.x[half:], test.y[half:]
    trigger = NeuralCleanse()(model, xd, yd).details["triggers"][attack.target]
    return xd, yd, xe, ye, trigger


def test_poisoning_records_rows_and_respects_the_rate():
    train = load_dataset("digits", "train")
    attack = BadNets(PatchTrigger(size=2, position=(1, 2), pattern="solid", values=(0.9,)), target=3, rate=0.1)
    poisoned = attack(train.x, train.y, num_classes=10)
    rows = poisoned.poisoned
    assert int(rows.sum()) == round(0.1 * len(train))
    assert bool((poisoned.y[rows] == 3).all()) and bool((poisoned.original_y[rows] != 3).all())
    assert torch.equal(poisoned.x[~rows], train.x[~rows]) and torch.equal(poisoned.y[~rows], train.y[~rows])
    assert torch.allclose(poisoned.x[rows][:, 0, 1:3, 2:4], torch.full((int(rows.sum()), 2, 2), 0.9))
    all_to_all = BadNets(target=0, rate=0.2, mode="all-to-all")(train.x, train.y, num_classes=10)
    r = all_to_all.poisoned
    assert torch.equal(all_to_all.y[r], (train.y[r] + 1) % 10)


def test_triggers_are_channels_first_with_per_channel_values():
    x = torch.zeros(2, 3, 10, 10)
    out = PatchTrigger(size=(2, 3), position="top-left", pattern="solid", values=(0.2, 0.5, 0.8)).apply(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.2, 0.5, 0.8]))
    assert float(out[:, :, 2:, :].abs().sum()) == 0.0 and float(out[:, :, :, 3:].abs().sum()) == 0.0
    blended = BlendTrigger(alpha=0.25).apply(torch.ones(1, 1, 4, 4))
    assert float(blended.min()) >= 0.75 - 1e-6
    with pytest.raises(AdvkitError, match="does not fit"):
        PatchTrigger(size=11).apply(x)
    with pytest.raises(AdvkitError, match="3 channels"):
        PatchTrigger(values=(0.1, 0.2)).apply(x)


def test_badnets_plants_a_working_backdoor_on_digits(digits_backdoor, digits_model):
    attack, model, _, test = digits_backdoor
    clean_base = float((digits_model.predict(test.x) == test.y).float().mean())
    clean = float((model.predict(test.x) == test.y).float().mean())
    assert clean >= clean_base - 0.02
    assert backdoor_success_rate(model, test.x, test.y, attack.trigger, attack.target) >= 0.95
    assert backdoor_success_rate(digits_model, test.x, test.y, attack.trigger, attack.target) < 0.3


def test_neural_cleanse_flags_the_target_and_spares_a_clean_model(digits_backdoor, digits_model):
    attack, model, _, test = digits_backdoor
    report = NeuralCleanse()(model, test.x, test.y)
    assert report.flagged_ids == [attack.target]
    assert float(report.details["anomaly_index"][attack.target]) > 2
    clean_report = NeuralCleanse()(digits_model, test.x, test.y)
    assert clean_report.flagged_ids == []


def test_repairs_remove_the_backdoor_and_keep_accuracy(digits_backdoor, digits_reversed):
    attack, model, _, _ = digits_backdoor
    xd, yd, xe, ye, trigger = digits_reversed

    def real_asr(m):
        return backdoor_success_rate(m, xe, ye, attack.trigger, attack.target)

    def acc(m):
        return float((m.predict(xe) == ye).float().mean())

    for mitigation in (Unlearning(), NeuronPruning()):
        result = mitigation(model, trigger, xd, yd, evaluate=real_asr)
        assert result.asr_before >= 0.95
        assert result.asr_after < 0.10, (result.name, result.asr_after)
        assert acc(result.model) >= acc(model) - 0.03, (result.name, acc(result.model))
        assert result.model is not model
    assert real_asr(model) >= 0.95  # the original is untouched
    detector = TriggerInputFilter().fit(model, trigger, xd, yd)
    triggered = attack.trigger.apply(xe[ye != attack.target])
    assert float(detector(model, triggered).flagged.float().mean()) >= 0.9
    assert float(detector(model, xe).flagged.float().mean()) < 0.12


def test_pruning_zeroes_feature_neurons_and_keeps_to_its_accuracy_budget(digits_backdoor, digits_reversed):
    _, model, _, _ = digits_backdoor
    xd, yd, _, _, trigger = digits_reversed
    classifier = model.net.classifier
    assert neuron_layer(model.net, "features") is classifier[1] and neuron_layer(model.net, "linear") is classifier[3]
    assert neuron_layer(model.net, "conv") is model.net.features[2]
    result = NeuronPruning()(model, trigger, xd, yd)
    dead = (result.model.net.classifier[1].weight == 0).all(0)
    assert int(dead.sum()) == result.details["pruned_neurons"] > 0
    assert not bool((classifier[1].weight == 0).all(0).any())  # the original keeps its weights
    # a patch in a corner lights up the corner's positions: the pruned neurons sit there
    positions = dead.view(64, 4, 4).any(0)  # rows 0 and columns 0 see pixels 0-3 only
    assert bool(positions[2:, 2:].any()) and not bool(positions[0].any() or positions[:, 0].any())
    # penultimate neurons carry the clean function too: with no accuracy to spend, pruning
    # stops short and the reversed trigger survives; each kept group cost nothing
    tight = NeuronPruning(layer="linear", max_accuracy_drop=0.0)(model, trigger, xd, yd)
    assert tight.clean_accuracy_after >= tight.clean_accuracy_before
    assert tight.reversed_asr_after > 0.02 and tight.details["pruned_neurons"] < 128
    with pytest.raises(AdvkitError, match="neuron layer must be one of"):
        NeuronPruning(layer="dense")(model, trigger, xd, yd)
    with pytest.raises(AdvkitError, match="rounds must be >= 1"):
        NeuronPruning(rounds=0)


def test_conv_pruning_on_a_residual_batchnorm_model_uses_the_main_path():
    """ResNet blocks register (and run) the shortcut's 1x1 conv after the main path; the
    'conv' neurons are the main path's last channels after their BatchNorm."""
    from advkit.defenses.backdoor.mitigation import neuron_activations, switch_off
    from advkit.defenses.backdoor.neural_cleanse import ReversedTrigger

    net = build("resnet8", in_channels=1, num_classes=10, image_size=8, seed=0)
    last = net.blocks[-1]
    assert isinstance(last.shortcut[0], torch.nn.Conv2d)  # the trap: the last Conv2d registered
    assert neuron_layer(net, "conv") is last.bn2
    handle = ModelHandle(net.eval(), ModelInfo((1, 8, 8), 10))
    x = load_dataset("digits", "test").x[:64]
    before = neuron_activations(handle, x, "conv")
    assert before.shape == (64, 64)
    seen: list[torch.Tensor] = []
    hook = last.bn2.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    undo = switch_off(last.bn2, [0, 5], "conv")
    handle.predict_logits(x)
    assert float(seen[-1][:, [0, 5]].abs().max()) == 0.0 and float(seen[-1][:, 1].abs().max()) > 0  # channels off, others on
    undo()
    hook.remove()
    assert torch.allclose(neuron_activations(handle, x, "conv"), before)
    y = handle.predict(x)
    mask = torch.zeros(1, 8, 8)
    mask[:, 5:, 5:] = 1
    trigger = ReversedTrigger(target=int(y[0]), mask=mask, pattern=torch.ones(1, 8, 8), l1=9.0, success=1.0)
    result = NeuronPruning(layer="conv", success_threshold=0.0, max_accuracy_drop=1.0, rounds=8, max_fraction=0.25)(handle, trigger, x, y)
    off = (result.model.net.blocks[-1].bn2.weight == 0) & (result.model.net.blocks[-1].bn2.bias == 0)
    assert int(off.sum()) == result.details["pruned_neurons"] == 16
    assert not bool((result.model.net.blocks[-1].shortcut[0].weight == 0).all(1).any())  # the shortcut is untouched


def test_blend_alpha_defaults_to_chen_et_al():
    from advkit.audit.config import TriggerConfig

    assert BlendTrigger().alpha == 0.2 == Blend().trigger.alpha == TriggerConfig().alpha
    blended = BlendTrigger().apply(torch.zeros(1, 1, 4, 4))
    pattern = BlendTrigger().mask_and_pattern((1, 4, 4))[1]
    assert torch.allclose(blended[0], 0.2 * pattern)


def test_anomaly_index_uses_the_normal_consistency_constant():
    norms = np.array([10.0, 11.0, 12.0, 9.0, 10.5, 2.0])
    index = anomaly_indices(norms)
    mad = 1.4826 * np.median(np.abs(norms - np.median(norms)))
    assert index[-1] == pytest.approx(abs(2.0 - np.median(norms)) / mad, rel=1e-5)


def test_neural_cleanse_works_on_3_channels_and_few_images():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    handle = ModelHandle(net.eval(), ModelInfo((3, 6, 6), 5))
    x = torch.rand(15, 3, 6, 6)
    y = torch.arange(15) % 5
    with pytest.warns(UserWarning, match="fewer than 10"):
        report = NeuralCleanse(epochs=3)(handle, x, y)
    assert report.scores.shape == (5,) and report.details["triggers"][0].pattern.shape == (3, 6, 6)


def test_bad_inputs_are_refused(digits_model, digits_test):
    with pytest.raises(AdvkitError, match="empty"):
        NeuralCleanse()(digits_model, digits_test.x[:0], digits_test.y[:0])
    no_sevens = digits_test.y != 7
    with pytest.raises(AdvkitError, match="class 7 has no clean samples"):
        NeuralCleanse()(digits_model, digits_test.x[no_sevens], digits_test.y[no_sevens])
    with pytest.raises(AdvkitError, match="expects"):
        NeuralCleanse()(digits_model, torch.rand(20, 1, 28, 28), torch.arange(20) % 10)
    with pytest.raises(AdvkitError, match="rate"):
        BadNets(rate=0.0)
    with pytest.raises(AdvkitError, match="target class 12"):
        Blend(target=12)(digits_test.x, digits_test.y, num_classes=10)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("data", ["digits", "mnist5k"])
def test_neural_cleanse_over_seeds_and_positions(data):
    """Acceptance 1-3 over 5 seeds (each its own corner and target): benchmarks/study_neural_cleanse.py.

    About 20 minutes for mnist5k and 5 for digits on 2 cores."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from study_neural_cleanse import study

    rows = study(data, seeds=5)
    assert all(r["attack_success_rate"] >= 0.95 for r in rows)
    assert all(r["backdoored_accuracy"] >= r["clean_model_accuracy"] - 0.02 for r in rows)
    assert sum(r["nc_flags_target"] for r in rows) >= 4
    assert sum(r["nc_clean_flagged"] == [] for r in rows) >= 4
    for mitigation in ("nc-unlearn", "nc-prune"):  # judged on the held-out half
        repaired = [r[mitigation] for r in rows]
        assert all(m["asr_after"] < 0.10 and m["clean_after"] >= m["clean_before"] - 0.03 for m in repaired), (mitigation, repaired)
