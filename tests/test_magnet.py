"""MagNet (Meng & Chen, CCS 2017): calibrated detectors, a reformer, save/load, attacks on the defended model.

Fast tests run on the 8x8 digits with small autoencoders (no pooling: a 2x2 pooling of an
8x8 digit loses too much for a few hundred training steps) and on a classifier advkit
never built. The thresholds are calibrated on one half of the digits test split (rows
the classifier never trained on) and checked on the other half. The mnist5k acceptance
study (paper architectures, 5% total false positives) is marked slow.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from advkit.attacks.evasion import FGSM, PGD
from advkit.core import ModelHandle, ModelInfo, Threat
from advkit.data import load_dataset
from advkit.defenses.input.magnet import DEFAULT_DETECTORS, MagNet, MagNetDefense, calibrate
from advkit.defenses.input.magnet_autoencoder import STRUCTURE_I, STRUCTURE_II, MagNetAutoencoder
from advkit.defenses.input.pipeline import WAYS, attack_defended
from advkit.errors import AdvkitError
from advkit.models import TrainConfig, fit
from advkit.registry import REGISTRY

FPR = 0.05
SMALL = {"structure_i": (3,), "structure_ii": (3,), "steps": 250}


def halves(test):
    half = test.x.shape[0] // 2
    return test.x[:half], test.x[half:], test.y[half:]


@pytest.fixture(scope="module")
def digits_defense(digits_model, digits_train, digits_test):
    x_val, _, _ = halves(digits_test)
    defense = MagNet(**SMALL).fit(digits_model, digits_train.x, x_val, FPR, generator=torch.Generator().manual_seed(0))
    return defense


def test_registered_as_an_input_detection_defense():
    entry = REGISTRY["magnet"]
    assert entry.factory is MagNet and entry.family == "defense" and entry.atlas == "AML.M0015"
    assert "Meng" in entry.paper and "CCS 2017" in entry.paper


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 7), (1, 8, 8), (3, 5, 9)])
def test_autoencoders_adapt_to_any_image_shape(shape):
    x = load_dataset("digits", split="test", limit=4).x[:, :1].repeat(1, 3, 1, 1)[:, : shape[0]]
    x = nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False).clamp(0, 1)
    for structure in (STRUCTURE_I, STRUCTURE_II, (3, "max", 4, "average", 5)):
        out = MagNetAutoencoder(shape[0], structure)(x)
        assert out.shape == x.shape and bool(((out > 0) & (out < 1)).all())


def test_union_rejects_at_most_the_rate_on_validation_and_near_it_on_held_out_rows(digits_defense, digits_test):
    x_val, x_held, _ = halves(digits_test)
    calibration = digits_defense.calibration
    assert calibration["validation_false_positive_rate"] <= FPR
    # the per-detector budget is the largest whose union stays within the rate
    scores = digits_defense.detector_scores(x_val)
    k = calibration["per_detector_budget_rows"]
    ordered = scores.sort(0, descending=True).values
    assert int((scores > ordered[k + 1]).any(1).sum()) > int(FPR * x_val.shape[0])
    assert calibrate(scores, FPR, digits_defense.detector_names)[0].tolist() == digits_defense.thresholds.tolist()
    held_out_rate = float(digits_defense.detect(x_held).flagged.float().mean())
    assert abs(held_out_rate - FPR) < 0.05


def test_detects_large_eps_fgsm_far_above_the_false_positive_rate(digits_model, digits_defense, digits_test):
    _, x, y = halves(digits_test)
    report = attack_defended(FGSM(Threat(eps=0.3)), digits_model, digits_defense, x, y, ways=("oblivious",))
    json.dumps(report)  # JSON-ready as it is
    oblivious = report["oblivious"]
    assert oblivious["accuracy_without_defense"] < 0.2  # the attack works on the bare classifier
    assert oblivious["detection_rate"] >= 0.8 and oblivious["detection_rate"] >= 5 * report["clean"]["false_positive_rate"]
    assert oblivious["attack_success"] <= 0.2
    assert abs(oblivious["rejected_or_correct"] + oblivious["attack_success"] - 1) < 1e-9


def test_reforming_keeps_clean_accuracy(digits_model, digits_defense, digits_test):
    _, x, y = halves(digits_test)
    bare = float((digits_model.predict(x) == y).float().mean())
    pipeline = digits_defense.pipeline()
    reformed = float((pipeline.predict(x) == y).float().mean())
    assert reformed >= bare - 0.03
    assert torch.allclose(pipeline.predict_logits(x), digits_model.predict_logits(digits_defense.reform(x)), atol=1e-4)
    labels = digits_defense.predict(x)
    assert torch.equal(labels == -1, digits_defense.detect(x).flagged)


def test_save_load_round_trip_gives_identical_decisions(digits_model, digits_defense, digits_test, tmp_path):
    _, x, _ = halves(digits_test)
    x = torch.cat([x, FGSM(Threat(eps=0.2))(digits_model, x, digits_model.predict(x)).x_adv])
    digits_defense.save(tmp_path / "magnet")
    saved = json.loads((tmp_path / "magnet" / "magnet.json").read_text())
    assert [d["name"] for d in saved["detectors"]] == list(DEFAULT_DETECTORS)
    loaded = MagNetDefense.load(tmp_path / "magnet", digits_model)
    before, after = digits_defense.detect(x), loaded.detect(x)
    assert torch.equal(before.flagged, after.flagged) and torch.equal(before.details["fired"], after.details["fired"])
    assert torch.equal(loaded.thresholds, digits_defense.thresholds)
    assert torch.equal(loaded.predict(x), digits_defense.predict(x))


def test_bpda_adaptive_attack_beats_the_oblivious_one(digits_model, digits_defense, digits_test):
    _, x, y = halves(digits_test)
    x, y = x[:150], y[:150]
    attack = PGD(Threat(eps=0.15), steps=10, restarts=1)
    report = attack_defended(attack, digits_model, digits_defense, x, y, torch.Generator().manual_seed(1), detector_aware_steps=10)
    oblivious, adaptive, aware = report["oblivious"], report["adaptive"], report["adaptive_detector_aware"]
    print({way: report[way]["accuracy_after_reform"] for way in WAYS}, {way: report[way]["attack_success"] for way in WAYS})
    assert oblivious["accuracy_without_defense"] < 0.3  # the attack works on the bare classifier
    assert adaptive["accuracy_after_reform"] <= oblivious["accuracy_after_reform"] - 0.04
    assert report["adaptive_exact_gradient"]["accuracy_after_reform"] <= oblivious["accuracy_after_reform"] - 0.04
    # the detector-aware loss also slips past the detectors: more rows both accepted and misclassified
    assert aware["attack_success"] > 2 * max(adaptive["attack_success"], oblivious["attack_success"])
    assert aware["detection_rate"] < adaptive["detection_rate"]
    for way in WAYS:
        assert report[way]["accepted_and_correct"] <= report[way]["rejected_or_correct"]
    assert adaptive["result"]["max_perturbation"] <= 0.15 + 1e-6


class ForeignNet(nn.Module):
    """A conv-BN-ReLU classifier advkit's zoo does not have (global pooling, no hidden dense layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        )
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_works_on_a_classifier_advkit_never_built(digits_train, digits_test):
    torch.manual_seed(0)
    net = ForeignNet()
    handle = ModelHandle(net, ModelInfo(input_shape=(1, 8, 8), num_classes=10))
    fit(handle.network, digits_train.x, digits_train.y, TrainConfig(epochs=6, lr=1e-2, seed=0))
    x_val, x, y = halves(digits_test)
    assert float((handle.predict(x) == y).float().mean()) > 0.85
    defense = MagNet(detectors=("recon-l1-I", "jsd-T10"), structure_i=(3,), steps=200).fit(handle, digits_train.x, x_val, FPR)
    report = attack_defended(FGSM(Threat(eps=0.3)), handle, defense, x, y, ways=("oblivious",))
    assert abs(report["clean"]["false_positive_rate"] - FPR) < 0.05
    assert report["oblivious"]["detection_rate"] >= 0.8


