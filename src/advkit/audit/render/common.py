"""What every view shares: paths made shareable, percentages, budgets."""

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


def budget(value: Any) -> str:
    """An eps as people write it: a short decimal as it is (``0.3``, ``0.25``), a whole
    number of 8-bit steps as ``4/255``, else ``%g``; a list comma-separated; anything
    else as ``str``."""
    if isinstance(value, list):
        return ", ".join(budget(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):  # a count (rows, samples, queries)
        return str(value)
    short = f"{value:.4g}"
    if abs(float(short) - value) <= 1e-12 * max(1.0, abs(value)):
        return short
    steps = value * 255
    if 0 < value < 1 and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{value:g}"
