"""Black-box evasion: score-based (Square, NES, one-pixel) and label-only (HopSkipJump)."""

import pytest
import torch
from torch import nn

from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion import NES, PGD, HopSkipJump, OnePixel, SquareAttack
from advkit.attacks.evasion.base import CleanLabels, CleanScores, clean_info
from advkit.core import KnowledgeError, ModelHandle, Threat
from advkit.errors import AdvkitError, QueryBudgetExceeded


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


class Recorder:
    """Wraps an attack's run() to keep the view and clean information the base class handed it."""

    def __init__(self, attack) -> None:
        self.attack, self.views, self.cleans = attack, [], []
        original = attack.run

        def run(model, x, y, target, threat, generator, clean):
            self.views.append(model)
            self.cleans.append(clean)
            return original(model, x, y, target, threat, generator, clean)

        attack.run = run


@pytest.mark.parametrize(
    "attack",
    [SquareAttack(Threat(eps=0.3), max_queries=50), NES(Threat(eps=0.3), max_queries=200, samples=10),
     HopSkipJump(Threat(norm="l2", eps=3.0), max_queries=300), OnePixel(Threat(norm="l0", eps=2), max_queries=300)],
    ids=["square", "nes", "hopskipjump", "onepixel"],
)
def test_every_query_is_counted_by_the_view(attack, digits_model, digits_test):
    """Result counts are the view's per-row counters, and the network saw exactly those rows
    plus the base class's own three passes (clean, settling, verification)."""
    handle, counter = counted(digits_model)
    x, y = digits_test.x[:20], digits_test.y[:20]
    recorder = Recorder(attack)
    result = attack(handle, x, y, generator=torch.Generator().manual_seed(0))
    (view,) = recorder.views
    assert torch.equal(result.queries, view.row_queries.cpu())
    assert int(result.queries.sum()) == view.queries == counter.rows - 3 * 20
    assert int(result.queries.max()) <= attack.max_queries == view.max_queries


@pytest.mark.parametrize(
    "attack,kind,knowledge",
    [(SquareAttack(Threat(eps=0.3), max_queries=20), CleanScores, "score"),
     (HopSkipJump(Threat(norm="l2", eps=3.0), max_queries=30), CleanLabels, "label")],
    ids=["score", "label"],
)
def test_black_box_attacks_get_no_clean_logits(attack, kind, knowledge, digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    recorder = Recorder(attack)
    attack(digits_model, x, y)
    (clean,) = recorder.cleans
    assert type(clean) is kind and not hasattr(clean, "logits")
    assert recorder.views[0].knowledge == knowledge
    assert torch.equal(clean.labels.cpu(), digits_model.predict(x).cpu())
    if kind is CleanScores:
        assert torch.allclose(clean.probs.sum(1), torch.ones(10), atol=1e-5) and not clean.probs.requires_grad
    else:
        assert not hasattr(clean, "probs")


def test_knowledge_level_is_enforced(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    label_only = digits_model.view("label")
    with pytest.raises(KnowledgeError, match="score-box"):
        label_only.probs(x)
    with pytest.raises(KnowledgeError, match="white-box"):
        digits_model.view("score").logits(x)
    square = SquareAttack(Threat(eps=0.3), max_queries=20)
    clean = clean_info(x, digits_model.predict_logits(x), "label")
    with pytest.raises(KnowledgeError):  # a score attack handed a label-only model fails loudly
        square.run(label_only, x, y, None, square.threat.with_bounds((0.0, 1.0)), RowRandom(0, torch.arange(8)), clean)
    with pytest.raises(AdvkitError, match="needs score-box access"):
        SquareAttack(Threat(eps=0.3, knowledge="label"))
    scores = digits_model.view("score").probs(x.clone().requires_grad_(True))
    assert not scores.requires_grad  # no gradient path through scores


class Greedy(SquareAttack):
    """A broken attack that keeps querying whatever its budget says."""

    def run(self, model, x, y, target, threat, generator, clean):
        for _ in range(self.max_queries + 1):
            model.probs(x)
        return x


def test_an_attack_past_its_budget_is_stopped_by_the_view(digits_model, digits_test):
    with pytest.raises(QueryBudgetExceeded, match="row 0 has made 5 of its 5 queries"):
        Greedy(Threat(eps=0.3), max_queries=5)(digits_model, digits_test.x[:4], digits_test.y[:4])


def test_nes_rows_stop_querying_once_they_succeed(digits_model, digits_test):
    x, y = digits_test.x[:60], digits_test.y[:60]
    result = NES(Threat(eps=0.2), max_queries=1000)(digits_model, x, y)
    ok = result.success & result.clean_correct
    assert float(ok.float().sum()) >= 0.7 * float(result.clean_correct.float().sum())
    spent = result.queries[ok.cpu()]
    assert float(spent.median()) < 970  # 19 full steps of 50 samples + 1 cost 970
    assert spent.unique().numel() > 3  # each row reports what it cost
    assert int(result.queries.max()) <= 1000
    assert result.params["momentum"] == 0.9 and result.params["plateau_length"] == 5 and result.params["plateau_drop"] == 2.0


def test_hopskipjump_targeted_starts_at_an_image_of_the_target_class(digits_model, digits_test):
    x, y = digits_test.x[:50], digits_test.y[:50]
    labels = digits_model.predict(x)
    target = (y + 1 + torch.arange(50) % 9) % 10
    start = x.clone()
    found = HopSkipJump._target_images(x, target, labels, start, RowRandom(0, torch.arange(x.shape[0])))
    assert bool(found.all())  # every class is in the batch
    assert torch.equal(digits_model.predict(start)[found], target[found])
    assert not bool((start == x).flatten(1).all(1)[found].any())  # another row, never the row itself
    # 10 label queries pay for the first bisection (9 steps on 8x8 L2) and nothing else:
    # from noise almost no row would reach its target, from a target image every row does
    threat = Threat(norm="l2", eps=100.0, goal="targeted")
    result = HopSkipJump(threat, max_queries=10)(digits_model, x, y, target=target, generator=torch.Generator().manual_seed(0))
    assert int(result.queries.max()) <= 10
    assert float(result.success.float().mean()) >= 0.95


def test_square_linf_redraws_a_window_that_would_change_nothing():
    torch.manual_seed(0)
    x = torch.rand(200, 1, 6, 6) * 0.5 + 0.25
    eps = 0.1
    attack = SquareAttack(Threat(eps=eps), max_queries=10)
    x_best = x + eps  # every pixel already at +eps: half of all sign draws would change nothing
    candidate = attack._linf_step(x, x_best, eps, 2, RowRandom(0, torch.arange(200)), 1, 0.0, 1.0)
    changed = ((candidate - x_best).abs() > 1e-7).flatten(1).sum(1)
    assert bool((changed == 4).all())  # every image: its whole 2x2 window moved to -eps
    assert float((candidate - x).abs().max()) <= eps + 1e-6


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
