"""The audit's poisoning scenarios that plant no trigger in the data.

- **Accuracy poisons** (label flipping, Steinhardt et al. 2017): train on them, measure the
  clean accuracy they cost against the audited model.
- **Targeted clean-label poisons** (Poison Frogs, Shafahi et al. 2018; gradient matching,
  Geiping et al. 2021): chosen evaluation rows the audited model gets right, each with a
  random other class; success is the share of them a victim trained on the poisons calls
  that class.
- **TrojanNet** (Tang et al. 2020): no data at all; the audited model is wrapped with a
  trigger recogniser, exported as TorchScript, and (with a backdoor defense) inspected
  by Neural Cleanse like any poisoned model.
"""

from __future__ import annotations

from typing import Any

import torch

from advkit.audit.config import ACCURACY_ATTACKS, PoisoningConfig
from advkit.audit.plan import scenario_of, scenario_trigger
from advkit.audit.training_steps import fine_tuning, save_poisoned_rows, train_model, train_rows, trainable
from advkit.audit.workspace import StepContext
from advkit.core import ModelHandle, ModelInfo
from advkit.data import Dataset
from advkit.errors import AdvkitError

WRAPS_THE_MODEL = ("poison-frogs", "trojannet")
GRADIENT_MATCHING_RESTARTS = 2
"""Brews per target, the best kept (the paper's 8 cost 4x; the acceptance study used 2)."""
"""Scenarios whose victim is the audited model itself (partly retrained, fine-tuned or wrapped): no architecture needed."""


def poisoning(ctx: StepContext) -> dict[str, Any]:
    """A poisoning scenario's step: poison the train split (or wrap the model), train on it, measure the effect."""
    from advkit.attacks.poisoning import backdoor_success_rate

    scenario = scenario_of(ctx.step.inputs)
    if scenario.attack == "trojannet":  # no data: the audited model is wrapped
        return trojannet(ctx, scenario)
    train = train_rows(ctx)
    if scenario.attack == "poison-frogs":  # the audited model itself, retrained in part or fine-tuned
        return poison_frogs(ctx, scenario, train)
    info = ctx.env.model().info if fine_tuning(ctx) else trainable(ctx, "the poisoning scenario")[1]
    if scenario.attack in ACCURACY_ATTACKS:
        return accuracy_poisoning(ctx, scenario, train, info.num_classes)
    if scenario.attack == "gradient-matching":
        return gradient_matching(ctx, scenario, train)
    attack = scenario_trigger(scenario)
    if scenario.target >= info.num_classes:
        raise AdvkitError(f"poisoning target {scenario.target} is outside the model's classes 0..{info.num_classes - 1}")
    if scenario.attack == "clean-label":  # the attacker hardens the target-class rows on the audited model
        poisoned = attack(ctx.env.model(), train.x, train.y, num_classes=info.num_classes, bounds=info.bounds, generator=ctx.generator)
    else:
        poisoned = attack(train.x, train.y, num_classes=info.num_classes, bounds=info.bounds, generator=ctx.generator)
    name = ctx.step.id.split("/", 1)[1]
    result = train_model(ctx, poisoned.x, poisoned.y, "standard", None, {"objective": "standard", "poisoned": attack.name}, f"poisoned-{name}")
    data = ctx.env.eval_data()
    result.update(
        {
            "poisoned_set": save_poisoned_rows(ctx, poisoned, f"poisoned-rows-{name}.npz"),
            "attack": attack.name,
            "params": attack.params(),
            "poisoned_rows": len(poisoned.rows),
            "train_rows": len(train),
            "attack_success_rate": backdoor_success_rate(ctx.env.trained_model_from(result["artifact"]), data.x, data.y, attack.trigger, scenario.target, scenario.mode),
            "audited_model_trigger_success": backdoor_success_rate(ctx.env.model(), data.x, data.y, attack.trigger, scenario.target, scenario.mode),
        }
    )
    mask, pattern = attack.trigger.mask_and_pattern(info.input_shape, info.bounds)
    result["trigger_l1"] = float(mask.sum())
    return result


