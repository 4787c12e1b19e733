"""The audit as a resumable plan: attack, mitigate, attack again.

The plan is a list of steps, each with a content hash of its inputs (its config slice,
the hashes of the steps it depends on, and the model and data fingerprints). A finished
step's result is written atomically to ``RUN_DIR/steps/`` as it completes; with
``resume`` a step whose stored hash matches is read back instead of recomputed, so a
crash or Ctrl-C costs only the step that was running. Every step seeds its own
generator from the audit seed and its id, so a resumed run gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advkit.audit.config import AuditConfig, PoisoningConfig
from advkit.core import ModelHandle, Threat
from advkit.data import Dataset, load_dataset
from advkit.errors import AdvkitError
from advkit.fileio import atomic_path, write_json

Progress = Callable[[str, int, int], None]
Notify = Callable[[str], None]


@dataclass
class Step:
    id: str
    kind: str
    inputs: dict[str, Any]
    run: Callable[[StepContext], dict[str, Any]]
    depends: list[str] = field(default_factory=list)
    hash: str = ""


@dataclass
class StepContext:
    runner: AuditRunner
    step: Step

    @property
    def generator(self) -> torch.Generator:
        seed = int(hashlib.sha256(f"{self.runner.config.seed}:{self.step.id}".encode()).hexdigest()[:8], 16)
        return torch.Generator().manual_seed(seed)

    def result(self, step_id: str) -> dict[str, Any]:
        return self.runner.results[step_id]

    def artifact(self, name: str) -> Path:
        return self.runner.run_dir / "artifacts" / name


def step_slug(step_id: str) -> str:
    return step_id.replace("/", "__").replace("@", "_at_")


class AuditRunner:
    """Builds the plan from a config and runs it in a run directory."""

    def __init__(self, config: AuditConfig, run_dir: Path, *, resume: bool = False, progress: Progress | None = None, notify: Notify | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.notify = notify or (lambda message: None)
        self.results: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self._model: ModelHandle | None = None
        self._models: dict[str, ModelHandle] = {}
        self._eval: Dataset | None = None
        self._train: Dataset | None = None
        self._fingerprint: dict[str, Any] | None = None

    # -- inputs -------------------------------------------------------------------------
    def model(self) -> ModelHandle:
        if self._model is None:
            from advkit.models.io import check_model_fits_data, load_model

            data = self.eval_data()
            self._model = load_model(self.config.model, sample_shape=data.input_shape)
            check_model_fits_data(self._model, data.input_shape, data.num_classes, self.config.model, self.config.data)
        return self._model

    def eval_data(self) -> Dataset:
        if self._eval is None:
            self._eval = load_dataset(self.config.data, split=self.config.split, limit=self.config.limit)
        return self._eval

    def train_data(self) -> Dataset:
        if self._train is None:
            self._train = load_dataset(self.config.data, split="train")
        return self._train

    def model_file(self) -> Path | None:
        spec = self.config.model
        if spec.startswith("zoo:"):
            from advkit.fileio import cache_dir
            from advkit.models.zoo import ZOO, recipe_key

            name = spec[4:]
            self.model()  # trains and caches it on first use
            return cache_dir() / "zoo" / f"{name}-{recipe_key(name, ZOO[name])}.safetensors"
        return Path(spec)

    def fingerprint(self) -> dict[str, Any]:
        """SHA-256 of the model file and every data file (the provenance manifest), computed once."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return json.loads(json.dumps(self._fingerprint))

    def _compute_fingerprint(self) -> dict[str, Any]:
        from advkit.data.provenance import build_manifest

        files: dict[str, list[Path]] = {"data": list(self.eval_data().files)}
        model_file = self.model_file()
        if model_file is not None and model_file.is_file():
            files["model"] = [model_file]
        manifest = build_manifest(files)
        data = self.eval_data()
        manifest["data_arrays"] = {
            "x_sha256": hashlib.sha256(data.x.numpy().tobytes()).hexdigest(),
            "y_sha256": hashlib.sha256(data.y.numpy().tobytes()).hexdigest(),
            "rows": len(data),
        }
        return manifest

    def trained_model(self, step_id: str) -> ModelHandle:
        """The model a training step saved in the run directory."""
        return self.trained_model_from(self.results[step_id]["artifact"])

    def trained_model_from(self, artifact: str) -> ModelHandle:
        """A model saved under the run directory (loaded once)."""
        if artifact not in self._models:
            from advkit.models.io import load_model

            self._models[artifact] = load_model(str(self.run_dir / artifact), device=str(self.model().device))
        return self._models[artifact]

    def plan_inputs(self, step_id: str) -> dict[str, Any]:
        return self._steps[step_id].inputs

    # -- plan ---------------------------------------------------------------------------
    def plan(self) -> list[Step]:
        from advkit.audit import steps as S

        cfg = self.config
        plan: list[Step] = [Step("provenance", "provenance", {}, S.provenance)]
        plan += self._evasion_steps("model", ["provenance"])
        if cfg.backdoor_defense is not None:
            plan.append(Step("inspect/model", "inspect", {"target": "model", "epochs": cfg.backdoor_defense.epochs}, S.inspect, ["provenance"]))
        if cfg.adversarial_training is not None:
            at = cfg.adversarial_training
            plan.append(Step(f"train/{at.defense}", "adversarial-training", at.model_dump(), S.adversarial_training, ["provenance"]))
            plan += self._evasion_steps(f"train/{at.defense}", [f"train/{at.defense}"])
        for index, scenario in enumerate(cfg.poisoning):
            name = f"{index}-{scenario.attack}"
            plan.append(Step(f"poison/{name}", "poisoning", scenario.model_dump(), S.poisoning, ["provenance"]))
            if cfg.backdoor_defense is not None:
                defense = cfg.backdoor_defense
                plan.append(
                    Step(f"inspect/{name}", "inspect", {"target": f"poison/{name}", "epochs": defense.epochs}, S.inspect, [f"poison/{name}"])
                )
                for mitigation in defense.mitigations:
                    plan.append(
                        Step(
                            f"mitigate/{name}/{mitigation}",
                            "backdoor-mitigation",
                            {"mitigation": mitigation, "poison": f"poison/{name}", "inspect": f"inspect/{name}"},
                            S.backdoor_mitigation,
                            [f"poison/{name}", f"inspect/{name}"],
                        )
                    )
        if cfg.certification is not None:
            certification = cfg.certification
            plan.append(Step("certify/model", "certification", {"target": "model", **certification.model_dump()}, S.certification, ["provenance"]))
            if certification.training is not None:
                trained = f"train/certified-{certification.training}"
                plan.append(Step(trained, "certified-training", certification.model_dump(), S.certified_training, ["provenance"]))
                plan.append(Step(f"certify/certified-{certification.training}", "certification", {"target": trained, **certification.model_dump()}, S.certification, [trained]))
        return plan

    def _evasion_steps(self, target: str, depends: list[str]) -> list[Step]:
        """Every (attack, eps) step on one model, then per eps the gradient-masking check over them."""
        from advkit.audit import steps as S

        cfg = self.config
        label = "model" if target == "model" else target.split("/", 1)[1]
        steps: list[Step] = []
        for attack in cfg.evasion.attacks:
            for eps in cfg.evasion.eps:
                steps.append(Step(f"evasion/{label}/{attack}@{eps:g}", "evasion", {"attack": attack, "eps": eps, "target": target}, S.evasion, list(depends)))
        for eps in cfg.evasion.eps:
            evasion_ids = [f"evasion/{label}/{attack}@{eps:g}" for attack in cfg.evasion.attacks]
            steps.append(
                Step(
                    f"masking/{label}@{eps:g}",
                    "gradient-masking",
                    {"target": target, "eps": eps, "evasion_steps": evasion_ids, "attack": S.MASKING_ATTACK},
                    S.gradient_masking,
                    evasion_ids,
                )
            )
        return steps

    def _hash(self, step: Step, base: dict[str, Any]) -> str:
        blob = {
            "id": step.id,
            "inputs": step.inputs,
            "depends": [self._hashes[d] for d in step.depends],
            "base": base,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()

    # -- run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Execute (or resume) the plan; write and return ``report.json``'s content."""
        from advkit.audit.report import build_report

        steps_dir = self.run_dir / "steps"
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not self.resume:
            raise AdvkitError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        plan = self.plan()
        self._steps = {step.id: step for step in plan}
        self.model()  # fail early on a bad model or data, before anything is written
        steps_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "artifacts").mkdir(exist_ok=True)
        write_json(self.run_dir / "config.json", self.config.model_dump(mode="json"))
        fingerprint = self.fingerprint()
        base = {
            "config": {k: v for k, v in self.config.model_dump(mode="json").items() if k in ("model", "data", "split", "limit", "seed")},
            "evasion": self.config.evasion.model_dump(mode="json"),
            # content, not names: a changed model or data file invalidates every step
            "content": sorted(f["sha256"] for f in fingerprint["files"]) + sorted(fingerprint["data_arrays"].values(), key=str),
        }
        self._hashes: dict[str, str] = {}
        for done, step in enumerate(plan):
            step.hash = self._hash(step, base)
            self._hashes[step.id] = step.hash
            path = steps_dir / f"{step_slug(step.id)}.json"
            stored = self._read_step(path) if self.resume else None
            if stored is not None and stored.get("hash") == step.hash and self._artifacts_present(stored["result"]):
                self.results[step.id] = stored["result"]
                self.timings[step.id] = stored["seconds"]
                self.cached.append(step.id)
                self.notify(f"cached   {step.id}")
            else:
                start = time.perf_counter()
                result = step.run(StepContext(self, step))
                seconds = time.perf_counter() - start
                self.results[step.id] = result
                self.timings[step.id] = seconds
                write_json(path, {"id": step.id, "hash": step.hash, "seconds": seconds, "result": result})
                self.notify(f"{seconds:6.1f}s  {step.id}")
            if self.progress is not None:
                self.progress("audit", done + 1, len(plan))
        report = build_report(self, plan)
        write_json(self.run_dir / "report.json", report)
        from advkit.data.provenance import write_manifest

        write_manifest(self.run_dir / "provenance.json", self.results["provenance"])
        return report

    def _read_step(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _artifacts_present(self, result: dict[str, Any]) -> bool:
        nested = [result["record"]] if isinstance(result.get("record"), dict) else []
        names = [r[k] for r in [result, *nested] for k in ("artifact", "examples", "triggers") if isinstance(r.get(k), str)]
        return all((self.run_dir / name).is_file() for name in names)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write small arrays (examples, triggers) atomically as an uncompressed npz."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def threat_for(config: AuditConfig, eps: float, attack: str | None = None) -> Threat:
    """The audit's threat at one budget; the knowledge level is what ``attack`` needs (white by default)."""
    from advkit.registry import lookup

    knowledge = lookup(attack, "evasion").knowledge if attack else "white"
    return Threat(norm=config.evasion.norm, eps=eps, goal=config.evasion.goal, knowledge=knowledge)


def scenario_trigger(scenario: PoisoningConfig) -> Any:
    from advkit.attacks.poisoning import BadNets, Blend, BlendTrigger, PatchTrigger

    t = scenario.trigger
    if scenario.attack == "badnets":
        position: Any = tuple(t.position) if isinstance(t.position, list) else t.position
        values = tuple(t.values) if t.values is not None else None
        return BadNets(PatchTrigger(size=t.size, position=position, pattern=t.pattern, values=values), target=scenario.target, rate=scenario.rate, mode=scenario.mode)
    return Blend(BlendTrigger(alpha=t.alpha), target=scenario.target, rate=scenario.rate, mode=scenario.mode)

