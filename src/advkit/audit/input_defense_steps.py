"""The audit's input-defense step: MagNet in front of the audited model, attacked with the audit's evasion attacks.

Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017;
the adaptive attacks after Athalye, Carlini & Wagner, ICML 2018 (BPDA) and Carlini &
Wagner 2017 ("MagNet and efficient defenses ... are not robust"). The autoencoders
train on the train split (no labels); the detectors' thresholds are set on the first
half of the evaluation rows, and every evasion attack and eps of the audit runs on the
second half, so the false-positive rate reported is held out.
"""

from __future__ import annotations

from typing import Any

from advkit.audit.plan import threat_for
from advkit.audit.workspace import StepContext


def input_defense(ctx: StepContext) -> dict[str, Any]:
    """Fit MagNet, save it under ``artifacts/magnet``, attack the defended pipeline every way."""
    from advkit.defenses.input.magnet import MagNet
    from advkit.defenses.input.pipeline import attack_defended
    from advkit.registry import build_evasion

    cfg = ctx.env.config.input_defense
    assert cfg is not None
    model, data = ctx.env.model(), ctx.env.eval_data()
    half = len(data) // 2
    defense = MagNet(steps=cfg.steps).fit(model, ctx.env.train_data().x, data.x[:half], fpr=cfg.fpr, generator=ctx.generator, progress=ctx.env.progress)
    folder = ctx.artifact("magnet")
    defense.save(folder)
    x, y = data.x[half:], data.y[half:]
    evasion = ctx.env.config.evasion
    settings = {"steps": evasion.steps, "restarts": evasion.restarts, "max_queries": evasion.max_queries, "target_classes": evasion.target_classes}
    attacks, figures = [], {}
    for name in evasion.attacks:
        for eps in evasion.eps:
            attack = build_evasion(name, threat_for(ctx.env.config, eps, name), settings, strict=False)
            figures = attack_defended(attack, model, defense, x, y, ctx.generator)
            ways = {way: _headline(value) for way, value in figures.items() if way not in ("clean", "thresholds", "detectors", "false_positive_rate_target", "n", "defense")}
            attacks.append({"attack": name, "eps": eps, **ways})
    return {
        "defense": cfg.defense, "artifact": ctx.relative(folder), "fpr_target": cfg.fpr, "calibration_rows": half, "rows": int(y.shape[0]),
        "clean": figures["clean"], "thresholds": figures.get("thresholds"), "detectors": figures.get("detectors"), "attacks": attacks,
    }


def _headline(way: dict[str, Any] | None) -> dict[str, Any] | None:
    """One way's figures without the attack's own per-row and per-class lists."""
    if way is None:
        return None
    keep = ("method", "detection_rate", "attack_success", "accuracy_after_reform", "accuracy_after_reform_of_accepted", "accuracy_without_defense",
            "detection_rate_of_successful_examples", "detection_rate_by_detector")
    return {k: way.get(k) for k in keep if k in way}


__all__ = ["input_defense"]
