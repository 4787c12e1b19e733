"""``advkit attack``: evasion attacks at one or more budgets, with reliability checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich.table import Table

from advkit.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    SeedOpt,
    SplitOpt,
    command,
    err,
    load_model_and_data,
    out,
    parse_floats,
    percent,
    preprocessing_of,
    progress_callback,
    write_json_output,
)
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.attacks.evasion.base import EvasionAttack
    from advkit.core import AttackResult, ModelHandle
    from advkit.data import Dataset
    from advkit.registry import Entry
    from advkit.attacks.sanity import SanityReport


@command()
def attack(
    names: Annotated[list[str], typer.Argument(help="attack name(s), e.g. fgsm pgd (see advkit list)")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    eps: Annotated[str, typer.Option("--eps", help="budget, or several separated by commas")] = "0.3",
    norm: Annotated[str, typer.Option("--norm", help="linf|l2")] = "linf",
    goal: Annotated[str, typer.Option("--goal", help="untargeted|targeted|confidence")] = "untargeted",
    target: Annotated[int | None, typer.Option("--target", help="target class for every row (targeted goal)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="iterations (iterative attacks)")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="restarts (pgd)")] = None,
    step_size: Annotated[float | None, typer.Option("--step-size", help="absolute step size")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="auto|ce|margin (pgd)")] = None,
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="query budget per image (black-box attacks)")] = None,
    knowledge: Annotated[str | None, typer.Option("--knowledge", help="what the attacker sees: white|score|label (default: what the attack needs)")] = None,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 500,
    device: DeviceOpt = "cpu",
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="run the reliability checks first")] = True,
    carry: Annotated[bool, typer.Option("--carry/--no-carry", help="several eps: attack at each eps only the rows still standing (default); --no-carry runs each eps on every row")] = True,
    json_path: JsonOpt = None,
) -> None:
    """Run evasion attacks on a model and data; print accuracy under attack.

    With several attacks, each budget also gets a ``worst`` record: a row counts as robust
    only if every attack left it standing. Budgets run in increasing eps; a row an attack
    broke at a smaller eps is carried to the larger ones with its example (re-verified),
    and only the rows still standing are attacked (``rows_attacked``, ``rows_carried``). Options an attack does not take (``--max-queries``
    for white-box attacks, ``--steps`` for FGSM) are passed only to the attacks that take them.
    """
    from advkit.attacks.sanity import run_checks

    settings = {
        k: v for k, v in {"steps": steps, "restarts": restarts, "step_size": step_size, "loss": loss, "max_queries": max_queries}.items() if v is not None
    }
    entries, budgets, attack_objs = _build_attacks(names, eps, settings, norm, goal, knowledge, batch_size)
    handle, dataset = load_model_and_data(model, data, split, limit, device, image_size=image_size)
    x_rows, y_rows, targets = _attack_rows(handle, dataset, target, f"{data}:{split}")
    model_checks = run_checks(handle, dataset.x, dataset.y) if checks else None
    meta = {"model": model, "data": data, "split": split, "seed": seed, **preprocessing_of(dataset)}
    results = _run_budgets(handle, entries, attack_objs, budgets, x_rows, y_rows, targets, model_checks, meta, seed, carry)
    if model_checks is not None:
        _print_unreliable(results)
    _print_attack_table(results)
    write_json_output(json_path, results[0] if len(results) == 1 else results)


def _build_attacks(
    names: list[str], eps: str, settings: dict[str, Any], norm: str, goal: str, knowledge: str | None, batch_size: int,
) -> tuple[list[Entry], list[float], dict[tuple[str, float], EvasionAttack]]:
    """The named attacks' registry entries, the budgets and one attack object per (attack, budget).

    Everything is checked here, before the model and data are loaded.
    """
    from advkit.core import Threat
    from advkit.registry import build_evasion, check_settings_apply, lookup

    entries = [lookup(name, "evasion") for name in names]
    if len({e.name for e in entries}) != len(entries):
        raise AdvkitError(f"each attack may be named once; got {' '.join(names)}")
    budgets = parse_floats(eps, "--eps")
    check_settings_apply([e.name for e in entries], settings)
    threats = {(e.name, b): Threat(norm=norm, eps=b, goal=goal, knowledge=knowledge or e.knowledge) for e in entries for b in budgets}
    attack_objs = {key: build_evasion(key[0], threat, settings, strict=False, batch_size=batch_size) for key, threat in threats.items()}
    return entries, budgets, attack_objs


def _attack_rows(handle: ModelHandle, dataset: Dataset, target: int | None, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The rows to attack and their targets: with ``--target``, the rows not already of that class."""
    targets = None
    if target is not None:
        if not 0 <= target < handle.num_classes:
            raise AdvkitError(f"--target {target} is outside the model's classes 0..{handle.num_classes - 1}")
        targets = torch.full_like(dataset.y, target)
    rows = slice(None) if targets is None else dataset.y != target  # a row cannot move to its own class
    x_rows, y_rows = dataset.x[rows], dataset.y[rows]
    if x_rows.shape[0] == 0:
        raise AdvkitError(f"--target {target}: every row of {where} already has that label; nothing to attack")
    return x_rows, y_rows, targets[rows] if targets is not None else None


