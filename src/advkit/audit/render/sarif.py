"""The audit's findings as SARIF 2.1.0, for code-scanning dashboards."""

from __future__ import annotations

import re
from typing import Any

from advkit.audit.render.common import shareable


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