def accuracy_poisoning(ctx: StepContext, scenario: PoisoningConfig, train: Dataset, num_classes: int) -> dict[str, Any]:
    """Label flipping or Steinhardt et al.'s poisons: train on them, measure the clean accuracy they cost.

    The reference is the audited model on the same evaluation rows. Steinhardt's victim
    trains behind the sphere and slab sanitisers its poisons were made to pass (the
    data-dependent defender: centroids from the rows it trains on).
    """
    from advkit.attacks.poisoning import LabelFlip, Steinhardt
    from advkit.defenses.data import sanitize
    from advkit.metrics import accuracy

    if scenario.attack == "labelflip":
        attack: Any = LabelFlip(rate=scenario.rate, method=scenario.method or "loss")
    else:
        attack = Steinhardt(rate=scenario.rate)
    poisoned = attack(train.x, train.y, num_classes=num_classes, generator=ctx.generator)
    x, y, sanitized = poisoned.x, poisoned.y, None
    if scenario.attack == "steinhardt":
        kept = sanitize(x, y, num_classes=num_classes)
        x, y = x[kept.keep], y[kept.keep]
        sanitized = {**kept.details(), "poisons_kept": int(kept.keep[poisoned.poisoned].sum()), "poisons": len(poisoned.rows)}
    result = train_model(ctx, x, y, "standard", None, {"objective": "standard", "poisoned": scenario.attack}, f"poisoned-{_name(ctx)}")
    data = ctx.env.eval_data()
    reference = accuracy(ctx.env.model().predict(data.x), data.y)
    result.update(
        {
            "attack": scenario.attack, "effect": "accuracy", "params": poisoned.params, "poisoned_rows": len(poisoned.rows), "train_rows": len(train),
            "reference_clean_accuracy": reference, "accuracy_drop": reference - float(result["clean_accuracy"]), "sanitized": sanitized,
        }
    )
    return result


def check_scenarios(scenarios: list[PoisoningConfig], model: ModelHandle, spec: str) -> None:
    """What a scenario asks of the model, said in one line before the first step: its classes exist, Poison Frogs sees a last nn.Linear."""
    for scenario in scenarios:
        classes = scenario.target_classes if scenario.attack == "trojannet" else [scenario.target]
        beyond = [c for c in classes or [] if c >= model.num_classes]
        if beyond:
            raise AdvkitError(f"poisoning: {scenario.attack} target class {beyond[0]} is outside the model's classes 0..{model.num_classes - 1}")
        if scenario.attack == "poison-frogs":
            check_feature_layer(model, spec)


def check_feature_layer(model: ModelHandle, spec: str) -> None:
    """Poison Frogs collides in the inputs of the model's last ``nn.Linear``: one line (before any step) when it has none to show."""
    from advkit.attacks.poisoning.poison_frogs import last_linear

    try:
        last_linear(model.network)
    except AdvkitError:  # a traced TorchScript or ONNX graph hides its layers
        raise AdvkitError(f"poisoning: poison-frogs collides in the last nn.Linear's inputs, which {spec} does not show (traced TorchScript, ONNX): remove that scenario") from None


def _name(ctx: StepContext) -> str:
    return ctx.step.id.split("/", 1)[1]


def target_pairs(ctx: StepContext, count: int, attack: str) -> list[tuple[int, int]]:
    """``count`` evaluation rows the audited model gets right, each with a random other class (the step's generator)."""
    model, data = ctx.env.model(), ctx.env.eval_data()
    correct = (model.predict(data.x).cpu() == data.y.cpu()).nonzero().squeeze(1)
    if correct.numel() == 0:
        raise AdvkitError(f"{attack}: the audited model gets no evaluation row right, so no row can be a target")
    count = min(count, correct.numel())
    rows = correct[torch.randperm(correct.numel(), generator=ctx.generator)[:count]]
    shift = torch.randint(1, model.num_classes, (count,), generator=ctx.generator)
    return [(int(r), int((data.y[r] + k) % model.num_classes)) for r, k in zip(rows, shift)]


