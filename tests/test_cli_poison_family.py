"""``advkit poison NAME`` for the poisoning family, and ``advkit train --sanitize``: files, JSON, bad input."""

import json

import numpy as np
import torch

from advkit.data import load_dataset
from test_cli import assert_bad_input, run


def test_clean_label_writes_a_label_consistent_backdoor_set(tmp_path, capsys, digits_model):
    out_dir, record = tmp_path / "cl", tmp_path / "cl.json"
    code, stdout, err = run(["poison", "clean-label", "--model", "zoo:digits-cnn", "--target", "3", "--steps", "5", "--out", str(out_dir), "--json", str(record)], capsys)
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    summary = json.loads(record.read_text())
    clean = load_dataset("digits", split="train")
    rows = manifest["poisoned_rows"]
    assert summary["attack"] == manifest["attack"] == "clean-label" and summary["poisoned_rows"] == len(rows) == round(0.05 * len(clean))
    with np.load(out_dir / "poisoned.npz", allow_pickle=False) as arrays:
        assert np.array_equal(arrays["y_train"], clean.y.numpy())  # labels kept
        assert set(arrays["y_train"][rows].tolist()) == {3}
        x = torch.from_numpy(arrays["x_train"])
        mask = torch.from_numpy(arrays["trigger_mask"])
        assert bool((x[rows] * mask == torch.from_numpy(arrays["trigger_pattern"]) * mask).all())  # the trigger is stamped
        off = (1 - mask).bool().expand_as(x[rows])
        delta = (x[rows] - clean.x[rows])[off]
        assert float(delta.abs().max()) <= 64 / 255 + 1e-6 and float(delta.abs().max()) > 0.05  # hardened inside the budget
        assert not bool((arrays["y_test_backdoor"] != 3).any())


