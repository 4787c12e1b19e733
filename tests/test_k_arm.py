"""K-Arm must find the backdoor Neural Cleanse finds, spare clean models, and do it with fewer steps."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advkit.attacks.poisoning.backdoor import BadNets, PatchTrigger, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.k_arm import KArm
from advkit.defenses.backdoor.k_arm_schedule import needed, pre_screen, settled
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse, anomaly_indices, report_rows
from advkit.errors import AdvkitError
from advkit.models import build
from advkit.models.train import TrainConfig, fit

TARGET = 4
PER_CLASS = 12
SCAN_ROWS = 10 * PER_CLASS
NC_DETAILS = {"anomaly_index", "triggers", "median_l1", "warnings"}


def badnets_model(net: nn.Module, target: int, position: str, epochs: int, seed: int = 0) -> tuple[ModelHandle, BadNets]:
    train = load_dataset("digits", "train")
    attack = BadNets(PatchTrigger(size=3, position=position), target=target, rate=0.1)
    poisoned = attack(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(seed))
    fit(net, poisoned.x, poisoned.y, TrainConfig(epochs=epochs, lr=2e-3, seed=seed))
    return ModelHandle(net, ModelInfo((1, 8, 8), 10)), attack


def per_class(dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001 - a Dataset
    """The first ``count`` test rows of every class."""
    rows = torch.cat([(dataset.y == c).nonzero().squeeze(1)[:count] for c in range(10)])
    return dataset.x[rows], dataset.y[rows]


def rows_through(model: ModelHandle, fn):  # noqa: ANN001, ANN201 - test helper
    """Run ``fn`` counting the rows that go through the network (a forward hook)."""
    rows = [0]
    hook = model.network.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    try:
        return fn(), rows[0]
    finally:
        hook.remove()


@pytest.fixture(scope="module")
def backdoored():
    """digits-cnn with a BadNets backdoor (3x3 bottom-right, 10% to class 4; 8 epochs to keep it quick)."""
    net = build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=0)
    return badnets_model(net, TARGET, "bottom-right", epochs=8)


@pytest.fixture(scope="module")
def backdoored_scan(backdoored, digits_test):
    model, _ = backdoored
    x, y = per_class(digits_test, PER_CLASS)
    return rows_through(model, lambda: KArm()(model, x, y, generator=torch.Generator().manual_seed(0)))


def test_k_arm_flags_the_badnets_target(backdoored, backdoored_scan, digits_test):
    model, attack = backdoored
    assert backdoor_success_rate(model, digits_test.x, digits_test.y, attack.trigger, TARGET) >= 0.95
    report, _ = backdoored_scan
    assert report.flagged_ids == [TARGET]
    assert float(report.details["anomaly_index"][TARGET]) > 2
    trigger = report.details["triggers"][TARGET]
    assert trigger.target == TARGET and trigger.success >= 0.99
    assert float(report.scores[TARGET]) == min(float(s) for s in report.scores)


def test_report_is_neural_cleanse_json(backdoored_scan):
    report, _ = backdoored_scan
    assert NC_DETAILS <= set(report.details)
    assert {"screened_out", "rounds", "steps_per_class", "pulls_per_class"} <= set(report.details)
    rows = report_rows(report)
    assert [r["class"] for r in rows] == list(range(10))
    assert set(rows[0]) == {"class", "score", "anomaly_index", "flagged", "trigger_success"}
    assert [r["class"] for r in rows if r["flagged"]] == report.flagged_ids
    # the flags are Neural Cleanse's MAD rule applied to the reported sizes
    norms = np.array([r["score"] for r in rows])
    assert np.allclose(anomaly_indices(norms), report.details["anomaly_index"].numpy(), rtol=1e-5)
    assert all(abs(t.l1 - float(t.mask.abs().sum())) < 1e-3 for t in report.details["triggers"])
    json.dumps({"classes": rows, "median_l1": report.details["median_l1"], "screened_out": report.details["screened_out"]})


def test_k_arm_takes_far_fewer_steps_than_neural_cleanse(backdoored_scan):
    report, rows = backdoored_scan
    pulls = report.details["pulls_per_class"]
    assert all(report.details["warmup"] <= p <= report.details["cap"] for p in pulls)
    batches = -(-SCAN_ROWS // 32)
    assert report.details["steps_per_class"] == [p * batches for p in pulls]
    # the hook's count: one epoch per pull plus the pre-screening pass (and a final check per class at most)
    assert SCAN_ROWS * (sum(pulls) + 1) <= rows <= SCAN_ROWS * (sum(pulls) + 11)
    # Neural Cleanse's 60 epochs for every class (it stops a class early only after both cost moves and
    # 10 flat epochs; the slow test counts its real steps)
    assert rows <= 0.3 * 60 * 10 * SCAN_ROWS


def test_k_arm_spares_the_clean_pretrained_digits_cnn(digits_model, digits_test):
    x, y = per_class(digits_test, PER_CLASS)
    weights = [(p.clone(), None if p.grad is None else p.grad.clone()) for p in digits_model.network.parameters()]
    report = KArm()(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert report.flagged_ids == []
    for p, (value, grad) in zip(digits_model.network.parameters(), weights):  # the scan leaves the model as it was
        assert torch.equal(p, value) and (p.grad is None if grad is None else torch.equal(p.grad, grad))
    assert report.details["trigger_type"] == "benign" and len(report.details["screened_out"]) == 10


def test_pre_screening_names_the_target_of_triggered_rows(backdoored, digits_test):
    model, attack = backdoored
    stamped = torch.softmax(model.predict_logits(attack.trigger.apply(digits_test.x)), 1)
    screen = pre_screen(stamped)
    assert screen.trigger_type == "global" and screen.candidates == [TARGET]
    clean = pre_screen(torch.softmax(model.predict_logits(digits_test.x), 1))
    assert clean.trigger_type != "global"
    assert clean.top_k == 2 and len(clean.global_share) == 10


def test_pre_screening_pairs_a_victim_with_its_label_specific_target():
    """The paper's second test: 90% of the rows predicted as 2 have 5 next, so (target 5, victim 2) is a candidate."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 10
    logits = torch.randn(300, 10, generator=generator)
    logits[torch.arange(300), labels] += 6.0
    victims = (labels == 2).nonzero().squeeze(1)
    logits[victims[: int(0.93 * victims.numel())], 5] += 5.0  # second place for 93% of the 2s
    screen = pre_screen(torch.softmax(logits, 1))
    assert screen.trigger_type == "label-specific" and (5, 2) in screen.pairs and screen.candidates == [5]
    fewer = logits.clone()
    fewer[victims[int(0.8 * victims.numel()) :], 5] -= 5.0  # 80% < local_theta: no pair
    assert pre_screen(torch.softmax(fewer, 1)).trigger_type == "benign"