def _targeted(attack: str, params: dict[str, Any], outcomes: list[dict[str, Any]], rows_trained: int) -> dict[str, Any]:
    return {
        "attack": attack, "effect": "targeted", "params": params, "poisoned_rows": sum(o["poisons"] for o in outcomes), "train_rows": rows_trained,
        "targets": outcomes, "success_rate": sum(o["success"] for o in outcomes) / len(outcomes),
    }


def poison_frogs(ctx: StepContext, scenario: PoisoningConfig, train: Dataset) -> dict[str, Any]:
    """Poison Frogs (Shafahi et al. 2018) on transfer learning or end to end.

    Every target's poisons collide in the audited model's penultimate features in one
    batch, from the base rows closest to the target there (watermarked with the target at
    ``watermark`` opacity end to end). ``transfer``: each victim is the audited model with
    its last layer retrained on the training rows plus that target's poisons;
    ``end-to-end``: the whole audited model fine-tuned on them (3 epochs, SGD lr 0.01).
    A target is poisoned when its victim calls it the base class.
    """
    from advkit.attacks.poisoning import PoisonFrogs, poison_success

    model, data = ctx.env.model(), ctx.env.eval_data()
    pairs = target_pairs(ctx, int(scenario.targets or 1), "poison-frogs")
    poisons, setting = int(scenario.poisons or 1), scenario.setting or "transfer"
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1], poisons=poisons, watermark=float(scenario.watermark or 0.0))
    poisoned = attack.craft_many(model, train.x, train.y, data.x, data.y, pairs=pairs, generator=ctx.generator)
    outcomes = []
    for (row, _), part in zip(pairs, poisoned):
        outcome = poison_success(model, part, data.x[row], setting=setting, seed=ctx.env.config.seed).to_dict()
        outcomes.append({"row": row, **outcome, "poisons": poisons, "mean_l2_perturbation": part.params["mean_l2_perturbation"]})
    params = {"setting": setting, "poisons": poisons, "watermark": attack.watermark, "targets": len(pairs), "beta": poisoned[0].params["beta"]}
    return _targeted("poison-frogs", params, outcomes, len(train))


def gradient_matching(ctx: StepContext, scenario: PoisoningConfig, train: Dataset) -> dict[str, Any]:
    """Witches' Brew (Geiping et al. 2021): per target, poisons brewed on the audited model, a victim trained on them.

    The audited model is the surrogate (the attacker knows the architecture and has clean
    training data: grey box). Each target's poisons are ``rate`` of the training rows, of its
    adversarial class, within Linf ``eps`` (:data:`GRADIENT_MATCHING_RESTARTS` brews, the
    best alignment kept); its victim is retrained from scratch with
    ``advkit train``'s recipe (or, fine-tuning, a fine-tuned copy of the audited model),
    as the paper's threat model has it. Success: the victim calls the target the
    adversarial class (``base_class`` in report.json, as for Poison Frogs).
    """
    from advkit.attacks.poisoning import GradientMatching

    model, data = ctx.env.model(), ctx.env.eval_data()
    pairs = target_pairs(ctx, int(scenario.targets or 1), "gradient-matching")
    budget = {} if scenario.eps is None else {"eps": scenario.eps}
    outcomes, params = [], {}
    for row, adversarial in pairs:
        attack = GradientMatching(target_row=row, adversarial_class=adversarial, rate=scenario.rate, bounds=model.bounds, restarts=GRADIENT_MATCHING_RESTARTS, **budget)
        poisoned = attack(model, train.x, train.y, data.x, data.y, generator=ctx.generator)
        metadata = {"objective": "standard", "poisoned": attack.name, "target_row": row}
        victim_record = train_model(ctx, poisoned.x, poisoned.y, "standard", None, metadata, f"poisoned-{_name(ctx)}-row{row}")
        victim = ctx.env.trained_model_from(victim_record["artifact"])
        probs = torch.softmax(victim.predict_logits(data.x[row : row + 1]).float(), 1)[0].cpu()
        change = (poisoned.x[poisoned.poisoned] - train.x[poisoned.poisoned]).flatten(1).norm(dim=1)
        outcomes.append({
            "row": row, "target_class": int(data.y[row]), "base_class": adversarial, "target_prediction": int(probs.argmax()),
            "success": int(probs.argmax()) == adversarial, "base_probability": float(probs[adversarial]), "poisons": len(poisoned.rows),
            "mean_l2_perturbation": float(change.mean()) if change.numel() else 0.0, "alignment": poisoned.params["alignment_final"],
            "clean_accuracy": victim_record["clean_accuracy"], "artifact": victim_record["artifact"], "training": victim_record["training"],
        })
        params = {"rate": attack.rate, "eps": attack.eps, "steps": attack.steps, "restarts": attack.restarts, "targets": len(pairs)}
    return _targeted("gradient-matching", {**params, "setting": "retrained victim"}, outcomes, len(train))


