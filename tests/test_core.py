import pytest
import torch
from torch import nn

from advkit.attacks.evasion import BIM, EvasionAttack
from advkit.attacks.evasion.pgd import kurakin_steps
from advkit.core import ModelHandle, ModelInfo, Threat
from advkit.errors import AdvkitError, KnowledgeError, QueryBudgetExceeded


def test_threat_reads_robustbench_spelling_and_validates():
    assert Threat(norm="Linf").norm == "linf"
    assert Threat(norm="L2", goal="Targeted").goal == "targeted"
    for bad in ({"eps": -0.1}, {"eps": float("nan")}, {"norm": "l3"}, {"goal": "chaos"}, {"knowledge": "grey"}, {"bounds": (1, 0)}):
        with pytest.raises(AdvkitError):
            Threat(**bad)


def test_views_enforce_knowledge_and_count_every_row(digits_model, digits_test):
    x = digits_test.x[:7]
    label = digits_model.view("label")
    with pytest.raises(KnowledgeError):
        label.logits(x)
    with pytest.raises(KnowledgeError):
        label.probs(x)
    assert label.labels(x).shape == (7,)
    score = digits_model.view("score")
    probs = score.probs(x)
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-5)
    assert not probs.requires_grad
    with pytest.raises(KnowledgeError):
        score.logits(x)
    score.labels(x[:3])
    assert score.queries == 7 + 3  # rows x calls, refused calls not counted
    assert label.queries == 7


def test_handle_forces_eval_and_restores_callers_mode():
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(4, 3))
    handle = ModelHandle(net, ModelInfo(input_shape=(1, 2, 2), num_classes=3))
    net.train()
    x = torch.rand(16, 1, 2, 2)
    a, b = handle.predict_logits(x), handle.predict_logits(x)
    assert torch.equal(a, b)  # dropout off while evaluating
    assert net.training and all(m.training for m in net.modules())


def test_normalization_lives_in_the_handle():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    info = ModelInfo(input_shape=(1, 2, 2), num_classes=2, mean=[0.5], std=[0.25])
    handle = ModelHandle(net, info)
    x = torch.rand(3, 1, 2, 2)
    assert torch.allclose(handle.predict_logits(x), net((x - 0.5) / 0.25), atol=1e-6)


def test_view_holds_a_per_row_budget_and_refuses_past_it(digits_model, digits_test):
    x = digits_test.x[:3]
    view = digits_model.view("score", 5, rows=3)
    view.probs(x)  # point i belongs to row i
    view.labels(x[:1].expand(4, -1, -1, -1), rows=torch.zeros(4, dtype=torch.long))
    assert view.row_queries.tolist() == [5, 1, 1] and view.queries == 7
    assert view.budget_left().tolist() == [0, 4, 4]
    with pytest.raises(QueryBudgetExceeded, match="row 0 has made 5 of its 5 queries and was asked for 1 more"):
        view.probs(x[:2], rows=torch.tensor([1, 0]))
    assert view.row_queries.tolist() == [5, 1, 1] and view.queries == 7  # a refused call costs nothing
    view.probs(x[1:], rows=torch.tensor([1, 2]))
    assert view.row_queries.tolist() == [5, 2, 2]
    with pytest.raises(AdvkitError, match="one row per point"):
        view.probs(x, rows=torch.tensor([1]))
    with pytest.raises(AdvkitError, match="counts 3 rows"):
        view.labels(x[:1], rows=torch.tensor([3]))
    theft = digits_model.view("label", max_total=4)
    theft.labels(x)
    assert theft.total_left() == 1 and theft.row_queries is None
    with pytest.raises(QueryBudgetExceeded, match="4 queries in all"):
        theft.labels(x[:2])
    grown = digits_model.view("label", 2)  # no batch size: counters grow with the rows named
    grown.labels(x[:2], rows=torch.tensor([4, 4]))
    assert grown.row_queries.tolist() == [0, 0, 0, 0, 2] and int(grown.budget_left(torch.tensor([4, 9]))[1]) == 2


