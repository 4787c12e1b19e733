"""Poisoned-data scanners: activation clustering, spectral signatures, STRIP (scan and filter).

Each scanner must find the rows of a 10% BadNets digits set on a model trained on it —
advkit's digits CNN fine-tuned on the poisoned rows, and a conv-BN network advkit never
built trained from scratch — and leave a clean set nearly alone. STRIP's filter must
keep its calibrated false-rejection rate on held-out clean rows. The slow tests run
mnist5k (``-m slow``); ``benchmarks/bench_scanners.py --study f1`` is the full study.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advkit.attacks.poisoning.backdoor import BadNets, PatchTrigger, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.data.activation_clustering import ActivationClustering
from advkit.defenses.data.scanning import ScanResult, score_against
from advkit.defenses.data.spectral import SpectralSignatures
from advkit.defenses.data.strip import StripFilter, StripScan
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, fit
from advkit.models.finetune import copy_network


class ConvBNNet(nn.Module):
    """conv-BN-ReLU, max-pool, conv-BN-ReLU, adaptive average pool, one linear layer."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def poison(data: str, target: int, seed: int = 0):
    train = load_dataset(data, "train")
    return BadNets(target=target, rate=0.1)(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def digits_poisoned():
    return poison("digits", 0)


@pytest.fixture(scope="module")
def finetuned(digits_model, digits_poisoned):
    """advkit's pretrained digits CNN fine-tuned on the poisoned rows (target 0)."""
    model = ModelHandle(copy_network(digits_model.net), copy.deepcopy(digits_model.info))
    fit(model.network, digits_poisoned.x, digits_poisoned.y, TrainConfig(epochs=6, lr=2e-3, seed=0, schedule="constant"))
    return model


@pytest.fixture(scope="module")
def unseen():
    """An architecture advkit never built, trained from scratch on a BadNets set with target 3."""
    poisoned = poison("digits", 3)
    torch.manual_seed(0)
    model = ModelHandle(ConvBNNet(), ModelInfo((1, 8, 8), 10))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=10, lr=2e-3, seed=0))
    return model, poisoned


def test_the_victims_carry_the_backdoor(finetuned, unseen, digits_test):
    model, poisoned = unseen
    assert backdoor_success_rate(finetuned, digits_test.x, digits_test.y, PatchTrigger(), 0) > 0.9
    assert backdoor_success_rate(model, digits_test.x, digits_test.y, PatchTrigger(), 3) > 0.9
    assert float((model.predict(digits_test.x) == digits_test.y).float().mean()) > 0.9


def test_activation_clustering_finds_the_poisoned_rows(finetuned, digits_poisoned, unseen):
    result = ActivationClustering()(finetuned, digits_poisoned.x, digits_poisoned.y)
    scores = result.to_dict(digits_poisoned.rows)
    assert scores["f1"] >= 0.9, scores
    judged = [row["class"] for row in result.per_class if row["poisoned"]]
    assert judged == [0]
    model, poisoned = unseen
    assert ActivationClustering()(model, poisoned.x, poisoned.y).score(poisoned.rows)["f1"] >= 0.9


def test_spectral_signatures_finds_the_poisoned_rows(finetuned, digits_poisoned, unseen):
    result = SpectralSignatures()(finetuned, digits_poisoned.x, digits_poisoned.y)
    scores = result.score(digits_poisoned.poisoned)
    assert scores["recall"] >= 0.95 and scores["f1"] >= 0.7, scores
    assert sum(row["flagged"] for row in result.per_class if row["class"] != 0) == 0
    model, poisoned = unseen
    assert SpectralSignatures()(model, poisoned.x, poisoned.y).score(poisoned.rows)["f1"] >= 0.7