def test_same_seed_same_defense(digits_model, digits_train, digits_test):
    x_val, _, _ = halves(digits_test)
    fits = [
        MagNet(structure_i=(3,), structure_ii=(3,), steps=15).fit(digits_model, digits_train.x[:300], x_val, FPR, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(fits[0].thresholds, fits[1].thresholds)
    assert torch.equal(fits[0].reform(x_val), fits[1].reform(x_val))


def one_line_error(fn) -> str:
    with pytest.raises(AdvkitError) as caught:
        fn()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line(digits_model, digits_defense, digits_train, digits_test, mnist_model, tmp_path):
    x_val, x, _ = halves(digits_test)
    small = MagNet(**SMALL)
    for fpr in (0.0, 1.0, 1.5, -0.1, float("nan"), True):
        assert "fpr" in one_line_error(lambda f=fpr: small.fit(digits_model, digits_train.x, x_val, f))
    assert "rows cannot calibrate" in one_line_error(lambda: small.fit(digits_model, digits_train.x, x_val[:10], FPR))
    assert "shape" in one_line_error(lambda: digits_defense.detect(torch.rand(4, 1, 28, 28)))
    nan = x[:4].clone()
    nan[2, 0, 3, 3] = float("nan")
    assert "NaN" in one_line_error(lambda: digits_defense.detect(nan))
    assert "NaN" in one_line_error(lambda: digits_defense.reform(nan))
    assert "unknown detector" in one_line_error(lambda: MagNet(detectors=("recon-l3-I",)))
    assert "pooling" in one_line_error(lambda: MagNet(structure_i=(3, "median")))
    assert "no such folder" in one_line_error(lambda: MagNetDefense.load(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    assert "magnet.json" in one_line_error(lambda: MagNetDefense.load(tmp_path / "empty"))
    folder = digits_defense.save(tmp_path / "saved")
    assert "another classifier" in one_line_error(lambda: MagNetDefense.load(folder, _digits_shaped(mnist_model)))
    assert "fitted for" in one_line_error(lambda: MagNetDefense.load(folder, mnist_model))
    (folder / "magnet.safetensors").write_bytes(pickle.dumps({"weights": torch.zeros(3).tolist()}))
    assert "not a valid safetensors" in one_line_error(lambda: MagNetDefense.load(folder, digits_model))
    (folder / "magnet.json").write_bytes(pickle.dumps({"format": "advkit-magnet"}))
    assert "MagNet config" in one_line_error(lambda: MagNetDefense.load(folder, digits_model))
    (folder / "magnet.json").write_text(json.dumps({"format": "advkit-magnet", "input_shape": [1, 8, 8]}))
    assert "malformed" in one_line_error(lambda: MagNetDefense.load(folder, digits_model))
    no_classifier = MagNetDefense.load(digits_defense.save(tmp_path / "again"))
    assert "need the classifier" in one_line_error(lambda: no_classifier.detect(x[:4]))


def _digits_shaped(mnist_model: ModelHandle) -> ModelHandle:
    """A different 8x8 classifier: the mnist network behind an upsampling layer."""
    net = nn.Sequential(nn.Upsample(size=(28, 28), mode="bilinear", align_corners=False), mnist_model.net)
    return ModelHandle(net, ModelInfo(input_shape=(1, 8, 8), num_classes=10))


@pytest.mark.slow
def test_mnist5k_acceptance_paper_architectures(mnist_model, mnist_test):
    """mnist5k, the zoo mnist-cnn, 5% total false positives: FGSM 0.3 and PGD 0.1 oblivious detected >= 90%."""
    train = load_dataset("mnist5k", split="train")
    x_val, x, y = mnist_test.x[:500], mnist_test.x[500:], mnist_test.y[500:]
    defense = MagNet().fit(mnist_model, train.x, x_val, FPR, generator=torch.Generator().manual_seed(0))
    fgsm = attack_defended(FGSM(Threat(eps=0.3)), mnist_model, defense, x, y, ways=("oblivious",))
    pgd = attack_defended(
        PGD(Threat(eps=0.1), steps=20, restarts=1), mnist_model, defense, x, y, ways=("oblivious", "adaptive_exact_gradient")
    )
    assert fgsm["clean"]["false_positive_rate"] <= FPR + 0.03
    assert fgsm["clean"]["accuracy_after_reform"] >= fgsm["clean"]["accuracy"] - 0.02
    assert fgsm["oblivious"]["detection_rate"] >= 0.9 and pgd["oblivious"]["detection_rate"] >= 0.9
    assert pgd["adaptive_exact_gradient"]["accuracy_after_reform"] <= pgd["oblivious"]["accuracy_after_reform"] - 0.03
