"""The MagNet-defended model as a handle, its BPDA view, and attacks on it four ways.

Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", ACM CCS 2017:
the defended model rejects what a detector flags and classifies the reformer's ``ae(x)``
of the rest. Attacks on it (:func:`attack_defended`):

- **oblivious** (the paper's main setting): examples crafted on the bare classifier, then
  passed through the defense.
- **adaptive**: the attack runs on the defended model with BPDA (Athalye, Carlini &
  Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018): forward
  through the reformer, backward as the identity. It aims at the reformer only; the
  detectors judge its examples afterwards. **adaptive_exact_gradient** is the same attack
  differentiating the reformer exactly (MagNet's autoencoders are differentiable, so BPDA
  is a choice here, not a necessity; which is stronger depends on the attack: on mnist5k
  BPDA for one-step FGSM, the exact gradient for 20-step PGD, ``benchmarks/bench_magnet.py``).
- **adaptive_detector_aware** (after Carlini & Wagner, "MagNet and 'Efficient Defenses
  Against Adversarial Attacks' are Not Robust to Adversarial Examples", arXiv 2017; they
  used C&W L2 with the detectors in the loss, advkit a PGD under the attack's own threat):
  :func:`detector_aware_attack` ascends ``min(margin, 0) - w * sum_d relu(score_d /
  threshold_d - 0.9)`` (the margin of the defended model's logits, everything
  differentiated exactly: for a many-step attack on MNIST the reformer's exact gradient
  beats BPDA's, and one classifier pass serves the margin and the divergence detectors)
  for each weight ``w`` of a small list, and keeps per row the first iterate that is
  misclassified and passes every detector (else the last). Every verdict is the
  defense's own, recomputed afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advkit.attacks.evasion.steps import ascent_direction, margin
from advkit.attacks.evasion.verify import project
from advkit.core import AttackResult, ModelHandle, ModelInfo, Threat, check_labels
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.attacks.evasion.base import EvasionAttack
    from advkit.defenses.input.magnet import MagNetDefense

WAYS = ("oblivious", "adaptive", "adaptive_exact_gradient", "adaptive_detector_aware")
METHODS = {
    "oblivious": "crafted on the bare classifier",
    "adaptive": "BPDA: forward through the reformer, identity backward",
    "adaptive_exact_gradient": "through the reformer with its exact gradient (it is differentiable)",
}


class ReformedClassifier(nn.Module):
    """``classifier(reformer(x))``; with ``bpda`` the reformer's backward pass is the identity."""

    def __init__(self, reformer: nn.Module, classifier: nn.Module, bpda: bool = False) -> None:
        super().__init__()
        self.reformer = reformer
        self.classifier = classifier
        self.bpda = bpda

    def forward(self, x: Tensor) -> Tensor:
        reformed = self.reformer(x)
        if self.bpda:
            reformed = x + (reformed - x).detach()  # the forward value of ae(x), the gradient of x
        return self.classifier(reformed)


def reformed_handle(defense: MagNetDefense, handle: ModelHandle, *, bpda: bool = False) -> ModelHandle:
    """The defended model (reformer, then ``handle``'s network with its normalization) as a handle."""
    if not isinstance(handle, ModelHandle):
        raise AdvkitError("MagNet pipeline: the classifier must be an advkit ModelHandle")
    if tuple(handle.input_shape) != tuple(defense.info.input_shape) or tuple(handle.bounds) != tuple(defense.info.bounds):
        raise AdvkitError(
            f"MagNet pipeline: the defense takes {list(defense.info.input_shape)} images in {list(defense.info.bounds)}; "
            f"the model takes {list(handle.input_shape)} in {list(handle.bounds)}"
        )
    reformer = copy.deepcopy(defense.reformer).to(handle.device)  # the handle re-lays its network out (channels_last): not the defense's own
    info = ModelInfo(
        input_shape=handle.input_shape,
        num_classes=handle.num_classes,
        bounds=handle.bounds,
        classes=handle.info.classes,
        extra={"defense": "magnet", "bpda": bpda},
    )
    return ModelHandle(ReformedClassifier(reformer, handle.network, bpda), info, device=handle.device, precision=handle.precision)