class ScoreProbe(EvasionAttack):
    """A score attack that queries random points around x and answers as told (tests the base class)."""

    name = "probe"
    knowledge = "score"

    def __init__(self, threat, *, max_queries, probes=3, answer):
        super().__init__(threat)
        self.max_queries, self.count, self.answer = max_queries, probes, answer

    def run(self, model, x, y, target, threat, random, clean):
        self.clean = clean
        n, k = x.shape[0], self.count
        probes = (x.unsqueeze(1) + threat.eps * random.signs("probes", (k, *x.shape[1:]))).clamp(0, 1)
        model.probs(probes.flatten(0, 1), rows=torch.arange(n).repeat_interleave(k))
        self.probes = probes
        if self.answer == "nan":
            out = probes[:, 0].clone()
            out[::2] = float("nan")
            return out
        return x + 3 * threat.eps * random.signs("answer", x.shape[1:])  # never queried, outside the ball


def test_non_finite_candidates_fall_back_to_the_clean_input(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    result = ScoreProbe(Threat(eps=0.3), max_queries=3, answer="nan")(digits_model, x, y)
    assert torch.isfinite(result.x_adv).all()
    broken = torch.arange(10) % 2 == 0
    assert torch.equal(result.x_adv[broken], x[broken])


def test_a_candidate_the_projection_moves_is_queried_within_budget_or_replaced(digits_model, digits_test):
    """Every answer was queried and counted: projected points are queried while the row has
    budget; without budget the row falls back to its best queried success, else the clean input."""
    x, y = digits_test.x[:40], digits_test.y[:40]
    roomy = ScoreProbe(Threat(eps=0.3), max_queries=4, answer="outside")
    result = roomy(digits_model, x, y)
    assert result.queries.tolist() == [4] * 40  # 3 probes + the projected answer, counted by the view
    assert float((result.x_adv - x).abs().max()) <= 0.3 + 1e-6
    assert type(roomy.clean).__name__ == "CleanScores" and not hasattr(roomy.clean, "logits")
    spent = ScoreProbe(Threat(eps=0.3), max_queries=3, answer="outside")
    result = spent(digits_model, x, y, generator=torch.Generator().manual_seed(1))
    assert result.queries.tolist() == [3] * 40  # no budget left for the projected point
    probes = spent.probes
    for i in range(40):
        queried = (probes[i] == result.x_adv[i]).flatten(1).all(1).any()
        assert bool(queried) or torch.equal(result.x_adv[i], x[i])
        hits = digits_model.predict(probes[i]) != y[i]
        if bool(result.clean_correct[i]) and bool(hits.any()):
            assert bool(result.success[i])  # a queried success is kept
    assert bool(result.success[result.clean_correct].any())


def test_bim_takes_kurakins_steps_from_the_models_bounds(digits_model, digits_test):
    """A model on 0-255 pixels: steps and step size come from its bounds at call time."""
    info = ModelInfo((1, 8, 8), 10, bounds=(0.0, 255.0), mean=[0.0], std=[255.0])
    pixels = ModelHandle(digits_model.net, info)
    x, y = digits_test.x[:50], digits_test.y[:50]
    bim = BIM(Threat(eps=0.1 * 255))
    result = bim(pixels, x * 255, y)
    assert result.params["steps"] == kurakin_steps(0.1, 1.0) == 30 and result.params["step_size"] == pytest.approx(1.0)
    unit = BIM(Threat(eps=0.1))(digits_model, x, y)
    assert unit.params["steps"] == 30 and unit.params["step_size"] == pytest.approx(1 / 255)
    assert float((result.x_adv - x * 255).abs().max()) <= 0.1 * 255 + 1e-3
    assert abs(result.attack_success_rate - unit.attack_success_rate) <= 0.05
    assert BIM(Threat(eps=0.1 * 255), steps=7)(pixels, x[:4] * 255, y[:4]).params["steps"] == 7
