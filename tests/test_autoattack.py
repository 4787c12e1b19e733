"""APGD, FAB and AutoAttack (Croce & Hein, ICML 2020): strength, budgets, schedule, peer check."""

from __future__ import annotations

import math

import pytest
import torch

from advkit.attacks.evasion import APGD, APGDDLR, FAB, PGD, APGDTargeted, AutoAttack, SquareAttack
from advkit.attacks.evasion.apgd import checkpoint_fractions, checkpoints, dlr_loss, dlr_targeted_loss
from advkit.attacks.evasion.fab import box_hyperplane_projection
from advkit.core import Threat
from advkit.errors import AdvkitError
from advkit.registry import build_evasion, lookup
from advkit.attacks.sanity import check_eps_zero


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These attacks run many small passes; on a shared 2-core machine two intra-op threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(data, n):
    return data.x[:n], data.y[:n]


def assert_in_budget(result, eps):
    assert float(result.perturbation.max()) <= eps + 1e-6
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0


COMPONENTS = {
    "apgd-ce": lambda t: APGD(t),
    "apgd-dlr": lambda t: APGDDLR(t),
    "apgd-t": lambda t: APGDTargeted(t),
    "fab-t": lambda t: FAB(t),
    "fab": lambda t: FAB(t, targeted=False),
}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_each_component_breaks_digits_inside_the_budget(digits_model, digits_test, name, norm, eps):
    x, y = rows(digits_test, 120)
    result = COMPONENTS[name](Threat(norm=norm, eps=eps))(digits_model, x, y)
    assert result.clean_accuracy >= 0.95
    assert result.adversarial_accuracy <= 0.05, (name, result.adversarial_accuracy)
    assert_in_budget(result, eps)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t"])
def test_each_component_breaks_mnist_inside_the_budget(mnist_model, mnist_test, name):
    x, y = rows(mnist_test, 60)
    result = COMPONENTS[name](Threat(eps=0.3))(mnist_model, x, y)
    assert result.clean_accuracy >= 0.95
    assert result.adversarial_accuracy <= 0.05, (name, result.adversarial_accuracy)
    assert_in_budget(result, 0.3)


def test_apgd_ce_at_least_as_strong_as_pgd_at_the_same_steps(digits_model, digits_test):
    x, y = rows(digits_test, 300)
    threat = Threat(eps=0.1)
    apgd = APGD(threat, steps=50)(digits_model, x, y)
    pgd = PGD(threat, steps=50, restarts=1)(digits_model, x, y)
    assert 0.2 < pgd.adversarial_accuracy < 0.9  # a budget that leaves rows standing
    assert apgd.adversarial_accuracy <= pgd.adversarial_accuracy + 0.005, (apgd.adversarial_accuracy, pgd.adversarial_accuracy)
    assert_in_budget(apgd, 0.1)


def test_autoattack_is_at_most_every_component(digits_model, digits_test):
    x, y = rows(digits_test, 60)
    threat = Threat(eps=0.1)
    steps, queries = 20, 300
    aa = AutoAttack(threat, steps=steps, max_queries=queries)(digits_model, x, y)
    assert_in_budget(aa, 0.1)
    parts = [
        APGD(threat, steps=steps),
        APGDTargeted(threat, steps=steps),
        FAB(threat, steps=steps),
        SquareAttack(threat, max_queries=queries, p_init=0.8),
    ]
    for part in parts:
        alone = part(digits_model, x, y)
        assert aa.adversarial_accuracy <= alone.adversarial_accuracy + 1e-9, (part.name, aa.adversarial_accuracy, alone.adversarial_accuracy)
    # The breakdown accounts for every row broken, and success is re-verified on the model.
    breakdown = aa.params["breakdown"]
    assert [b["attack"] for b in breakdown] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    broken = sum(b["rows_broken"] for b in breakdown)
    assert broken == int((aa.success & aa.clean_correct).sum())
    assert torch.equal(digits_model.predict(aa.x_adv), aa.adv_pred)
    assert aa.queries is None and breakdown[-1].get("queries", 0) <= queries * breakdown[-1]["rows_attacked"]
    assert aa.params["steps"] == steps and aa.params["max_queries"] == queries and aa.params["version"] == "standard"


