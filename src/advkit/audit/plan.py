"""The audit's plan: which steps run, on what inputs, after which others.

A step is data: an id, a kind (the name of its function in :mod:`advkit.audit.steps`),
its inputs (the config slice it reads) and the ids it depends on. The runner hashes
each step's inputs with its dependencies' hashes, so a changed config or model
invalidates exactly the steps that read it. A step kind with a row-wise part (CERTIFY)
is split into shards of rows; shards never enter the hash, because every row seeds
its own noise and the numbers do not depend on the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advkit.audit.config import ACCURACY_ATTACKS, TARGETED_ATTACKS, TRIGGER_ATTACKS, TRIGGER_FREE_MITIGATIONS, AuditConfig, PoisoningConfig
from advkit.core import Threat

MASKING_ATTACK = "square"  # the gradient-free attack the gradient-masking check adds
TRAINING_KINDS = ("adversarial-training", "poisoning", "certified-training", "denoiser-training")
DENOISED = "denoised"  # the id of the denoiser trained in front of the frozen model (denoised smoothing)


@dataclass
class Step:
    id: str
    kind: str
    inputs: dict[str, Any]
    depends: list[str] = field(default_factory=list)
    shards: list[tuple[int, int]] | None = None  # row ranges of a sharded step
    hash: str = ""

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "inputs": self.inputs, "depends": list(self.depends)}


def step_slug(step_id: str) -> str:
    """A step id as a file name."""
    return step_id.replace("/", "__").replace("@", "_at_")


def build_plan(config: AuditConfig, *, eval_rows: int, shards_per_step: int = 1, fine_tune: bool = False) -> list[Step]:
    """Every step of the audit, in an order where dependencies come first.

    With ``fine_tune`` (:func:`advkit.audit.config.fine_tunes`) the mitigated and the
    poisoned models are fine-tuned copies of the given model: their training steps carry
    ``training: fine-tune`` and the fine-tuning settings, and the mitigated models' ids
    are ``fine-tuned/<defense>``; otherwise the architecture is retrained (``train/...``).
    Denoised smoothing (id ``denoised``) runs when asked, and by default when fine-tuning.
    """
    how = _training_inputs(config, fine_tune)
    plan: list[Step] = [Step("provenance", "provenance", {})]
    plan += evasion_steps(config, "model", ["provenance"])
    if config.backdoor_defense is not None:
        plan.append(Step("inspect/model", "inspect", _inspect_inputs(config, "model"), ["provenance"]))
    if config.adversarial_training is not None:
        at = config.adversarial_training
        trained = f"{'fine-tuned' if fine_tune else 'train'}/{at.defense}"
        plan.append(Step(trained, "adversarial-training", {**at.model_dump(), **how}, ["provenance"]))
        plan += evasion_steps(config, trained, [trained])
    for index, scenario in enumerate(config.poisoning):
        plan += poisoning_steps(config, f"{index}-{scenario.attack}", scenario, how)
    if config.input_defense is not None:
        plan.append(Step(f"defend/{config.input_defense.defense}", "input-defense", {**config.input_defense.model_dump(), "evasion": config.evasion.model_dump()}, ["provenance"]))
    if config.certification is not None:
        certification = config.certification
        rows = min(eval_rows, certification.limit or eval_rows)
        shards = row_shards(rows, shards_per_step)
        settings = certification.model_dump()
        plan.append(Step("certify/model", "certification", {"target": "model", **settings}, ["provenance"], shards))
        if certification.training is not None:
            trained = f"fine-tuned/{certification.training}" if fine_tune else f"train/certified-{certification.training}"
            label = f"fine-tuned-{certification.training}" if fine_tune else f"certified-{certification.training}"
            plan.append(Step(trained, "certified-training", {**settings, **how}, ["provenance"]))
            plan.append(Step(f"certify/{label}", "certification", {"target": trained, **settings}, [trained], shards))
        if certification.denoised or (certification.denoised is None and fine_tune):
            plan.append(Step(DENOISED, "denoiser-training", settings, ["provenance"]))
            plan.append(Step(f"certify/{DENOISED}", "certification", {"target": DENOISED, **settings}, [DENOISED], shards))
    return plan


def _inspect_inputs(config: AuditConfig, target: str) -> dict[str, Any]:
    """Neural Cleanse on ``target``: its epochs, and its rows when limited (kept out of the inputs, and the hash, when not)."""
    defense = config.backdoor_defense
    assert defense is not None
    epochs = defense.epochs if defense.inspect == "neural-cleanse" or "epochs" in defense.model_fields_set else None
    inputs: dict[str, Any] = {"target": target, "epochs": epochs}
    if defense.inspect != "neural-cleanse":  # kept out of the inputs (and the hash) for the default
        inputs["method"] = defense.inspect
    if defense.limit is not None:
        inputs["limit"] = defense.limit
    return inputs


def _training_inputs(config: AuditConfig, fine_tune: bool) -> dict[str, Any]:
    """What a training step adds to its inputs: how it trains (and, fine-tuning, with what)."""
    if not fine_tune:
        return {"training": "retrain"}
    return {"training": "fine-tune", "fine_tune": config.fine_tune.model_dump()}


def scenario_of(inputs: dict[str, Any]) -> PoisoningConfig:
    """The poisoning scenario of a poisoning step's inputs (without how it trains)."""
    return PoisoningConfig.model_validate({k: v for k, v in inputs.items() if k not in ("training", "fine_tune")})


