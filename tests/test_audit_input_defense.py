"""The audit's input defense: MagNet fitted on the train split, calibrated and attacked on separate evaluation rows."""

import json

from test_audit import cli


def test_magnet_in_the_audit_is_attacked_obliviously_and_adaptively(tmp_path):
    config = tmp_path / "magnet.yaml"
    config.write_text(
        "limit: 100\nevasion:\n  attacks: [fgsm]\n  eps: [0.3]\nadversarial_training: null\ncertification: null\npoisoning: []\n"
        "backdoor_defense: null\ninput_defense:\n  steps: 120\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    defense = report["input_defense"]
    assert defense["defense"] == "magnet" and defense["calibration_rows"] == 50 and defense["rows"] == 50
    assert (run_dir / defense["artifact"] / "magnet.safetensors").exists()
    assert defense["clean"]["false_positive_rate"] <= 0.2
    [fgsm] = defense["attacks"]
    assert fgsm["oblivious"]["detection_rate"] >= 0.8  # FGSM at 0.3 on 8x8 digits is far off the data manifold
    assert fgsm["adaptive_detector_aware"]["attack_success"] > fgsm["oblivious"]["attack_success"]
    assert [a["id"] for a in defense["atlas"]] == ["AML.M0015"]
    assert any(f["title"].startswith("MagNet catches") for f in report["findings"])
    assert "Input defense: magnet in front of the model" in (run_dir / "report.html").read_text()
