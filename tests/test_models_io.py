import importlib.util
import json
import os
import pickle

import pytest
import torch
from torch import nn

from advkit.attacks.evasion import PGD
from advkit.core import Threat
from advkit.errors import AdvkitError
from advkit.models import load_model, save_model


def test_safetensors_and_pt_round_trip(tmp_path, digits_model, digits_test):
    x = digits_test.x[:50]
    for name in ("m.safetensors", "m.pt"):
        save_model(digits_model, tmp_path / name)
        back = load_model(str(tmp_path / name))
        assert back.info.arch == "digits-cnn" and back.info.classes == digits_model.info.classes
        assert torch.allclose(back.predict_logits(x), digits_model.predict_logits(x), atol=1e-6)


def test_plain_state_dict_needs_and_uses_a_sidecar(tmp_path, digits_model, digits_test):
    path = tmp_path / "weights.pt"
    torch.save(digits_model.net.state_dict(), path)
    with pytest.raises(AdvkitError, match="sidecar"):
        load_model(str(path))
    (tmp_path / "weights.pt.json").write_text(json.dumps({"arch": "digits-cnn", "input_shape": [1, 8, 8], "num_classes": 10}))
    back = load_model(str(path))
    assert torch.equal(back.predict(digits_test.x[:40]), digits_model.predict(digits_test.x[:40]))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bearing_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": payload}, path)
    with pytest.raises(AdvkitError, match="refused"):
        load_model(str(path))
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(payload))
    with pytest.raises(AdvkitError):
        load_model(str(legacy))
    assert not marker.exists()


def test_truncated_and_missing_files(tmp_path, digits_model):
    path = tmp_path / "m.safetensors"
    save_model(digits_model, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AdvkitError, match="safetensors"):
        load_model(str(path))
    with pytest.raises(AdvkitError, match="no such file"):
        load_model(str(tmp_path / "absent.safetensors"))


class UnseenNet(nn.Module):
    """An architecture advkit has never seen: residual MLP on flattened pixels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 96)
        self.b = nn.Linear(96, 96)
        self.out = nn.Linear(96, 10)

    def forward(self, x):
        h = torch.relu(self.a(x.flatten(1)))
        return self.out(h + torch.tanh(self.b(h)))


def _trained_unseen(digits_train):
    torch.manual_seed(0)
    net = UnseenNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(digits_train.x), digits_train.y).backward()
        opt.step()
    return net.eval()


def test_torchscript_of_an_unseen_architecture_is_attackable(tmp_path, digits_train, digits_test):
    net = _trained_unseen(digits_train)
    path = tmp_path / "unseen.pt"
    torch.jit.script(net).save(str(path))
    handle = load_model(str(path), sample_shape=(1, 8, 8))
    assert handle.num_classes == 10
    result = PGD(Threat(eps=0.3))(handle, digits_test.x[:200], digits_test.y[:200])
    assert result.clean_accuracy > 0.9 and result.adversarial_accuracy < 0.05


def _require(module: str) -> None:
    """Skip only when ``module`` is genuinely not installed (and never in CI, where the Makefile installs it).

    An installed package whose import breaks fails the test: ``importorskip`` would hide it.
    """
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed in CI; make venv installs it")
        pytest.skip(f"{module} not installed")


def test_onnx_model_loads_through_onnx2torch(tmp_path, digits_model, digits_test):
    _require("onnx")
    _require("onnx2torch")
    from advkit.models.io import _import_onnx2torch

    assert callable(_import_onnx2torch())  # installed, so it must import (torchvision stand-in or not)
    path = tmp_path / "m.onnx"
    torch.onnx.export(digits_model.network.eval(), (digits_test.x[:1],), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    handle = load_model(str(path), sample_shape=(1, 8, 8))
    assert handle.num_classes == 10 and handle.input_shape == (1, 8, 8)
    x = digits_test.x[:30]
    assert torch.allclose(handle.predict_logits(x), digits_model.predict_logits(x), atol=1e-4)
    attacked = PGD(Threat(eps=0.3), steps=10, restarts=1)(handle, digits_test.x[:100], digits_test.y[:100])
    assert attacked.clean_accuracy > 0.9 and attacked.adversarial_accuracy < 0.1  # gradients flow through the converted graph
