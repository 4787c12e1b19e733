"""The audit's findings: what a reviewer should know, each with a severity and MITRE ATLAS ids.

Findings are decided from ``report.json``'s content alone (no model, no data), so a report
rebuilt from JSON gets the same findings. Evasion findings read the per-row worst case
(``evasion_worst``), never the single strongest attack; a gradient-masking escalation
(Athalye, Carlini & Wagner, ICML 2018; Croce & Hein, ICML 2020) is reported with the gap
it revealed.
"""

from __future__ import annotations

from typing import Any

from advkit.audit.render.common import budget
from advkit.registry import atlas_ids

SEVERITIES = ("critical", "high", "medium", "low", "info")


PLANTED_MARGIN = 0.1  # a backdoor counts as planted when its trigger works on at least 10 points more inputs than on the audited model

def _severity_for_budget(eps: float, norm: str) -> str:
    """How bad it is that accuracy halves at this budget (pixel range [0, 1])."""
    small, medium = (8 / 255, 0.1) if norm == "linf" else (0.5, 1.5)
    if eps <= small:
        return "critical"
    if eps <= medium:
        return "high"
    return "medium"


def inspector(inspection: dict[str, Any]) -> str:
    """The trigger reverse engineering that made an inspection record, by its display name."""
    return {"neural-cleanse": "Neural Cleanse", "k-arm": "K-Arm"}.get(inspection.get("method", "neural-cleanse"), inspection.get("method", ""))


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each finding with severity, title, detail and ATLAS ids; worst first (one function per section)."""
    out = _reliability_findings(report)
    out += _audited_model_backdoor_findings(report["backdoor"]["audited_model"])
    out += _evasion_findings(report)
    for scenario in report["backdoor"]["scenarios"]:
        if scenario["attack"] == "trojannet":
            out += _trojannet_findings(scenario, report["backdoor"]["audited_model"])
        else:
            out += _poisoning_findings(scenario)
    for scenario in report.get("poisoning", []):
        out += _accuracy_poisoning_findings(scenario)
    out += _certification_findings(report.get("certification", []))
    out += _input_defense_findings(report.get("input_defense"))
    return sorted(out, key=lambda f: SEVERITIES.index(f["severity"]))


def _reliability_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The reliability checks of the provenance step, and eps=0 checks of every attack."""
    out: list[dict[str, Any]] = []
    sanity = report["provenance"].get("sanity", {})
    for reason in sanity.get("reasons", []):
        out.append({"severity": "high", "title": "Results may be unreliable", "detail": reason, "atlas": []})
    for record in report["evasion"]:
        zero = record.get("eps_zero", {})
        if zero and not zero.get("ok", True):
            out.append({"severity": "high", "title": f"{record['attack']}: eps=0 changes accuracy", "detail": zero["detail"], "atlas": []})
    return out


