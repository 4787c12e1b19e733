"""The ``advkit`` command line (typer). Thin: parse, call the library, print.

Every problem with the user's input ends in one line on stderr and exit code 2; the
library itself prints nothing and reports progress through callbacks rendered here.
One module per command group (:mod:`advkit.cli.attack`, ``train``, ``certify``,
``poison``, ``inspection``, ``audit``, ``steal``, ``report``, ``provenance``,
``listing``); what they share is in :mod:`advkit.cli.common`. This module builds the
app, registers the commands in the order ``advkit --help`` lists them, and holds
:func:`main`, the console script's entry point.
"""

from __future__ import annotations

import typer

from advkit.cli import attack, audit, certify, defend, inspection, listing, poison, provenance, report, scan, steal, train  # noqa: F401 - registers
from advkit.cli.common import COMMANDS, err
from advkit.errors import AdvkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit and harden PyTorch image classifiers against adversarial machine learning.",
)
ORDER = ("attack", "train", "certify", "poison", "inspect", "scan", "defend", "audit", "steal", "report", "list")
"""The commands in the order ``advkit --help`` lists them (any other follows, by name)."""
for _name in [*ORDER, *sorted(set(COMMANDS) - set(ORDER))]:
    app.command(name=_name)(COMMANDS[_name])
app.add_typer(provenance.provenance_app, name="provenance")


def _os_error_line(exc: OSError) -> str:
    """``FILE: reason`` for an OSError (``FILE -> OTHER`` for a failed rename), on one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    line = f"{' -> '.join(names)}: {reason}" if names else reason
    return " ".join(line.split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; bad input ends in one line and exit code 2."""
    try:
        code = app(args=argv, prog_name="advkit", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            raise SystemExit(code)
    except AdvkitError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except OSError as exc:
        # A file the user named (or a place they asked us to write) that the OS refused:
        # PermissionError, a full disk, a directory where a file was expected.
        err.print(f"error: {_os_error_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except Exception as exc:
        _usage_error(exc)
        raise


def _usage_error(exc: Exception) -> None:
    """Turn a usage error of typer's (possibly vendored) click into its exit; duck-typed for either."""
    kind = type(exc).__name__
    if kind == "NoArgsIsHelpError":
        err.print(exc.format_message(), markup=False, highlight=False)  # type: ignore[attr-defined]
        raise SystemExit(2) from None
    if hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2:
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        where = f" ({ctx.command_path})" if ctx is not None else ""
        err.print(f"error: {message}{where}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    if kind == "Abort":
        err.print("aborted", markup=False)
        raise SystemExit(130) from None
    if kind == "Exit":
        raise SystemExit(getattr(exc, "exit_code", 0)) from None


__all__ = ["app", "main"]
