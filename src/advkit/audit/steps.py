"""The audit's step functions: each takes a StepContext and returns a JSON-able result.

Results hold numbers only (no wall times: those live in the runner's timings), so a
resumed run and an uninterrupted run with the same seed give equal results.
"""

from __future__ import annotations

from typing import Any

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from advkit.audit.plan import MASKING_ATTACK, scenario_of, scenario_trigger, step_slug, threat_for
from advkit.audit.data_defense_steps import data_defense
from advkit.audit.input_defense_steps import input_defense
from advkit.audit.poisoning_steps import poisoning
from advkit.audit.repair_steps import TRIGGER_FREE, backdoor_repair
from advkit.audit.training_steps import adversarial_training, certified_training, denoiser_training
from advkit.audit.workspace import StepContext
from advkit.core import ModelHandle
from advkit.fileio import save_arrays
from advkit.registry import build_evasion

EXAMPLES = 8
EPS_ZERO_ROWS = 64  # rows the zero-budget sanity check runs each attack on (attacks.sanity.check_eps_zero)


def provenance(ctx: StepContext) -> dict[str, Any]:
    """SHA-256 of the model file and data files, plus the reliability checks."""
    from advkit.attacks.sanity import run_checks

    env = ctx.env
    manifest = json.loads(json.dumps(env.fingerprint))
    data = env.eval_data()
    checks = run_checks(env.model(), data.x, data.y)
    manifest["sanity"] = checks.to_dict()
    manifest["preprocessing"] = data.preprocessing  # how the images were resized and cropped (None: the files' own pixels)
    manifest["model_info"] = {
        "input_shape": list(env.model().input_shape),
        "num_classes": env.model().num_classes,
        "arch": env.model().info.arch,
        "classes": env.model().info.class_names(),
    }
    return manifest


def _target_model(ctx: StepContext, target: str) -> ModelHandle:
    return ctx.env.model() if target == "model" else ctx.env.trained_model(target)


def evasion(ctx: StepContext) -> dict[str, Any]:
    """One evasion attack at one budget on the audited or a mitigated model."""
    inputs = ctx.step.inputs
    return _attack_record(ctx, inputs["target"], inputs["attack"], inputs["eps"], inputs.get("carry_from"))


def _attack_record(ctx: StepContext, target: str, attack_name: str, eps: float, carry_from: str | None = None) -> dict[str, Any]:
    """Run one attack on the evaluation rows; the record keeps per-row outcomes for the worst case.

    With ``carry_from`` (the same attack's step at the next smaller eps), the rows that
    step broke are carried with their examples and only the others are attacked, and the
    zero-budget check (the attack run at eps = 0 on the first :data:`EPS_ZERO_ROWS` rows
    must change no prediction) is that step's: it does not depend on the budget.
    """
    from advkit.attacks.evasion.sweep import carry_forward, load_rows, save_rows
    from advkit.attacks.sanity import check_eps_zero

    cfg = ctx.env.config
    model = _target_model(ctx, target)
    data = ctx.env.eval_data().head(cfg.evasion.limit)
    settings = {
        "steps": cfg.evasion.steps,
        "restarts": cfg.evasion.restarts,
        "max_queries": cfg.evasion.max_queries,
        "target_classes": cfg.evasion.target_classes,
    }
    attack = build_evasion(attack_name, threat_for(cfg, eps, attack_name), settings, strict=False)
    previous = None
    if carry_from is not None:
        before = ctx.result(carry_from)
        threat = threat_for(cfg, before["threat"]["eps"], attack_name)
        previous = load_rows(ctx.env.run_dir / before["adversarial"], attack_name, threat, data.y, model.num_classes)
    result = carry_forward(attack, model, data.x, data.y, previous, generator=ctx.generator, progress=ctx.env.progress)
    rows_file = f"artifacts/adversarial/{step_slug(ctx.step.id)}.npz"
    (ctx.env.run_dir / "artifacts" / "adversarial").mkdir(parents=True, exist_ok=True)
    save_rows(ctx.env.run_dir / rows_file, result)
    record = result.to_dict()
    record["adversarial"] = rows_file
    record.pop("seconds")  # wall times live in the report's timings only: numbers must not vary
    for part in record["params"].get("breakdown", []):
        part.pop("seconds", None)
    record["model"] = target
    if previous is not None and "eps_zero" in before:  # a property of the attack on this model, not of the budget: checked once per sweep
        record["eps_zero"] = before["eps_zero"]
    else:
        record["eps_zero"] = check_eps_zero(attack, model, data.x[:EPS_ZERO_ROWS], data.y[:EPS_ZERO_ROWS]).to_dict()
    # Per-row outcomes, so the report can count each row's worst case over attacks.
    record["per_row"] = {
        "clean_pred": result.clean_pred.cpu().tolist(),
        "adv_pred": result.adv_pred.cpu().tolist(),
        "success": [bool(v) for v in result.success.cpu().tolist()],
    }
    name = f"artifacts/examples/{step_slug(ctx.step.id)}.npz"
    (ctx.env.run_dir / "artifacts" / "examples").mkdir(parents=True, exist_ok=True)
    save_arrays(
        ctx.env.run_dir / name,
        x=data.x[:EXAMPLES].cpu().numpy(),
        x_adv=result.x_adv[:EXAMPLES].cpu().numpy(),
        y=data.y[:EXAMPLES].cpu().numpy(),
        clean_pred=result.clean_pred[:EXAMPLES].cpu().numpy(),
        adv_pred=result.adv_pred[:EXAMPLES].cpu().numpy(),
    )
    record["examples"] = name
    return record


