"""``advkit list``: every attack, defense and architecture advkit knows."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from advkit.cli.common import command, out
from advkit.errors import AdvkitError


@command(name="list")
def list_methods(
    family: Annotated[str | None, typer.Option("--family", help="evasion|poisoning|extraction|defense|arch")] = None,
) -> None:
    """Every attack and defense: its family, knowledge, paper and MITRE ATLAS id."""
    from advkit.models.architectures import ARCHITECTURES
    from advkit.models.zoo import ZOO
    from advkit.registry import entries

    families = sorted({e.family for e in entries()} | {"arch"})
    if family is not None and family not in families:
        raise AdvkitError(f"--family must be one of {', '.join(families)}; got {family!r}")
    if family == "arch":
        for name in ARCHITECTURES:
            out.print(f"{name}" + (f"  (pretrained: zoo:{name})" if name in ZOO else ""))
        return
    table = Table(title="advkit methods")
    for column in ("name", "family", "knowledge", "ATLAS", "paper"):
        table.add_column(column)
    for e in entries():
        if family is None or e.family == family:
            table.add_row(e.name, e.family, e.knowledge, e.atlas, e.paper)
    out.print(table)


__all__ = ["list_methods"]