def _run_budgets(
    handle: ModelHandle,
    entries: list[Entry],
    attack_objs: dict[tuple[str, float], EvasionAttack],
    budgets: list[float],
    x_rows: torch.Tensor,
    y_rows: torch.Tensor,
    targets: torch.Tensor | None,
    model_checks: SanityReport | None,
    meta: dict[str, Any],
    seed: int,
    carry: bool = True,
) -> list[dict[str, Any]]:
    """Every attack at every budget (increasing eps), plus a ``worst`` record per budget for several attacks."""
    from advkit.attacks.evasion.sweep import carry_forward
    from advkit.metrics import worst_of_results
    from advkit.attacks.sanity import SanityReport, check_eps_zero

    progress = progress_callback(True)
    results: list[dict[str, Any]] = []
    previous: dict[str, AttackResult] = {}
    for budget in sorted(budgets):
        at_budget: list[AttackResult] = []
        for entry in entries:
            attack_obj = attack_objs[(entry.name, budget)]
            eps_zero = check_eps_zero(attack_obj, handle, x_rows[:64], y_rows[:64]) if model_checks is not None else None
            generator = torch.Generator().manual_seed(seed)
            seed_result = previous.get(entry.name) if carry else None
            result = carry_forward(attack_obj, handle, x_rows, y_rows, seed_result, target=targets, generator=generator, progress=progress)
            previous[entry.name] = result
            at_budget.append(result)
            record = {**result.to_dict(), **meta}
            if model_checks is not None and eps_zero is not None:
                record["sanity"] = SanityReport(model_checks.findings + [eps_zero]).to_dict()
            results.append(record)
        if len(at_budget) > 1:
            results.append({**worst_of_results(at_budget), **meta})
            if model_checks is not None:
                _add_blackbox_checks(results, at_budget)
    return results


def _add_blackbox_checks(results: list[dict[str, Any]], at_budget: list[Any]) -> None:
    """Attach the black-box-vs-strongest-white-box findings to that white-box record of one budget."""
    from advkit.attacks.sanity import check_blackbox_vs_strongest

    strongest, findings = check_blackbox_vs_strongest(at_budget)
    if strongest is None:
        return
    record = next(rec for rec in results if rec["attack"] == strongest.attack and rec["threat"]["eps"] == strongest.threat.eps)
    sanity = record.get("sanity")
    if sanity is None:
        return
    for finding in findings:
        sanity["findings"].append(finding.to_dict())
        if not finding.ok:
            sanity["reasons"].append(f"{finding.check}: {finding.detail}")
            sanity["reliable"] = False


def _print_unreliable(results: list[dict[str, Any]]) -> None:
    """Each distinct reason a result cannot be trusted, once, on stderr."""
    seen: set[str] = set()
    for record in results:
        for reason in record.get("sanity", {}).get("reasons", []):
            if reason not in seen:
                seen.add(reason)
                err.print(f"unreliable: {reason}", markup=False)


def _print_attack_table(results: list[dict[str, Any]]) -> None:
    """One row per result: threat, accuracies, success rate, queries, time, reliability."""
    table = Table(title="advkit attack")
    counted = any(r.get("queries") for r in results)
    columns = ("attack", "norm", "eps", "goal", "n", "clean acc", "adv acc", "success rate", *(("median queries",) if counted else ()), "seconds", "reliable")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("attack", "norm", "goal") else "left")
    for r in results:
        sanity = r.get("sanity")
        median = (r.get("queries") or {}).get("median")
        queries = (f"{median:.0f}" if median is not None else "-",) if counted else ()
        name = r["attack"] if r["attack"] != "worst" else f"worst of {', '.join(r['attacks'])}"
        table.add_row(
            name,
            r["threat"]["norm"],
            f"{r['threat']['eps']:g}",
            r["threat"]["goal"],
            str(r["n"]),
            f"{r['clean_accuracy']:.1%}",
            f"{r['adversarial_accuracy']:.1%}",
            percent(r["attack_success_rate"]),
            *queries,
            f"{r['seconds']:.2f}",
            "-" if sanity is None else ("yes" if sanity["reliable"] else "NO"),
        )
    out.print(table)


__all__ = ["attack"]