def _audited_model_backdoor_findings(audited: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Neural Cleanse on the audited model itself."""
    if audited is None:
        return []
    if audited["flagged"]:
        flagged = ", ".join(str(c) for c in audited["flagged"])
        return [{
            "severity": "critical",
            "title": f"Backdoor suspected in the audited model (target class {flagged})",
            "detail": f"{inspector(audited)} found an abnormally small trigger that sends clean inputs to this class (anomaly index > 2).",
            "atlas": atlas_ids("badnets"),
        }]
    return [{
        "severity": "info",
        "title": "No backdoor found in the audited model",
        "detail": f"{inspector(audited)} found no class with an abnormally small trigger; it does not rule out large or input-specific triggers.",
        "atlas": atlas_ids("neural-cleanse"),
    }]


def _accuracy_poisoning_findings(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """Label flipping or Steinhardt et al.'s poisons: the clean accuracy they cost; Poison Frogs: the targets it flips."""
    if scenario.get("effect") == "targeted":
        rate, targets, params = scenario["success_rate"], scenario["targets"], scenario["params"]
        per_target = targets[0]["poisons"] if targets and "poisons" in targets[0] else 1
        how = {"transfer": "transfer learning", "end-to-end": "the whole network fine-tuned"}.get(params.get("setting"), "a victim retrained from scratch")
        poisons = "One clean-label poison" if per_target == 1 else f"{per_target} clean-label poisons"
        mean_l2 = sum(t["mean_l2_perturbation"] for t in targets) / len(targets)
        detail = f"the poisons keep their labels; mean L2 change {mean_l2:.2f}"
        if scenario["attack"] == "poison-frogs":
            detail += " (feature collision at the paper's beta: the poisons may look like their target)"
        else:
            detail += f" within Linf {params['eps']:.3g}"
        return [{
            "severity": "high" if rate >= 0.5 else "medium" if rate > 0 else "info",
            "title": (
                f"{poisons} per target ({scenario['attack']}, {how}) makes the poisoned model misclassify "
                f"{sum(t['success'] for t in targets)} of {len(targets)} chosen inputs"
            ),
            "detail": detail,
            "atlas": scenario["atlas"],
        }]
    drop = scenario["accuracy_drop"]
    severity = "high" if drop >= 0.10 else "medium" if drop >= 0.03 else "low" if drop >= 0.01 else "info"
    how = f" ({scenario['params']['method']} flips)" if scenario["attack"] == "labelflip" else ""
    detail = f"{scenario['poisoned_rows']} poisoned of {scenario['train_rows']} training rows; the audited model scores {scenario['reference_clean_accuracy']:.1%} on the same rows"
    sanitized = scenario.get("sanitized")
    if sanitized:
        detail += f"; sphere and slab sanitisation removed {sanitized['rows_removed']} rows and kept {sanitized['poisons_kept']} of {sanitized['poisons']} poisons"
    return [{
        "severity": severity,
        "title": (
            f"Poisoning {scenario['params']['rate']:.0%} of the training data with {scenario['attack']}{how} takes clean accuracy "
            f"from {scenario['reference_clean_accuracy']:.1%} to {scenario['clean_accuracy']:.1%}"
        ),
        "detail": detail,
        "atlas": scenario["atlas"],
    }]


def _trojannet_findings(scenario: dict[str, Any], audited: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A TrojanNet wrapper: how closely it matches the audited model, how its triggers work, what Neural Cleanse sees.

    A target class Neural Cleanse flags on the wrapper counts as found only when it does
    not flag it on the audited model too (with an inspection of the audited model).
    """
    targets = scenario["params"]["targets"]
    rates = ", ".join(f"{t}: {scenario['attack_success_per_target'][str(t)] or 0:.1%}" for t in targets)
    out = [{
        "severity": "high" if scenario["attack_success_rate"] >= 0.9 else "medium",
        "title": (
            f"A TrojanNet wrapper around the audited model keeps clean accuracy {scenario['clean_accuracy']:.1%} "
            f"(model {scenario['reference_clean_accuracy']:.1%}) and obeys its triggers on {scenario['attack_success_rate']:.1%} of inputs"
        ),
        "detail": f"per target class {rates}; predictions agree with the model on {scenario['prediction_agreement']:.1%} of rows; no training data was touched",
        "atlas": scenario["atlas"],
    }]
    inspection = scenario.get("inspection")
    if inspection is not None:
        already = set(audited["flagged"]) if audited is not None else set()
        caught = sorted(set(targets) & set(inspection["flagged"]) - already)
        note = f"; on the audited model too: {sorted(already & set(inspection['flagged']))}" if already & set(inspection["flagged"]) else ""
        out.append({
            "severity": "info" if caught else "medium",
            "title": f"{inspector(inspection)} {'flags' if caught else 'misses'} the TrojanNet wrapper (targets {targets}; flagged {inspection['flagged'] or 'nothing'}{note})",
            "detail": "the wrapper's triggers are 4x4 pixel patterns read by a separate network; compare the model's graph with its reference to see the extra branch",
            "atlas": atlas_ids("neural-cleanse"),
        })
    return out


def _poisoning_findings(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """One poisoning scenario: the planted backdoor, whether Neural Cleanse finds it, each repair."""
    rate = scenario["params"]["rate"]
    success = scenario["attack_success_rate"]
    baseline = scenario["audited_model_trigger_success"]
    planted = success >= baseline + PLANTED_MARGIN
    detail = f"clean accuracy of the poisoned model stays {scenario['clean_accuracy']:.1%}; the audited model obeys the same trigger on {baseline:.1%}"
    if planted:
        title = f"Poisoning {rate:.0%} of the training data with {scenario['attack']} plants a backdoor that works on {success:.1%} of inputs"
    else:
        title = f"Poisoning {rate:.0%} of the training data with {scenario['attack']} planted no backdoor: the trigger works on {success:.1%} of inputs"
        trained = scenario.get("train_rows_used")
        detail += f" (trained on {trained} rows for {scenario.get('epochs')} epoch(s): too little training to learn the trigger)" if trained else ""
    out: list[dict[str, Any]] = [{
        "severity": "high" if success >= 0.9 else "medium" if success >= 0.5 else "low",
        "title": title,
        "detail": detail,
        "atlas": scenario["atlas"],
    }]
    inspection = scenario.get("inspection")
    target = scenario["params"]["target"]
    if inspection is not None:
        caught = target in inspection["flagged"]
        if planted or caught:
            verdict = f"{inspector(inspection)} {'finds' if caught else 'misses'} the planted backdoor"
        else:
            verdict = f"{inspector(inspection)} flags nothing, as it should: no backdoor took"
        out.append({
            "severity": "info" if caught or not planted else "medium",
            "title": f"{verdict} (target {target}; flagged {inspection['flagged'] or 'nothing'})",
            "detail": "model validation by trigger reverse engineering",
            "atlas": atlas_ids("neural-cleanse"),
        })
    for scan in scenario.get("data_defenses", []):
        f1 = "-" if scan["f1"] is None else f"{scan['f1']:.2f}"
        out.append({
            "severity": "info" if scan["attack_success_rate_after"] < 0.1 else "medium",
            "title": (
                f"{scan['scanner']} removes {scan['poisons_removed']} of {scan['poisons']} poisoned rows (F1 {f1}); retrained, "
                f"backdoor success {scan['attack_success_rate_before']:.1%} -> {scan['attack_success_rate_after']:.1%}"
            ),
            "detail": (
                f"{scan['clean_rows_removed']} clean rows lost of {scan['rows']}; clean accuracy "
                f"{scan['clean_accuracy_before']:.1%} -> {scan['clean_accuracy_after']:.1%}"
            ),
            "atlas": scan["atlas"],
        })
    for mitigation in scenario["mitigations"]:
        if not mitigation.get("applied"):
            out.append({"severity": "medium", "title": f"{mitigation['mitigation']} not applied", "detail": mitigation["reason"], "atlas": mitigation["atlas"]})
            continue
        out.append({
            "severity": "info",
            "title": (
                f"{mitigation['mitigation']} brings backdoor success from {mitigation['attack_success_rate_before']:.1%} "
                f"to {mitigation['attack_success_rate_after']:.1%}"
            ),
            "detail": f"held-out clean accuracy {mitigation['held_out_clean_accuracy_before']:.1%} -> {mitigation['held_out_clean_accuracy_after']:.1%}",
            "atlas": mitigation["atlas"],
        })
    return out


def _atlas_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ATLAS ids of several evasion records, each once."""
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        for entry in record.get("atlas", []):
            seen.setdefault(entry["id"], entry)
    return list(seen.values())


def _worst_label(worst: dict[str, Any]) -> str:
    """How a finding's title names the worst case ("The worst case of fgsm, pgd" or "PGD")."""
    return f"The worst case of {', '.join(worst['attacks'])}" if len(worst["attacks"]) > 1 else worst["attacks"][0].upper()


def _evasion_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings on the per-row worst case per model and budget, gradient masking, and mitigation gains."""
    out: list[dict[str, Any]] = []
    worst_rows = report.get("evasion_worst", [])
    records = report["evasion"]

    def at(model_id: str, eps: float) -> list[dict[str, Any]]:
        return [r for r in records if r["model"] == model_id and r["threat"]["eps"] == eps]

    labels = {m["id"]: m["label"] for m in report["models"]}
    for model in report["models"]:
        curve = sorted((w for w in worst_rows if w["model"] == model["id"]), key=lambda w: w["eps"])
        if not curve:
            continue
        norm = curve[0]["norm"]
        broken = next((w for w in curve if w["adversarial_accuracy"] < 0.5 * w["clean_accuracy"]), None)
        if broken is not None:
            severity = _severity_for_budget(broken["eps"], norm) if model["id"] == "model" else "info"
            rate = broken["attack_success_rate"]
            out.append({
                "severity": severity,
                "title": (
                    f"{_worst_label(broken)} ({norm}) at eps={budget(broken['eps'])} cuts accuracy of the {model['label']} "
                    f"from {broken['clean_accuracy']:.1%} to {broken['adversarial_accuracy']:.1%}"
                ),
                "detail": f"attack success rate {rate:.1%} of correctly classified rows; a row counts as robust only if every attack left it standing",
                "atlas": _atlas_of(at(model["id"], broken["eps"])),
            })
        elif model["id"] == "model":
            last = curve[-1]
            out.append({
                "severity": "low",
                "title": f"{_worst_label(last)} ({norm}) keeps accuracy above half up to eps={budget(last['eps'])} ({last['adversarial_accuracy']:.1%})",
                "detail": "robust within the audited budgets",
                "atlas": _atlas_of(at(model["id"], last["eps"])),
            })
    for check in report.get("gradient_masking", []):
        if not check.get("escalated"):
            continue
        model_id, eps = check["model"], check["eps"]
        white = [r for r in at(model_id, eps) if r["threat"]["knowledge"] == "white"]
        worst = next((w for w in worst_rows if w["model"] == model_id and w["eps"] == eps), None)
        if not white or worst is None:
            continue
        white_best = min(r["adversarial_accuracy"] for r in white)
        gap = white_best - worst["adversarial_accuracy"]
        far = gap >= 0.1 or worst["adversarial_accuracy"] < 0.5 * white_best
        out.append({
            "severity": "high" if far else "medium",
            "title": (
                f"Gradient masking suspected on the {labels.get(model_id, model_id)} at eps={budget(eps)}: white-box attacks leave "
                f"{white_best:.1%} accuracy, {check['attack']} (black-box) brings the worst case to {worst['adversarial_accuracy']:.1%}"
            ),
            "detail": "; ".join(check["reasons"]) + f". The audit added {check['attack']} itself; the worst case counts it.",
            "atlas": _atlas_of(at(model_id, eps)),
        })
    base = {w["eps"]: w for w in worst_rows if w["model"] == "model"}
    for model in report["models"][1:]:
        hardened = {w["eps"]: w for w in worst_rows if w["model"] == model["id"]}
        gains = [(hardened[e]["adversarial_accuracy"] - base[e]["adversarial_accuracy"], e) for e in hardened if e in base]
        if gains:
            _, eps = max(gains)
            before, after = base[eps], hardened[eps]
            out.append({
                "severity": "info",
                "title": (
                    f"Mitigation {model['label']}: worst-case accuracy at eps={budget(eps)} rises from "
                    f"{before['adversarial_accuracy']:.1%} to {after['adversarial_accuracy']:.1%} (every attack, per row)"
                ),
                "detail": f"clean accuracy {before['clean_accuracy']:.1%} -> {after['clean_accuracy']:.1%}",
                "atlas": atlas_ids(model["id"].split("/")[-1]),
            })
    return out


def _certification_findings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How far the audited model's predictions are provably stable, and what certified training adds."""
    out: list[dict[str, Any]] = []
    audited = next((r for r in records if r["model"] == "model"), None)
    if audited is None:
        return out
    at = audited["certified_accuracy"]
    severity = "medium" if at["0.25"] < 0.5 * audited["clean_accuracy"] else "low"
    out.append({
        "severity": severity,
        "title": (
            f"Randomized smoothing (sigma={audited['sigma']:g}) certifies {at['0.25']:.1%} of rows at L2 radius 0.25 "
            f"and {at['0.5']:.1%} at 0.5 (average certified radius {audited['acr']:.3f})"
        ),
        "detail": f"base accuracy {audited['clean_accuracy']:.1%}; smoothed classifier abstains on {audited['abstain_rate']:.1%}; n={audited['n']} caps the radius at {audited['max_radius']:.2f}",
        "atlas": audited["atlas"],
    })
    for record in records:
        if record["model"] == "model":
            continue
        out.append({
            "severity": "info",
            "title": f"Mitigation {record['label']}: average certified radius {audited['acr']:.3f} -> {record['acr']:.3f}",
            "detail": f"certified accuracy at 0.25: {at['0.25']:.1%} -> {record['certified_accuracy']['0.25']:.1%}; base accuracy {record['clean_accuracy']:.1%}",
            "atlas": record["atlas"],
        })
    return out


def _input_defense_findings(defense: dict[str, Any] | None) -> list[dict[str, Any]]:
    """MagNet: what it catches from an attacker who ignores it, and what an adaptive attacker still gets through."""
    if not defense:
        return []
    out = []
    for a in defense["attacks"]:
        oblivious, adaptive = a.get("oblivious"), a.get("adaptive_detector_aware") or a.get("adaptive")
        if oblivious is None or adaptive is None:
            continue
        success = adaptive["attack_success"]
        out.append({
            "severity": "high" if success >= 0.5 else "medium" if success >= 0.1 else "info",
            "title": (
                f"MagNet catches {oblivious['detection_rate']:.0%} of {a['attack']} eps={a['eps']:g} examples made without it, "
                f"but an adaptive attacker gets {success:.0%} of inputs through misclassified"
            ),
            "detail": (
                f"clean rows rejected {defense['clean']['false_positive_rate']:.1%} (target {defense['fpr_target']:.0%}, thresholds on "
                f"{defense['calibration_rows']} other rows); {adaptive.get('method', 'adaptive')}"
            ),
            "atlas": defense["atlas"],
        })
    return out
