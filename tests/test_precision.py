"""--precision bf16|fp16: the attack's passes in autocast, every verdict in float32."""

from __future__ import annotations

import pytest
import torch

from advkit.core import ModelHandle, Threat
from advkit.errors import AdvkitError
from advkit.registry import build_evasion


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_attack_is_verified_in_fp32(digits_model, digits_test, precision):
    x, y = digits_test.x[:150], digits_test.y[:150]
    fp32 = ModelHandle(digits_model.net, digits_model.info, device="cpu")
    low = ModelHandle(digits_model.net, digits_model.info, device="cpu", precision=precision)
    attack = build_evasion("pgd", Threat(norm="linf", eps=0.1, goal="untargeted", knowledge="white"), {"steps": 10, "restarts": 1})
    reference = attack(fp32, x, y, generator=torch.Generator().manual_seed(0))
    result = attack(low, x, y, generator=torch.Generator().manual_seed(0))
    # the verdicts are those of the float32 model on the examples found
    assert torch.equal(result.clean_pred, fp32.predict(x))
    assert torch.equal(result.adv_pred, fp32.predict(result.x_adv))
    assert float((result.x_adv - x).abs().max()) <= 0.1 + 1e-6 and float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    # and the attack is as strong as in float32, within a few rows
    assert abs(result.adversarial_accuracy - reference.adversarial_accuracy) <= 0.04, (result.adversarial_accuracy, reference.adversarial_accuracy)
    assert result.adversarial_accuracy < result.clean_accuracy - 0.2


def test_reduced_precision_training_runs(digits_model, digits_train):
    from advkit.models.finetune import fine_tune

    tuned = fine_tune(digits_model, digits_train.x[:256], digits_train.y[:256], defense="adv-fast", epochs=1, eps=0.1, precision="bf16")
    assert all(torch.isfinite(p).all() for p in tuned.handle.net.parameters())


def test_unknown_precision_is_refused(digits_model):
    with pytest.raises(AdvkitError, match="--precision must be one of fp32, bf16, fp16"):
        ModelHandle(digits_model.net, digits_model.info, precision="fp8")