def detector_aware_attack(
    defense: MagNetDefense,
    handle: ModelHandle,
    x: Tensor,
    y: Tensor,
    threat: Threat,
    *,
    steps: int = 50,
    step_size: float | None = None,
    weights: Sequence[float] = (1.0, 10.0),
    batch_size: int = 250,
) -> Tensor:
    """Adaptive examples that aim to be misclassified by the defended model *and* pass every detector (see the module)."""
    if threat.norm not in ("linf", "l2"):
        raise AdvkitError(f"MagNet detector-aware attack supports norms linf and l2; got {threat.norm}")
    if steps < 1 or not weights or any(w < 0 for w in weights):
        raise AdvkitError(f"MagNet detector-aware attack: steps must be >= 1 and weights >= 0; got {steps}, {list(weights)}")
    threat = threat.with_bounds(handle.bounds)
    defense.to(handle.device)
    x, y = handle.to_device(x), handle.to_device(y)
    step_size = step_size if step_size is not None else 2.5 * threat.eps / steps
    reformer = defense.reformer
    thresholds = defense.thresholds.to(handle.device).clamp_min(1e-12)
    out = x.clone()
    with handle.eval_mode():
        for first in range(0, x.shape[0], batch_size):
            xb, yb = x[first : first + batch_size], y[first : first + batch_size]
            found = torch.zeros(xb.shape[0], dtype=torch.bool, device=xb.device)
            answer = xb.clone()
            for weight in weights:
                rows = (~found).nonzero().squeeze(1)
                if not rows.numel():
                    break
                x0, y0 = xb[rows], yb[rows]
                x_adv, won = x0.clone(), torch.zeros(rows.numel(), dtype=torch.bool, device=xb.device)
                for step in range(steps + 1):  # the last round only checks the final iterate
                    x_in = x_adv.clone().requires_grad_(True)
                    logits = handle.logits(reformer(x_in))
                    ratio = defense.score_batch(x_in, logits) / thresholds
                    wins = (logits.argmax(1) != y0) & (ratio <= 1).all(1) & ~won
                    answer[rows[wins]] = x_adv[wins]
                    won |= wins
                    if bool(won.all()) or step == steps:
                        break
                    objective = margin(logits, y0).clamp(max=0.0) - weight * (ratio - 0.9).clamp_min(0.0).sum(1)
                    (grad,) = torch.autograd.grad(objective.sum(), x_in)
                    x_adv = project(x_adv + step_size * ascent_direction(grad, threat.norm), x0, threat).detach()
                answer[rows[~won]] = x_adv[~won]  # rows not won keep the last iterate of the last weight tried
                found[rows] = won
            out[first : first + batch_size] = answer
    return out


def _rate(mask: Tensor) -> float | None:
    return int(mask.sum()) / mask.numel() if mask.numel() else None


def defended_figures(
    defense: MagNetDefense, handle: ModelHandle, pipeline: ModelHandle, x: Tensor, y: Tensor, fooled: Tensor | None = None
) -> dict[str, Any]:
    """How the defended model treats rows ``x`` (all shares over every row unless named otherwise);
    ``fooled``: the rows where the attack succeeded on the model it attacked."""
    report = defense.detect(x)
    flagged = report.flagged.to(y.device)
    correct = pipeline.predict(x) == y
    accepted = ~flagged
    n = max(int(y.shape[0]), 1)
    successes = {} if fooled is None else {
        "successful_examples": int(fooled.sum()),
        "detection_rate_of_successful_examples": _rate(flagged[fooled]),
    }
    return {
        "n": int(y.shape[0]),
        "accuracy_without_defense": _rate(handle.predict(x) == y),
        "detection_rate": _rate(flagged),
        **successes,
        "detection_rate_by_detector": {name: count / n for name, count in report.details["flagged_by"].items()},
        "accuracy_after_reform": _rate(correct),
        "accuracy_after_reform_of_accepted": _rate(correct[accepted]),
        "rows_accepted": int(accepted.sum()),
        "accepted_and_correct": _rate(accepted & correct),
        "rejected_or_correct": _rate(flagged | correct),
        "attack_success": _rate(accepted & ~correct),
    }