def test_schedule_checkpoints_are_the_papers():
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    fractions = checkpoint_fractions()
    assert fractions == pytest.approx([0.0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99])
    assert [math.ceil(p * 100 - 1e-9) for p in fractions] == checkpoints(100)
    assert APGD(Threat(eps=0.1)).params()["checkpoints"] == checkpoints(100)
    assert checkpoints(10)[:3] == [0, 2, 3] and checkpoints(1) == [0, 1]


def test_dlr_losses_are_shift_and_scale_invariant():
    logits = torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    t = (y + 1) % 10
    moved = 3.0 * logits + 7.0
    assert torch.allclose(dlr_loss(logits, y), dlr_loss(moved, y), atol=1e-5)
    assert torch.allclose(dlr_targeted_loss(logits, y, t), dlr_targeted_loss(moved, y, t), atol=1e-5)


def test_box_hyperplane_projection_is_minimal_and_feasible():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        dims = 6
        t = torch.rand(1, dims, generator=gen, dtype=torch.float64)
        w = torch.randn(1, dims, generator=gen, dtype=torch.float64)
        b = (w * torch.rand(1, dims, generator=gen, dtype=torch.float64)).sum(1)
        need = float(b - (w * t).sum(1))
        tt, ww = t[0].numpy(), w[0].numpy()
        box = [(-tt[i], 1 - tt[i]) for i in range(dims)]
        for norm in ("linf", "l2"):
            d = box_hyperplane_projection(t, w, b, norm, (0.0, 1.0))[0].numpy()
            assert ((tt + d) >= -1e-9).all() and ((tt + d) <= 1 + 1e-9).all()
            assert abs(ww @ d - need) < 1e-7
            if norm == "linf":  # min s with |d_i| <= s, w.d = need, box
                cost = [0.0] * dims + [1.0]
                a_ub = []
                for i in range(dims):
                    for sign in (1.0, -1.0):
                        row = [0.0] * (dims + 1)
                        row[i], row[-1] = sign, -1.0
                        a_ub.append(row)
                opt = scipy_optimize.linprog(cost, A_ub=a_ub, b_ub=[0.0] * len(a_ub), A_eq=[list(ww) + [0.0]], b_eq=[need], bounds=box + [(0, None)]).fun
                assert abs(d).max() <= opt + 1e-7
            else:
                opt = scipy_optimize.minimize(
                    lambda z: (z**2).sum(), [0.0] * dims, method="SLSQP", bounds=box,
                    constraints=[{"type": "eq", "fun": lambda z: ww @ z - need}], options={"ftol": 1e-14, "maxiter": 500},
                ).fun
                assert (d**2).sum() <= opt + 1e-7


@pytest.mark.parametrize("attack", [APGD, APGDTargeted, FAB])
def test_targeted_goal_reaches_the_given_target(digits_model, digits_test, attack):
    x, y = rows(digits_test, 80)
    target = (y + 3) % 10
    result = attack(Threat(eps=0.3, goal="targeted"))(digits_model, x, y, target=target)
    assert result.attack_success_rate >= 0.85, result.attack_success_rate
    assert bool((result.adv_pred[result.success] == target[result.success]).all())
    assert_in_budget(result, 0.3)