def evasion_steps(config: AuditConfig, target: str, depends: list[str]) -> list[Step]:
    """Every (attack, eps) step on one model, then per eps the gradient-masking check over them."""
    label = "model" if target == "model" else target.split("/", 1)[1]
    steps: list[Step] = []
    for attack in config.evasion.attacks:
        previous: str | None = None  # with carry, each eps starts from the rows the smaller one left standing
        for eps in config.evasion.eps:
            step_id = f"evasion/{label}/{attack}@{eps:g}"
            inputs = {"attack": attack, "eps": eps, "target": target, "carry_from": previous}
            steps.append(Step(step_id, "evasion", inputs, list(depends) + ([previous] if previous else [])))
            previous = step_id if config.evasion.carry else None
    for eps in config.evasion.eps:
        evasion_ids = [f"evasion/{label}/{attack}@{eps:g}" for attack in config.evasion.attacks]
        inputs = {"target": target, "eps": eps, "evasion_steps": evasion_ids, "attack": MASKING_ATTACK}
        steps.append(Step(f"masking/{label}@{eps:g}", "gradient-masking", inputs, evasion_ids))
    return steps


def poisoning_steps(config: AuditConfig, name: str, scenario: PoisoningConfig, how: dict[str, Any] | None = None) -> list[Step]:
    """Poison and train (or fine-tune, per ``how``); then, with a backdoor defense, inspect and repair."""
    steps = [Step(f"poison/{name}", "poisoning", {**scenario.model_dump(), **(how or {"training": "retrain"})}, ["provenance"])]
    if config.data_defense is not None and scenario.attack in TRIGGER_ATTACKS:  # the poisoned rows are found (or not) before training
        for scanner in config.data_defense.scanners:
            inputs = {"scanner": scanner, "poison": f"poison/{name}", **(how or {"training": "retrain"})}
            steps.append(Step(f"scan/{name}/{scanner}", "data-defense", inputs, [f"poison/{name}"]))
    defense = config.backdoor_defense
    if defense is None or scenario.attack in ACCURACY_ATTACKS or scenario.attack in TARGETED_ATTACKS:  # no trigger to find or repair
        return steps
    steps.append(Step(f"inspect/{name}", "inspect", _inspect_inputs(config, f"poison/{name}"), [f"poison/{name}"]))
    if scenario.attack == "trojannet":  # a wrapper around the untouched model: found or not, there is nothing to repair
        return steps
    for mitigation in defense.mitigations:
        if mitigation in TRIGGER_FREE_MITIGATIONS:  # clean rows only: no need to wait for Neural Cleanse
            inputs = {"mitigation": mitigation, "poison": f"poison/{name}"}
            steps.append(Step(f"mitigate/{name}/{mitigation}", "backdoor-mitigation", inputs, [f"poison/{name}"]))
            continue
        inputs = {"mitigation": mitigation, "poison": f"poison/{name}", "inspect": f"inspect/{name}"}
        steps.append(Step(f"mitigate/{name}/{mitigation}", "backdoor-mitigation", inputs, [f"poison/{name}", f"inspect/{name}"]))
    return steps


def row_shards(rows: int, count: int) -> list[tuple[int, int]]:
    """``rows`` split into at most ``count`` contiguous, near-equal ranges."""
    count = max(1, min(count, rows))
    size = -(-rows // count) if rows else 1
    return [(start, min(rows, start + size)) for start in range(0, rows, size)] or [(0, 0)]


def closure(plan: list[Step], step_id: str) -> list[str]:
    """The ids ``step_id`` depends on, directly or through others."""
    by_id = {step.id: step for step in plan}
    seen: list[str] = []
    stack = list(by_id[step_id].depends)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack.extend(by_id[current].depends)
    return seen


def threat_for(config: AuditConfig, eps: float, attack: str | None = None) -> Threat:
    """The audit's threat at one budget; the knowledge level is what ``attack`` needs (white by default)."""
    from advkit.registry import lookup

    knowledge = lookup(attack, "evasion").knowledge if attack else "white"
    return Threat(norm=config.evasion.norm, eps=eps, goal=config.evasion.goal, knowledge=knowledge)


def scenario_trigger(scenario: PoisoningConfig) -> Any:
    """The poisoning attack a scenario describes (BadNets patch, blend, or the clean-label backdoor)."""
    from advkit.attacks.poisoning import BadNets, Blend, BlendTrigger, CleanLabel, PatchTrigger

    t = scenario.trigger
    if scenario.attack in ("badnets", "clean-label"):
        position: Any = tuple(t.position) if isinstance(t.position, list) else t.position
        values = tuple(t.values) if t.values is not None else None
        patch = PatchTrigger(size=t.size, position=position, pattern=t.pattern, values=values)
        if scenario.attack == "clean-label":
            budget = {} if scenario.eps is None else {"eps": scenario.eps}  # else the attack's default
            return CleanLabel(target=scenario.target, rate=scenario.rate, trigger=patch, **budget)
        return BadNets(patch, target=scenario.target, rate=scenario.rate, mode=scenario.mode)
    return Blend(BlendTrigger(alpha=t.alpha), target=scenario.target, rate=scenario.rate, mode=scenario.mode)
