"""The audit's poisoning scenarios beyond BadNets: clean-label backdoors, label flipping, Steinhardt's poisons."""

import json

import pytest

from test_audit import cli

FAMILY = """\
limit: 120
evasion:
  attacks: [fgsm]
  eps: [0.1]
adversarial_training: null
certification: null
poisoning:
  - attack: labelflip
    rate: 0.1
  - attack: steinhardt
  - attack: clean-label
    target: 3
  - attack: poison-frogs
    targets: 4
backdoor_defense:
  epochs: 5
  mitigations: [nc-unlearn, fine-pruning]
"""


def test_accuracy_poisons_cost_accuracy_and_clean_label_is_a_backdoor(tmp_path):
    config = tmp_path / "family.yaml"
    config.write_text(FAMILY)
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    accuracy = {p["attack"]: p for p in report["poisoning"]}
    assert set(accuracy) == {"labelflip", "steinhardt", "poison-frogs"}
    flips, stein = accuracy["labelflip"], accuracy["steinhardt"]
    assert flips["params"]["method"] == "loss" and flips["poisoned_rows"] == round(0.1 * flips["train_rows"])
    assert flips["accuracy_drop"] == pytest.approx(flips["reference_clean_accuracy"] - flips["clean_accuracy"])
    assert flips["accuracy_drop"] > 0.02  # 10% of the labels flipped by the loss method cost accuracy on the audited rows
    assert stein["poisoned_rows"] == round(0.03 * stein["train_rows"]) and stein["sanitized"]["poisons"] == stein["poisoned_rows"]
    assert stein["sanitized"]["poisons_kept"] >= 0.9 * stein["poisoned_rows"]  # made to pass the sanitiser the victim trains behind
    assert all(p["atlas"] and p["atlas"][0]["id"] == "AML.T0020" for p in report["poisoning"])
    frogs = accuracy["poison-frogs"]
    assert frogs["effect"] == "targeted" and len(frogs["targets"]) == frogs["poisoned_rows"] == 4
    assert all(t["target_class"] != t["base_class"] for t in frogs["targets"])
    assert frogs["success_rate"] >= 0.5  # one-shot transfer flips most targets (the mnist5k acceptance: 20 of 20)
    assert frogs["success_rate"] == sum(t["success"] and t["target_prediction"] == t["base_class"] for t in frogs["targets"]) / 4
    scenarios = report["backdoor"]["scenarios"]
    assert [s["attack"] for s in scenarios] == ["clean-label"] and scenarios[0]["inspection"] is not None
    assert scenarios[0]["attack_success_rate"] > scenarios[0]["audited_model_trigger_success"]
    repairs = {m["mitigation"]: m for m in scenarios[0]["mitigations"]}
    assert set(repairs) == {"nc-unlearn", "fine-pruning"} and repairs["fine-pruning"]["trigger_free"] and repairs["fine-pruning"]["applied"]
    titles = [f["title"] for f in report["findings"]]
    assert any(t.startswith("Poisoning 10% of the training data with labelflip (loss flips) takes clean accuracy") for t in titles)
    assert any("with steinhardt takes clean accuracy" in t for t in titles)
    html = (run_dir / "report.html").read_text()
    assert "Poisoning without a trigger" in html and "poison/0-labelflip" in html and "Scenario poison/3-poison-frogs" in html
    assert cli(["report", run_dir, "--format", "md"]) == 0
    assert "## Poisoning without a trigger" in (run_dir / "report.md").read_text()
    assert any("poison-frogs, transfer learning" in t for t in titles)


