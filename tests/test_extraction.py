"""Model theft: the substitute must agree with the victim and carry attacks over to it."""

import json

import pytest
import torch
import torch.nn.functional as F

from advkit.attacks.evasion import FGSM
from advkit.attacks.extraction import (
    Knockoff,
    PapernotSubstitute,
    agreement,
    transfer_success,
)
from advkit.core import Threat
from advkit.data import load_dataset
from advkit.errors import AdvkitError


def test_papernot_substitute_agrees_and_transfers(digits_model, digits_test):
    half = digits_test.x.shape[0] // 2
    stolen = PapernotSubstitute(arch="digits-cnn", rounds=4, epochs=10)(digits_model, digits_test.x[:100])
    assert stolen.queries == 100 * 2**3 == stolen.history[-1]["points"]  # every point asked once, no more
    x, y = digits_test.x[half:], digits_test.y[half:]
    assert agreement(stolen.substitute, digits_model, x) >= 0.8
    moved = transfer_success(stolen.substitute, digits_model, FGSM(Threat(eps=0.3)), x, y)
    assert moved["transfer_success_rate"] >= 0.3


def test_papernot_respects_the_query_budget(digits_model, digits_test):
    stolen = PapernotSubstitute(arch="digits-cnn", rounds=6, epochs=2, max_queries=500)(digits_model, digits_test.x[:150])
    assert stolen.queries <= 500


def test_knockoff_learns_from_another_distribution(digits_model, digits_test):
    mnist = load_dataset("mnist5k", split="train", limit=1500).x
    transfer = F.interpolate(mnist, size=(8, 8), mode="area")
    stolen = Knockoff(arch="digits-cnn", epochs=20)(digits_model, transfer)
    assert stolen.queries == 1500
    assert agreement(stolen.substitute, digits_model, digits_test.x) >= 0.6


def test_bad_theft_settings():
    with pytest.raises(AdvkitError):
        PapernotSubstitute(arch="digits-cnn", rounds=0)
    with pytest.raises(AdvkitError, match="max-queries"):
        PapernotSubstitute(arch="digits-cnn", max_queries=0)


def test_steal_cli_json_keys(tmp_path):
    from advkit.cli import main

    out = tmp_path / "steal.json"
    try:
        main(["steal", "papernot", "--rounds", "3", "--epochs", "5", "--seed-size", "60", "--json", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    record = json.loads(out.read_text())
    for key in ("agreement", "queries", "transfer_success_rate"):
        assert key in record
    assert record["queries"] == 240
    with pytest.raises(SystemExit) as bad:
        main(["steal", "papernot", "--seed-size", "100000"])
    assert bad.value.code == 2


def test_transfer_crafts_on_every_row(digits_model, digits_test, digits_train):
    """Rows the substitute already gets wrong are perturbed too, so transfer can only go up."""
    from advkit.core import ModelHandle
    from advkit.models import TrainConfig, build, fit

    net = build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=3)
    substitute = ModelHandle(net, digits_model.info)
    fit(substitute.network, digits_train.x[:150], digits_train.y[:150], TrainConfig(epochs=3, lr=2e-3, seed=0))
    x, y = digits_test.x, digits_test.y
    wrong = substitute.predict(x).cpu() != y
    assert int(wrong.sum()) >= 20  # a weak substitute: plenty of rows it misclassifies
    fgsm = FGSM(Threat(eps=0.2))
    every = fgsm.on_every_row()(substitute, x, y)
    assert bool(((every.x_adv - x).abs().flatten(1).amax(1) > 0)[wrong].all())  # crafted on every row
    old = fgsm(substitute, x, y)  # the old computation: clean inputs kept where the substitute errs
    assert torch.equal(old.x_adv[wrong], x[wrong])
    victim_right = digits_model.predict(x).cpu() == y
    old_rate = float((digits_model.predict(old.x_adv).cpu() != y)[victim_right].float().mean())
    moved = transfer_success(substitute, digits_model, fgsm, x, y)
    assert moved["transfer_success_rate"] >= old_rate
    assert moved["transfer_success_rate"] > old_rate  # the misclassified rows add real transfer
    assert fgsm.keep_clean_successes  # the caller's attack is untouched


def test_thieves_query_through_a_budgeted_view(digits_model, digits_test):
    stolen = Knockoff(arch="digits-cnn", epochs=1, max_queries=120)(digits_model, digits_test.x)
    assert stolen.queries == 120
    stolen = PapernotSubstitute(arch="digits-cnn", rounds=3, epochs=1, max_queries=250)(digits_model, digits_test.x[:100])
    assert stolen.queries == 250 and stolen.history[-1]["points"] == 250
