"""The audit report: ``report.json`` (versioned schema), built from a run's record; its views are in ``render/``.

``report.json`` holds numbers only, except ``timings`` (wall seconds per step) and
``environment``; two runs with the same seed differ in nothing else. The HTML is
self-contained (plots inline as PNG) and rendered by jinja2 with autoescaping, so
nothing from a config, a file name or a class name can inject markup.
"""

from __future__ import annotations

import platform
from types import SimpleNamespace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from advkit import __version__
from advkit.audit.findings import findings
from advkit.audit.plan import DENOISED
from advkit.audit.render.common import budget
from advkit.errors import AdvkitError
from advkit.registry import atlas_ids

if TYPE_CHECKING:
    from advkit.audit.record import RunRecord

SCHEMA = "advkit.audit"
SCHEMA_VERSION = 1


def build_report(run: RunRecord) -> dict[str, Any]:
    """Assemble the report from a finished run's record, in plan order."""
    results = run.results
    plan = [SimpleNamespace(**step) for step in run.steps]
    models = [{"id": "model", "label": f"audited model ({run.config['model']})", "clean_accuracy": _clean_accuracy(results)}]
    for step in plan:
        if step.kind == "adversarial-training":
            r = results[step.id]
            how = "fine-tuned" if r.get("training") == "fine-tune" else "mitigated"
            models.append({"id": step.id, "label": f"{r['defense']} eps={budget(r['eps'])} ({how})", "clean_accuracy": r["clean_accuracy"], "artifact": r["artifact"]})
        elif step.kind == "denoiser-training":
            r = results[step.id]
            models.append({"id": step.id, "label": f"denoiser sigma={r['sigma']:g} in front of the frozen model (denoised smoothing)", "clean_accuracy": r["clean_accuracy"], "artifact": r["artifact"]})
    evasion, per_row = [], []
    masking = []
    for step in plan:
        if step.kind == "gradient-masking":
            check = {k: v for k, v in results[step.id].items() if k != "record"}
            check["step"] = step.id
            masking.append(check)
        record = results[step.id] if step.kind == "evasion" else results[step.id].get("record") if step.kind == "gradient-masking" else None
        if record is not None:
            record = dict(record)
            per_row.append(record.pop("per_row", None))
            record["step"] = step.id
            record["atlas"] = atlas_ids(record["attack"])
            evasion.append(record)
    scenarios = []
    accuracy_poisoning = []  # label flipping, Steinhardt et al. (the accuracy they cost), Poison Frogs (targets flipped): no trigger
    for step in plan:
        if step.kind == "poisoning" and results[step.id].get("effect") in ("accuracy", "targeted"):
            accuracy_poisoning.append({"id": step.id, **results[step.id], "atlas": atlas_ids(results[step.id]["attack"])})
        elif step.kind == "poisoning":
            name = step.id.split("/", 1)[1]
            scenario = {"id": step.id, **results[step.id], "atlas": atlas_ids(results[step.id]["attack"])}
            scenario["inspection"] = results.get(f"inspect/{name}")
            scenario["data_defenses"] = [
                {**results[s.id], "atlas": atlas_ids(s.inputs["scanner"])} for s in plan if s.kind == "data-defense" and s.inputs["poison"] == step.id
            ]
            scenario["mitigations"] = [
                {**results[s.id], "atlas": atlas_ids(s.inputs["mitigation"])} for s in plan if s.kind == "backdoor-mitigation" and s.inputs["poison"] == step.id
            ]
            scenarios.append(scenario)
    certification = []
    for step in plan:
        if step.kind == "certification":
            target = step.inputs["target"]
            certification.append({"step": step.id, "label": _certified_label(target, results, models[0]["label"]), **results[step.id], "atlas": _certified_atlas(target, results)})
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "advkit_version": __version__,
        "config": run.config,
        "defaults_applied": run.defaults_applied,
        "environment": environment(run),
        "executor": run.executor,
        "provenance": results["provenance"],
        "models": models,
        "evasion": evasion,
        "evasion_worst": evasion_worst(evasion, per_row, torch.tensor(run.labels, dtype=torch.long), run.num_classes),
        "gradient_masking": masking,
        "backdoor": {
            "audited_model": results.get("inspect/model"),
            "scenarios": scenarios,
            "atlas": atlas_ids("neural-cleanse"),
        },
        "poisoning": accuracy_poisoning,
        "certification": certification,
        "input_defense": next(({**results[s.id], "atlas": atlas_ids(s.inputs["defense"])} for s in plan if s.kind == "input-defense"), None),
        "timings": {step.id: run.timings[step.id] for step in plan},
        "plan": run.estimates,  # [{step, kind, estimated_seconds, reestimated_seconds?}]: the estimate made before the run (and after a mitigated model's probe)
        "floor": run.floor,
        "replans": run.replans,  # [{after, probe_standing, probe_seconds, seconds_left_before, seconds_left_after}]
        "budget": run.budget,  # {minutes, cuts [{key, from, to, estimated_seconds}]} with --budget, else None
        "cached_steps": list(run.cached),
    }
    report["findings"] = findings(report)
    return report