def test_the_stop_rule_never_changes_a_decision():
    """Whenever :func:`settled` holds, any sizes the open arms could end at give every other class the same index and flag."""
    rng = np.random.default_rng(0)
    held = 0
    for trial in range(400):
        count = int(rng.choice([5, 10, 43]))
        high = rng.uniform(2, 20, count)
        open_arms = rng.random(count) < 0.3
        low = np.where(open_arms, high * rng.uniform(0.5, 1.0, count), high)
        if not settled(low, high, open_arms):
            assert needed(low, high, open_arms).any() or not open_arms.any()
            continue
        held += open_arms.any()
        reference = anomaly_indices(high)
        for _ in range(10):
            point = low + (high - low) * rng.random(count)
            index = anomaly_indices(point)
            assert np.allclose(index[~open_arms], reference[~open_arms]), trial
            assert not bool(((index > 2) & (point < np.median(point)))[open_arms].any())
    assert held >= 10  # the property was exercised with open arms


@pytest.mark.filterwarnings("ignore:only 5 clean images")
def test_seeded_runs_repeat(digits_model, digits_test):
    x, y = per_class(digits_test, 5)
    detector = KArm(epochs=3, warmup=2)
    calls = []
    first = detector(digits_model, x, y, generator=torch.Generator().manual_seed(3), progress=lambda *a: calls.append(a))
    assert calls[-1] == ("k-arm", 30, 30) and all(c[1] <= c[2] for c in calls)
    again = detector(digits_model, x, y, generator=torch.Generator().manual_seed(3))
    other = detector(digits_model, x, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first.scores, again.scores) and first.details["pulls_per_class"] == again.details["pulls_per_class"]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(first.details["triggers"], again.details["triggers"]))
    assert not torch.equal(first.scores, other.scores)