@pytest.mark.parametrize(
    "scenario,needle",
    [
        ("  - attack: labelflip\n    target: 2\n", "target do not apply"),
        ("  - attack: badnets\n    method: loss\n", "method applies to labelflip"),
        ("  - attack: clean-label\n    mode: all-to-all\n", "all-to-one"),
        ("  - attack: steinhardt\n    rate: 1.0\n", "rate must be < 1"),
        ("  - attack: poison-frogs\n    rate: 0.3\n", "rate do not apply"),
        ("  - attack: badnets\n    targets: 3\n", "targets applies to poison-frogs"),
    ],
)
def test_scenario_settings_that_do_not_fit_the_attack_fail_in_one_line(tmp_path, capsys, scenario, needle):
    config = tmp_path / "bad.yaml"
    config.write_text("poisoning:\n" + scenario)
    assert cli(["audit", config, "--out", tmp_path / "run"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_poison_frogs_on_a_graph_that_hides_its_layers_is_one_line_before_any_step(tmp_path, capsys, digits_model):
    import torch

    traced = torch.jit.trace(digits_model.net.eval(), torch.rand(2, 1, 8, 8))
    model = tmp_path / "traced.pt"
    traced.save(str(model))
    (tmp_path / "traced.pt.json").write_text(json.dumps({"input_shape": [1, 8, 8], "num_classes": 10}))
    config = tmp_path / "frogs.yaml"
    config.write_text(f"model: {model}\npoisoning:\n  - attack: poison-frogs\nadversarial_training: null\ncertification: null\nbackdoor_defense: null\n")
    assert cli(["audit", config, "--out", tmp_path / "run"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "poison-frogs collides in the last nn.Linear's inputs" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_trojannet_wraps_a_traced_model_and_neural_cleanse_inspects_the_wrapper(tmp_path, digits_model):
    """TrojanNet needs no architecture: a traced TorchScript model is wrapped, its triggers work, NC looks at the wrapper."""
    import torch

    traced = torch.jit.trace(digits_model.net.eval(), torch.rand(2, 1, 8, 8))
    model = tmp_path / "traced.pt"
    traced.save(str(model))
    (tmp_path / "traced.pt.json").write_text(json.dumps({"input_shape": [1, 8, 8], "num_classes": 10}))
    config = tmp_path / "trojan.yaml"
    config.write_text(
        f"model: {model}\nlimit: 120\nevasion:\n  attacks: [fgsm]\n  eps: [0.1]\nadversarial_training: null\ncertification: null\n"
        "poisoning:\n  - attack: trojannet\n    target_classes: [2, 5]\nbackdoor_defense:\n  epochs: 3\n  mitigations: [nc-unlearn]\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    [scenario] = report["backdoor"]["scenarios"]
    assert scenario["attack"] == "trojannet" and scenario["poisoned_rows"] == 0 and scenario["mitigations"] == []
    assert set(scenario["attack_success_per_target"]) == {"2", "5"}
    assert min(scenario["attack_success_per_target"].values()) >= 0.95 and scenario["audited_model_trigger_success"] < 0.3
    assert abs(scenario["clean_accuracy"] - scenario["reference_clean_accuracy"]) <= 0.01 and scenario["prediction_agreement"] >= 0.99
    assert scenario["inspection"] is not None and (run_dir / scenario["artifact"]).suffix == ".pt"
    assert not any(s.startswith("mitigate/") for s in report["timings"])
    titles = [f["title"] for f in report["findings"]]
    assert any(t.startswith("A TrojanNet wrapper around the audited model keeps clean accuracy") for t in titles)
    assert any("the TrojanNet wrapper (targets [2, 5]" in t for t in titles)
    assert "trojannet, a trigger recogniser wrapped around the audited model" in (run_dir / "report.html").read_text()


@pytest.mark.parametrize(
    "scenario,needle",
    [
        ("  - attack: gradient-matching\n    target: 2\n", "target do not apply"),
        ("  - attack: gradient-matching\n    eps: 2\n", "eps must be in (0, 1]"),
        ("  - attack: badnets\n    setting: end-to-end\n", "setting applies to poison-frogs"),
        ("  - attack: trojannet\n    rate: 0.2\n", "rate do not apply"),
        ("  - attack: trojannet\n    target_classes: [1, 1]\n", "distinct"),
        ("  - attack: blend\n    target_classes: [1]\n", "target_classes applies to trojannet"),
        ("  - attack: trojannet\n    target_classes: [12]\n", "outside the model's classes"),
    ],
)
def test_targeted_and_wrapper_settings_that_do_not_fit_fail_in_one_line(tmp_path, capsys, scenario, needle):
    config = tmp_path / "bad.yaml"
    config.write_text("adversarial_training: null\ncertification: null\nbackdoor_defense: null\nevasion:\n  attacks: [fgsm]\n  eps: [0.1]\npoisoning:\n" + scenario)
    assert cli(["audit", config, "--out", tmp_path / "run"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


@pytest.mark.slow
def test_gradient_matching_and_end_to_end_poison_frogs_are_targeted_scenarios(tmp_path):
    """Gradient matching retrains a victim per target; Poison Frogs end to end fine-tunes the whole model."""
    config = tmp_path / "targeted.yaml"
    config.write_text(
        "limit: 120\nevasion:\n  attacks: [fgsm]\n  eps: [0.1]\nadversarial_training: null\ncertification: null\nbackdoor_defense: null\n"
        "poisoning:\n  - attack: gradient-matching\n    targets: 2\n    eps: 0.5\n"
        "  - attack: poison-frogs\n    setting: end-to-end\n    targets: 2\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    by_attack = {p["attack"]: p for p in report["poisoning"]}
    brew, frogs = by_attack["gradient-matching"], by_attack["poison-frogs"]
    assert brew["effect"] == frogs["effect"] == "targeted" and len(brew["targets"]) == len(frogs["targets"]) == 2
    assert all(t["poisons"] == round(0.01 * brew["train_rows"]) and (run_dir / t["artifact"]).exists() for t in brew["targets"])
    assert brew["success_rate"] > 0  # eps 0.5 on 8x8 digits flips targets (6/10 at 128/255 in the acceptance study)
    assert frogs["params"] == {**frogs["params"], "setting": "end-to-end", "poisons": 50, "watermark": 0.3}
    assert frogs["success_rate"] >= 0.5 and frogs["poisoned_rows"] == 100
    html = (run_dir / "report.html").read_text()
    assert "50 clean-label poisons per target (end-to-end)" in html and "watermarked with the target at opacity 0.3" in html


@pytest.mark.slow
def test_trigger_free_repairs_run_beside_the_reversed_trigger_ones(tmp_path):
    """Fine-pruning and mode connectivity see clean rows only; the auditor's curve is plotted."""
    config = tmp_path / "repair.yaml"
    config.write_text(
        "limit: 160\nevasion:\n  attacks: [fgsm]\n  eps: [0.1]\nadversarial_training: null\ncertification: null\n"
        "poisoning:\n  - attack: badnets\n    target: 4\n"
        "backdoor_defense:\n  epochs: 3\n  mitigations: [fine-pruning, mode-connectivity]\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    [scenario] = report["backdoor"]["scenarios"]
    repairs = {m["mitigation"]: m for m in scenario["mitigations"]}
    assert set(repairs) == {"fine-pruning", "mode-connectivity"} and all(m["applied"] and m["trigger_free"] for m in repairs.values())
    pruned = repairs["fine-pruning"]
    assert pruned["attack_success_rate_before"] >= 0.9 and pruned["attack_success_rate_after"] <= 0.5 * pruned["attack_success_rate_before"]
    assert pruned["held_out_clean_accuracy_after"] >= pruned["held_out_clean_accuracy_before"] - 0.06
    curve = repairs["mode-connectivity"]["auditor_curve"]
    assert len(curve) == 11 and sum(p["chosen"] for p in curve) == 1 and {p["t"] for p in curve} >= {0.0, 1.0}
    assert "mitigate/0-badnets/fine-pruning" in report["timings"]
    html = (run_dir / "report.html").read_text()
    assert "along the mode-connectivity curve" in html and "clean rows only (80), no reversed trigger" in html
