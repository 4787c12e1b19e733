"""One audit step (or one shard of it) as an executor task.

:func:`run_step_task` is what the executor runs. Locally it works in the real run
folder. On a remote worker (``task.run_dir is None``) it works in a scratch folder: the
artifact files of the step's dependencies arrive as bytes from the object store and
are written there first, and the files the step writes come back as bytes with its
result, for the driver to write into the run folder.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advkit.audit.config import AuditConfig
from advkit.audit.plan import Step
from advkit.audit.workspace import Progress, StepContext, Workspace
from advkit.data import Dataset


@dataclass
class StepTask:
    """The small, plain part of a task (the model and data travel as shared handles)."""

    step: Step
    shard: tuple[int, int] | None
    config: AuditConfig
    results: dict[str, dict[str, Any]]
    inputs_of: dict[str, dict[str, Any]]
    fingerprint: dict[str, Any]
    run_dir: str | None  # None: a remote worker, work in a scratch folder
    artifact_names: list[str] = field(default_factory=list)
    progress: Progress | None = None


@dataclass
class TaskOutcome:
    value: dict[str, Any]
    seconds: float
    files: dict[str, bytes]  # artifacts written on a remote worker, by run-relative path


def run_step_task(task: StepTask, model_source: Any, eval_rows: Dataset, train_rows: Dataset | None, *artifacts: bytes) -> TaskOutcome:
    """Run ``task.step`` (or its shard) and return its value, time and new files."""
    if task.run_dir is not None:
        return _run(task, Path(task.run_dir), model_source, eval_rows, train_rows)
    with tempfile.TemporaryDirectory(prefix="advkit-step-") as scratch:
        root = Path(scratch)
        (root / "artifacts").mkdir()
        for name, blob in zip(task.artifact_names, artifacts, strict=True):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(blob)
        shipped = {root / name for name in task.artifact_names}
        outcome = _run(task, root, model_source, eval_rows, train_rows)
        outcome.files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p not in shipped}
        return outcome


def _run(task: StepTask, run_dir: Path, model_source: Any, eval_rows: Dataset, train_rows: Dataset | None) -> TaskOutcome:
    from advkit.audit.steps import STEP_KINDS

    env = Workspace(
        task.config, run_dir, model_source, eval_rows, train_rows, task.results, task.inputs_of, task.fingerprint, task.progress
    )
    kind = STEP_KINDS[task.step.kind]
    ctx = StepContext(env, task.step, task.shard)
    start = time.perf_counter()
    value = kind.run(ctx)
    return TaskOutcome(value, time.perf_counter() - start, {})
