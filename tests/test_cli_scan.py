"""``advkit scan``: the poisoned-data scanners over a folder written by ``advkit poison``, scored against its manifest."""

import json

import pytest

from test_cli import assert_bad_input, run


@pytest.fixture(scope="module")
def poisoned_folder(tmp_path_factory):
    from advkit.cli import main

    folder = tmp_path_factory.mktemp("scan")
    for argv in (
        ["poison", "badnets", "--data", "digits", "--rate", "0.1", "--target", "3", "--out", str(folder)],
        ["train", "--model", "digits-cnn", "--data", str(folder / "poisoned.npz"), "--epochs", "10", "--out", str(folder / "model.safetensors")],
    ):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code in (0, None)
    return folder


def test_scan_flags_the_manifest_rows_in_file_order(tmp_path, capsys, poisoned_folder):
    out = tmp_path / "scan.json"
    args = ["scan", "activation-clustering", "--model", poisoned_folder / "model.safetensors", "--data", poisoned_folder / "poisoned.npz", "--json", out]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    record = json.loads(out.read_text())
    manifest = json.loads((poisoned_folder / "manifest.json").read_text())
    assert record["method"] == "activation-clustering" and record["split"] == "train" and record["rows"] == manifest["rows"]
    assert record["flagged"] == record["flagged_rows"] == sorted(record["flagged_rows"])
    assert record["poisoned_rows_known"] == len(manifest["poisoned_rows"])
    hits = len(set(record["flagged_rows"]) & set(manifest["poisoned_rows"]))
    assert record["precision"] == pytest.approx(hits / len(record["flagged_rows"])) and record["f1"] >= 0.8
    assert {row["class"] for row in record["per_class"]} == set(range(10))
    assert "F1" in stdout


def test_bad_scan_inputs_are_one_line(tmp_path, capsys, poisoned_folder):
    data = poisoned_folder / "poisoned.npz"
    model = poisoned_folder / "model.safetensors"
    assert_bad_input(["scan", "k-means", "--model", model, "--data", data], capsys, "unknown defense 'k-means'")
    assert_bad_input(["scan", "magnet", "--model", model, "--data", data], capsys, "another kind of defense")
    assert_bad_input(["scan", "strip", "--model", model, "--data", data, "--expected-rate", "0.1"], capsys, "--expected-rate applies to spectral-signatures")
    assert_bad_input(["scan", "strip", "--model", model, "--data", data, "--split", "test", "--limit", "50"], capsys, "index the train split")
    bad = tmp_path / "manifest.json"
    bad.write_text('{"poisoned_rows": "all"}')
    assert_bad_input(["scan", "strip", "--model", model, "--data", data, "--manifest", bad, "--limit", "50"], capsys, "not a poisoning manifest")


def test_inspect_shortcut_flags_nothing_on_the_clean_zoo_model(tmp_path, capsys):
    out = tmp_path / "shortcut.json"
    code, stdout, err = run(["inspect", "shortcut", "--model", "zoo:digits-cnn", "--data", "digits", "--limit", "200", "--json", out], capsys)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["method"] == "shortcut" and record["flagged"] == [] and len(record["classes"]) == 10
    assert all({"class", "anomaly_index", "region", "flagged"} <= set(row) for row in record["classes"])
    assert "shortcut classes: none" in stdout
