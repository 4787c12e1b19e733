"""What one audit step sees: the config, its inputs, the results it depends on, a run folder.

The same :class:`Workspace` serves a step in the driver process (the local executor:
the real run folder, the loaded model) and on a Ray worker (a scratch folder holding
the artifacts the step's dependencies wrote, the model unpacked from the object
store). Steps reach everything through it, never through the runner, so a step's
numbers do not depend on where it ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advkit.audit.config import AuditConfig
from advkit.audit.plan import Step
from advkit.core import ModelHandle
from advkit.data import Dataset
from advkit.engine import shard_seed, worker_cache
from advkit.errors import AdvkitError

Progress = Callable[[str, int, int], None]


@dataclass
class Workspace:
    config: AuditConfig
    run_dir: Path
    model_source: Any  # has .unpack() -> ModelHandle (models.portable)
    eval_rows: Dataset
    train_rows: Dataset | None
    results: dict[str, dict[str, Any]]
    inputs_of: dict[str, dict[str, Any]]
    fingerprint: dict[str, Any]
    progress: Progress | None = None
    _models: dict[str, ModelHandle] = field(default_factory=dict)

    def model(self) -> ModelHandle:
        """The audited model (on the config's device, attacked at its precision)."""
        handle = self.model_source.unpack(self.config.device) if self.model_source.remote_copy else self.model_source.unpack()
        handle.precision = self.config.precision
        return handle

    def eval_data(self) -> Dataset:
        return self.eval_rows

    def train_data(self) -> Dataset:
        if self.train_rows is None:
            raise AdvkitError("internal: this step reads the train split, but its kind does not declare it (steps.STEP_KINDS)")
        return self.train_rows

    def result(self, step_id: str) -> dict[str, Any]:
        return self.results[step_id]

    def plan_inputs(self, step_id: str) -> dict[str, Any]:
        return self.inputs_of[step_id]

    def trained_model(self, step_id: str) -> ModelHandle:
        """The model a training step saved."""
        return self.trained_model_from(self.results[step_id]["artifact"])

    def trained_model_from(self, artifact: str) -> ModelHandle:
        """A model saved under the run folder, loaded once per process (keyed by its bytes).

        A fine-tuned copy's weights go into a fresh copy of the audited network
        (:func:`advkit.models.finetune.load_fine_tuned`), a denoiser goes in front of the
        audited model (:func:`advkit.certify.denoised.load_denoised`); other models load
        on their own.
        """
        from advkit.models.finetune import is_fine_tuned, load_fine_tuned, read_metadata
        from advkit.models.io import load_model

        path = self.run_dir / artifact
        device = str(self.model().device)
        key = "artifact:" + hashlib.sha256(path.read_bytes()).hexdigest() + ":" + device

        def load() -> ModelHandle:
            from advkit.certify.denoised import is_denoiser, load_denoised

            meta = read_metadata(path) if path.suffix == ".safetensors" else None
            if is_denoiser(meta):
                return load_denoised(self.model(), path)
            if meta is not None and is_fine_tuned(meta.get("extra") or {}):
                return load_fine_tuned(self.model(), path, device=device)
            return load_model(str(path), device=device)

        handle = worker_cache(key, load)
        handle.precision = self.config.precision
        return handle


@dataclass
class StepContext:
    env: Workspace
    step: Step
    shard: tuple[int, int] | None = None

    @property
    def generator(self) -> torch.Generator:
        """The step's own generator, seeded from the audit seed and the step id."""
        seed = int(hashlib.sha256(f"{self.env.config.seed}:{self.step.id}".encode()).hexdigest()[:8], 16)
        return torch.Generator().manual_seed(seed)

    def row_seed(self, row: int) -> int:
        """A row's own seed within this step: the same however the rows are sharded."""
        return shard_seed(self.env.config.seed, self.step.id, row)

    def result(self, step_id: str) -> dict[str, Any]:
        return self.env.result(step_id)

    def artifact(self, name: str) -> Path:
        return self.env.run_dir / "artifacts" / name

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.env.run_dir))
