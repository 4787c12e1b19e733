"""``advkit report``: rebuild a run's HTML view, or write its Markdown or SARIF view."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advkit.cli.common import command, out, writable
from advkit.errors import AdvkitError


@command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory holding report.json")],
    fmt: Annotated[str, typer.Option("--format", help="html|md|sarif")] = "html",
) -> None:
    """Rebuild the HTML from report.json, or write Markdown or SARIF."""
    from advkit.audit.report import load_report, write_views

    if fmt not in ("html", "md", "sarif"):
        raise AdvkitError(f"--format must be html, md or sarif; got {fmt!r}")
    loaded = load_report(run_dir)
    writable(run_dir, "run directory", directory=True)
    path = write_views(run_dir, loaded, (fmt,))[0]
    out.print(f"wrote {path}")


__all__ = ["report"]
