"""The public API of ``import advkit``: lazy, complete, and enough for a ten-line evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import advkit
from advkit.core import ModelHandle
from advkit.errors import AdvkitError


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in advkit.__all__:
        assert getattr(advkit, name) is not None, name
        assert name in dir(advkit), name
    from advkit.attacks.evasion import PGD
    from advkit.models.resolve import resolve

    assert advkit.PGD is PGD and advkit.load_model is resolve
    with pytest.raises(AttributeError):
        advkit.NoSuchAttack  # noqa: B018


def test_import_advkit_is_light() -> None:
    code = "import sys, advkit; print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('advkit.'))))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_audit_is_the_function_and_the_package() -> None:
    import advkit.audit.runner as runner  # the subpackage still imports as before

    assert callable(advkit.audit) and advkit.audit.runner is runner
    from advkit import audit

    assert audit is advkit.audit


def test_ten_line_evaluation() -> None:
    model = advkit.load_model("zoo:digits-cnn")
    data = advkit.load_dataset("digits", split="test", limit=64)
    result = advkit.PGD(advkit.Threat(eps=0.1))(model, data.x, data.y, generator=torch.Generator().manual_seed(0))
    assert result.adversarial_accuracy < result.clean_accuracy
    assert float((result.x_adv - data.x).abs().max()) <= 0.1 + 1e-6
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert result.n == 64


def test_audit_config_from_a_mapping_fails_in_one_line() -> None:
    from advkit.api import load_audit_config

    assert load_audit_config({"limit": 8}).limit == 8
    assert load_audit_config(None).model == "zoo:digits-cnn"
    with pytest.raises(AdvkitError, match="unknown key 'evasion.nope'"):
        load_audit_config({"evasion": {"nope": 1}})
    with pytest.raises(AdvkitError, match="limit"):
        load_audit_config({"limit": 0})


def test_audit_runs_from_python(tmp_path: Path, digits_model: ModelHandle) -> None:
    config = {
        "limit": 24,
        "evasion": {"attacks": ["fgsm"], "eps": [0.1], "max_queries": 20},
        "adversarial_training": None,
        "poisoning": [],
        "backdoor_defense": None,
        "certification": None,
    }
    report = advkit.audit(config, tmp_path / "run")
    assert report == json.loads((tmp_path / "run" / "report.json").read_text())
    assert {r["attack"] for r in report["evasion"]} == {"fgsm"}
