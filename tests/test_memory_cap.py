"""The peak-memory cap: batches split to fit, the numbers stay, a step that cannot fit says so in one line."""

from __future__ import annotations

import pytest
import torch

import advkit.core.memory as memory
from advkit.core import Threat
from advkit.errors import AdvkitError
from advkit.registry import build_evasion


@pytest.fixture
def capped(monkeypatch):
    """A cap of ``rows`` rows of the given model, with nothing else resident."""

    def cap(model, rows: float) -> int:
        monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
        memory.set_memory_cap(rows * memory.row_bytes(model) / 2**30)
        return memory.row_bytes(model)

    yield cap
    memory.set_memory_cap(None)


def test_row_bytes_counts_what_backward_keeps(digits_model, mnist_model):
    small, large = memory.row_bytes(digits_model), memory.row_bytes(mnist_model)
    assert 0 < small < large  # 8x8 digits keep less per row than 28x28 MNIST


def test_a_capped_attack_splits_its_batch_and_keeps_its_numbers(digits_model, digits_test, capped):
    x, y = digits_test.x[:120], digits_test.y[:120]
    attack = build_evasion("pgd", Threat(norm="linf", eps=0.1, goal="untargeted", knowledge="white"), {"steps": 5, "restarts": 2}, batch_size=120)
    free = attack(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    capped(digits_model, 25.5)
    assert memory.rows_that_fit(digits_model, 120) == 25
    tight = attack(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(free.success, tight.success) and torch.allclose(free.x_adv, tight.x_adv, atol=1e-6)


def test_neural_cleanse_groups_its_classes_under_the_cap(digits_model, digits_test, capped):
    from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse

    x = digits_test.x[:64]
    free = NeuralCleanse(epochs=2, batch_size=16).reverse(digits_model, x, generator=torch.Generator().manual_seed(0))
    capped(digits_model, 16 * 3)  # three classes of 16 rows at a time
    tight = NeuralCleanse(epochs=2, batch_size=16).reverse(digits_model, x, generator=torch.Generator().manual_seed(0))
    for a, b in zip(free, tight, strict=True):
        assert torch.allclose(a.mask, b.mask, atol=1e-5) and torch.allclose(a.pattern, b.pattern, atol=1e-5)


def test_a_step_that_cannot_fit_is_one_line(digits_model, digits_test, capped):
    capped(digits_model, 0.5)
    attack = build_evasion("fgsm", Threat(norm="linf", eps=0.1, goal="untargeted", knowledge="white"), {})
    with pytest.raises(AdvkitError, match="one row of this .* model needs about .* GB .* memory cap") as info:
        attack(digits_model, digits_test.x[:10], digits_test.y[:10])
    assert "\n" not in str(info.value) and "ADVKIT_MAX_MEMORY_GB" in str(info.value)


def test_bad_cap_settings(monkeypatch):
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(AdvkitError, match="number of gigabytes"):
        memory.memory_cap()
    monkeypatch.setenv(memory.ENV, "2")
    assert memory.memory_cap() == 2 * 2**30
    with pytest.raises(AdvkitError, match="positive"):
        memory.set_memory_cap(0)
