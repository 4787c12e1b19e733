"""Budget sweeps carry broken rows forward: never weaker than independent runs, row by row."""

from __future__ import annotations

import json

import pytest
import torch

from advkit.attacks.evasion.sweep import carry_forward, load_rows, save_rows, sweep
from advkit.core import Threat
from advkit.errors import AdvkitError
from advkit.registry import build_evasion

EPS = (0.05, 0.1, 0.2, 0.3)


@pytest.mark.parametrize(
    "name,settings",
    [("fgsm", {}), ("pgd", {}), ("autoattack", {"steps": 5, "max_queries": 100}), ("square", {"max_queries": 100})],
)
def test_a_swept_row_falls_wherever_an_independent_run_breaks_it(digits_model, digits_test, name, settings):
    x, y = digits_test.x[:150], digits_test.y[:150]
    knowledge = "score" if name == "square" else "white"
    attacks = [build_evasion(name, Threat(eps=e, knowledge=knowledge), settings, strict=False) for e in EPS]
    independent = sweep(attacks, digits_model, x, y, seed=2, carry=False)
    swept = sweep(attacks, digits_model, x, y, seed=2)
    carried_total = 0
    for eps, alone, carried in zip(EPS, independent, swept):
        assert bool((alone.success <= carried.success).all()), f"{name}@{eps}: a row the independent run broke stands in the sweep"
        assert carried.adversarial_accuracy <= alone.adversarial_accuracy
        assert float(carried.perturbation.max()) <= eps + 1e-6
        assert 0.0 <= float(carried.x_adv.min()) and float(carried.x_adv.max()) <= 1.0
        record = carried.to_dict()
        assert record["rows_attacked"] + record["rows_carried"] == 150
        carried_total += record["rows_carried"]
        # every carried row still fools the model with the example it carries
        assert bool((digits_model.predict(carried.x_adv[carried.success]) != y[carried.success]).all())
    assert independent[0].to_dict()["rows_carried"] == 0 and swept[0].to_dict()["rows_attacked"] == 150
    assert carried_total > 150  # most rows fall at some eps and are not attacked again
    assert swept[-1].adversarial_accuracy < 0.2


def test_targeted_sweeps_keep_each_rows_target(digits_model, digits_test):
    x, y = digits_test.x[:80], digits_test.y[:80]
    attacks = [build_evasion("pgd", Threat(eps=e, goal="targeted"), {}, strict=False) for e in (0.1, 0.3)]
    small, large = sweep(attacks, digits_model, x, y)
    assert torch.equal(small.target, large.target) and large.rows_carried == int(small.success.sum()) > 0
    assert bool((digits_model.predict(large.x_adv[large.success]) == large.target[large.success]).all())


def test_saved_rows_carry_like_the_result_itself(digits_model, digits_test, tmp_path):
    x, y = digits_test.x[:100], digits_test.y[:100]
    small = build_evasion("pgd", Threat(eps=0.1), {}, strict=False)
    large = build_evasion("pgd", Threat(eps=0.2), {}, strict=False)
    first = small(digits_model, x, y)
    save_rows(tmp_path / "rows.npz", first)
    loaded = load_rows(tmp_path / "rows.npz", "pgd", first.threat, y, 10)
    direct = carry_forward(large, digits_model, x, y, first, generator=torch.Generator().manual_seed(1))
    again = carry_forward(large, digits_model, x, y, loaded, generator=torch.Generator().manual_seed(1))
    assert torch.equal(direct.success, again.success) and torch.equal(direct.x_adv, again.x_adv)
    with pytest.raises(AdvkitError, match="increasing eps"):
        carry_forward(small, digits_model, x, y, direct)
    with pytest.raises(AdvkitError, match="within one attack"):
        carry_forward(build_evasion("fgsm", Threat(eps=0.3), {}, strict=False), digits_model, x, y, first)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(AdvkitError, match="not a saved sweep result"):
        load_rows(tmp_path / "bad.npz", "pgd", first.threat, y, 10)


def test_cli_sweeps_record_rows_attacked_and_carried(tmp_path, capsys):
    from advkit.cli import main

    carried, independent = tmp_path / "carry.json", tmp_path / "independent.json"
    main(["attack", "fgsm", "pgd", "--eps", "0.3,0.1", "--limit", "120", "--no-checks", "--json", str(carried)])
    main(["attack", "fgsm", "pgd", "--eps", "0.1,0.3", "--limit", "120", "--no-checks", "--no-carry", "--json", str(independent)])
    capsys.readouterr()
    swept, alone = json.loads(carried.read_text()), json.loads(independent.read_text())
    assert [r["threat"]["eps"] for r in swept] == [0.1, 0.1, 0.1, 0.3, 0.3, 0.3]  # increasing eps
    pairs = [(a, b) for a, b in zip(swept, alone) if a["attack"] != "worst"]
    for a, b in pairs:
        assert a["attack"] == b["attack"] and a["adversarial_accuracy"] <= b["adversarial_accuracy"]
        assert b["rows_attacked"] == 120 and b["rows_carried"] == 0
    later = [a for a, _ in pairs if a["threat"]["eps"] == 0.3]
    assert all(r["rows_carried"] > 0 and r["rows_attacked"] + r["rows_carried"] == 120 for r in later)
