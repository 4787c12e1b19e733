"""The audit's estimates while it runs: every step's cost, the ETA, and re-estimates of the steps left from what a finished step taught (``report.json`` ``replans``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advkit.audit.config import AuditConfig
    from advkit.audit.plan import Step
    from advkit.audit.runner import AuditRunner


def latest_estimate(entry: dict[str, Any]) -> float:
    """A plan entry's latest estimate: re-estimated when it was, else the one made before the run."""
    return float(entry.get("reestimated_seconds", entry["estimated_seconds"]))


def plan_estimates(runner: AuditRunner, config: AuditConfig, plan: list[Step]) -> list[dict[str, Any]]:
    """Every step's cost from the timed floor and the probes (:mod:`advkit.audit.estimate`)."""
    from advkit.audit.estimate import estimate_plan
    from advkit.audit.steps import STEP_KINDS

    model = runner.model()
    train_rows = runner.train_rows() if any(STEP_KINDS[s.kind].needs_train for s in plan) else 0
    return estimate_plan(plan, config, runner.floor, len(runner.eval_data()), train_rows, model.num_classes, model.info.arch or "", runner.probes)


def eta_text(runner: AuditRunner) -> str:
    """``  (about Ns left)``: the estimates of the steps still to run, scaled by how the
    finished steps compared with their own estimates (the estimates are upper bounds)."""
    estimated = {e["step"]: latest_estimate(e) for e in runner.estimates}
    ran = [s for s in runner.timings if s in estimated and s not in runner.cached]
    spent, planned = sum(runner.timings[s] for s in ran), sum(estimated[s] for s in ran)
    left = sum(v for s, v in estimated.items() if s not in runner.results)
    if not left or planned <= 0:
        return ""
    return f"  (about {left * spent / planned / max(1, runner.executor.workers):.0f}s left)"


def seconds_left(runner: AuditRunner) -> float:
    """The current estimate of the steps not finished yet."""
    return sum(latest_estimate(e) for e in runner.estimates if e["step"] not in runner.results)


def reestimate_after(runner: AuditRunner, step: Step) -> None:
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

    if runner.floor is None or "model" not in runner.probes or not runner.estimates or not hasattr(runner, "_plan_steps"):
        return
    waiting = [s for s in runner._plan_steps if s.id not in runner.results]
    entry: dict[str, Any] = {"after": step.id}
    left_before = seconds_left(runner)
    if step.kind == "inspect":
        repairs = [s.id for s in waiting if s.kind == "backdoor-mitigation" and s.inputs.get("inspect") == step.id]
        if not repairs or runner.results[step.id].get("flagged"):
            return
        fresh = {s: 0.0 for s in repairs}
        entry["reason"] = "Neural Cleanse flagged no class: its repairs have nothing to repair"
    elif any(s.kind == "evasion" and s.inputs["target"] == step.id for s in waiting):
        start = time.perf_counter()
        trained = runner._driver_workspace().trained_model(step.id)
        runner.probes[step.id] = probe_standing(trained, runner.eval_data().x, runner.eval_data().y, runner.config)
        entry["probe_seconds"] = time.perf_counter() - start
        entry["probe_standing"] = {f"{eps:g}": share for eps, share in runner.probes[step.id].standing().items()}
        entry["reason"] = "the mitigated model, probed"
        attacks = {s.id for s in waiting if s.kind == "evasion" and s.inputs["target"] == step.id}
        fresh = {e["step"]: e["estimated_seconds"] for e in plan_estimates(runner, runner.config, runner._plan_steps) if e["step"] in attacks}
    else:
        return
    for estimate in runner.estimates:
        name = estimate["step"]
        if name in fresh and name not in runner.results and fresh[name] != latest_estimate(estimate):
            estimate["reestimated_seconds"] = fresh[name]
    entry.update(seconds_left_before=left_before, seconds_left_after=seconds_left(runner))
    runner.replans.append(entry)
    took = f"{entry['probe_seconds']:6.1f}s  " if "probe_seconds" in entry else " " * 9
    runner.notify(f"{took}re-estimated after {step.id} ({entry['reason']}): steps left {left_before:.0f}s -> {entry['seconds_left_after']:.0f}s")
