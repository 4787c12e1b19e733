"""The audit on a model advkit cannot rebuild (TorchScript): every mitigation fine-tunes a copy of it."""

from __future__ import annotations

import json

import pytest
import torch

from advkit.cli import main

CONFIG = """\
model: {model}
limit: 100
evasion:
  attacks: [fgsm, pgd]
  eps: [0.1, 0.2]
  steps: 5
  restarts: 1
adversarial_training:
  defense: adv-pgd
  eps: 0.2
fine_tune:
  epochs: 2
  lr: 0.01
poisoning:
  - attack: badnets
    target: 0
    rate: 0.1
backdoor_defense:
  epochs: 3
  mitigations: [nc-unlearn]
certification:
  n0: 10
  n: 100
  limit: 30
  denoiser_epochs: 4
"""


def run(argv):
    try:
        main([str(a) for a in argv])
        return 0
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def scripted(digits_model, digits_train, tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "digits.pt"
    traced = torch.jit.trace(digits_model.network.eval(), digits_train.x[:2])
    torch.jit.save(traced, str(path))
    return path


@pytest.fixture(scope="module")
def report(scripted, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-ft")
    config = root / "audit.yaml"
    config.write_text(CONFIG.format(model=scripted))
    assert run(["audit", config, "--out", root / "run"]) == 0
    return json.loads((root / "run" / "report.json").read_text()), root / "run"


def test_a_torchscript_model_is_mitigated_by_fine_tuning(report):
    report, run_dir = report
    assert [m["id"] for m in report["models"]] == ["model", "fine-tuned/adv-pgd", "denoised"]
    worst = {(w["model"], w["eps"]): w for w in report["evasion_worst"]}
    assert worst[("fine-tuned/adv-pgd", 0.2)]["adversarial_accuracy"] > worst[("model", 0.2)]["adversarial_accuracy"] + 0.1
    scenario = report["backdoor"]["scenarios"][0]
    assert scenario["training"] == "fine-tune" and scenario["attack_success_rate"] > scenario["audited_model_trigger_success"]
    certified = {c["model"]: c for c in report["certification"]}
    assert set(certified) == {"model", "fine-tuned/gaussian", "denoised"}
    assert certified["denoised"]["acr"] > certified["model"]["acr"]
    assert {p["kind"] for p in report["plan"]} >= {"adversarial-training", "denoiser-training"}
    assert any("Mitigation adv-pgd eps=0.2 (fine-tuned)" in f["title"] for f in report["findings"])
    for model in report["models"][1:]:
        assert (run_dir / model["artifact"]).suffix == ".safetensors"
    html = (run_dir / "report.html").read_text()
    assert "denoised smoothing" in html and "fine-tuned" in html


def test_retrain_without_an_architecture_is_one_line_before_any_work(scripted, tmp_path, capsys):
    config = tmp_path / "retrain.yaml"
    config.write_text(CONFIG.format(model=scripted) + "training: retrain\n")
    assert run(["audit", config, "--out", tmp_path / "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "training: retrain" in err and "fine-tune" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