def gradient_masking(ctx: StepContext) -> dict[str, Any]:
    """Escalate to a gradient-free attack when the white-box numbers cannot be trusted.

    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security"
    (ICML 2018) and AutoAttack's checks (Croce & Hein, ICML 2020): when input gradients
    are zero, NaN or masked, when the model outputs probabilities, or when a black-box
    attack of the list beats the strongest white-box one on the same rows, the audit runs
    Square (same norm and budget, ``evasion.max_queries`` per image) itself, and its rows
    enter the worst case.
    """
    from advkit.attacks.sanity import check_blackbox_vs_strongest, check_gradients, check_probability_outputs

    inputs = ctx.step.inputs
    target, eps = inputs["target"], inputs["eps"]
    records = [ctx.result(step_id) for step_id in inputs["evasion_steps"]]
    model = _target_model(ctx, target)
    data = ctx.env.eval_data().head(ctx.env.config.evasion.limit)
    checks = [check_gradients(model, data.x[:256], data.y[:256]), check_probability_outputs(model, data.x[:256])]
    checks += check_blackbox_vs_strongest(records)[1]
    white = [r for r in records if r["threat"]["knowledge"] == "white"]
    reasons = [f"{c.check}: {c.detail}" for c in checks if not c.ok]
    out: dict[str, Any] = {"model": target, "eps": eps, "checks": [c.to_dict() for c in checks], "reasons": reasons}
    if not reasons or not white:
        out.update({"escalated": False, "why_not": "the checks passed" if not reasons else "no white-box attack to doubt"})
        return out
    if any(r["attack"] == MASKING_ATTACK for r in records):
        out.update({"escalated": False, "why_not": f"{MASKING_ATTACK} is already in the attack list"})
        return out
    record = _attack_record(ctx, target, MASKING_ATTACK, eps)
    record["added_by"] = "gradient-masking check"
    out.update({"escalated": True, "attack": MASKING_ATTACK, "record": record})
    return out


