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
from advkit.audit.steps import STEP_KINDS
from advkit.audit.tasks import StepTask, TaskOutcome, run_step_task
from advkit.audit.workspace import Progress, StepContext, Workspace
from advkit.core import ModelHandle
from advkit.data import Dataset
from advkit.engine import Executor, Pending, Shared
from advkit.errors import AdvkitError
from advkit.fileio import atomic_path, write_json

Notify = Callable[[str], None]

HELD_ROWS_SHARE = 0.25  # of the memory cap: the most the evaluation rows, and the training rows, each take in memory
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
        self.probe: Any = None  # estimate.Probe: how many rows a short PGD leaves standing per eps, how fast the others fall
        self.probes: dict[str, Any] = {}  # the same for each mitigated model, once trained (re-estimates)
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
        """The evaluation rows, held in memory: the split (its first ``limit`` rows), at most
        what fits in :data:`HELD_ROWS_SHARE` of the memory cap (a cap applied is recorded in
        ``defaults_applied``)."""
        if self._eval is None:
            self._eval = self._held_rows(self.config.split, self.config.limit, "limit")
        return self._eval

    def train_data(self) -> Dataset:
        """The defender's training rows: the train split, only its first ``fine_tune.rows``
        when every training step fine-tunes (the rest is never decoded), memory-capped as
        :meth:`eval_data`."""
        if self._train is None:
            self._train = self._held_rows("train", self._train_limit(), "fine_tune.rows" if self._fine_tuning() else "train rows")
        return self._train

    def train_rows(self) -> int:
        """How many training rows there are to train on (the split, memory-capped), from the
        file names alone and counted once; a fine-tuning reads at most ``fine_tune.rows`` of them."""
        if self._train_count is None:
            from advkit.data import open_rows

            rows = open_rows(self.config.data, split="train", image_size=self.config.image_size, crop_fraction=self.config.crop_fraction)
            self._train_count = min(len(rows), self._memory_rows(rows))
        return self._train_count

    def _fine_tuning(self) -> bool:
        return fine_tunes(self.config, self.model().info.arch)

    def _train_limit(self) -> int | None:
        return self.config.fine_tune.rows if self._fine_tuning() else None

    def _memory_rows(self, rows: Any) -> int:
        """How many of ``rows`` (a folder's, still on disk) fit in the share of the memory cap the audit holds rows in."""
        from advkit.core.memory import memory_cap
        from advkit.data import FolderRows

        if not isinstance(rows, FolderRows):
            return len(rows)
        c, h, w = rows.input_shape
        return max(1, int(memory_cap() * HELD_ROWS_SHARE) // (c * h * w * 4))

    def _held_rows(self, split: str, limit: int | None, key: str) -> Dataset:
        from advkit.data import open_rows

        rows = open_rows(self.config.data, split=split, limit=limit, image_size=self.config.image_size, crop_fraction=self.config.crop_fraction)
        fit = self._memory_rows(rows)
        if len(rows) > fit:
            c, h, w = rows.input_shape
            self._row_caps.append({
                "key": key,
                "value": fit,
                "because": f"the {split} split's {len(rows)} decoded rows would take {len(rows) * c * h * w * 4 / 2**30:.1f} GiB, "
                f"over {HELD_ROWS_SHARE:.0%} of the memory cap; set {key} (or max_memory_gb) to choose",
            })
            rows = rows.head(fit)
        return rows if isinstance(rows, Dataset) else rows.materialize()

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
        self.probe = probe_standing(self.model(), self.eval_data().x, self.eval_data().y, self.config)
        if any(step.kind == "denoiser-training" for step in plan):
            from advkit.audit.estimate import measure_denoiser
            from advkit.audit.training_steps import DENOISER_DEPTH, DENOISER_WIDTH

            self.floor = measure_denoiser(self.floor, self.model(), self.eval_data().x, DENOISER_DEPTH, DENOISER_WIDTH)
        if self.budget_minutes is not None:

            def total(config: AuditConfig) -> float:
                return sum(e["estimated_seconds"] for e in self._estimates(config, self.plan(config)))

            train_rows = self.train_rows() if any(STEP_KINDS[s.kind].needs_train for s in plan) else 0
            self.config, self.cuts = fit_to_budget(self.config, total, self.budget_minutes * 60, len(self.eval_data()), train_rows)
            for cut in self.cuts:
                self.notify(f"--budget: {cut['key']} {budget_text(cut['from'])} -> {budget_text(cut['to'])} (estimate {cut['estimated_seconds']:.0f}s)")
            plan = self.plan()
            self._check_plan(plan)
        self.estimates = self._estimates(self.config, plan)
        return plan

    def _estimates(self, config: AuditConfig, plan: list[Step]) -> list[dict[str, Any]]:
        """Every step's cost from the timed floor (:mod:`advkit.audit.estimate`)."""
        from advkit.audit.estimate import estimate_plan

        model = self.model()
        train_rows = self.train_rows() if any(STEP_KINDS[s.kind].needs_train for s in plan) else 0
        probes = {"model": self.probe, **self.probes} if self.probe is not None else dict(self.probes)
        return estimate_plan(plan, config, self.floor, len(self.eval_data()), train_rows, model.num_classes, model.info.arch or "", probes)

    def _check_plan(self, plan: list[Step]) -> None:
        """Steps that retrain need an architecture: say so before the first step runs."""
        if self.model().info.arch:
            return
        for step in plan:
            if STEP_KINDS[step.kind].needs_train and step.inputs.get("training") == "retrain":
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
        self.notify(f"{seconds:6.1f}s  {step.id}{self._eta()}")
        self._tick(len(self.results))
        self._reestimate_after(step)

    def _reestimate_after(self, step: Step) -> None:
        """Re-estimate the steps left from what a finished step taught.

        - A mitigated model's attacks were estimated as if every row stood (an upper
          bound, what the budget was fitted to). Once it is trained, the runner probes it
          (:func:`estimate.probe_standing`, as it probed the audited model) and
          re-estimates its evasion steps from the rows it keeps.
        - A Neural Cleanse inspection that flags no class leaves its repairs nothing to do.

        The steps left get ``reestimated_seconds`` (the ETA uses them) and ``replans`` an
        entry. No setting changes: the mitigated model is attacked on the same rows,
        budgets and attacks as the audited one, so the two stay comparable.
        """
        import time

        from advkit.audit.estimate import probe_standing

        if self.floor is None or self.probe is None or not self.estimates or not hasattr(self, "_plan_steps"):
            return
        waiting = [s for s in self._plan_steps if s.id not in self.results]
        entry: dict[str, Any] = {"after": step.id}
        left_before = self._seconds_left()
        if step.kind == "inspect":
            repairs = [s.id for s in waiting if s.kind == "backdoor-mitigation" and s.inputs["inspect"] == step.id]
            if not repairs or self.results[step.id].get("flagged"):
                return
            fresh = {s: 0.0 for s in repairs}
            entry["reason"] = "Neural Cleanse flagged no class: its repairs have nothing to repair"
        elif any(s.kind == "evasion" and s.inputs["target"] == step.id for s in waiting):
            start = time.perf_counter()
            trained = self._driver_workspace().trained_model(step.id)
            self.probes[step.id] = probe_standing(trained, self.eval_data().x, self.eval_data().y, self.config)
            entry["probe_seconds"] = time.perf_counter() - start
            entry["probe_standing"] = {f"{eps:g}": share for eps, share in self.probes[step.id].standing().items()}
            entry["reason"] = "the mitigated model, probed"
            attacks = {s.id for s in waiting if s.kind == "evasion" and s.inputs["target"] == step.id}
            fresh = {e["step"]: e["estimated_seconds"] for e in self._estimates(self.config, self._plan_steps) if e["step"] in attacks}
        else:
            return
        for estimate in self.estimates:
            name = estimate["step"]
            if name in fresh and name not in self.results and fresh[name] != estimate.get("reestimated_seconds", estimate["estimated_seconds"]):
                estimate["reestimated_seconds"] = fresh[name]
        entry.update(seconds_left_before=left_before, seconds_left_after=self._seconds_left())
        self.replans.append(entry)
        took = f"{entry['probe_seconds']:6.1f}s  " if "probe_seconds" in entry else " " * 9
        self.notify(f"{took}re-estimated after {step.id} ({entry['reason']}): steps left {left_before:.0f}s -> {entry['seconds_left_after']:.0f}s")

    def _seconds_left(self) -> float:
        """The current estimate of the steps not finished yet."""
        return sum(e.get("reestimated_seconds", e["estimated_seconds"]) for e in self.estimates if e["step"] not in self.results)

    def _eta(self) -> str:
        """``  (about Ns left)``: the estimates of the steps still to run, scaled by how the
        finished steps compared with their own estimates (the estimates are upper bounds)."""
        estimated = {e["step"]: e.get("reestimated_seconds", e["estimated_seconds"]) for e in self.estimates}
        ran = [s for s in self.timings if s in estimated and s not in self.cached]
        spent, planned = sum(self.timings[s] for s in ran), sum(estimated[s] for s in ran)
        left = sum(v for s, v in estimated.items() if s not in self.results)
        if not left or planned <= 0:
            return ""
        return f"  (about {left * spent / planned / max(1, self.executor.workers):.0f}s left)"

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
