"""The audit as one Python call: ``advkit.audit(config, out)`` returns the report.

The same run as ``advkit audit CONFIG --out OUT``: the plan of content-hashed steps
(:class:`advkit.audit.runner.AuditRunner`) writes ``report.json`` and the step results
in ``out`` and returns the report's content. Nothing heavy is imported until it is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advkit.audit.config import AuditConfig
    from advkit.engine import Executor

def load_audit_config(config: str | Path | Mapping[str, Any] | AuditConfig | None = None) -> AuditConfig:
    """An audit config from a YAML path, a mapping of keys, a config object or ``None`` (the defaults).

    A bad key or value is a one-line :class:`~advkit.errors.AdvkitError` naming it.
    """
    from pydantic import ValidationError

    from advkit.audit.config import AuditConfig, load_config
    from advkit.errors import AdvkitError

    if config is None or isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, AuditConfig):
        return config
    if not isinstance(config, Mapping):
        raise AdvkitError(f"audit config must be a path, a mapping or None; got {type(config).__name__}")
    try:
        return AuditConfig.model_validate(dict(config))
    except ValidationError as exc:
        error = exc.errors()[0]
        dotted = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = f"unknown key '{dotted}'" if error["type"] == "extra_forbidden" else f"{dotted}: {error['msg']}"
        raise AdvkitError(f"audit config: {message}") from None


def audit(
    config: str | Path | Mapping[str, Any] | AuditConfig | None = None,
    out: str | Path = "runs/audit",
    *,
    resume: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run an audit and return its report (also written to ``out/report.json``).

    ``config`` is a YAML path, a mapping of the config's keys, or ``None`` for the
    default audit. ``resume`` reads back the steps a previous run in ``out`` finished;
    ``executor`` spreads the work (default: in-process).
    """
    from advkit.audit.runner import AuditRunner
    from advkit.fileio import check_writable

    cfg = load_audit_config(config)
    run_dir = check_writable(Path(out), "out", directory=True)
    extra: dict[str, Any] = {} if executor is None else {"executor": executor}
    return AuditRunner(cfg, run_dir, resume=resume, **extra).run()