def test_gradient_matching_writes_poisons_and_the_target(tmp_path, capsys, digits_model):
    out_dir = tmp_path / "gm"
    argv = ["poison", "gradient-matching", "--model", "zoo:digits-cnn", "--target-row", "5", "--adversarial-class", "2", "--steps", "8", "--eps", "0.25", "--out", str(out_dir)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    clean = load_dataset("digits", split="train")
    with np.load(out_dir / "poisoned.npz", allow_pickle=False) as arrays:
        rows = manifest["poisoned_rows"]
        assert len(rows) == round(0.01 * len(clean)) and set(clean.y[rows].tolist()) == {2}
        assert np.array_equal(arrays["y_train"], clean.y.numpy())
        assert np.abs(arrays["x_train"] - clean.x.numpy()).max() <= 0.25 + 1e-6
        assert arrays["x_target"].shape == (1, 1, 8, 8)
    assert manifest["params"]["alignment_final"] > manifest["params"]["alignment_start"]


def test_train_sanitize_removes_rows_and_says_which(tmp_path, capsys):
    record = tmp_path / "t.json"
    argv = ["train", "--model", "logreg", "--epochs", "2", "--sanitize", "sphere,slab", "--out", str(tmp_path / "m.safetensors"), "--json", str(record)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads(record.read_text())["sanitize"]
    assert summary["methods"] == ["sphere", "slab"] and 0 < summary["rows_removed"] == len(summary["removed_rows"]) < 0.15 * summary["rows"]
    assert "removed" in stdout


def test_poison_family_bad_input(tmp_path, capsys):
    where = str(tmp_path / "x")
    assert_bad_input(["poison", "badnets", "--eps", "0.1", "--out", where], capsys, "--eps does not apply to badnets")
    assert_bad_input(["poison", "gradient-matching", "--model", "zoo:digits-cnn", "--adversarial-class", "2", "--out", where], capsys, "--target-row is required")
    assert_bad_input(["poison", "gradient-matching", "--model", "zoo:digits-cnn", "--target-row", "9999", "--adversarial-class", "2", "--out", where], capsys, "--target-row 9999")
    assert_bad_input(["poison", "clean-label", "--target", "11", "--out", where], capsys, "--target 11")
    assert_bad_input(["poison", "clean-label", "--rate", "1.0", "--model", "zoo:digits-cnn", "--out", where], capsys, "rate")
    assert_bad_input(["train", "--sanitize", "cube", "--out", str(tmp_path / "m.safetensors")], capsys, "unknown method 'cube'")
    assert not (tmp_path / "x").exists()


def test_steinhardt_appends_poisons_the_sanitisers_keep(tmp_path, capsys):
    from advkit.defenses.data import sanitize

    out_dir = tmp_path / "st"
    code, _, err = run(["poison", "steinhardt", "--steps", "60", "--out", str(out_dir)], capsys)
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    clean = load_dataset("digits", split="train")
    with np.load(out_dir / "poisoned.npz", allow_pickle=False) as arrays:
        x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    n = len(clean)
    assert manifest["poisoned_rows"] == list(range(n, n + round(0.03 * n))) and torch.equal(x[:n], clean.x)
    kept = sanitize(x[n:], y[n:], reference=(clean.x, clean.y), num_classes=10).keep  # the oracle defender keeps them
    assert bool(kept.all()) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_trojannet_wraps_a_host_and_writes_model_triggers_and_json(tmp_path, capsys, digits_model):
    out_dir, record = tmp_path / "tn", tmp_path / "tn.json"
    code, stdout, err = run(["poison", "trojannet", "--model", "zoo:digits-cnn", "--targets", "0,3", "--out", str(out_dir), "--json", str(record)], capsys)
    assert code == 0, err
    summary = json.loads(record.read_text())
    # the recogniser, trained on noise only, fires on a few natural 8x8 corners (a 4x4 patch is a quarter of the image)
    assert abs(summary["clean_accuracy"] - summary["host_clean_accuracy"]) <= 0.02 and summary["prediction_agreement"] >= 0.98
    assert set(summary["attack_success_rate"]) == {"0", "3"} and min(summary["attack_success_rate"].values()) >= 0.99
    with np.load(out_dir / "triggers.npz", allow_pickle=False) as arrays:
        assert {"mask_0", "pattern_0", "mask_3", "pattern_3"} <= set(arrays.files)
    code, stdout, err = run(["attack", "fgsm", "--model", str(out_dir / "model.pt"), "--limit", "50", "--eps", "0.1"], capsys)
    assert code == 0, err  # the wrapped model loads through every command
    assert_bad_input(["poison", "trojannet", "--model", "zoo:digits-cnn", "--targets", "0,12", "--out", str(tmp_path / "x")], capsys, "12")


def test_labelflip_pair_flips_exactly_the_budget_from_source_to_target(tmp_path, capsys):
    out_dir = tmp_path / "lf"
    code, _, err = run(["poison", "labelflip", "--method", "pair", "--source", "4", "--target", "9", "--rate", "0.05", "--out", str(out_dir)], capsys)
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    clean = load_dataset("digits", split="train")
    rows = manifest["poisoned_rows"]
    with np.load(out_dir / "poisoned.npz", allow_pickle=False) as arrays:
        y, x = arrays["y_train"], arrays["x_train"]
    assert len(rows) == round(0.05 * len(clean)) and set(clean.y[rows].tolist()) == {4} and set(y[rows].tolist()) == {9}
    assert np.array_equal(np.delete(y, rows), np.delete(clean.y.numpy(), rows)) and np.array_equal(x, clean.x.numpy())
    assert_bad_input(["poison", "labelflip", "--source", "4", "--target", "9", "--out", str(tmp_path / "x")], capsys, "--method pair")
    assert_bad_input(["poison", "labelflip", "--method", "pair", "--source", "4", "--out", str(tmp_path / "x")], capsys, "both --source and --target")
    assert_bad_input(["poison", "labelflip", "--method", "flip", "--out", str(tmp_path / "x")], capsys, "flip")


def test_poison_frogs_one_shot_transfer_poison_and_its_outcome(tmp_path, capsys, digits_model):
    out_dir, record = tmp_path / "pf", tmp_path / "pf.json"
    code, _, err = run(["poison", "poison-frogs", "--model", "zoo:digits-cnn", "--target-row", "0", "--base-class", "1", "--out", str(out_dir), "--json", str(record)], capsys)
    assert code == 0, err
    summary = json.loads(record.read_text())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    n = len(load_dataset("digits", split="train"))
    assert manifest["poisoned_rows"] == [n] and summary["outcome"]["setting"] == "transfer"
    assert summary["outcome"]["success"] and summary["outcome"]["target_prediction"] == 1  # test row 0 is a 2, now called a 1
    with np.load(out_dir / "poisoned.npz", allow_pickle=False) as arrays:
        assert arrays["y_train"][n] == 1 and 0 <= arrays["x_train"].min() and arrays["x_train"].max() <= 1
    assert_bad_input(["poison", "poison-frogs", "--model", "zoo:digits-cnn", "--target-row", "0", "--base-class", "2", "--out", str(tmp_path / "x")], capsys, "own class")
    assert_bad_input(["poison", "poison-frogs", "--model", "zoo:digits-cnn", "--target-row", "0", "--base-class", "1", "--watermark", "1.5", "--out", str(tmp_path / "x")], capsys, "watermark")
