"""A finished run as a plain record: what the report is built from (not the runner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advkit.audit.plan import Step
    from advkit.audit.runner import AuditRunner


@dataclass
class RunRecord:
    config: dict[str, Any]
    steps: list[dict[str, Any]]  # {id, kind, inputs, depends} in plan order
    results: dict[str, dict[str, Any]]
    timings: dict[str, float]
    cached: list[str]
    labels: list[int]  # the attacked rows' labels, for the per-row worst case
    num_classes: int
    device: str
    executor: dict[str, Any]
    defaults_applied: list[dict[str, Any]]
    estimates: list[dict[str, Any]]
    floor: dict[str, Any] | None
    budget: dict[str, Any] | None
    replans: list[dict[str, Any]]

    @classmethod
    def of(cls, runner: AuditRunner, plan: list[Step]) -> RunRecord:
        config = runner.config
        labels = runner.eval_data().head(config.evasion.limit).y.tolist()
        return cls(
            config=config.model_dump(mode="json"),
            steps=[step.describe() for step in plan],
            results=dict(runner.results),
            timings=dict(runner.timings),
            cached=list(runner.cached),
            labels=labels,
            num_classes=runner.model().num_classes,
            device=str(runner.model().device),
            executor={**runner.executor.describe(), **runner.run_stats.to_dict()},
            defaults_applied=list(runner.defaults_applied),
            estimates=list(runner.estimates),
            floor={**runner.floor.to_dict(), "probe_standing": {f"{eps:g}": share for eps, share in (runner.probes["model"].standing() if "model" in runner.probes else {}).items()}}
            if runner.floor is not None
            else None,
            budget={"minutes": runner.budget_minutes, "cuts": list(runner.cuts)} if runner.budget_minutes is not None else None,
            replans=list(runner.replans),
        )
