"""Per-row random streams: a row's attack does not depend on the other rows of its call."""

from __future__ import annotations

import pytest
import torch

from advkit.attacks.evasion.row_random import RowRandom
from advkit.core import Threat
from advkit.registry import build_evasion


def test_streams_are_uniform_normal_and_keyed_by_row_and_tag():
    random = RowRandom(7, torch.arange(400))
    u = random.uniform("a", (1, 8, 8))
    assert u.shape == (400, 1, 8, 8) and 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12 ** -0.5) < 0.01
    z = random.normal("b", (64,))
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    assert set(random.signs("s", (16,)).unique().tolist()) == {-1.0, 1.0}
    counts = random.randint("t", 1, 10).bincount(minlength=10)
    assert counts[0] == 0 and int(counts[1:].min()) > 20
    # the same row and tag give the same numbers in any subset; other tags and keys differ
    rows = torch.tensor([5, 17, 399])
    assert torch.equal(random[rows].uniform("a", (1, 8, 8)), u[rows])
    assert torch.equal(RowRandom(7, torch.tensor([17])).uniform("a", (1, 8, 8))[0], u[17])
    assert not torch.equal(random.uniform("a2", (1, 8, 8)), u)
    assert not torch.equal(RowRandom(8, torch.arange(400)).uniform("a", (1, 8, 8)), u)
    assert float(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]) < 0.02
    shared = random.uniform("w", (3,), shared=True)
    assert shared.shape == (3,) and torch.equal(shared, random[rows].uniform("w", (3,), shared=True))


@pytest.mark.parametrize(
    "name,settings",
    [
        ("pgd", {}),
        ("apgd-t", {"steps": 10}),
        ("fab", {"steps": 10}),
        ("square", {"max_queries": 150}),
        ("autoattack", {"steps": 5, "max_queries": 100}),
        ("nes", {"max_queries": 200}),
    ],
)
def test_a_row_gets_the_same_attack_alone_or_in_a_batch(digits_model, digits_test, name, settings):
    """Attacking every third row (with their ids) gives the rows of attacking all: the same
    outcome, and the same points up to float rounding (a batch's size can change a sum's order)."""
    x, y = digits_test.x[:90], digits_test.y[:90]
    knowledge = "score" if name in ("square", "nes") else "white"
    attack = build_evasion(name, Threat(eps=0.15, knowledge=knowledge), settings, strict=False)
    full = attack(digits_model, x, y, generator=torch.Generator().manual_seed(3))
    some = torch.arange(1, 90, 3)
    part = attack(digits_model, x[some], y[some], generator=torch.Generator().manual_seed(3), rows=some)
    assert int(full.success[some].sum()) > 0
    assert torch.equal(part.success, full.success[some])
    assert float((part.x_adv - full.x_adv[some]).abs().max()) <= 1e-6
    other = attack(digits_model, x, y, generator=torch.Generator().manual_seed(4))
    if name != "fab":  # FAB's first run starts at the clean point: no random draw
        assert not torch.equal(other.x_adv, full.x_adv)


def test_random_targets_follow_the_row(digits_model, digits_test):
    x, y = digits_test.x[:60], digits_test.y[:60]
    attack = build_evasion("pgd", Threat(eps=0.2, goal="targeted"), {}, strict=False)
    full = attack(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    some = torch.arange(0, 60, 4)
    part = attack(digits_model, x[some], y[some], generator=torch.Generator().manual_seed(0), rows=some)
    assert torch.equal(part.target, full.target[some]) and bool((full.target != y).all())
    with pytest.raises(Exception, match="row ids"):
        attack(digits_model, x, y, rows=torch.arange(3))
