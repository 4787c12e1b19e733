"""``advkit provenance``: the sub-app for data and model provenance manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from advkit.cli.common import err, out

provenance_app = typer.Typer(no_args_is_help=True, help="Data and model provenance manifests.")


@provenance_app.command("verify")
def provenance_verify(manifest: Annotated[Path, typer.Argument(help="a provenance.json manifest")]) -> None:
    """Re-hash every file in a manifest; exit 1 when any changed or is missing."""
    from advkit.data.provenance import verify_manifest

    rows = verify_manifest(manifest)
    table = Table(title=f"provenance {manifest}")
    for column in ("status", "role", "path"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["status"], row.get("role", ""), row["path"])
    out.print(table)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        err.print(f"{len(bad)} of {len(rows)} files changed or missing", markup=False)
        raise typer.Exit(1)
    out.print(f"all {len(rows)} files unchanged")


__all__ = ["provenance_app", "provenance_verify"]
