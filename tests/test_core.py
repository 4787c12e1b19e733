import pytest
import torch
from torch import nn

from advkit.core import ModelHandle, ModelInfo, Threat
from advkit.errors import AdvkitError, KnowledgeError


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