def test_the_warm_up_is_neural_cleanse_step_for_step(digits_model, digits_test):
    """Same seed: K-Arm's batched warm-up draws the same masks and batches as Neural Cleanse's first epochs."""
    x, y = per_class(digits_test, 10)
    karm = KArm(epochs=3, warmup=3)(digits_model, x, y, generator=torch.Generator().manual_seed(5))
    nc = NeuralCleanse(epochs=3)(digits_model, x, y, generator=torch.Generator().manual_seed(5))
    assert karm.details["rounds"] == 0 and karm.details["pulls_per_class"] == [3] * 10
    assert torch.allclose(karm.scores, nc.scores, rtol=1e-4)
    assert [t.success for t in karm.details["triggers"]] == pytest.approx([t.success for t in nc.details["triggers"]])


def test_bad_input_is_one_line(digits_model, digits_test):
    x, y = digits_test.x, digits_test.y
    cases = [
        (lambda: KArm()(digits_model, x[:0], y[:0]), "empty"),
        (lambda: KArm()(digits_model, x[:50], torch.full((50,), 10)), "labels go from"),
        (lambda: KArm()(digits_model, x[:50], -torch.ones(50, dtype=torch.long)), "labels go from"),
        (lambda: KArm()(digits_model, x[y != 7], y[y != 7]), "class 7 has no clean samples"),
        (lambda: KArm()(digits_model, x[:50], y[:40]), "one per image"),
        (lambda: KArm()(digits_model, torch.rand(20, 1, 28, 28), torch.arange(20) % 10), "expects"),
        (lambda: KArm(warmup=30), "warmup"),
        (lambda: KArm(epsilon=1.5), "epsilon"),
        (lambda: KArm(epochs=0), "epochs"),
    ]
    for call, words in cases:
        with pytest.raises(AdvkitError, match=words) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_k_arm_is_registered_as_an_inspection():
    from advkit.registry import REGISTRY

    entry = REGISTRY["k-arm"]
    assert entry.family == "inspection" and entry.knowledge == "white" and entry.atlas == "AML.M0008"
    assert "K-Arm" in entry.paper and entry.factory is KArm
    assert (KArm().epochs, KArm().warmup, KArm(epochs=5).warmup) == (16, 8, 2)  # the warm-up is half the cap


# -- acceptance (slow) ---------------------------------------------------------------------
class ConvBnNet(nn.Module):
    """A layout advkit never builds: conv-BN-ReLU twice, strided, global pooling, one linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.slow
def test_k_arm_on_an_architecture_advkit_never_built(digits_test):
    torch.manual_seed(0)
    model, attack = badnets_model(ConvBnNet(), 6, "top-left", epochs=30)
    assert backdoor_success_rate(model, digits_test.x, digits_test.y, attack.trigger, 6) >= 0.9
    assert KArm()(model, digits_test.x, digits_test.y).flagged_ids == [6]
    torch.manual_seed(0)
    clean = ConvBnNet()
    train = load_dataset("digits", "train")
    fit(clean, train.x, train.y, TrainConfig(epochs=30, lr=2e-3, seed=0))
    assert KArm()(ModelHandle(clean, ModelInfo((1, 8, 8), 10)), digits_test.x, digits_test.y).flagged_ids == []


@pytest.mark.slow
def test_k_arm_matches_neural_cleanse_with_fewer_steps(backdoored, digits_test):
    """On all 450 test rows: the same flags as Neural Cleanse (inspect's 60 epochs), at most 0.4x its rows and CPU time."""
    model, _ = backdoored
    x, y = digits_test.x, digits_test.y
    start = time.process_time()
    nc, nc_rows = rows_through(model, lambda: NeuralCleanse(epochs=60)(model, x, y, generator=torch.Generator().manual_seed(0)))
    middle = time.process_time()
    karm, karm_rows = rows_through(model, lambda: KArm()(model, x, y, generator=torch.Generator().manual_seed(0)))
    end = time.process_time()
    assert karm.flagged_ids == nc.flagged_ids == [TARGET]
    assert karm_rows <= 0.4 * nc_rows
    assert end - middle <= 0.4 * (middle - start)  # wall time, interleaved over many models: benchmarks/bench_k_arm.py


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_k_arm_agrees_with_neural_cleanse_over_seeds(tmp_path):
    """benchmarks/bench_k_arm.py --study agreement on digits, 5 seeds, BadNets to 0 and clean (~15 minutes)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_k_arm import agreement

    args = argparse.Namespace(
        data=["digits"], seeds=5, kinds=["badnets-0", "clean"], rows=None, train_epochs=None, cache=tmp_path, recheck=False
    )
    summary = agreement(args)["summary"]
    assert summary["agree"] >= summary["models"] - 1
    assert summary["ratio_total"] <= 0.4
