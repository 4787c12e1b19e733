"""The audit report: ``report.json`` (versioned schema) and its HTML, Markdown and SARIF views.

``report.json`` holds numbers only, except ``timings`` (wall seconds per step) and
``environment``; two runs with the same seed differ in nothing else. The HTML is
self-contained (plots inline as PNG) and rendered by jinja2 with autoescaping, so
nothing from a config, a file name or a class name can inject markup.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from advkit import __version__
from advkit.audit.atlas import ids_for
from advkit.audit.findings import SEVERITIES, findings
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.audit.runner import AuditRunner, Step

SCHEMA = "advkit.audit"
SCHEMA_VERSION = 1


def build_report(runner: AuditRunner, plan: list[Step]) -> dict[str, Any]:
    """Assemble the report from the step results, in plan order."""
    results = runner.results
    models = [{"id": "model", "label": f"audited model ({runner.config.model})", "clean_accuracy": _clean_accuracy(results)}]
    for step in plan:
        if step.kind == "adversarial-training":
            r = results[step.id]
            models.append({"id": step.id, "label": f"{r['defense']} eps={r['eps']:g} (mitigated)", "clean_accuracy": r["clean_accuracy"], "artifact": r["artifact"]})
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
            record["atlas"] = ids_for(f"evasion:{record['threat']['knowledge']}")
            evasion.append(record)
    scenarios = []
    for step in plan:
        if step.kind == "poisoning":
            name = step.id.split("/", 1)[1]
            scenario = {"id": step.id, **results[step.id], "atlas": ids_for("poisoning")}
            scenario["inspection"] = results.get(f"inspect/{name}")
            scenario["mitigations"] = [
                {**results[s.id], "atlas": ids_for(s.inputs["mitigation"])} for s in plan if s.kind == "backdoor-mitigation" and s.inputs["poison"] == step.id
            ]
            scenarios.append(scenario)
    certification = []
    for step in plan:
        if step.kind == "certification":
            target = step.inputs["target"]
            label = models[0]["label"] if target == "model" else f"{results[target]['defense']} sigma={results[target]['sigma']:g} (certified training)"
            certification.append({"step": step.id, "label": label, **results[step.id], "atlas": ids_for("randomized-smoothing" if target == "model" else results[target]["defense"])})
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "advkit_version": __version__,
        "config": runner.config.model_dump(mode="json"),
        "environment": environment(runner),
        "provenance": results["provenance"],
        "models": models,
        "evasion": evasion,
        "evasion_worst": evasion_worst(evasion, per_row, runner.eval_data().head(runner.config.evasion.limit).y, runner.model().num_classes),
        "gradient_masking": masking,
        "backdoor": {
            "audited_model": results.get("inspect/model"),
            "scenarios": scenarios,
            "atlas": ids_for("neural-cleanse"),
        },
        "certification": certification,
        "timings": {step.id: runner.timings[step.id] for step in plan},
        "cached_steps": list(runner.cached),
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


def _clean_accuracy(results: dict[str, Any]) -> float | None:
    for key, value in results.items():
        if key.startswith("evasion/model/"):
            return value["clean_accuracy"]
    return None


def environment(runner: AuditRunner) -> dict[str, Any]:
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(runner.model().device),
        "cuda": torch.cuda.is_available(),
        "seed": runner.config.seed,
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


def render_html(report: dict[str, Any], run_dir: Path) -> str:
    """The self-contained HTML page (jinja2, autoescaped, plots inline); paths as :func:`shareable` shows them."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from advkit.audit import plots

    report = shareable(report)
    names = report["provenance"]["model_info"]["classes"]
    model_rows = [r for r in report["evasion"] if r["model"] == "model"]
    featured = None
    if model_rows:
        budgets = sorted({r["threat"]["eps"] for r in model_rows})
        middle = budgets[len(budgets) // 2]
        featured = min((r for r in model_rows if r["threat"]["eps"] == middle), key=lambda r: r["adversarial_accuracy"])
    images = {
        "eps_curves": plots.eps_curves(report),
        "heatmap": plots.class_heatmap(report),
        "examples": plots.examples(run_dir, featured, names) if featured else None,
        "audited_triggers": plots.triggers(run_dir, report["backdoor"]["audited_model"], names) if report["backdoor"]["audited_model"] else None,
        "scenario_triggers": [
            plots.triggers(run_dir, s["inspection"], names) if s.get("inspection") else None for s in report["backdoor"]["scenarios"]
        ],
    }
    env = Environment(loader=PackageLoader("advkit.audit", "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = percent
    template = env.get_template("report.html.j2")
    budgets = sorted({r["threat"]["eps"] for r in report["evasion"]})
    attacks = sorted({r["attack"] for r in report["evasion"]})
    table = {(r["model"], r["attack"], r["threat"]["eps"]): r for r in report["evasion"]}
    worst = {(w["model"], w["eps"]): w for w in report.get("evasion_worst", [])}
    return template.render(
        report=report, images=images, budgets=budgets, attacks=attacks, table=table, worst=worst, names=names, severities=SEVERITIES
    )


def percent(value: float | None) -> str:
    """A share as ``12.3%``; an en dash when it is undefined (no row to attack)."""
    return "\u2013" if value is None else f"{100 * value:.1f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown summary for a model card: findings and the evasion table."""
    report = shareable(report)
    lines = [f"# advkit audit: {report['config']['model']} on {report['config']['data']}", "", "## Findings", ""]
    for f in report["findings"]:
        atlas = ", ".join(a["id"] for a in f["atlas"])
        lines.append(f"- **{f['severity'].upper()}** {f['title']}" + (f" ({atlas})" if atlas else ""))
    lines += ["", "## Accuracy under attack", "", "| model | attack | eps | clean | under attack | success rate |", "| --- | --- | --- | --- | --- | --- |"]
    labels = {m["id"]: m["label"] for m in report["models"]}
    for r in report["evasion"]:
        lines.append(
            f"| {labels.get(r['model'], r['model'])} | {r['attack']} | {r['threat']['eps']:g} | {r['clean_accuracy']:.1%} | "
            f"{r['adversarial_accuracy']:.1%} | {percent(r['attack_success_rate'])} |"
        )
    for w in report.get("evasion_worst", []):
        lines.append(
            f"| {labels.get(w['model'], w['model'])} | worst of {', '.join(w['attacks'])} | {w['eps']:g} | {w['clean_accuracy']:.1%} | "
            f"{w['adversarial_accuracy']:.1%} | {percent(w['attack_success_rate'])} |"
        )
    scenarios = report["backdoor"]["scenarios"]
    if scenarios:
        lines += ["", "## Backdoor scenarios", "", "| scenario | backdoor success | clean | flagged by Neural Cleanse |", "| --- | --- | --- | --- |"]
        for s in scenarios:
            flagged = s["inspection"]["flagged"] if s.get("inspection") else "-"
            lines.append(f"| {s['id']} | {s['attack_success_rate']:.1%} | {s['clean_accuracy']:.1%} | {flagged} |")
    if report.get("certification"):
        lines += ["", "## Certified robustness (randomized smoothing)", "", "| model | sigma | r=0 | r=0.25 | r=0.5 | r=0.75 | ACR | abstain |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in report["certification"]:
            ca = c["certified_accuracy"]
            lines.append(f"| {c['label']} | {c['sigma']:g} | {ca['0']:.1%} | {ca['0.25']:.1%} | {ca['0.5']:.1%} | {ca['0.75']:.1%} | {c['acr']:.3f} | {c['abstain_rate']:.1%} |")
    return "\n".join(lines) + "\n"


SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}


def render_sarif(report: dict[str, Any]) -> dict[str, Any]:
    """SARIF 2.1.0: one result per finding, rule id = the finding's first ATLAS id.

    Every result's ``ruleId`` (and ``ruleIndex``) names a rule in ``tool.driver.rules``;
    the analysed model is named relative to the working directory (or by its file name),
    so the file can be shared without the machine's paths.
    """
    from urllib.parse import quote

    report = shareable(report)
    rules: dict[str, dict[str, Any]] = {}
    results = []
    target = quote(report["config"]["model"], safe="/:@!$&'()*+,;=-._~")
    for f in report["findings"]:
        rule = f["atlas"][0]["id"] if f["atlas"] else "ADVKIT.RELIABILITY"
        title = f["atlas"][0]["name"] if f["atlas"] else "Reliability of the evaluation"
        rules.setdefault(rule, {
            "id": rule,
            "name": "".join(word[:1].upper() + word[1:] for word in re.split(r"[^0-9A-Za-z]+", title) if word),
            "shortDescription": {"text": title},
        })
        results.append({
            "ruleId": rule,
            "ruleIndex": list(rules).index(rule),
            "level": SARIF_LEVEL[f["severity"]],
            "message": {"text": f"{f['title']}. {f['detail']}"},
            "properties": {"severity": f["severity"], "atlas": [a["id"] for a in f["atlas"]]},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": target}}}],
        })
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "advkit", "version": report["advkit_version"], "rules": list(rules.values())}},
            "results": results,
        }],
    }


def shareable(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of the report for others to read (HTML, SARIF): every file named relative to
    the working directory, or by its file name when outside it; no home directory, no
    absolute path (``report.json`` and ``provenance.json`` keep theirs, for ``verify``)."""
    from advkit.fileio import redact_paths

    config = report.get("config", {})
    known = [config.get("model"), config.get("data"), *(f.get("path") for f in report.get("provenance", {}).get("files", []))]
    return redact_paths(report, [k for k in known if isinstance(k, str)])


def write_views(run_dir: Path, report: dict[str, Any], formats: tuple[str, ...] = ("html",)) -> list[Path]:
    """Write the requested views of a report into the run directory, atomically."""
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
