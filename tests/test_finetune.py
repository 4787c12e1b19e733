"""Fine-tuning a copy of the user's model (TorchScript, ONNX): it hardens, saves, reloads, leaves the base alone."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from advkit.core import ModelHandle, Threat
from advkit.errors import AdvkitError
from advkit.models.finetune import FrozenStatistics, fine_tune, load_fine_tuned, save_fine_tuned, weights_digest
from advkit.registry import build_evasion


def _foreign(handle: ModelHandle, x: torch.Tensor) -> ModelHandle:
    """The zoo model as a user would bring it: traced TorchScript, normalisation inside, no arch."""
    traced = torch.jit.trace(handle.network.eval(), x[:2])
    return ModelHandle(traced, replace(handle.info, mean=None, std=None, arch=None))


def _pgd_accuracy(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    attack = build_evasion("pgd", Threat(norm="linf", eps=eps, goal="untargeted", knowledge="white"), {"steps": 10, "restarts": 1})
    return attack(model, x, y, generator=torch.Generator().manual_seed(0)).adversarial_accuracy


def test_adversarial_fine_tuning_hardens_a_torchscript_copy(digits_model, digits_train, digits_test, tmp_path):
    user = _foreign(digits_model, digits_train.x)
    before = weights_digest(user.net)
    x, y = digits_test.x, digits_test.y
    clean0, robust0 = float((user.predict(x) == y).float().mean()), _pgd_accuracy(user, x, y, 0.2)
    tuned = fine_tune(user, digits_train.x, digits_train.y, defense="adv-pgd", epochs=3, eps=0.2, lr=0.01, seed=0)  # a small CNN takes a larger step
    clean1, robust1 = float((tuned.handle.predict(x) == y).float().mean()), _pgd_accuracy(tuned.handle, x, y, 0.2)
    assert weights_digest(user.net) == before  # the user's model is untouched
    assert robust0 < 0.1 and robust1 > robust0 + 0.15, (robust0, robust1)
    assert clean1 > clean0 - 0.15, (clean0, clean1)
    assert tuned.handle.info.extra["fine_tuned_from"] == before and tuned.handle.info.extra["fine_tune"]["epochs"] == 3
    # saved as safetensors weights over the base; reloaded into a copy of the base network
    path = save_fine_tuned(tuned.handle, tmp_path / "ft.safetensors")
    back = load_fine_tuned(user, path)
    assert torch.equal(back.predict_logits(x), tuned.handle.predict_logits(x))
    with pytest.raises(AdvkitError, match="fine-tuned from another model"):
        load_fine_tuned(digits_model, path)


def test_batchnorm_statistics_stay_frozen():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    scripted = torch.jit.script(net.eval())  # a scripted BatchNorm would follow train()
    wrapped = FrozenStatistics(scripted)
    wrapped.train()
    mean = scripted.state_dict()["1.running_mean"].clone()
    wrapped(torch.rand(8, 1, 8, 8)).sum().backward()
    assert wrapped.training and torch.equal(mean, scripted.state_dict()["1.running_mean"])
    assert scripted[1].weight.grad is not None  # the affine parameters still learn


@pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None, reason="needs the onnx extra")
def test_fine_tuning_an_onnx_model(digits_model, digits_train, digits_test, tmp_path):
    from advkit.models.io import load_model

    path = tmp_path / "digits.onnx"
    torch.onnx.export(digits_model.network.eval(), digits_train.x[:1], str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    user = load_model(str(path), sample_shape=digits_train.input_shape)
    tuned = fine_tune(user, digits_train.x, digits_train.y, defense="adv-fast", epochs=2, eps=0.2, lr=0.01, seed=0)
    x, y = digits_test.x, digits_test.y
    assert _pgd_accuracy(tuned.handle, x, y, 0.2) > _pgd_accuracy(user, x, y, 0.2) + 0.1
    saved = save_fine_tuned(tuned.handle, tmp_path / "onnx-ft.safetensors")
    assert torch.allclose(load_fine_tuned(user, saved).predict_logits(x), tuned.handle.predict_logits(x))


def test_fine_tune_refuses_zero_epochs(digits_model, digits_train):
    with pytest.raises(AdvkitError, match="at least one epoch"):
        fine_tune(digits_model, digits_train.x, digits_train.y, epochs=0)
