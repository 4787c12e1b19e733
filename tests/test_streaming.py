"""Streamed rows: an image folder read batch by batch gives the numbers of the in-memory path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import advkit.data as data_module
from advkit.cli import main
from advkit.data import load_dataset, open_rows, streams
from advkit.data.folder import FolderRows
from advkit.errors import AdvkitError


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """The digits set as a folder of 8x8 greyscale PNGs, one folder per class."""
    root = tmp_path_factory.mktemp("digits-png")
    full = load_dataset("digits", split="all")
    for i, (x, y) in enumerate(zip(full.x, full.y, strict=True)):
        folder = root / str(int(y))
        folder.mkdir(exist_ok=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    return root


def test_batches_decode_the_same_pixels_as_the_whole_split(digit_folder):
    rows = open_rows(str(digit_folder), "test", limit=100)
    assert isinstance(rows, FolderRows) and len(rows) == 100 and rows.input_shape == (1, 8, 8)
    whole = load_dataset(str(digit_folder), "test", limit=100)
    got = list(rows.batches(32, workers=1))
    assert [len(ids) for ids, _, _ in got] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([ids for ids, _, _ in got]), torch.arange(100))
    assert torch.equal(torch.cat([x for _, x, _ in got]), whole.x) and torch.equal(torch.cat([y for _, _, y in got]), whole.y)
    assert rows.head(10).y.tolist() == whole.y[:10].tolist()


def run_attack(args, tmp_path, name):
    out = tmp_path / f"{name}.json"
    try:
        main(["attack", *args, "--json", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    records = json.loads(out.read_text())
    for record in records:
        record.pop("seconds", None)
        for part in record.get("params", {}).get("breakdown", []):
            part.pop("seconds", None)
    return records


def test_streamed_attack_equals_in_memory(digit_folder, tmp_path, monkeypatch):
    args = ["fgsm", "pgd", "square", "--data", str(digit_folder), "--eps", "0.1,0.2", "--limit", "120", "--batch-size", "32", "--max-queries", "100"]
    monkeypatch.setattr(data_module, "STREAM_ABOVE_BYTES", 10**12)
    assert not streams(open_rows(str(digit_folder), "test", limit=120))
    in_memory = run_attack(args, tmp_path, "memory")
    monkeypatch.setattr(data_module, "STREAM_ABOVE_BYTES", 0)
    assert streams(open_rows(str(digit_folder), "test", limit=120))
    streamed = run_attack(args, tmp_path, "streamed")
    assert len(streamed) == len(in_memory) == 8  # 3 attacks + worst, at 2 budgets
    for a, b in zip(in_memory, streamed, strict=True):
        assert a["attack"] == b["attack"] and a["n"] == b["n"] == 120
        for key in ("clean_accuracy", "adversarial_accuracy", "attack_success_rate", "per_class", "rows_attacked", "rows_carried"):
            assert a.get(key) == b.get(key), (a["attack"], key)
        assert a.get("queries") == b.get("queries")
    assert in_memory[0]["adversarial_accuracy"] < in_memory[0]["clean_accuracy"]  # the attacks did something


def test_a_corrupt_file_met_while_streaming_is_one_line(digit_folder, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(digit_folder, root)
    victim = open_rows(str(root), "test").files[40]  # decoded in the second batch
    good = victim.read_bytes()
    victim.write_bytes(good[:8])  # no header: refused when the folder is opened, before any work
    with pytest.raises(AdvkitError, match=rf"{victim.name}: unreadable image"):
        open_rows(str(root), "test")
    victim.write_bytes(good[: len(good) // 2])  # header intact, pixel data cut: found when decoded
    rows = open_rows(str(root), "test")
    with pytest.raises(AdvkitError, match=rf"{victim.name}: unreadable image") as info:
        for _ in rows.batches(32, workers=1):
            pass
    assert "\n" not in str(info.value)


def test_streamed_certify_equals_in_memory(digit_folder, tmp_path, monkeypatch):
    import advkit.cli.certify as certify_cli

    args = ["certify", "--data", str(digit_folder), "--limit", "40", "--n0", "10", "--n", "100"]
    records = []
    for threshold, chunk in ((10**12, 256), (0, 16)):
        monkeypatch.setattr(data_module, "STREAM_ABOVE_BYTES", threshold)
        monkeypatch.setattr(certify_cli, "STREAM_CHUNK", chunk)
        out = tmp_path / f"certify-{threshold}.json"
        try:
            main([*args, "--json", str(out)])
        except SystemExit as exc:
            assert exc.code in (0, None)
        record = json.loads(out.read_text())
        record.pop("seconds")
        records.append(record)
    assert records[0] == records[1] and records[0]["rows"] == 40 and records[0]["acr"] > 0


def test_the_audit_holds_only_the_rows_it_reads(digit_folder, tmp_path):
    """Training rows past fine_tune.rows are never decoded; a split too large for the memory cap is cut, and the report says so."""
    from advkit.audit.config import AuditConfig
    from advkit.audit.rows import HELD_ROWS_SHARE
    from advkit.audit.runner import AuditRunner
    from advkit.core.memory import set_memory_cap

    model = tmp_path / "model.pt"
    assert main(["train", "--model", "digits-cnn", "--data", str(digit_folder), "--epochs", "1", "--out", str(model)]) in (0, None)
    cfg = AuditConfig(model=str(model), data=str(digit_folder), training="fine-tune", fine_tune={"rows": 64})
    runner = AuditRunner(cfg, tmp_path / "run")
    train_split = len(open_rows(str(digit_folder), split="train"))
    assert runner.train_rows() == train_split and len(runner.train_data()) == 64 and runner._row_caps == []
    assert len(runner.eval_data()) == len(open_rows(str(digit_folder), split="test"))
    set_memory_cap(40 * 64 * 4 / HELD_ROWS_SHARE / 2**30)  # 40 rows of 8x8 float32
    try:
        capped = AuditRunner(cfg.model_copy(update={"fine_tune": cfg.fine_tune.model_copy(update={"rows": None})}), tmp_path / "run2")
        assert len(capped.eval_data()) == 40 and capped.train_rows() == 40 and len(capped.train_data()) == 40
        assert [c["key"] for c in capped._row_caps] == ["limit", "fine_tune.rows"]
        assert "memory cap" in capped._row_caps[0]["because"]
    finally:
        set_memory_cap(None)