def attack_defended(
    attack: EvasionAttack,
    handle: ModelHandle,
    defense: MagNetDefense,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator | None = None,
    *,
    ways: Sequence[str] = WAYS,
    detector_aware_steps: int = 50,
) -> dict[str, Any]:
    """Attack the MagNet-defended model each of ``ways``; a JSON-ready dict of the figures.

    ``clean``: ``false_positive_rate`` (clean rows rejected), ``accuracy`` (bare classifier),
    ``accuracy_after_reform`` (reformed, every row), ``accuracy_after_reform_of_accepted``,
    ``accepted_and_correct``. Each way: ``detection_rate`` (adversarial rows rejected),
    ``accuracy_after_reform`` (every adversarial row, detectors ignored),
    ``accuracy_after_reform_of_accepted`` (only the rows no detector rejects),
    ``attack_success`` (rows neither rejected nor classified right, over every row),
    ``rejected_or_correct`` (1 - attack_success), ``accuracy_without_defense`` (the bare
    classifier on the same examples), ``detection_rate_of_successful_examples`` (rejected
    among the ``successful_examples``: rows right before the attack, fooling the model it
    attacked: the bare classifier when oblivious, the defended one otherwise). The attack's
    own ``result`` is kept too; a way that does not apply to the attack is ``None``.
    """
    unknown = [w for w in ways if w not in WAYS]
    if unknown or not ways:
        raise AdvkitError(f"attack_defended: ways must be some of {', '.join(WAYS)}; got {list(ways)}")
    defense.to(handle.device)
    x = defense.check(x, "attack_defended images")
    y = check_labels(y, x.shape[0], handle.num_classes, "attack_defended labels").to(handle.device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator if generator is not None else torch.Generator().manual_seed(0)))
    pipeline = reformed_handle(defense, handle)
    clean = defended_figures(defense, handle, pipeline, x, y)
    clean_right = pipeline.predict(x) == y
    out: dict[str, Any] = {
        "defense": "magnet",
        "detectors": defense.detector_names,
        "thresholds": {name: float(t) for name, t in zip(defense.detector_names, defense.thresholds)},
        "false_positive_rate_target": defense.calibration.get("false_positive_rate_target"),
        "n": int(x.shape[0]),
        "clean": {
            "false_positive_rate": clean["detection_rate"],
            "accuracy": clean["accuracy_without_defense"],
            "accuracy_after_reform": clean["accuracy_after_reform"],
            "accuracy_after_reform_of_accepted": clean["accuracy_after_reform_of_accepted"],
            "accepted_and_correct": clean["accepted_and_correct"],
        },
    }
    for way in ways:
        if way == "adaptive_detector_aware":
            if attack.knowledge != "white" or attack.threat.norm not in ("linf", "l2") or attack.threat.goal != "untargeted":
                out[way] = None  # the detector-aware loss needs gradients, an Linf or L2 budget, an untargeted goal
                continue
            x_adv = detector_aware_attack(defense, handle, x, y, attack.threat, steps=detector_aware_steps)
            fooled = (pipeline.predict(x_adv) != y) & clean_right
            method: dict[str, Any] = {
                "attack": "pgd-detector-aware",
                "threat": attack.threat.with_bounds(handle.bounds).to_dict(),
                "steps": detector_aware_steps,
                "method": "margin of the defended model minus the detectors' scores over their thresholds, exact gradients",
            }
        else:
            target = handle if way == "oblivious" else reformed_handle(defense, handle, bpda=way == "adaptive")
            result: AttackResult = attack(target, x, y, generator=torch.Generator().manual_seed(seed))
            x_adv, fooled = result.x_adv, result.success & result.clean_correct
            method = {
                "attack": result.attack,
                "threat": result.threat.to_dict(),
                "method": METHODS[way],
                "result": result.to_dict(),
            }
        out[way] = {**method, **defended_figures(defense, handle, pipeline, x_adv, y, fooled)}
    return out
