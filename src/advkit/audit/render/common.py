"""What every view shares: paths made shareable, percentages."""

from __future__ import annotations

from typing import Any


def shareable(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of the report for others to read (HTML, SARIF): every file named relative to
    the working directory, or by its file name when outside it; no home directory, no
    absolute path (``report.json`` and ``provenance.json`` keep theirs, for ``verify``)."""
    from advkit.fileio import redact_paths

    config = report.get("config", {})
    known = [config.get("model"), config.get("data"), *(f.get("path") for f in report.get("provenance", {}).get("files", []))]
    return redact_paths(report, [k for k in known if isinstance(k, str)])


def percent(value: float | None) -> str:
    """A share as ``12.3%``; an en dash when it is undefined (no row to attack)."""
    return "\u2013" if value is None else f"{100 * value:.1f}%"
