"""Runs the audit's plan through an Executor, resumably: attack, mitigate, attack again.

Each step's hash covers its inputs, its dependencies' hashes and the content of the
model and data. A finished step's result is written atomically to ``RUN_DIR/steps/``
the moment it arrives, from whichever worker ran it; with ``resume`` a step whose
stored hash matches is read back instead of recomputed, so a crash costs only the
steps that were running. Steps whose dependencies are done run side by side, up to
the executor's worker count; the local executor runs one at a time in plan order.
Every step seeds its own generator from the audit seed and its id (and every
certified row its own), so the numbers are the same on one worker or many.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advkit.audit.config import AuditConfig, fine_tunes, with_data_defaults
from advkit.audit.plan import Step, build_plan, closure, step_slug
from advkit.audit.record import RunRecord
from advkit.audit.reestimate import eta_text, plan_estimates, reestimate_after
from advkit.audit.rows import count_rows, held_rows
from advkit.audit.steps import STEP_KINDS
from advkit.audit.tasks import StepTask, TaskOutcome, run_step_task
from advkit.audit.poisoning_steps import WRAPS_THE_MODEL, check_scenarios
from advkit.audit.workspace import Progress, StepContext, Workspace
from advkit.core import ModelHandle
from advkit.data import Dataset
from advkit.engine import Executor, Pending, Shared
from advkit.errors import AdvkitError
from advkit.fileio import atomic_path, write_json

Notify = Callable[[str], None]

SHARDS_PER_WORKER = 8  # CERTIFY shards per worker: small enough that the last ones even out
LONGEST_FIRST = {"adversarial-training": 4, "poisoning": 4, "certified-training": 4, "denoiser-training": 4, "inspect": 3, "certification": 2, "backdoor-mitigation": 2}


class AuditRunner:
    """Builds the plan from a config and runs it in a run folder."""

    def __init__(
        self,
        config: AuditConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        progress: Progress | None = None,
        notify: Notify | None = None,
        executor: Executor | None = None,
        budget_minutes: float | None = None,
    ):
        from advkit.engine.local import LocalExecutor

        self.config = config
        self.defaults_applied: list[dict[str, Any]] = []  # budgets the data chose (with_data_defaults)
        self.estimates: list[dict[str, Any]] = []  # [{step, kind, estimated_seconds}] before the run
        self.budget_minutes = budget_minutes
        self.cuts: list[dict[str, Any]] = []  # what --budget cut (advkit.audit.budget)
        self.floor: Any = None
        # estimate.Probe per model ("model": the audited one, before the plan; a mitigated one once trained):
        # how many rows a short PGD leaves standing per eps, how fast the others fall
        self.probes: dict[str, Any] = {}
        self.replans: list[dict[str, Any]] = []  # [{after, probe_standing, probe_seconds, seconds_left_before, seconds_left_after}]
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.notify = notify or (lambda message: None)
        self.executor = executor if executor is not None else LocalExecutor()
        self.results: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self._model: ModelHandle | None = None
        self._row_caps: list[dict[str, Any]] = []  # rows held back by the memory cap (eval_data, train_data)
        self._eval: Dataset | None = None
        self._train: Dataset | None = None
        self._train_count: int | None = None
        self._fingerprint: dict[str, Any] | None = None
        self._shared: dict[str, Shared] = {}
        self._total = 0
        self.run_stats = self.executor.stats.snapshot()
        self._inputs_of: dict[str, dict[str, Any]] = {}
        self._task_fingerprint: dict[str, Any] = {}

    # -- inputs -------------------------------------------------------------------------
    def model(self) -> ModelHandle:
        if self._model is None:
            from advkit.models.io import check_model_fits_data
            from advkit.models.resolve import resolve

            from advkit.cli.common import check_device

            data = self.eval_data()
            self._model = resolve(self.config.model, sample_shape=data.input_shape, device=check_device(self.config.device))
            self._model.precision = self.config.precision
            check_model_fits_data(self._model, data.input_shape, data.num_classes, self.config.model, self.config.data)
        return self._model

    def eval_data(self) -> Dataset:
        """The evaluation rows, held in memory (:func:`advkit.audit.rows.held_rows`)."""
        if self._eval is None:
            self._eval = held_rows(self.config, self.config.split, self.config.limit, "limit", self._row_caps)
        return self._eval

    def train_data(self) -> Dataset:
        """The defender's training rows: the train split, only its first ``fine_tune.rows``
        when the audit fine-tunes (the rest is never decoded), memory-capped as :meth:`eval_data`."""
        if self._train is None:
            fine_tuning = self._fine_tuning()
            limit = self.config.fine_tune.rows if fine_tuning else None
            self._train = held_rows(self.config, "train", limit, "fine_tune.rows" if fine_tuning else "train rows", self._row_caps)
        return self._train

    def train_rows(self) -> int:
        """How many training rows there are to train on (:func:`advkit.audit.rows.count_rows`, counted once)."""
        if self._train_count is None:
            self._train_count = count_rows(self.config, "train")
        return self._train_count

    def _fine_tuning(self) -> bool:
        """Whether the training steps fine-tune; with ``training: auto`` that needs the loaded model's arch (else: not known, read every row)."""
        if self.config.training != "auto":
            return self.config.training == "fine-tune"
        return self._model is not None and fine_tunes(self.config, self._model.info.arch)

    def fingerprint(self) -> dict[str, Any]:
        """SHA-256 of the model file and every data file (the provenance manifest), computed once."""
        if self._fingerprint is None:
            from advkit.data.provenance import build_manifest
            from advkit.models.resolve import model_file as spec_file

            files: dict[str, list[Path]] = {"data": list(self.eval_data().files)}
            model_file = spec_file(self.config.model)
            if model_file.is_file():
                files["model"] = [model_file]
            manifest = build_manifest(files)
            data = self.eval_data()
            manifest["data_arrays"] = {
                "x_sha256": hashlib.sha256(data.x.numpy().tobytes()).hexdigest(),
                "y_sha256": hashlib.sha256(data.y.numpy().tobytes()).hexdigest(),
                "rows": len(data),
            }
            self._fingerprint = manifest
        return json.loads(json.dumps(self._fingerprint))

    # -- run ----------------------------------------------------------------------------
    def plan(self, config: AuditConfig | None = None) -> list[Step]:
        """The steps of ``config`` (default: the runner's) on the evaluation rows."""
        config = config or self.config
        shards = SHARDS_PER_WORKER * self.executor.workers if self.executor.remote else 1
        return build_plan(config, eval_rows=len(self.eval_data()), shards_per_step=shards, fine_tune=fine_tunes(config, self.model().info.arch))

    def run(self) -> dict[str, Any]:
        """Execute (or resume) the plan; write and return ``report.json``'s content."""
        from advkit.audit.report import build_report
        from advkit.data.provenance import write_manifest

        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not self.resume:
            raise AdvkitError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        plan = self.prepare()
        self._total = len(plan)
        self.notify(f"estimated at most {sum(e['estimated_seconds'] for e in self.estimates):.1f}s for {len(plan)} steps (advkit audit --estimate)")
        (self.run_dir / "steps").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "artifacts").mkdir(exist_ok=True)
        write_json(self.run_dir / "config.json", self.config.model_dump(mode="json"))
        self._hash_plan(plan)
        self._inputs_of = {s.id: s.inputs for s in plan}  # what every task is told of the plan
        self._plan_steps = plan
        self._task_fingerprint = self.fingerprint()
        for step in plan:
            self._read_back(step)
        before = self.executor.stats.snapshot()
        self._execute([s for s in plan if s.id not in self.results], plan)
        self.run_stats = self.executor.stats.since(before)
        record = RunRecord.of(self, plan)
        report = build_report(record)
        write_json(self.run_dir / "report.json", report)
        write_manifest(self.run_dir / "provenance.json", self.results["provenance"])
        return report

    def prepare(self) -> list[Step]:
        """The checked plan, estimated, and cut to ``budget_minutes`` when one is given.

        Fills ``config`` (budgets from the data, then the cuts), ``floor``, ``estimates``
        and ``cuts``; writes nothing (``advkit audit --estimate`` stops here).
        """
        from advkit.audit.budget import fit_to_budget
        from advkit.audit.estimate import measure_floor, probe_standing
        from advkit.audit.render.common import budget as budget_text

        from advkit.core.memory import set_memory_cap

        if self.config.max_memory_gb is not None:
            set_memory_cap(self.config.max_memory_gb)
        self.model()  # fail early on a bad model or data, before anything is written
        self.config, applied = with_data_defaults(self.config, self.eval_data().input_shape[0])
        self.defaults_applied = [*self._row_caps, *applied]
        plan = self.plan()
        self._check_plan(plan)
        self.floor = measure_floor(self.model(), self.eval_data().x)
        self.probes["model"] = probe_standing(self.model(), self.eval_data().x, self.eval_data().y, self.config)
        if any(step.kind == "denoiser-training" for step in plan):
            from advkit.audit.estimate import measure_denoiser
            from advkit.audit.training_steps import DENOISER_DEPTH, DENOISER_WIDTH

            self.floor = measure_denoiser(self.floor, self.model(), self.eval_data().x, DENOISER_DEPTH, DENOISER_WIDTH)
        if self.budget_minutes is not None:

            def total(config: AuditConfig) -> float:
                return sum(e["estimated_seconds"] for e in plan_estimates(self, config, self.plan(config)))

            train_rows = self.train_rows() if any(STEP_KINDS[s.kind].needs_train for s in plan) else 0
            self.config, self.cuts = fit_to_budget(self.config, total, self.budget_minutes * 60, len(self.eval_data()), train_rows)
            for cut in self.cuts:
                self.notify(f"--budget: {cut['key']} {budget_text(cut['from'])} -> {budget_text(cut['to'])} (estimate {cut['estimated_seconds']:.0f}s)")
            plan = self.plan()
            self._check_plan(plan)
        self.estimates = plan_estimates(self, self.config, plan)
        return plan

    def _check_plan(self, plan: list[Step]) -> None:
        """Steps that retrain need an architecture, scenarios their classes (Poison Frogs a last nn.Linear): say so before the first step runs."""
        check_scenarios(list(self.config.poisoning), self.model(), self.config.model)
        if self.model().info.arch:
            return
        for step in plan:
            uses_the_model = step.inputs.get("attack") in WRAPS_THE_MODEL  # Poison Frogs and TrojanNet retrain no architecture
            if STEP_KINDS[step.kind].needs_train and step.inputs.get("training") == "retrain" and not uses_the_model:
                section = {"adversarial-training": "adversarial_training", "poisoning": "poisoning", "certified-training": "certification.training"}[step.kind]
                raise AdvkitError(
                    f"training: retrain: the '{section}' section retrains the model's architecture, but {self.config.model} does not name one "
                    "(TorchScript/ONNX): set training: fine-tune (or auto) to fine-tune a copy of the model, or give metadata with 'arch'"
                )

    def _hash_plan(self, plan: list[Step]) -> None:
        fingerprint = self.fingerprint()
        base = {
            "config": {k: v for k, v in self.config.model_dump(mode="json").items() if k in ("model", "data", "split", "limit", "seed")},
            "evasion": self.config.evasion.model_dump(mode="json"),
            # content, not names: a changed model or data file invalidates every step
            "content": sorted(f["sha256"] for f in fingerprint["files"]) + sorted(fingerprint["data_arrays"].values(), key=str),
        }
        hashes: dict[str, str] = {}
        for step in plan:
            blob = {"id": step.id, "inputs": step.inputs, "depends": [hashes[d] for d in step.depends], "base": base}
            step.hash = hashes[step.id] = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()

    def _step_path(self, step: Step) -> Path:
        return self.run_dir / "steps" / f"{step_slug(step.id)}.json"

    def _read_back(self, step: Step) -> None:
        if not self.resume:
            return
        try:
            stored = json.loads(self._step_path(step).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        if stored.get("hash") == step.hash and all((self.run_dir / name).is_file() for name in artifact_names(stored["result"])):
            self.results[step.id] = stored["result"]
            self.timings[step.id] = stored["seconds"]
            self.cached.append(step.id)
            self.notify(f"cached   {step.id}")
            self._tick(len(self.results))

    def _tick(self, done: int) -> None:
        if self.progress is not None:
            self.progress("audit", done, self._total)

    # -- scheduling ---------------------------------------------------------------------
    def _execute(self, todo: list[Step], plan: list[Step]) -> None:
        """Submit every step whose dependencies are done, at most ``workers`` tasks at a time.

        Several workers take the longest kinds first (training, then Neural Cleanse, then
        CERTIFY shards, then evasion), so a long task does not start last and leave the other
        workers idle at the end; one worker keeps the plan's order.
        """
        waiting = list(todo)
        if self.executor.workers > 1:
            waiting.sort(key=lambda step: -LONGEST_FIRST.get(step.kind, 0))  # stable: plan order within a kind
        running: dict[int, tuple[Pending, Step, int]] = {}
        parts: dict[str, dict[int, TaskOutcome]] = {}
        submitted: dict[str, int] = {}
        while waiting or running:
            for step in list(waiting):
                shards = step.shards or [None]
                while submitted.get(step.id, 0) < len(shards) and len(running) < max(1, self.executor.workers) and all(d in self.results for d in step.depends):
                    index = submitted.get(step.id, 0)
                    task = self._submit(step, shards[index], plan)
                    running[id(task)] = (task, step, index)
                    submitted[step.id] = index + 1
                if submitted.get(step.id, 0) == len(shards):
                    waiting.remove(step)
            if not running:
                raise AdvkitError(f"internal: steps {[s.id for s in waiting]} wait on steps that never run")
            try:
                done, outcome = self.executor.wait([entry[0] for entry in running.values()])
            except AdvkitError:
                self._salvage(running, parts)
                raise
            _, step, index = running.pop(id(done))
            self._collect(step, index, outcome, parts)

    def _collect(self, step: Step, index: int, outcome: TaskOutcome, parts: dict[str, dict[int, TaskOutcome]]) -> None:
        """Write a task's files; once every shard of its step is in, finish the step."""
        self._write_files(outcome.files)
        parts.setdefault(step.id, {})[index] = outcome
        if len(parts[step.id]) == len(step.shards or [None]):
            collected = parts.pop(step.id)
            self._finish(step, [collected[i] for i in range(len(collected))])

    def _salvage(self, running: dict[int, tuple[Pending, Step, int]], parts: dict[str, dict[int, TaskOutcome]]) -> None:
        """After a task failed: keep every step that already finished elsewhere, stop the rest."""
        pending = [entry[0] for entry in running.values()]
        for task in self.executor.poll(pending):
            _, step, index = running.pop(id(task))
            try:
                _, outcome = self.executor.wait([task])
            except AdvkitError:
                continue
            self._collect(step, index, outcome, parts)
        self.executor.cancel([entry[0] for entry in running.values()])

    def _submit(self, step: Step, shard: tuple[int, int] | None, plan: list[Step]) -> Pending:
        remote = self.executor.remote
        needed = closure(plan, step.id)
        names = sorted({name for d in needed for name in artifact_names(self.results[d], inputs_only=True)}) if remote else []
        carried = step.inputs.get("carry_from") if step.kind == "evasion" else None
        if remote and carried:  # the rows the smaller eps broke: read by this step only
            names.append(self.results[carried]["adversarial"])
        task = StepTask(
            step=step,
            shard=shard,
            config=self.config,
            results={d: self.results[d] for d in needed},  # the same on every executor: a step sees its dependencies only
            inputs_of=self._inputs_of,
            fingerprint=self._task_fingerprint,
            run_dir=None if remote else str(self.run_dir),
            artifact_names=names,
            progress=None if remote else self.progress,
        )
        train = self._share("train", self.train_data) if STEP_KINDS[step.kind].needs_train else None
        blobs = [self._share(f"file:{name}", lambda name=name: (self.run_dir / name).read_bytes()) for name in names]
        return self.executor.submit(run_step_task, task, self._share_model(), self._share("eval", self.eval_data), train, *blobs, label=step.id)

    def _share(self, key: str, value: Callable[[], Any]) -> Shared:
        if key not in self._shared:
            self._shared[key] = self.executor.put(value())
        return self._shared[key]

    def _share_model(self) -> Shared:
        if "model" not in self._shared:
            from advkit.models.portable import share_model

            self._shared["model"] = share_model(self.executor, self.model())
        return self._shared["model"]

    def _write_files(self, files: dict[str, bytes]) -> None:
        for name, blob in files.items():
            target = self.run_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                tmp.write_bytes(blob)

    def _finish(self, step: Step, outcomes: list[TaskOutcome]) -> None:
        kind = STEP_KINDS[step.kind]
        seconds = sum(o.seconds for o in outcomes)
        if kind.merge is None:
            result = outcomes[0].value
        else:
            import time

            start = time.perf_counter()
            result = kind.merge(StepContext(self._driver_workspace(), step), [o.value for o in outcomes])
            seconds += time.perf_counter() - start
        self.results[step.id] = result
        self.timings[step.id] = seconds
        write_json(self._step_path(step), {"id": step.id, "hash": step.hash, "seconds": seconds, "result": result})
        self.notify(f"{seconds:6.1f}s  {step.id}{eta_text(self)}")
        self._tick(len(self.results))
        reestimate_after(self, step)

    def _driver_workspace(self) -> Workspace:
        from advkit.models.portable import ResidentModel

        return Workspace(self.config, self.run_dir, ResidentModel(self.model()), self.eval_data(), None, self.results, self._inputs_of, self._task_fingerprint, self.progress)


def artifact_names(result: dict[str, Any], *, inputs_only: bool = False) -> list[str]:
    """The run-relative files a step result names: models, triggers and (unless
    ``inputs_only``: what every later step may read) the example images the report shows
    and the adversarial rows a sweep's next budget reads (shipped to that step alone)."""
    nested = [result["record"]] if isinstance(result.get("record"), dict) else []
    keys = ("artifact", "triggers") if inputs_only else ("artifact", "examples", "triggers", "adversarial")
    return [r[k] for r in [result, *nested] for k in keys if isinstance(r.get(k), str)]
