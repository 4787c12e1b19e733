"""Black-box evasion: score-based (Square, NES, one-pixel) and label-only (HopSkipJump)."""

import pytest
import torch
from torch import nn

from advkit.attacks.evasion import NES, PGD, HopSkipJump, OnePixel, SquareAttack
from advkit.attacks.evasion.base import CleanForward
from advkit.core import KnowledgeError, ModelHandle, Threat
from advkit.errors import AdvkitError


class RowCounter(nn.Module):
    """The real network, counting every row it is asked to classify."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += int(x.shape[0])
        return self.net(x)


def counted(digits_model) -> tuple[ModelHandle, RowCounter]:
    counter = RowCounter(digits_model.network)
    return ModelHandle(counter, digits_model.info), counter


def test_square_linf_and_l2_succeed_within_budget_and_bounds(digits_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    linf = SquareAttack(Threat(norm="linf", eps=0.3), max_queries=1000)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert linf.attack_success_rate >= 0.9 and linf.to_dict()["queries"]["median"] <= 1000
    assert float((linf.x_adv - x).abs().max()) <= 0.3 + 1e-6
    l2 = SquareAttack(Threat(norm="l2", eps=1.5), max_queries=1000)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert l2.attack_success_rate >= 0.8
    assert float((l2.x_adv - x).flatten(1).norm(dim=1).max()) <= 1.5 + 1e-5
    for result in (linf, l2):
        assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
        assert int(result.queries.max()) <= 1000


def test_nes_estimates_gradients_from_scores(digits_model, digits_test):
    x, y = digits_test.x[:60], digits_test.y[:60]
    result = NES(Threat(eps=0.3), max_queries=1000)(digits_model, x, y)
    assert result.attack_success_rate >= 0.8
    assert int(result.queries.max()) <= 1000


def test_one_pixel_changes_at_most_k_pixels_and_more_pixels_help(digits_model, digits_test):
    x, y = digits_test.x[:60], digits_test.y[:60]
    rates = []
    for k in (1, 3):
        result = OnePixel(Threat(norm="l0", eps=k), max_queries=2000)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
        changed = ((result.x_adv - x).abs().flatten(1) > 0).sum(1)
        assert int(changed.max()) <= k
        assert int(result.queries.max()) <= 2000
        rates.append(result.attack_success_rate)
    assert rates[1] >= 0.5 and rates[1] > rates[0]


def test_hopskipjump_gets_close_to_pgds_minimal_distance(digits_model, digits_test):
    """Median L2 distance after 1,000 label queries within 2x of PGD-L2's smallest successful eps."""
    x, y = digits_test.x[:30], digits_test.y[:30]
    hsj = HopSkipJump(Threat(norm="l2", eps=100.0), max_queries=1000)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    ok = hsj.success & hsj.clean_correct
    assert float(ok.float().sum()) >= 0.9 * float(hsj.clean_correct.float().sum())
    assert int(hsj.queries.max()) <= 1000
    low, high = torch.zeros(30), torch.full((30,), 8.0)
    for _ in range(8):  # per-row bisection on PGD-L2's budget
        mid = (low + high) / 2
        won = torch.tensor([bool(PGD(Threat(norm="l2", eps=float(mid[i])), steps=20, restarts=1)(digits_model, x[i : i + 1], y[i : i + 1]).success[0]) for i in range(30)])
        high, low = torch.where(won, mid, high), torch.where(won, low, mid)
    assert float(hsj.perturbation[ok].median()) <= 2 * float(high[ok].median())


@pytest.mark.parametrize(
    "attack,knowledge",
    [(SquareAttack(Threat(eps=0.3), max_queries=50), "score"), (NES(Threat(eps=0.3), max_queries=200, samples=10), "score"),
     (HopSkipJump(Threat(norm="l2", eps=3.0), max_queries=300), "label"), (OnePixel(Threat(norm="l0", eps=2), max_queries=300), "score")],
)
def test_every_query_is_counted(attack, knowledge, digits_model, digits_test):
    handle, counter = counted(digits_model)
    x, y = digits_test.x[:20], digits_test.y[:20]
    view = handle.view(knowledge)
    threat = attack.threat.with_bounds(handle.bounds)
    with handle.eval_mode():
        with torch.inference_mode():
            clean = CleanForward(x, handle.logits(x))
        before = counter.rows
        _, queries = attack.run(view, x, y, None, threat, torch.Generator().manual_seed(0), clean)
    assert counter.rows - before == view.queries == int(queries.sum())
    assert int(queries.max()) <= attack.max_queries


def test_knowledge_level_is_enforced(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    label_only = digits_model.view("label")
    with pytest.raises(KnowledgeError, match="score-box"):
        label_only.probs(x)
    with pytest.raises(KnowledgeError, match="white-box"):
        digits_model.view("score").logits(x)
    square = SquareAttack(Threat(eps=0.3), max_queries=20)
    with pytest.raises(KnowledgeError):  # a score attack handed a label-only model fails loudly
        square.run(label_only, x, y, None, square.threat.with_bounds((0.0, 1.0)), torch.Generator(), CleanForward(x, torch.zeros(8, 10)))
    with pytest.raises(AdvkitError, match="needs score-box access"):
        SquareAttack(Threat(eps=0.3, knowledge="label"))
    scores = digits_model.view("score").probs(x.clone().requires_grad_(True))
    assert not scores.requires_grad  # no gradient path through scores


def test_bad_black_box_settings():
    with pytest.raises(AdvkitError, match="max-queries"):
        SquareAttack(Threat(eps=0.3), max_queries=0)
    with pytest.raises(AdvkitError, match="max-queries"):
        HopSkipJump(Threat(norm="l2", eps=1.0), max_queries=0)
    with pytest.raises(AdvkitError, match="whole number of pixels"):
        OnePixel(Threat(norm="l0", eps=1.5))
    with pytest.raises(AdvkitError, match="exceed"):
        OnePixel(Threat(norm="l0", eps=65), max_queries=200)(ModelHandle(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), info_8x8()), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


def info_8x8():
    from advkit.core import ModelInfo

    return ModelInfo((1, 8, 8), 10)


@pytest.mark.parametrize("budget", [1, 12, 40])
def test_hopskipjump_never_overruns_a_tiny_budget(budget, digits_model, digits_test):
    result = HopSkipJump(Threat(norm="l2", eps=100.0), max_queries=budget)(digits_model, digits_test.x[:10], digits_test.y[:10])
    assert int(result.queries.max()) <= budget
