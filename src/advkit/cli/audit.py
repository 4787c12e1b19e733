"""``advkit audit``: attack, mitigate, attack again; write the run's report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from advkit.errors import AdvkitError
from advkit.cli.common import (
    AddressOpt,
    ExecutorOpt,
    ThreadsOpt,
    WorkersOpt,
    check_executor_options,
    command,
    err,
    out,
    progress_callback,
    writable,
)


@command()
def audit(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default: the builtin audit)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/audit"),
    resume: Annotated[bool, typer.Option("--resume", help="continue a run: finished steps are not recomputed")] = False,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="print the default config and exit")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="time one forward+backward batch, print every step's estimated cost and exit")] = False,
    budget: Annotated[float | None, typer.Option("--budget", help="minutes: cut rows, restarts, epochs and samples (in that order) until the estimate fits")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N (default: the config's device)")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32|bf16|fp16: autocast for attacks and training, verdicts in fp32 (default: the config's)")] = None,
) -> None:
    """Attack, mitigate, attack again; write report.json and report.html in the run directory."""
    from advkit.audit.config import default_yaml, load_config
    from advkit.audit.report import write_views
    from advkit.audit.runner import AuditRunner
    from advkit.engine import make_executor

    if print_config:
        out.print(default_yaml(), markup=False, highlight=False, end="")
        return
    check_executor_options(executor, address, workers, threads)
    cfg = load_config(config)
    cfg = _with_overrides(cfg, device, precision)
    if budget is not None and not budget > 0:
        raise AdvkitError(f"--budget must be a positive number of minutes; got {budget:g}")
    if estimate:
        _print_estimate(AuditRunner(cfg, out_dir, budget_minutes=budget))
        return
    writable(out_dir, "--out", directory=True)
    with make_executor(executor, address=address, workers=workers, threads=threads) as engine:
        runner = AuditRunner(
            cfg, out_dir, resume=resume, progress=progress_callback(True), notify=lambda m: err.print(m, markup=False), executor=engine, budget_minutes=budget
        )
        report = runner.run()
    html = write_views(out_dir, report, ("html",))[0]
    _print_audit_summary(report)
    out.print(f"report: {html}")


def _with_overrides(cfg: Any, device: str | None, precision: str | None) -> Any:
    """The config with ``--device`` and ``--precision`` applied (checked before any work)."""
    from advkit.cli.common import check_device, check_precision

    update: dict[str, Any] = {}
    if device is not None:
        update["device"] = check_device(device)
    if precision is not None:
        update["precision"] = check_precision(precision)
    return cfg.model_copy(update=update) if update else cfg


def _print_estimate(runner: Any) -> None:
    """The plan with each step's estimated seconds (upper bounds), written nowhere."""
    runner.prepare()
    rows = runner.estimates
    for cut in runner.cuts:
        out.print(f"--budget cut: {cut['key']} {cut['from']} -> {cut['to']}", markup=False)
    table = Table(title="advkit audit --estimate (upper bounds: attacks retire rows, Neural Cleanse stops early)")
    for column in ("step", "kind", "estimated seconds"):
        table.add_column(column, justify="right" if column == "estimated seconds" else "left")
    for row in rows:
        table.add_row(row["step"], row["kind"], f"{row['estimated_seconds']:.1f}")
    table.add_row("total", "", f"{sum(r['estimated_seconds'] for r in rows):.1f}")
    out.print(table)
    floor = runner.floor.to_dict()
    out.print(f"floor: {floor['forward_backward_per_row'] * 1e3:.3f} ms per row forward+backward, {floor['forward_per_row'] * 1e3:.3f} ms forward")


def _print_audit_summary(report: dict[str, Any]) -> None:
    """Accuracy under attack per model, the backdoor scenarios and the findings."""
    _print_evasion_table(report)
    for scenario in report["backdoor"]["scenarios"]:
        line = f"{scenario['id']}: backdoor success {scenario['attack_success_rate']:.1%}, clean {scenario['clean_accuracy']:.1%}"
        for m in scenario["mitigations"]:
            if m.get("applied"):
                line += f"; {m['mitigation']} -> {m['attack_success_rate_after']:.1%} (clean {m['held_out_clean_accuracy_after']:.1%})"
        out.print(line)
    for scenario in report.get("poisoning", []):
        if scenario.get("effect") == "targeted":
            out.print(f"{scenario['id']}: {scenario['success_rate']:.0%} of {len(scenario['targets'])} targets flipped ({scenario['poisoned_rows']} poisons in all)")
            continue
        out.print(f"{scenario['id']}: clean {scenario['reference_clean_accuracy']:.1%} -> {scenario['clean_accuracy']:.1%} ({100 * scenario['accuracy_drop']:.1f} pt)")
    out.print("findings:")
    for f in report["findings"]:
        out.print(f"  [{f['severity'].upper()}] {f['title']}", markup=False, highlight=False)


def _print_evasion_table(report: dict[str, Any]) -> None:
    """One row per (attack, eps), worst case last; one column per model."""
    table = Table(title="advkit audit: accuracy under attack (clean accuracy in the header)")
    table.add_column("attack")
    table.add_column("eps", justify="right")
    from advkit.audit.render.html import attacked_models

    models = attacked_models(report)
    for model in models:
        table.add_column(f"{model['label']}\nclean {model['clean_accuracy']:.1%}", justify="right")
    cells = {(r["model"], r["attack"], r["threat"]["eps"]): r for r in report["evasion"]}
    cells.update({(w["model"], "worst case", w["eps"]): w for w in report.get("evasion_worst", [])})
    budgets = sorted({r["threat"]["eps"] for r in report["evasion"]})
    for attack in [*sorted({r["attack"] for r in report["evasion"]}), "worst case"]:
        for eps in budgets:
            row = [attack, f"{eps:g}"]
            for model in models:
                r = cells.get((model["id"], attack, eps))
                row.append(f"{r['adversarial_accuracy']:.1%}" if r else "-")
            table.add_row(*row)
    out.print(table)


__all__ = ["audit"]
