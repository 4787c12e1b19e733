"""``advkit defend magnet`` and ``advkit attack --defense DIR``: fit, save, attack the defended pipeline."""

import json

import pytest

from test_cli import assert_bad_input, run


@pytest.fixture(scope="module")
def magnet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("magnet") / "defense"
    from advkit.cli import main

    try:
        main(["defend", "magnet", "--data", "digits", "--out", str(folder), "--steps", "150", "--validation-rows", "150"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return folder


def test_defend_saves_a_calibrated_defense_and_attack_reports_each_way(tmp_path, capsys, magnet_dir):
    record = json.loads((magnet_dir / "defend.json").read_text())
    assert record["calibration"] == {"data": "digits", "split": "test", "rows": [0, 150]}
    assert 0.0 <= record["held_out_false_positive_rate"] <= 0.12 and record["held_out_rows"] == 300
    assert {p.name for p in magnet_dir.iterdir()} >= {"magnet.safetensors", "magnet.json", "defend.json"}
    out = tmp_path / "attack.json"
    code, stdout, err = run(["attack", "fgsm", "--data", "digits", "--eps", "0.3", "--limit", "60", "--no-checks", "--defense", magnet_dir, "--json", out], capsys)
    assert code == 0, err
    assert "set the defense's thresholds" in err  # rows 0..59 of digits:test calibrated it
    defended = json.loads(out.read_text())["defended"]
    assert set(defended) >= {"clean", "oblivious", "adaptive", "adaptive_detector_aware", "thresholds"}
    oblivious, adaptive = defended["oblivious"], defended["adaptive"]
    assert oblivious["detection_rate"] >= 0.8 and oblivious["attack_success"] <= 0.2  # FGSM 0.3 on 8x8 digits is loud
    for way in (oblivious, adaptive):
        assert way["attack_success"] == pytest.approx(1.0 - way["rejected_or_correct"])
        assert set(way["attack"]) == {"adversarial_accuracy", "attack_success_rate", "seconds", "queries"}
    assert "vs MagNet" in stdout


def test_bad_defend_and_defense_inputs_are_one_line(tmp_path, capsys, magnet_dir):
    assert_bad_input(["defend", "magnet", "--data", "digits", "--out", tmp_path / "d", "--fpr", "1.5"], capsys, "--fpr must be in (0, 1)")
    assert_bad_input(["defend", "magnet", "--data", "digits"], capsys, "--out DIR is required")
    assert_bad_input(["defend", "nc-filter", "--data", "digits", "--out", tmp_path / "d"], capsys, "is not one (known: magnet)")
    assert_bad_input(["defend", "magnet", "--data", "digits", "--out", tmp_path / "d", "--validation-rows", "450"], capsys, "has only 450 rows")
    assert_bad_input(["attack", "fgsm", "--limit", "10", "--no-checks", "--defense", tmp_path / "missing"], capsys, "no such folder")
    assert_bad_input(["attack", "fgsm", "--data", "mnist5k", "--model", "zoo:mnist-cnn", "--limit", "10", "--no-checks", "--defense", magnet_dir], capsys, "fitted for [1, 8, 8] images")