def inspect(ctx: StepContext) -> dict[str, Any]:
    """Neural Cleanse (or K-Arm) on the audited model or on a model trained on poisoned data."""
    import warnings

    from advkit.defenses.backdoor.neural_cleanse import report_rows
    from advkit.registry import lookup

    target, method = ctx.step.inputs["target"], ctx.step.inputs.get("method", "neural-cleanse")
    model = _target_model(ctx, target)
    data = ctx.env.eval_data().head(ctx.step.inputs.get("limit"))
    epochs = ctx.step.inputs.get("epochs")
    detector = lookup(method, "inspection").factory(**({} if epochs is None else {"epochs": epochs}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = detector(model, data.x, data.y, generator=ctx.generator, progress=ctx.env.progress)
    triggers = report.details["triggers"]
    name = f"artifacts/triggers-{step_slug(target)}.npz"
    save_arrays(
        ctx.env.run_dir / name,
        mask=torch.stack([t.mask for t in triggers]).numpy(),
        pattern=torch.stack([t.pattern for t in triggers]).numpy(),
    )
    return {
        "method": method,
        "model": target,
        "classes": report_rows(report),
        "flagged": report.flagged_ids,
        "median_l1": report.details["median_l1"],
        "warnings": report.details["warnings"],
        "triggers": name,
    }


def defender_rows(rows: int, limit: int | None) -> int:
    """The clean rows a repair trains on: the first half of the evaluation rows, at most
    ``backdoor_defense.limit`` of them (the rows Neural Cleanse optimised on); the second
    half is held out to judge the repair."""
    half = rows // 2
    return min(half, limit or half)


def backdoor_mitigation(ctx: StepContext) -> dict[str, Any]:
    """Repair the poisoned model with the trigger Neural Cleanse reversed for the flagged class
    (or, fine-pruning and mode connectivity, with clean rows only: :mod:`advkit.audit.repair_steps`).

    The repair sees :func:`defender_rows` clean rows; its success and accuracy are judged
    on the held-out second half of the evaluation rows.
    """
    from advkit.attacks.poisoning import backdoor_success_rate
    from advkit.defenses.backdoor.mitigation import NeuronPruning, Unlearning
    from advkit.defenses.backdoor.neural_cleanse import ReversedTrigger

    inputs = ctx.step.inputs
    if inputs["mitigation"] in TRIGGER_FREE:
        return backdoor_repair(ctx, defender_rows(len(ctx.env.eval_data()), ctx.env.config.backdoor_defense.limit if ctx.env.config.backdoor_defense else None))
    inspected = ctx.result(inputs["inspect"])
    poison = ctx.result(inputs["poison"])
    scenario = scenario_of(ctx.env.plan_inputs(inputs["poison"]))
    attack = scenario_trigger(scenario)
    if not inspected["flagged"]:
        return {"mitigation": inputs["mitigation"], "applied": False, "reason": "Neural Cleanse flagged no class, so there is no trigger to repair with"}
    rows = {r["class"]: r for r in inspected["classes"]}
    target = max(inspected["flagged"], key=lambda c: rows[c]["anomaly_index"] or float("inf"))
    with np.load(ctx.env.run_dir / inspected["triggers"], allow_pickle=False) as arrays:
        trigger = ReversedTrigger(target, torch.from_numpy(arrays["mask"][target]), torch.from_numpy(arrays["pattern"][target]), float(rows[target]["score"]), float(rows[target]["trigger_success"]))
    model = ctx.env.trained_model(inputs["poison"])
    data = ctx.env.eval_data()
    half = len(data) // 2
    defender = defender_rows(len(data), ctx.env.config.backdoor_defense.limit if ctx.env.config.backdoor_defense else None)
    xd, yd, xe, ye = data.x[:defender], data.y[:defender], data.x[half:], data.y[half:]

    def real_asr(m: ModelHandle) -> float:
        return backdoor_success_rate(m, xe, ye, attack.trigger, scenario.target, scenario.mode)

    mitigation = Unlearning(seed=ctx.env.config.seed) if inputs["mitigation"] == "nc-unlearn" else NeuronPruning(seed=ctx.env.config.seed)
    outcome = mitigation(model, trigger, xd, yd, evaluate=real_asr)
    record = outcome.to_dict()
    record.update(
        {
            "applied": True,
            "repaired_class": target,
            "true_target": scenario.target,
            "held_out_clean_accuracy_before": float((model.predict(xe) == ye).float().mean()),
            "held_out_clean_accuracy_after": float((outcome.model.predict(xe) == ye).float().mean()),
            "poisoned_model": poison["artifact"],
        }
    )
    return record


def certification_rows(ctx: StepContext) -> dict[str, Any]:
    """CERTIFY one shard of rows; each row draws its noise from its own seed (:meth:`StepContext.row_seed`)."""
    from advkit.certify.smoothing import Smoothed, certify_rows

    cfg = ctx.env.config.certification
    assert cfg is not None and ctx.shard is not None
    model = _target_model(ctx, ctx.step.inputs["target"])
    x = ctx.env.eval_data().x
    prediction, radius = certify_rows(Smoothed(model, cfg.sigma), x, ctx.shard, cfg.n0, cfg.n, cfg.alpha, ctx.row_seed, progress=ctx.env.progress)
    return {"prediction": prediction.tolist(), "radius": radius.tolist()}


def certification(ctx: StepContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Randomized-smoothing CERTIFY (Cohen 2019) of the audited or the certified-trained model: the shards merged."""
    from scipy.stats import norm

    from advkit.certify.smoothing import CertResult

    cfg = ctx.env.config.certification
    assert cfg is not None
    target = ctx.step.inputs["target"]
    model = _target_model(ctx, target)
    data = ctx.env.eval_data().head(cfg.limit)
    prediction = torch.tensor([p for part in parts for p in part["prediction"]], dtype=torch.long)
    radius = torch.tensor([r for part in parts for r in part["radius"]], dtype=torch.float32)
    result = CertResult(prediction, radius, data.y.cpu(), cfg.sigma, cfg.n, cfg.n0, cfg.alpha, 0.0)
    record = result.to_dict((0.0, 0.25, 0.5, 0.75, 1.0))
    record.pop("seconds")
    record["model"] = target
    record["rows"] = int(data.y.shape[0])
    record["clean_accuracy"] = float((model.predict(data.x) == data.y).float().mean())
    record["max_radius"] = cfg.sigma * float(norm.ppf(cfg.alpha ** (1 / cfg.n)))  # all n votes on one class
    return record


@dataclass(frozen=True)
class StepKind:
    """How the runner runs a kind of step: ``run`` per task; with ``merge``, ``run`` is per shard."""

    run: Callable[[StepContext], dict[str, Any]]
    merge: Callable[[StepContext, list[dict[str, Any]]], dict[str, Any]] | None = None
    needs_train: bool = False


STEP_KINDS: dict[str, StepKind] = {
    "provenance": StepKind(provenance),
    "evasion": StepKind(evasion),
    "gradient-masking": StepKind(gradient_masking),
    "inspect": StepKind(inspect),
    "adversarial-training": StepKind(adversarial_training, needs_train=True),
    "poisoning": StepKind(poisoning, needs_train=True),
    "backdoor-mitigation": StepKind(backdoor_mitigation),
    "certified-training": StepKind(certified_training, needs_train=True),
    "denoiser-training": StepKind(denoiser_training, needs_train=True),
    "certification": StepKind(certification_rows, merge=certification),
    "input-defense": StepKind(input_defense, needs_train=True),
    "data-defense": StepKind(data_defense, needs_train=True),
}