def evasion_worst(records: list[dict[str, Any]], per_row: list[dict[str, Any] | None], y: torch.Tensor, num_classes: int) -> list[dict[str, Any]]:
    """Per model and budget, the per-row worst case over every attack run there (principle 7).

    A row counts as robust only if every attack, including one the gradient-masking check
    added, left it standing. Records without per-row outcomes (a report from an older
    version) fall back to the single strongest attack.
    """
    from advkit.metrics import worst_case

    groups: dict[tuple[str, float], list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault((record["model"], record["threat"]["eps"]), []).append(index)
    out = []
    for (model, eps), indices in groups.items():
        rows = [records[i] for i in indices]
        outcomes = [per_row[i] for i in indices]
        names = [r["attack"] for r in rows]
        if all(o is not None and len(o["adv_pred"]) == y.shape[0] for o in outcomes):
            worst = worst_case(
                y,
                torch.tensor(outcomes[0]["clean_pred"]),  # type: ignore[index]
                [torch.tensor(o["adv_pred"]) for o in outcomes],  # type: ignore[index]
                [torch.tensor(o["success"]) for o in outcomes],  # type: ignore[index]
                num_classes,
                names,
            )
        else:
            strongest = min(rows, key=lambda r: r["adversarial_accuracy"])
            worst = {k: strongest[k] for k in ("n", "clean_accuracy", "adversarial_accuracy", "attack_success_rate", "per_class")}
            worst.update({"attack": "worst", "attacks": names, "broken_by": None})
        worst.pop("attack", None)
        out.append({"model": model, "norm": rows[0]["threat"]["norm"], "eps": eps, **worst})
    return sorted(out, key=lambda r: (r["model"] != "model", r["model"], r["eps"]))


def _certified_label(target: str, results: dict[str, Any], audited: str) -> str:
    if target == "model":
        return audited
    r = results[target]
    if target == DENOISED:
        return f"denoised smoothing sigma={r['sigma']:g} (denoiser in front of the frozen model)"
    how = "fine-tuning" if r.get("training") == "fine-tune" else "certified training"
    return f"{r['defense']} sigma={r['sigma']:g} ({how})"


def _certified_atlas(target: str, results: dict[str, Any]) -> list[str]:
    if target in ("model", DENOISED):
        return atlas_ids("randomized-smoothing")
    return atlas_ids(results[target]["defense"])


def _clean_accuracy(results: dict[str, Any]) -> float | None:
    for key, value in results.items():
        if key.startswith("evasion/model/"):
            return value["clean_accuracy"]
    return None


def environment(run: RunRecord) -> dict[str, Any]:
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": run.device,
        "cuda": torch.cuda.is_available(),
        "seed": run.config["seed"],
    }


# -- views ------------------------------------------------------------------------------


def load_report(run_dir: str | Path) -> dict[str, Any]:
    from advkit.fileio import read_json

    path = Path(run_dir) / "report.json"
    report = read_json(path, f"report (run advkit audit --out {run_dir} first)")
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise AdvkitError(f"{path}: not an advkit audit report")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise AdvkitError(f"{path}: report schema version {report.get('schema_version')} is not {SCHEMA_VERSION}")
    return report


def write_views(run_dir: Path, report: dict[str, Any], formats: tuple[str, ...] = ("html",)) -> list[Path]:
    """Write the requested views of a report into the run directory, atomically."""
    from advkit.audit.render.html import render_html
    from advkit.audit.render.markdown import render_markdown
    from advkit.audit.render.sarif import render_sarif
    from advkit.fileio import atomic_path, write_json

    written = []
    for fmt in formats:
        if fmt == "html":
            path = run_dir / "report.html"
            with atomic_path(path) as tmp:
                tmp.write_text(render_html(report, run_dir))
        elif fmt == "md":
            path = run_dir / "report.md"
            with atomic_path(path) as tmp:
                tmp.write_text(render_markdown(report))
        elif fmt == "sarif":
            path = run_dir / "report.sarif"
            write_json(path, render_sarif(report))
        else:
            raise AdvkitError(f"--format must be html, md or sarif; got {fmt!r}")
        written.append(path)
    return written
