"""File helpers: what advkit writes gets ordinary permissions; what it shows names no private path."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from advkit.cli import main
from advkit.fileio import atomic_path, display_path, redact_paths, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_written_files_get_the_umask_permissions_not_0600(tmp_path, umask, mask, digits_model):
    from advkit.models import save_model

    umask(mask)
    expected = 0o666 & ~mask
    write_json(tmp_path / "r.json", {"a": 1})
    save_model(digits_model, tmp_path / "m.safetensors")
    with atomic_path(tmp_path / "sub" / "x.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, x=np.zeros(3))
    for name in ("r.json", "m.safetensors", "sub/x.npz"):
        assert mode(tmp_path / name) == expected, (name, oct(mode(tmp_path / name)))
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


def test_overwriting_keeps_the_files_own_permissions(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "shared.json"
    target.write_text("{}")
    target.chmod(0o664)
    write_json(target, {"b": 2})
    assert mode(target) == 0o664 and json.loads(target.read_text()) == {"b": 2}


def test_cli_json_output_gets_the_umask_permissions(tmp_path, umask, capsys, digits_model):
    umask(0o022)
    out = tmp_path / "fgsm.json"
    try:
        main(["attack", "fgsm", "--limit", "20", "--no-checks", "--json", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert mode(out) == 0o644


def test_display_path_is_relative_inside_the_working_directory_else_the_file_name(tmp_path):
    work = tmp_path / "project"
    assert display_path(work / "runs" / "m.safetensors", cwd=work) == "runs/m.safetensors"
    assert display_path("runs/m.safetensors", cwd=work) == "runs/m.safetensors"
    assert display_path(tmp_path / "elsewhere" / "m.pt", cwd=work) == "m.pt"
    assert display_path("../elsewhere/m.pt", cwd=work) == "m.pt"
    assert display_path(Path.home() / "secret" / "weights.pt", cwd=work) == "weights.pt"
    assert display_path("~/secret/weights.pt", cwd=work) == "weights.pt"
    for spec in ("zoo:digits-cnn", "digits", "mnist5k"):  # not files: unchanged
        assert display_path(spec, cwd=work) == spec
    assert display_path(Path.home() / "x" / "m.pt", cwd="/") == "m.pt"  # "/" as the working directory shows no tree


def test_redact_paths_rewrites_every_string_and_keeps_the_rest(tmp_path):
    work = tmp_path / "project"
    home = Path.home()
    report = {
        "config": {"model": "../models/m.pt", "data": "digits", "seed": 3},
        "findings": [{"title": f"weights {work / 'runs/a/m.pt'}: changed", "detail": f"see {home}/notes.txt and {home}."}],
        "numbers": [0.5, 8 / 255, None, True],
        "text": "eps=8/255 on L2/Linf; https://atlas.mitre.org/techniques/AML.T0043 a / b </b>",
    }
    shown = redact_paths(report, [report["config"]["model"]], cwd=work)
    assert shown["config"] == {"model": "m.pt", "data": "digits", "seed": 3}
    assert shown["findings"][0]["title"] == "weights runs/a/m.pt: changed"
    assert str(home) not in json.dumps(shown) and str(tmp_path) not in json.dumps(shown)
    assert shown["findings"][0]["detail"] == f"see notes.txt and {home.name}."
    assert shown["numbers"] == report["numbers"] and shown["text"] == report["text"]
    assert report["config"]["model"] == "../models/m.pt"  # the input is not changed
