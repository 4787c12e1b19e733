"""The self-contained HTML page of an audit (jinja2 with autoescaping, plots inline as PNG).

Nothing from a config, a file name or a class name can inject markup: every value goes
through jinja2's autoescape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advkit.audit.findings import SEVERITIES
from advkit.audit.render.common import budget, percent, shareable


def attacked_models(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The models the evasion table has a column for: those attacked (a denoiser is only certified)."""
    attacked = {r["model"] for r in report["evasion"]}
    return [m for m in report["models"] if m["id"] in attacked]


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
        "repair_curves": {
            f"{s['id']}:{m['mitigation']}": plots.repair_curve(m) for s in report["backdoor"]["scenarios"] for m in s.get("mitigations", []) if m.get("auditor_curve")
        },
        "scenario_triggers": [
            plots.triggers(run_dir, s["inspection"], names) if s.get("inspection") else None for s in report["backdoor"]["scenarios"]
        ],
    }
    env = Environment(loader=PackageLoader("advkit.audit", "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = percent
    env.filters["budget"] = budget
    template = env.get_template("report.html.j2")
    budgets = sorted({r["threat"]["eps"] for r in report["evasion"]})
    attacks = sorted({r["attack"] for r in report["evasion"]})
    table = {(r["model"], r["attack"], r["threat"]["eps"]): r for r in report["evasion"]}
    worst = {(w["model"], w["eps"]): w for w in report.get("evasion_worst", [])}
    return template.render(
        report=report, images=images, budgets=budgets, attacks=attacks, table=table, worst=worst, names=names, severities=SEVERITIES,
        attacked=attacked_models(report),
    )
