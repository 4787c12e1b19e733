"""The per-row worst case over attacks, and gradient masking caught instead of reported as robustness.

The masked model rounds its input to five grey levels before a trained MNIST CNN: its input
gradients are zero everywhere (Athalye et al., ICML 2018, "shattered gradients"), so PGD
barely moves it while a score-based search (Square) breaks nearly every row.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advkit.cli import main
from advkit.metrics import worst_case


def cli(argv: list[object]) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


class Quantised(nn.Module):
    """Rounds the input to ``levels`` grey levels: zero input gradient almost everywhere."""

    def __init__(self, net: nn.Module, levels: int) -> None:
        super().__init__()
        self.net = net
        self.levels = float(levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory, mnist_model):
    path = tmp_path_factory.mktemp("masked") / "quantised.pt"
    torch.jit.script(Quantised(mnist_model.net.eval(), 5)).save(str(path))
    return path


def test_worst_case_counts_a_row_robust_only_if_every_attack_left_it_standing():
    y = torch.tensor([0, 1, 2, 3, 0])
    clean = torch.tensor([0, 1, 2, 0, 0])  # row 3 is wrong already
    a_pred = torch.tensor([1, 1, 2, 0, 0])  # breaks row 0
    b_pred = torch.tensor([0, 2, 2, 0, 1])  # breaks rows 1 and 4
    record = worst_case(y, clean, [a_pred, b_pred], [a_pred != y, b_pred != y], 4, ["a", "b"])
    assert record["adversarial_accuracy"] == pytest.approx(1 / 5)  # only row 2 survives both
    assert record["attack_success_rate"] == pytest.approx(3 / 4)
    assert record["broken_by"] == {"a": 1, "b": 2}
    by_class = {c["class"]: c for c in record["per_class"]}
    assert by_class[0]["adversarial_accuracy"] == 0.0 and by_class[2]["adversarial_accuracy"] == 1.0
    # nothing to attack: the success rate is undefined, not 0
    none_right = worst_case(y, (y + 1) % 4, [y], [y != y], 4, ["a"])
    assert none_right["attack_success_rate"] is None


def test_attack_json_has_a_worst_record_at_or_below_every_attack(tmp_path, masked_model):
    out = tmp_path / "r.json"
    args = ["attack", "pgd", "square", "--model", masked_model, "--data", "mnist5k", "--eps", "0.3", "--limit", "100"]
    assert cli([*args, "--max-queries", "1000", "--json", out]) == 0
    records = json.loads(out.read_text())
    assert [r["attack"] for r in records] == ["pgd", "square", "worst"]
    pgd, square, worst = records
    assert worst["attacks"] == ["pgd", "square"]
    assert pgd["adversarial_accuracy"] >= 0.8  # the masked gradients fool PGD
    assert worst["adversarial_accuracy"] <= min(pgd["adversarial_accuracy"], square["adversarial_accuracy"])
    assert worst["adversarial_accuracy"] <= 0.15
    assert worst["attack_success_rate"] >= max(pgd["attack_success_rate"], square["attack_success_rate"])
    assert sum(c["n"] for c in worst["per_class"]) == worst["n"] == 100
    assert not pgd["sanity"]["reliable"]  # zero gradients and Square beating PGD are both reported
    assert any("blackbox_beats_whitebox" in reason for reason in pgd["sanity"]["reasons"])
    # --max-queries is an error only when no attack of the list takes queries
    assert cli(["attack", "fgsm", "pgd", "--model", masked_model, "--data", "mnist5k", "--max-queries", "300"]) == 2


def test_audit_escalates_to_square_on_masked_gradients(tmp_path, masked_model):
    config = tmp_path / "masked.yaml"
    config.write_text(
        f"model: {masked_model}\ndata: mnist5k\nlimit: 100\n"
        "evasion: {attacks: [pgd], eps: [0.3], max_queries: 1000}\n"
        "adversarial_training: null\npoisoning: []\nbackdoor_defense: null\ncertification: null\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    (check,) = report["gradient_masking"]
    assert check["escalated"] and check["attack"] == "square"
    assert any(r["attack"] == "square" and r["added_by"] for r in report["evasion"])
    (worst,) = report["evasion_worst"]
    assert worst["attacks"] == ["pgd", "square"] and worst["eps"] == 0.3
    pgd = next(r for r in report["evasion"] if r["attack"] == "pgd")
    assert pgd["adversarial_accuracy"] >= 0.8 and worst["adversarial_accuracy"] <= 0.15
    masking = [f for f in report["findings"] if "gradient masking" in f["title"].lower()]
    assert masking and masking[0]["severity"] == "high"
    # the headline finding is the worst case, not PGD's flattering number
    assert any(f"{worst['adversarial_accuracy']:.1%}" in f["title"] for f in report["findings"] if "cuts accuracy" in f["title"])
    assert "worst case" in (run_dir / "report.html").read_text()


def test_audit_does_not_escalate_a_model_with_honest_gradients(tmp_path, digits_model):
    from advkit.models import save_model

    path = tmp_path / "m.safetensors"
    save_model(digits_model, path)
    config = tmp_path / "plain.yaml"
    config.write_text(
        f"model: {path}\nlimit: 60\nevasion: {{attacks: [fgsm, pgd], eps: [0.1, 0.2]}}\n"
        "adversarial_training: null\npoisoning: []\nbackdoor_defense: null\ncertification: null\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert [c["escalated"] for c in report["gradient_masking"]] == [False, False]
    assert {r["attack"] for r in report["evasion"]} == {"fgsm", "pgd"}
    for worst in report["evasion_worst"]:
        rows = [r for r in report["evasion"] if r["threat"]["eps"] == worst["eps"]]
        assert worst["adversarial_accuracy"] <= min(r["adversarial_accuracy"] for r in rows)
        # PGD's first iterate is the FGSM point, so on honest gradients the worst case is PGD's
        assert worst["adversarial_accuracy"] >= min(r["adversarial_accuracy"] for r in rows) - 0.05
