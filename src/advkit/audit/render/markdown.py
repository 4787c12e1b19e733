"""The Markdown summary of an audit, for a model card."""

from __future__ import annotations

from typing import Any

from advkit.audit.render.common import budget, percent, shareable


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
            f"| {labels.get(r['model'], r['model'])} | {r['attack']} | {budget(r['threat']['eps'])} | {r['clean_accuracy']:.1%} | "
            f"{r['adversarial_accuracy']:.1%} | {percent(r['attack_success_rate'])} |"
        )
    for w in report.get("evasion_worst", []):
        lines.append(
            f"| {labels.get(w['model'], w['model'])} | worst of {', '.join(w['attacks'])} | {budget(w['eps'])} | {w['clean_accuracy']:.1%} | "
            f"{w['adversarial_accuracy']:.1%} | {percent(w['attack_success_rate'])} |"
        )
    scenarios = report["backdoor"]["scenarios"]
    if scenarios:
        lines += ["", "## Backdoor scenarios", "", "| scenario | backdoor success | clean | flagged by Neural Cleanse |", "| --- | --- | --- | --- |"]
        for s in scenarios:
            flagged = s["inspection"]["flagged"] if s.get("inspection") else "-"
            lines.append(f"| {s['id']} | {s['attack_success_rate']:.1%} | {s['clean_accuracy']:.1%} | {flagged} |")
    if report.get("poisoning"):
        lines += ["", "## Poisoning without a trigger", "", "| scenario | poisoned rows | clean (poisoned model) | clean (audited model) | drop |", "| --- | --- | --- | --- | --- |"]
        for p in report["poisoning"]:
            if p.get("effect") == "targeted":
                lines.append(f"| {p['id']} | {p['poisoned_rows']} ({p['attack']}, {p['params']['setting']}) | {p['success_rate']:.0%} of {len(p['targets'])} targets flipped | - | - |")
                continue
            lines.append(f"| {p['id']} | {p['poisoned_rows']} of {p['train_rows']} | {p['clean_accuracy']:.1%} | {p['reference_clean_accuracy']:.1%} | {100 * p['accuracy_drop']:.1f} pt |")
    if report.get("certification"):
        lines += ["", "## Certified robustness (randomized smoothing)", "", "| model | sigma | r=0 | r=0.25 | r=0.5 | r=0.75 | ACR | abstain |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in report["certification"]:
            ca = c["certified_accuracy"]
            lines.append(f"| {c['label']} | {c['sigma']:g} | {ca['0']:.1%} | {ca['0.25']:.1%} | {ca['0.5']:.1%} | {ca['0.75']:.1%} | {c['acr']:.3f} | {c['abstain_rate']:.1%} |")
    return "\n".join(lines) + "\n"