def test_spectral_paper_rule_removes_one_and_a_half_eps_of_every_class(finetuned, digits_poisoned):
    result = SpectralSignatures(classes="all", expected_rate=0.1)(finetuned, digits_poisoned.x, digits_poisoned.y)
    for row in result.per_class:
        assert row["flagged"] == -(-15 * row["rows"] // 100)  # ceil(1.5 * 0.1 * rows)
    flagged = result.flagged
    for row in result.per_class:  # the flagged rows of a class are its highest squared projections
        rows = (digits_poisoned.y == row["class"]).nonzero().squeeze(1)
        kept_max = result.scores[rows][~flagged[rows]].max()
        assert float(result.scores[rows][flagged[rows]].min()) >= float(kept_max)


def test_strip_scan_finds_the_poisoned_rows(finetuned, digits_poisoned):
    result = StripScan(replicas=20)(finetuned, digits_poisoned.x, digits_poisoned.y)
    scores = result.score(digits_poisoned.rows)
    assert scores["precision"] >= 0.85 and scores["f1"] >= 0.7, scores
    assert result.details["threshold_from"].startswith("rows of the other classes")
    target = next(row for row in result.per_class if row["class"] == 0)
    assert target["flagged"] >= 0.8 * sum(row["flagged"] for row in result.per_class)


def test_a_clean_set_is_left_nearly_alone(digits_model, digits_train):
    x, y = digits_train.x, digits_train.y
    ac = ActivationClustering()(digits_model, x, y)
    assert sum(row["poisoned"] for row in ac.per_class) <= 1 and len(ac.flagged_rows) <= 0.05 * len(y)
    spectral = SpectralSignatures()(digits_model, x, y)
    assert len(spectral.flagged_rows) <= 0.05 * len(y)
    strip = StripScan(replicas=10)(digits_model, x[:600], y[:600])
    assert len(strip.flagged_rows) <= 0.03 * 600


def test_strip_filter_keeps_its_false_rejection_rate_and_rejects_triggered_inputs(finetuned, digits_test):
    half = digits_test.x.shape[0] // 2
    x_fit, x_held, y_held = digits_test.x[:half], digits_test.x[half:], digits_test.y[half:]
    detector = StripFilter(replicas=20, frr=0.02).fit(finetuned, x_fit)
    clean = detector(finetuned, x_held)
    assert clean.method == "strip-filter" and clean.details["threshold"] == detector.threshold
    assert float(clean.flagged.float().mean()) <= 0.06
    triggered = detector(finetuned, PatchTrigger().apply(x_held[y_held != 0]))
    assert float(triggered.flagged.float().mean()) >= 0.8
    blend = StripFilter(replicas=5, superimpose="blend").fit(finetuned, x_fit)
    assert blend(finetuned, x_held[:20]).details["superimpose"] == "blend"
    stamped = torch.cat([x_held[:160], PatchTrigger().apply(x_held[160:][y_held[160:] != 0])])
    scan = StripScan(replicas=20)(finetuned, stamped, finetuned.predict(stamped), clean=x_fit)
    assert scan.details["threshold_from"].startswith("clean rows")
    assert sum(row >= 160 for row in scan.flagged_rows) >= 0.8 * (stamped.shape[0] - 160)
    assert sum(row < 160 for row in scan.flagged_rows) <= 10


def test_scans_are_deterministic(unseen):
    model, poisoned = unseen
    runs = [ActivationClustering()(model, poisoned.x, poisoned.y, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].flagged_rows == runs[1].flagged_rows and runs[0].per_class == runs[1].per_class
    strips = [StripScan(replicas=5)(model, poisoned.x[:300], poisoned.y[:300], generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(strips[0].scores, strips[1].scores) and strips[0].flagged_rows == strips[1].flagged_rows
    again = SpectralSignatures()(model, poisoned.x, poisoned.y)
    assert again.flagged_rows == SpectralSignatures()(model, poisoned.x, poisoned.y).flagged_rows


def test_results_are_json_with_scores_against_the_truth():
    result = ScanResult("x", 10, [1, 2, 3, 4], [{"class": 0, "rows": 10, "flagged": 4}], 0.5)
    out = result.to_dict([2, 3, 8])
    assert list(out) == ["method", "flagged_rows", "per_class", "seconds", "precision", "recall", "f1"]
    assert out["precision"] == 0.5 and out["recall"] == pytest.approx(2 / 3) and out["f1"] == pytest.approx(4 / 7)
    assert list(result.to_dict()) == ["method", "flagged_rows", "per_class", "seconds"]
    assert score_against([], [1], 5) == {"precision": None, "recall": 0.0, "f1": 0.0}
    assert score_against([0], [], 5) == {"precision": 0.0, "recall": None, "f1": None}
    mask = torch.zeros(5, dtype=torch.bool)
    mask[[1, 2]] = True
    assert score_against(mask, [2], 5)["precision"] == 0.5


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_bad_input_is_one_line(digits_model, digits_train):
    x, y = digits_train.x[:200], digits_train.y[:200]
    for scanner in (ActivationClustering(), SpectralSignatures(), StripScan(replicas=2)):
        with pytest.raises(AdvkitError) as excinfo:
            scanner(digits_model, x[:, :, :4], y)
        assert "shape" in one_line(excinfo)
        with pytest.raises(AdvkitError) as excinfo:
            scanner(digits_model, x, torch.full_like(y, 10))
        assert "label 10" in one_line(excinfo)
        with pytest.raises(AdvkitError) as excinfo:
            scanner(digits_model, x, y[:-1])
        one_line(excinfo)
        few = torch.cat([(y != 5).nonzero().squeeze(1), (y == 5).nonzero().squeeze(1)[:3]])
        with pytest.raises(AdvkitError) as excinfo:
            scanner(digits_model, x[few], y[few])
        assert "class 5 has 3 rows" in one_line(excinfo)
    for bad in (0.0, 0.6, -0.1, True):
        with pytest.raises(AdvkitError) as excinfo:
            SpectralSignatures(expected_rate=bad)
        assert "expected_rate" in one_line(excinfo)
    bad_settings = [
        lambda: SpectralSignatures(classes="all"),
        lambda: SpectralSignatures(layer="conv"),
        lambda: ActivationClustering(reduction="tsne"),
        lambda: ActivationClustering(analysis="exclusion"),
        lambda: ActivationClustering(dims=0),
        lambda: StripScan(alpha=1.0),
        lambda: StripFilter(frr=0.0),
        lambda: StripFilter(replicas=0),
        lambda: StripScan(superimpose="mean"),
    ]
    for make in bad_settings:
        with pytest.raises(AdvkitError) as excinfo:
            make()
        one_line(excinfo)
    with pytest.raises(AdvkitError) as excinfo:
        StripFilter()(digits_model, x)
    assert "fit" in one_line(excinfo)
    with pytest.raises(AdvkitError) as excinfo:
        score_against([5], [1], 5)
    one_line(excinfo)
    two = (y == 1) | (y == 2)
    with pytest.raises(AdvkitError) as excinfo:
        ActivationClustering()(digits_model, x[two], y[two])
    assert "3 classes" in one_line(excinfo)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0, 7])
def test_mnist5k_scanners_and_filter(mnist_model, target):
    """mnist-cnn fine-tuned on a 10% BadNets mnist5k set: every scanner >= 0.6, the best >= 0.9."""
    poisoned = poison("mnist5k", target)
    model = ModelHandle(copy_network(mnist_model.net), copy.deepcopy(mnist_model.info))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=3, lr=1e-3, seed=0, schedule="constant"))
    f1 = {
        scanner.name: scanner(model, poisoned.x, poisoned.y).score(poisoned.rows)["f1"]
        for scanner in (ActivationClustering(), SpectralSignatures(), StripScan(replicas=30))
    }
    assert min(f1.values()) >= 0.6 and max(f1.values()) >= 0.9, f1
    test = load_dataset("mnist5k", "test")
    half = test.x.shape[0] // 2
    detector = StripFilter(replicas=30).fit(model, test.x[:half])
    assert float(detector(model, test.x[half:]).flagged.float().mean()) <= 0.03
    held = test.x[half:][test.y[half:] != target]
    assert float(detector(model, PatchTrigger().apply(held)).flagged.float().mean()) >= 0.7
