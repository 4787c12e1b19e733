"""The audit's data-defense step: scan a backdoor scenario's poisoned training set, drop what is flagged, retrain.

The scanner (activation clustering, Chen et al. 2019; spectral signatures, Tran et al.
2018; STRIP, Gao et al. 2019) sees the model trained on the poisoned rows and those
rows in their order; the flagged rows are scored against the rows the scenario really
poisoned (precision, recall, F1), removed, and the architecture is retrained (or the
audited model fine-tuned) on the rest with the same recipe. The record gives the
backdoor's success and the clean accuracy before and after, and the rows it cost.
"""

from __future__ import annotations

from typing import Any

import torch

from advkit.audit.plan import scenario_of, scenario_trigger
from advkit.audit.training_steps import load_poisoned_set, train_model, train_rows
from advkit.audit.workspace import StepContext
from advkit.errors import AdvkitError


def data_defense(ctx: StepContext) -> dict[str, Any]:
    """One scanner on one poisoned training set: found rows, the retrained model's backdoor and accuracy."""
    from advkit.attacks.poisoning import backdoor_success_rate
    from advkit.defenses.data.scanning import score_against
    from advkit.registry import lookup

    inputs = ctx.step.inputs
    poison = ctx.result(inputs["poison"])
    if "poisoned_set" not in poison:
        raise AdvkitError(f"{inputs['poison']}: its result predates the saved poisoned rows; rerun the audit without --resume")
    scenario = scenario_of(ctx.env.plan_inputs(inputs["poison"]))
    attack = scenario_trigger(scenario)
    x, y, truth = load_poisoned_set(ctx, poison["poisoned_set"], train_rows(ctx))
    model = ctx.env.trained_model(inputs["poison"])
    scan = lookup(inputs["scanner"], "defense").factory()(model, x, y, generator=ctx.generator)
    flagged = scan.flagged
    keep = ~flagged
    name = ctx.step.id.split("/", 1)[1].replace("/", "-")
    retrained = train_model(ctx, x[keep], y[keep], "standard", None, {"objective": "standard", "poisoned": attack.name, "sanitised_by": inputs["scanner"]}, f"sanitised-{name}")
    data = ctx.env.eval_data()
    after = ctx.env.trained_model_from(retrained["artifact"])
    return {
        "scanner": inputs["scanner"],
        "rows": int(y.shape[0]),
        "rows_removed": int(flagged.sum()),
        "poisons": int(truth.sum()),
        "poisons_removed": int((flagged & truth).sum()),
        "clean_rows_removed": int((flagged & ~truth).sum()),
        **score_against(scan.flagged_rows, truth, int(y.shape[0])),
        "per_class": scan.to_dict()["per_class"],
        "scan_seconds": scan.seconds,
        "attack_success_rate_before": poison["attack_success_rate"],
        "attack_success_rate_after": backdoor_success_rate(after, data.x, data.y, attack.trigger, scenario.target, scenario.mode),
        "clean_accuracy_before": poison["clean_accuracy"],
        "clean_accuracy_after": retrained["clean_accuracy"],
        "artifact": retrained["artifact"],
        "training": retrained["training"],
        "flagged_in_target_class": _target_share(y, flagged, scenario.target),
    }


def _target_share(y: torch.Tensor, flagged: torch.Tensor, target: int) -> float:
    """Share of the flagged rows labelled as the backdoor's target class (where a dirty-label poison sits)."""
    return float((y[flagged] == target).float().mean()) if bool(flagged.any()) else 0.0


__all__ = ["data_defense"]
