"""Say when a number cannot be trusted (DESIGN.md principle 5).

Checks in the spirit of AutoAttack's ``checks.py`` (Croce & Hein, ICML 2020) and of
Carlini et al., "On Evaluating Adversarial Robustness" (2019): a model handed over in
train mode, randomness in the forward pass, zero or non-finite input gradients
(gradient masking), an attack whose eps=0 run changes accuracy, a black-box attack
beating the white-box one. Each check returns a :class:`Finding`; any failed finding
marks the evaluation ``unreliable`` with its reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from advkit.attacks.evasion.steps import margin
from advkit.core import AttackResult, ModelHandle

if TYPE_CHECKING:
    from advkit.attacks.evasion.base import EvasionAttack


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


@dataclass
class SanityReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def reasons(self) -> list[str]:
        return [f"{f.check}: {f.detail}" for f in self.findings if not f.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"reliable": self.reliable, "reasons": self.reasons, "findings": [f.to_dict() for f in self.findings]}


def check_train_mode(handle: ModelHandle) -> Finding:
    """Was any sub-module in train mode when the model was handed over?"""
    training = [name or "<root>" for name, m in handle.net.named_modules() if m.training]
    if training:
        return Finding(
            "train_mode",
            False,
            f"model handed over in train mode ({len(training)} modules, e.g. {training[0]}); "
            "advkit evaluates in eval() mode, check that this is how the model is deployed",
        )
    return Finding("train_mode", True, "model in eval mode")


def check_random_forward(handle: ModelHandle, x: Tensor, tol: float = 1e-5) -> Finding:
    """Do two forward passes on the same inputs give the same logits (in eval mode)?"""
    first = handle.predict_logits(x)
    second = handle.predict_logits(x)
    diff = float((first - second).abs().max()) if first.numel() else 0.0
    if diff > tol:
        return Finding(
            "random_forward",
            False,
            f"two forward passes on the same inputs differ by up to {diff:.3g}: the model is randomised, "
            "use an expectation-over-transformation attack before trusting robust accuracy",
        )
    return Finding("random_forward", True, "forward pass is deterministic")


def check_gradients(handle: ModelHandle, x: Tensor, y: Tensor, max_zero_share: float = 0.1) -> Finding:
    """Are input gradients of the logit margin finite and non-zero (no gradient masking)?"""
    x_in = handle.to_device(x).clone().requires_grad_(True)
    with handle.eval_mode():
        logits = handle.logits(x_in)
    (grad,) = torch.autograd.grad(margin(logits, handle.to_device(y)).sum(), x_in, allow_unused=True)
    if grad is None:
        return Finding("masked_gradients", False, "the output does not depend on the input through autograd")
    grad = grad.flatten(1)
    if not bool(torch.isfinite(grad).all()):
        bad = int((~torch.isfinite(grad).all(1)).sum())
        return Finding("masked_gradients", False, f"{bad} of {grad.shape[0]} rows have NaN or infinite input gradients")
    zero = grad.abs().amax(1) == 0
    share = float(zero.float().mean()) if grad.shape[0] else 0.0
    if share > max_zero_share:
        return Finding(
            "masked_gradients",
            False,
            f"{share:.0%} of rows have an all-zero input gradient (gradient masking or shattered gradients): "
            "gradient attacks will under-report, try black-box attacks",
        )
    return Finding("masked_gradients", True, f"input gradients finite, {share:.0%} of rows zero")


def check_eps_zero(attack: EvasionAttack, handle: ModelHandle, x: Tensor, y: Tensor) -> Finding:
    """Does the attack with a zero budget leave every row's prediction unchanged?

    Compared row by row, not by accuracy: on a randomised model two draws can give the
    same accuracy with different predictions.
    """
    zero = copy.copy(attack)
    zero.threat = replace(attack.threat, eps=0.0)
    result = zero(handle, x, y)
    changed = int((result.adv_pred != result.clean_pred).sum())
    if changed:
        return Finding(
            "eps_zero",
            False,
            f"with eps=0 the prediction of {changed} of {result.n} rows changed "
            f"(accuracy {result.clean_accuracy:.3f} -> {result.adversarial_accuracy:.3f})",
        )
    return Finding("eps_zero", True, "eps=0 leaves every prediction unchanged")


def _rate_and_name(result: AttackResult | dict[str, Any]) -> tuple[float, str]:
    if isinstance(result, dict):
        rate, name = result.get("attack_success_rate"), str(result.get("attack"))
    else:
        rate, name = result.attack_success_rate, result.attack
    return (0.0 if rate is None else float(rate)), name


def check_blackbox_vs_whitebox(
    white: AttackResult | dict[str, Any], black: AttackResult | dict[str, Any], slack: float = 0.02
) -> Finding:
    """A black-box attack beating the white-box one on the same rows hints at masked gradients.

    Takes two :class:`AttackResult` or two ``--json`` records of the same rows and budget.
    """
    white_rate, white_name = _rate_and_name(white)
    black_rate, black_name = _rate_and_name(black)
    if black_rate > white_rate + slack:
        return Finding(
            "blackbox_beats_whitebox",
            False,
            f"{black_name} ({black_rate:.1%}) beats {white_name} ({white_rate:.1%}) "
            "on the same rows: the gradients are probably masked",
        )
    return Finding("blackbox_beats_whitebox", True, f"{white_name} at least as strong as {black_name}")


def _knowledge(result: AttackResult | dict[str, Any]) -> str:
    return str(result["threat"]["knowledge"]) if isinstance(result, dict) else result.threat.knowledge


def check_blackbox_vs_strongest(
    results: list[AttackResult] | list[dict[str, Any]],
) -> tuple[AttackResult | dict[str, Any] | None, list[Finding]]:
    """Each black-box attack against the strongest white-box one of the same rows and budget.

    A one-step attack losing to a black-box search says nothing about the gradients; the
    strongest white-box attack losing to it does (Carlini et al. 2019; AutoAttack's checks).
    Returns the strongest white-box result (None without one) and one finding per black-box.
    """
    white = [r for r in results if _knowledge(r) == "white"]
    black = [r for r in results if _knowledge(r) != "white"]
    if not white or not black:
        return None, []
    strongest = max(white, key=lambda r: _rate_and_name(r)[0])
    return strongest, [check_blackbox_vs_whitebox(strongest, b) for b in black]


def check_probability_outputs(handle: ModelHandle, x: Tensor, tol: float = 1e-4) -> Finding:
    """Does the model already output probabilities (AutoAttack's ``check_square_sum``)?

    Attacks ascend losses on logits; on a softmax output the cross-entropy saturates and
    its gradients vanish, so white-box attacks under-report. Flags outputs that are
    non-negative and sum to one on every row.
    """
    out = handle.predict_logits(x)
    if out.numel() == 0:
        return Finding("probability_outputs", True, "no rows to check")
    sums_to_one = bool(((out.sum(1) - 1).abs() <= tol).all()) and bool((out >= -tol).all())
    if sums_to_one:
        return Finding(
            "probability_outputs",
            False,
            "the model outputs probabilities (rows are non-negative and sum to 1), not logits: "
            "gradient attacks on a softmax output under-report; remove the final softmax before auditing",
        )
    return Finding("probability_outputs", True, "the model outputs logits")


def run_checks(
    handle: ModelHandle, x: Tensor, y: Tensor, attack: EvasionAttack | None = None, sample: int = 256
) -> SanityReport:
    """The model checks on up to ``sample`` rows, plus the eps=0 check for ``attack``."""
    x, y = x[:sample], y[:sample]
    report = SanityReport(
        [check_train_mode(handle), check_random_forward(handle, x), check_gradients(handle, x, y), check_probability_outputs(handle, x)]
    )
    if attack is not None:
        report.findings.append(check_eps_zero(attack, handle, x[:64], y[:64]))
    return report