def test_autoattack_versions_registry_and_errors(digits_model, digits_test):
    assert {lookup(n).factory for n in ("apgd-ce", "apgd-t", "fab", "autoattack")} == {APGD, APGDTargeted, FAB, AutoAttack}
    assert lookup("fab").factory(Threat()).targeted  # the registry's "fab" is FAB-T
    aa = build_evasion("autoattack", Threat(eps=0.2), {"steps": 10, "max_queries": 50})
    assert aa.params()["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert AutoAttack(version="fast").components == ("apgd-ce", "apgd-t")
    assert AutoAttack(version="plus").params()["restarts"] == 5
    assert AutoAttack(components=["apgd-ce", "square"]).params()["version"] == "custom"
    with pytest.raises(AdvkitError, match="components"):
        AutoAttack(components=["apgd-ce", "nope"])
    with pytest.raises(AdvkitError, match="version"):
        AutoAttack(version="rand")
    with pytest.raises(AdvkitError, match="supports goals"):
        AutoAttack(Threat(goal="targeted"))
    with pytest.raises(AdvkitError, match="supports goals"):
        APGD(Threat(goal="confidence"))
    x, y = rows(digits_test, 40)
    fast = AutoAttack(Threat(norm="l2", eps=1.5), version="fast", steps=20)(digits_model, x, y)
    assert fast.adversarial_accuracy <= 0.05 and [b["attack"] for b in fast.params["breakdown"]] == ["apgd-ce", "apgd-t"]
    assert_in_budget(fast, 1.5)


def test_eps_zero_changes_nothing_and_seeds_repeat(digits_model, digits_test):
    x, y = rows(digits_test, 64)
    aa = AutoAttack(Threat(eps=0.1), steps=10, max_queries=100)
    assert check_eps_zero(aa, digits_model, x, y).ok
    for attack in (APGD(Threat(eps=0.0)), FAB(Threat(eps=0.0))):
        assert check_eps_zero(attack, digits_model, x, y).ok
    first = aa(digits_model, x, y, generator=torch.Generator().manual_seed(3))
    again = aa(digits_model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.x_adv, again.x_adv)


def _torchattacks_accuracy(torchattacks, model, x, y, eps, square_queries=None):
    torch.manual_seed(0)
    peer = torchattacks.AutoAttack(model.network.eval(), norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    if square_queries is not None:
        peer._autoattack.attacks[-1].n_queries = square_queries
    return float((model.predict(peer(x, y)) == y).float().mean())


def test_autoattack_no_weaker_than_torchattacks_quick(digits_model, digits_test):
    """torchattacks' AutoAttack runs 10 iterations per gradient attack; so does this quick check (and a 500-query Square on both sides)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = rows(digits_test, 80)
    peer = _torchattacks_accuracy(torchattacks, digits_model, x, y, 0.1, square_queries=500)
    ours = AutoAttack(Threat(eps=0.1), steps=10, max_queries=500)(digits_model, x, y)
    assert ours.adversarial_accuracy <= peer + 0.005, (ours.adversarial_accuracy, peer)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_autoattack_no_weaker_than_torchattacks_standard(digits_model, digits_test, eps):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits_test.x, digits_test.y
    peer = _torchattacks_accuracy(torchattacks, digits_model, x, y, eps)
    ours = AutoAttack(Threat(eps=eps))(digits_model, x, y)
    assert ours.adversarial_accuracy <= peer + 0.005, (ours.adversarial_accuracy, peer)
    assert_in_budget(ours, eps)


def test_on_every_row_answers_every_row_inside_the_budget(digits_model, digits_test):
    x, y = rows(digits_test, 40)
    threat = Threat(eps=0.05)
    apgd = APGD(threat, steps=10).on_every_row()(digits_model, x, y)
    assert bool(((apgd.x_adv - x).flatten(1).abs().amax(1) > 0).all())  # a crafted point on every row
    assert_in_budget(apgd, 0.05)
    aa = AutoAttack(threat, version="fast", steps=10).on_every_row()(digits_model, x, y)
    assert bool(((aa.x_adv - x).flatten(1).abs().amax(1) > 0).all()) and aa.params["breakdown"][0]["rows_attacked"] == 40
    assert_in_budget(aa, 0.05)
