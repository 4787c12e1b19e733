"""The audit's data defense: scan each backdoor scenario's training rows, remove what is flagged, retrain, attack again."""

import json

import pytest

from test_audit import cli


def test_activation_clustering_removes_the_badnets_rows_and_the_backdoor(tmp_path):
    config = tmp_path / "scan.yaml"
    config.write_text(
        "limit: 120\ntraining: fine-tune\nfine_tune:\n  epochs: 3\n  lr: 0.01\nevasion:\n  attacks: [fgsm]\n  eps: [0.1]\n"
        "adversarial_training: null\ncertification: null\nbackdoor_defense:\n  inspect: k-arm\n  epochs: 8\n  mitigations: []\n"
        "poisoning:\n  - attack: badnets\n    target: 6\n  - attack: labelflip\n"
        "data_defense:\n  scanners: [activation-clustering]\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    [scenario] = report["backdoor"]["scenarios"]
    [scan] = scenario["data_defenses"]
    assert "scan/1-labelflip/activation-clustering" not in report["timings"]  # no trigger rows to find in label flips
    assert scan["scanner"] == "activation-clustering" and scan["poisons"] == scenario["poisoned_rows"] == round(0.1 * scan["rows"])
    assert scan["f1"] >= 0.6 and scan["poisons_removed"] + scan["clean_rows_removed"] == scan["rows_removed"]
    assert scan["attack_success_rate_before"] >= 0.5 and scan["attack_success_rate_after"] <= 0.1  # 3 fine-tuning epochs plant ~70%
    assert scan["clean_accuracy_after"] >= scan["clean_accuracy_before"] - 0.03
    assert (run_dir / scan["artifact"]).exists() and [a["id"] for a in scan["atlas"]] == ["AML.M0007"]
    assert any(f["title"].startswith("activation-clustering removes") for f in report["findings"])
    assert "rows flagged by activation-clustering removed, retrained" in (run_dir / "report.html").read_text()
    assert scenario["inspection"]["method"] == report["backdoor"]["audited_model"]["method"] == "k-arm"
    assert len(scenario["inspection"]["classes"]) == 10 and "steps_per_class" not in scenario["inspection"]
    assert any(f["title"].startswith("K-Arm ") for f in report["findings"])


@pytest.mark.parametrize("body,needle", [("data_defense:\n  scanners: [k-means]\n", "scanners"), ("data_defense:\n  scanners: []\n", "scanners")])
def test_bad_data_defense_settings_are_one_line(tmp_path, capsys, body, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(body)
    assert cli(["audit", config, "--out", tmp_path / "run"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