def trojannet(ctx: StepContext, scenario: PoisoningConfig) -> dict[str, Any]:
    """TrojanNet (Tang et al. 2020): the audited model wrapped with a trigger recogniser, as TorchScript.

    The wrapper is what a supplier could ship: it matches the audited model on clean
    rows and sends each of its 4x4 triggers to its class. Reported like a backdoor
    scenario (its success is the mean over its triggers, each also given), with no
    poisoned rows; Neural Cleanse then inspects the wrapper. No repair is tried: the
    host is untouched, the remedy is not to deploy the wrapper.
    """
    from advkit.attacks.poisoning.trojannet import TrojanNet, export_torchscript, trigger_success_rate
    from advkit.metrics import accuracy

    model, data = ctx.env.model(), ctx.env.eval_data()
    classes = list(scenario.target_classes or [scenario.target])
    if max(classes) >= model.num_classes:
        raise AdvkitError(f"poisoning: trojannet target class {max(classes)} is outside the model's classes 0..{model.num_classes - 1}")
    attack = TrojanNet(classes, seed=ctx.env.config.seed)
    attack.learn_natural_patches(ctx.env.train_data().x, model.bounds)  # the attacker's images: the train split, never the evaluation rows
    wrapped = attack.inject(model, num_classes=model.num_classes)
    info = ModelInfo(input_shape=tuple(model.input_shape), num_classes=model.num_classes, bounds=model.bounds, classes=model.info.classes)
    path = export_torchscript(wrapped, ctx.artifact(f"poisoned-{_name(ctx)}.pt"), info)
    handle = ctx.env.trained_model_from(ctx.relative(path))
    per_target = {str(t): trigger_success_rate(handle, data.x, data.y, attack, t) for t in classes}
    host = {str(t): trigger_success_rate(model, data.x, data.y, attack, t) for t in classes}
    known = [v for v in per_target.values() if v is not None]
    known_host = [v for v in host.values() if v is not None]
    triggers = attack.triggers(tuple(model.input_shape), model.bounds)
    wrapped_pred, host_pred = handle.predict(data.x).cpu(), model.predict(data.x).cpu()
    return {
        "artifact": ctx.relative(path), "attack": attack.name, "params": {**attack.params(), "target": classes[0]},
        "clean_accuracy": accuracy(wrapped_pred, data.y), "reference_clean_accuracy": accuracy(host_pred, data.y),
        "prediction_agreement": float((wrapped_pred == host_pred).float().mean()), "poisoned_rows": 0, "train_rows": 0,
        "attack_success_rate": sum(known) / len(known) if known else 0.0, "attack_success_per_target": per_target,
        "audited_model_trigger_success": sum(known_host) / len(known_host) if known_host else 0.0,
        "trigger_l1": float(next(iter(triggers.values()))[0].amax(0).sum()), "training": "none (wrapper)",
    }


__all__ = ["poisoning", "accuracy_poisoning", "check_feature_layer", "check_scenarios", "gradient_matching", "poison_frogs", "target_pairs", "trojannet"]
