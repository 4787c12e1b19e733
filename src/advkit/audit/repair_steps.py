"""The audit's trigger-free backdoor repairs: fine-pruning and mode-connectivity repair.

Neither needs Neural Cleanse's verdict or a reversed trigger: the defender has the
suspect model and a few clean rows. Like the trigger-driven mitigations
(:func:`advkit.audit.steps.backdoor_mitigation`), each sees the first
:func:`~advkit.audit.steps.defender_rows` evaluation rows and is judged on the held-out
second half, with the scenario's real trigger (which only the auditor knows).

- **Fine-pruning** (Liu, Dolan-Gavitt & Garg, RAID 2018): prune the units clean data
  leaves dormant until clean accuracy would drop by more than 4 points, then fine-tune.
- **Mode-connectivity repair** (Zhao et al., ICLR 2020): a Bezier curve between two
  copies fine-tuned from the suspect model, a point on it chosen on clean validation rows
  only; the record adds the auditor's curve (clean accuracy and backdoor success at every
  ``t``) for the report's plot.
"""

from __future__ import annotations

from typing import Any

from advkit.audit.config import TRIGGER_FREE_MITIGATIONS
from advkit.audit.plan import scenario_of, scenario_trigger
from advkit.audit.workspace import StepContext
from advkit.core import ModelHandle
from advkit.errors import AdvkitError

TRIGGER_FREE = TRIGGER_FREE_MITIGATIONS
"""Mitigations that need no reversed trigger (their steps do not wait for the inspection)."""


def backdoor_repair(ctx: StepContext, defender: int) -> dict[str, Any]:
    """Repair the poisoned model with ``defender`` clean rows; judge it on the held-out half."""
    from advkit.attacks.poisoning import backdoor_success_rate
    from advkit.defenses.backdoor.fine_pruning import FinePruning
    from advkit.defenses.backdoor.mode_connectivity import ModeConnectivityRepair, evaluate_curve
    from advkit.metrics import accuracy

    inputs = ctx.step.inputs
    scenario = scenario_of(ctx.env.plan_inputs(inputs["poison"]))
    attack = scenario_trigger(scenario)
    model = ctx.env.trained_model(inputs["poison"])
    data = ctx.env.eval_data()
    half = len(data) // 2
    xd, yd, xe, ye = data.x[:defender], data.y[:defender], data.x[half:], data.y[half:]

    def real_asr(m: ModelHandle) -> float:
        return backdoor_success_rate(m, xe, ye, attack.trigger, scenario.target, scenario.mode)

    before = real_asr(model)
    record: dict[str, Any]
    try:
        if inputs["mitigation"] == "fine-pruning":
            outcome: Any = FinePruning(seed=ctx.env.config.seed)(model, xd, yd, progress=ctx.env.progress)
            record = outcome.to_dict()
        else:
            outcome = ModeConnectivityRepair()(model, xd, yd, generator=ctx.generator, progress=ctx.env.progress)
            record = outcome.to_dict()
            record["auditor_curve"] = evaluate_curve(outcome, xe, ye, attack.trigger, scenario.target, scenario.mode)
    except AdvkitError as exc:  # e.g. a TorchScript network takes no hooks: the repair does not apply, the audit goes on
        return {"mitigation": inputs["mitigation"], "applied": False, "reason": str(exc)}
    record.update(
        {
            "mitigation": inputs["mitigation"],
            "applied": True,
            "trigger_free": True,
            "true_target": scenario.target,
            "defender_rows": int(defender),
            "attack_success_rate_before": before,
            "attack_success_rate_after": real_asr(outcome.model),
            "held_out_clean_accuracy_before": accuracy(model.predict(xe), ye),
            "held_out_clean_accuracy_after": accuracy(outcome.model.predict(xe), ye),
            "poisoned_model": ctx.result(inputs["poison"])["artifact"],
        }
    )
    return record


__all__ = ["TRIGGER_FREE", "backdoor_repair"]
