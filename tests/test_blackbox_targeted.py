"""Black-box attacks with a targeted goal, judged on the trained digits model itself.

Each test checks the budget and the pixel bounds, that every reported success predicts
its target, and that the success rate (recomputed here from the model's own predictions)
clears a bar that an attack ignoring the target would miss.
"""

import pytest
import torch

from advkit.attacks.evasion import HopSkipJump, OnePixel, SquareAttack
from advkit.core import Threat


def _check_targeted(result, model, x, y, target, norm, eps):
    """Budget, bounds, and the share of correctly classified rows the model now puts in their target class."""
    delta = result.x_adv - x
    size = {
        "linf": delta.flatten(1).abs().amax(1),
        "l2": delta.flatten(1).norm(dim=1),
        "l0": delta.abs().amax(1).flatten(1).gt(0).sum(1).float(),  # changed pixels (any channel)
    }[norm]
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    clean, adv = model.predict(x), model.predict(result.x_adv)
    hit = (adv == target) & (clean == y)
    assert bool((adv[result.success] == target[result.success]).all())  # every success lands on its target
    assert torch.equal(result.success & (clean == y), hit)
    rate = float(hit.sum()) / float((clean == y).sum())
    assert rate == pytest.approx(result.attack_success_rate)
    return rate, size[hit]


def test_square_targeted_reaches_the_target_within_budget(digits_model, digits_test):
    x, y = digits_test.x[:24], digits_test.y[:24]
    target = (y + 1) % 10
    result = SquareAttack(Threat(norm="linf", eps=0.3, goal="targeted"), max_queries=200)(
        digits_model, x, y, target=target, generator=torch.Generator().manual_seed(0)
    )
    rate, _ = _check_targeted(result, digits_model, x, y, target, "linf", 0.3)
    assert rate >= 0.9  # a fixed class for each row, not just any wrong one
    assert int(result.queries.max()) <= 200


def test_hopskipjump_targeted_reaches_the_target_from_labels_only(digits_model, digits_test):
    x, y = digits_test.x[:12], digits_test.y[:12]
    target = (y + 1) % 10
    result = HopSkipJump(Threat(norm="l2", eps=3.0, goal="targeted"), max_queries=300)(
        digits_model, x, y, target=target, generator=torch.Generator().manual_seed(0)
    )
    rate, sizes = _check_targeted(result, digits_model, x, y, target, "l2", 3.0)
    assert rate >= 0.75
    assert float(sizes.median()) <= 2.5  # the boundary walk pulls the start well inside the budget
    assert int(result.queries.max()) <= 300


def test_one_pixel_targeted_steers_to_the_target(digits_model, digits_test):
    """Targets: each row's third most likely class, where the untargeted attack rarely lands."""
    x, y = digits_test.x[:30], digits_test.y[:30]
    ranked = digits_model.predict_logits(x).argsort(1, descending=True)
    target = torch.where(ranked[:, 2] == y, ranked[:, 0], ranked[:, 2])
    result = OnePixel(Threat(norm="l0", eps=5, goal="targeted"), max_queries=800)(
        digits_model, x, y, target=target, generator=torch.Generator().manual_seed(0)
    )
    rate, _ = _check_targeted(result, digits_model, x, y, target, "l0", 5)
    untargeted = OnePixel(Threat(norm="l0", eps=5), max_queries=800)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    correct = digits_model.predict(x) == y
    by_chance = float(((digits_model.predict(untargeted.x_adv) == target) & correct).sum()) / float(correct.sum())
    assert rate >= 0.35 and rate >= by_chance + 0.2, (rate, by_chance)
