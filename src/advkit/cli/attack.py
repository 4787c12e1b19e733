"""``advkit attack``: evasion attacks at one or more budgets, with reliability checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich.table import Table
from torch import Tensor

from advkit.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    PrecisionOpt,
    SeedOpt,
    SplitOpt,
    check_precision,
    command,
    err,
    load_model_and_rows,
    out,
    parse_floats,
    percent,
    preprocessing_of,
    progress_callback,
    write_json_output,
)
from advkit.cli.defend import defended_records, load_defense
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.attacks.evasion.base import EvasionAttack
    from advkit.attacks.sanity import SanityReport
    from advkit.core import AttackResult, ModelHandle
    from advkit.data import Dataset
    from advkit.data.folder import FolderRows
    from advkit.registry import Entry


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
    precision: PrecisionOpt = "fp32",
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="run the reliability checks first")] = True,
    carry: Annotated[bool, typer.Option("--carry/--no-carry", help="several eps: attack at each eps only the rows still standing (default); --no-carry runs each eps on every row")] = True,
    defense: Annotated[Path | None, typer.Option("--defense", help="a folder from advkit defend: also attack the defended pipeline, obliviously and adaptively")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Run evasion attacks on a model and data; print accuracy under attack.

    With several attacks, each budget also gets a ``worst`` record: a row counts as robust
    only if every attack left it standing. Budgets run in increasing eps; a row an attack
    broke at a smaller eps is carried to the larger ones with its example (re-verified),
    and only the rows still standing are attacked (``rows_attacked``, ``rows_carried``). Options an attack does not take (``--max-queries``
    for white-box attacks, ``--steps`` for FGSM) are passed only to the attacks that take them.
    """
    settings = {
        k: v for k, v in {"steps": steps, "restarts": restarts, "step_size": step_size, "loss": loss, "max_queries": max_queries}.items() if v is not None
    }
    entries, budgets, attack_objs = _build_attacks(names, eps, settings, norm, goal, knowledge, batch_size)
    precision = check_precision(precision)
    handle, rows = load_model_and_rows(model, data, split, limit, device, image_size=image_size)
    handle.precision = precision
    if target is not None and not 0 <= target < handle.num_classes:
        raise AdvkitError(f"--target {target} is outside the model's classes 0..{handle.num_classes - 1}")
    fitted = load_defense(defense, handle) if defense is not None else None
    meta = {"model": model, "data": data, "split": split, "seed": seed, **preprocessing_of(rows), **({"precision": precision} if precision != "fp32" else {})}
    from advkit.data import streams

    chunks = _chunks(rows, batch_size, target)
    results = _run_budgets(handle, entries, attack_objs, budgets, chunks, checks, meta, seed, carry, stream=streams(rows))
    if not results:
        raise AdvkitError(f"--target {target}: every row of {data}:{split} already has that label; nothing to attack")
    if checks:
        _print_unreliable(results)
    _print_attack_table(results)
    if fitted is not None:  # MagNet in front of the model: each (attack, eps) again, obliviously and adaptively (BPDA)
        defended_records(results, attack_objs, handle, *_in_memory(rows), fitted, defense, seed, data, split, limit)
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


def _chunks(rows: Dataset | FolderRows, batch_size: int, target: int | None) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """``(row ids, x, y, targets)`` to attack: all rows at once in memory, or batch by batch
    from streamed data (:func:`advkit.data.streams`). With ``--target`` the rows already of
    that class are left out (a row cannot move to its own class); ids count the rows attacked,
    so a row's random draws are the same however the rows are chunked."""
    from advkit.data import streams

    source = rows.batches(batch_size) if streams(rows) else [(None, *_in_memory(rows))]
    first = 0
    for _, x, y in source:
        keep = slice(None) if target is None else y != target
        x, y = x[keep], y[keep]
        ids = torch.arange(first, first + y.shape[0])
        first += y.shape[0]
        if y.shape[0]:
            yield ids, x, y, None if target is None else torch.full_like(y, target)


def _in_memory(rows: Dataset | FolderRows) -> tuple[Tensor, Tensor]:
    from advkit.data import Dataset

    data = rows if isinstance(rows, Dataset) else rows.materialize()
    return data.x, data.y


def _run_budgets(
    handle: ModelHandle,
    entries: list[Entry],
    attack_objs: dict[tuple[str, float], EvasionAttack],
    budgets: list[float],
    chunks: Iterable[tuple[Tensor, Tensor, Tensor, Tensor | None]],
    checks: bool,
    meta: dict[str, Any],
    seed: int,
    carry: bool = True,
    stream: bool = False,
) -> list[dict[str, Any]]:
    """Every attack at every budget (increasing eps), plus a ``worst`` record per budget for several attacks.

    Each chunk of rows goes through every attack and budget before the next chunk is read
    (so a sweep carries its broken rows within the chunk); the chunks' results are joined
    per attack and budget. The reliability checks run on the first chunk.
    """
    from advkit.attacks.evasion.sweep import carry_forward, concat_results
    from advkit.attacks.sanity import SanityReport, check_eps_zero, run_checks
    from advkit.metrics import worst_of_results

    progress = progress_callback(True)
    parts: dict[tuple[str, float], list[AttackResult]] = {}
    model_checks: SanityReport | None = None
    eps_zero: dict[tuple[str, float], Any] = {}
    streamed = stream
    for index, (ids, x, y, targets) in enumerate(chunks):
        streamed = streamed or index > 0
        if checks and model_checks is None:
            model_checks = run_checks(handle, x, y)
            eps_zero = {key: check_eps_zero(attack_obj, handle, x[:64], y[:64]) for key, attack_obj in attack_objs.items()}
        for entry in entries:
            previous: AttackResult | None = None
            done: list[AttackResult] = []
            for budget in sorted(budgets):
                generator = torch.Generator().manual_seed(seed)
                result = carry_forward(attack_objs[(entry.name, budget)], handle, x, y, previous if carry else None, target=targets, generator=generator, progress=progress, rows=ids)
                previous = result
                done.append(result)
                parts.setdefault((entry.name, budget), []).append(result)
            if streamed:  # the chunk's examples are no longer needed: memory holds one chunk's at a time
                for result in done:
                    result.x_adv = result.x_adv.new_empty((0, *result.x_adv.shape[1:]))  # not a slice: a view would keep the storage
    results: list[dict[str, Any]] = []
    if not parts:
        return results
    single = len(next(iter(parts.values()))) == 1
    for budget in sorted(budgets):
        at_budget: list[AttackResult] = []
        for entry in entries:
            chunk_results = parts[(entry.name, budget)]
            result = chunk_results[0] if single else concat_results(chunk_results)
            at_budget.append(result)
            record = {**result.to_dict(), **meta}
            if model_checks is not None:
                record["sanity"] = SanityReport(model_checks.findings + [eps_zero[(entry.name, budget)]]).to_dict()
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
