"""Budget sweeps that carry broken rows forward: attack only the rows still standing.

An adversarial example found inside the eps-ball is inside every larger ball of the same
norm, and it still reaches the same goal on the same model. So a sweep over increasing
eps (Carlini et al., "On Evaluating Adversarial Robustness", 2019, §5: report robustness
as a curve over the budget) need not attack a row again once it has fallen: the row is
carried to the next budget with its example, re-verified on the model (one forward pass),
and only the rows still standing are attacked. Every random draw is keyed by the row
(:mod:`advkit.attacks.evasion.row_random`), so a row that is attacked gets the very
attack an independent run at that budget would give it; hence each budget's robust
accuracy is at most the independent run's, row by row. Each result records
``rows_attacked`` and ``rows_carried``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.base import EvasionAttack, Progress, as_handle
from advkit.attacks.evasion.verify import goal_reached
from advkit.core import AttackResult, ModelHandle, Threat
from advkit.errors import AdvkitError
from advkit.metrics import perturbation_norms


def check_carry(previous: AttackResult, attack: EvasionAttack, n: int) -> None:
    """``previous`` may seed ``attack``: same attack, norm and goal, no larger budget, same rows."""
    threat = attack.threat
    if previous.attack != attack.name:
        raise AdvkitError(f"a sweep carries rows within one attack; got {previous.attack} then {attack.name}")
    if (previous.threat.norm, previous.threat.goal) != (threat.norm, threat.goal):
        raise AdvkitError(
            f"{attack.name}: rows carry only within one norm and goal; got {previous.threat.norm}/{previous.threat.goal} then {threat.norm}/{threat.goal}"
        )
    if previous.threat.eps > threat.eps:
        raise AdvkitError(f"{attack.name}: a sweep runs in increasing eps; got {previous.threat.eps:g} then {threat.eps:g}")
    if previous.n != n:
        raise AdvkitError(f"{attack.name}: the carried result has {previous.n} rows, the data {n}")


def carry_forward(
    attack: EvasionAttack,
    model: ModelHandle,
    x: Tensor,
    y: Tensor,
    previous: AttackResult | None,
    *,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    rows: Tensor | None = None,
) -> AttackResult:
    """``attack`` on every row ``previous`` (same attack, smaller eps) left standing.

    Rows ``previous`` broke keep their example once the model confirms it still reaches
    the goal; their prediction, perturbation and query count are those of that example.
    Without ``previous`` this is the plain attack. In a targeted sweep the targets of
    ``previous`` are kept, so every row is judged against one target at every budget.
    """
    handle = as_handle(model)
    if previous is None:
        return attack(handle, x, y, target=target, generator=generator, progress=progress, rows=rows)
    check_carry(previous, attack, x.shape[0])
    start = time.perf_counter()
    x = handle.to_device(x)
    y = handle.to_device(y)
    if attack.threat.goal == "targeted":
        if previous.target is None:
            raise AdvkitError(f"{attack.name}: the carried targeted result has no targets")
        if target is not None and not torch.equal(handle.to_device(target), handle.to_device(previous.target)):
            raise AdvkitError(f"{attack.name}: a targeted sweep keeps one target per row; these targets differ from the carried ones")
        target = handle.to_device(previous.target)
    ids = torch.arange(x.shape[0]) if rows is None else rows.cpu()
    threat = attack.threat.with_bounds(handle.bounds)
    n = x.shape[0]
    x_adv = handle.to_device(previous.x_adv).clone()
    adv_pred = torch.empty_like(y)
    success = torch.zeros(n, dtype=torch.bool, device=y.device)
    adv_prob = torch.empty(n, device=x.device) if threat.goal == "confidence" else None
    was_broken = handle.to_device(previous.success).nonzero().squeeze(1)
    if was_broken.numel():  # the model confirms every carried example before it counts
        with handle.eval_mode():
            logits = handle.predict_logits(x_adv[was_broken], attack.batch_size)
        held = goal_reached(logits, y[was_broken], target[was_broken] if target is not None else None, threat)
        kept = was_broken[held]
        success[kept] = True
        adv_pred[kept] = logits.argmax(1)[held]
        if adv_prob is not None:
            adv_prob[kept] = torch.softmax(logits[held], 1).gather(1, y[kept][:, None]).squeeze(1)
    carried = success.clone()
    open_rows = (~carried).nonzero().squeeze(1)
    clean_pred = handle.to_device(previous.clean_pred).clone()
    queries = previous.queries.clone() if previous.queries is not None else None
    clean_prob = previous.clean_true_prob.clone() if previous.clean_true_prob is not None else None
    fresh: AttackResult | None = None
    if open_rows.numel():
        fresh = attack(
            handle,
            x[open_rows],
            y[open_rows],
            target=target[open_rows] if target is not None else None,
            generator=generator,
            progress=progress,
            rows=ids[open_rows.cpu()],
        )
        x_adv[open_rows] = fresh.x_adv
        adv_pred[open_rows] = fresh.adv_pred
        success[open_rows] = fresh.success
        clean_pred[open_rows] = fresh.clean_pred
        if queries is not None and fresh.queries is not None:
            queries[open_rows.cpu()] = fresh.queries
        if adv_prob is not None and fresh.adv_true_prob is not None:
            adv_prob[open_rows] = fresh.adv_true_prob
        if clean_prob is not None and fresh.clean_true_prob is not None:
            clean_prob[open_rows.to(clean_prob.device)] = fresh.clean_true_prob.to(clean_prob.device)
    result = AttackResult(
        attack=attack.name,
        threat=fresh.threat if fresh is not None else threat,
        x_adv=x_adv,
        y=y,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        success=success,
        perturbation=perturbation_norms(x_adv - x, threat.norm),
        seconds=time.perf_counter() - start,
        num_classes=handle.num_classes,
        target=target,
        queries=queries,
        params={**(fresh.params if fresh is not None else attack.params_for(threat)), "carried_from_eps": previous.threat.eps},
        rows_attacked=int(open_rows.numel()),
        rows_carried=int(carried.sum()),
    )
    if adv_prob is not None:
        result.clean_true_prob, result.adv_true_prob = clean_prob, adv_prob
    return result


def sweep(
    attacks: Sequence[EvasionAttack],
    model: ModelHandle,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    seed: int = 0,
    carry: bool = True,
    progress: Progress | None = None,
) -> list[AttackResult]:
    """One attack at several budgets, in increasing eps, each budget seeded ``seed``.

    With ``carry`` (default) each budget attacks only the rows the previous one left
    standing; ``carry=False`` runs every budget independently (the same seeds).
    """
    order = sorted(range(len(attacks)), key=lambda i: attacks[i].threat.eps)
    results: list[AttackResult | None] = [None] * len(attacks)
    previous: AttackResult | None = None
    for i in order:
        generator = torch.Generator().manual_seed(seed)
        result = carry_forward(attacks[i], model, x, y, previous if carry else None, target=target, generator=generator, progress=progress)
        results[i] = previous = result
    return [r for r in results if r is not None]


def save_rows(path: Path, result: AttackResult) -> None:
    """The per-row part of a result a later budget of the sweep needs (npz, no pickle).

    Only the rows that reached the goal keep their adversarial input (``broken_rows``,
    ``x_adv``): the others are attacked again at the next budget.
    """
    from advkit.fileio import save_arrays

    broken = result.success.cpu()
    arrays: dict[str, Any] = {
        "broken_rows": broken.nonzero().squeeze(1).numpy(),
        "x_adv": result.x_adv.detach().cpu()[broken].numpy(),
        "success": broken.numpy(),
        "clean_pred": result.clean_pred.cpu().numpy(),
    }
    for name in ("target", "queries", "clean_true_prob"):
        value = getattr(result, name)
        if value is not None:
            arrays[name] = value.detach().cpu().numpy()
    save_arrays(path, **arrays)


def load_rows(path: Path, attack: str, threat: Threat, y: Tensor, num_classes: int) -> AttackResult:
    """A result read back by :func:`save_rows`, enough to carry its rows forward."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: torch.from_numpy(data[name].copy()) for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise AdvkitError(f"{path}: not a saved sweep result ({exc})") from None
    success = arrays["success"]
    if success.shape[0] != y.shape[0]:
        raise AdvkitError(f"{path}: {success.shape[0]} rows saved, {y.shape[0]} expected")
    x_adv = torch.full((y.shape[0], *arrays["x_adv"].shape[1:]), float("nan"))  # standing rows: attacked again
    x_adv[arrays["broken_rows"]] = arrays["x_adv"]
    return AttackResult(
        attack=attack,
        threat=threat,
        x_adv=x_adv,
        y=y,
        clean_pred=arrays["clean_pred"],
        adv_pred=arrays["clean_pred"],  # not needed to carry: the model re-verifies every carried row
        success=success,
        perturbation=torch.zeros(y.shape[0]),
        seconds=0.0,
        num_classes=num_classes,
        target=arrays.get("target"),
        queries=arrays.get("queries"),
        clean_true_prob=arrays.get("clean_true_prob"),
    )


def concat_results(parts: list[AttackResult], keep_examples: bool = False) -> AttackResult:
    """One result of the same attack and budget run on consecutive chunks of rows (streamed data).

    Every per-row field is concatenated in order; seconds, rows attacked and rows carried
    add up. The adversarial inputs are kept only with ``keep_examples`` (a streamed run
    holds one chunk's at a time); otherwise ``x_adv`` is empty.
    """
    if not parts:
        raise AdvkitError("internal: no chunk results to join")
    first = parts[0]

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        return torch.cat([v.cpu() for v in values])

    x_adv = torch.cat([p.x_adv.cpu() for p in parts]) if keep_examples else first.x_adv.new_empty((0, *first.x_adv.shape[1:])).cpu()
    attacked = [p.n if p.rows_attacked is None else p.rows_attacked for p in parts]
    return AttackResult(
        attack=first.attack,
        threat=first.threat,
        x_adv=x_adv,
        y=cat("y"),  # type: ignore[arg-type]
        clean_pred=cat("clean_pred"),  # type: ignore[arg-type]
        adv_pred=cat("adv_pred"),  # type: ignore[arg-type]
        success=cat("success"),  # type: ignore[arg-type]
        perturbation=cat("perturbation"),  # type: ignore[arg-type]
        seconds=sum(p.seconds for p in parts),
        num_classes=first.num_classes,
        target=cat("target"),
        queries=cat("queries"),
        clean_true_prob=cat("clean_true_prob"),
        adv_true_prob=cat("adv_true_prob"),
        params=_joined_params(parts),
        rows_attacked=None if all(p.rows_attacked is None for p in parts) else sum(attacked),
        rows_carried=sum(p.rows_carried for p in parts),
    )


def _joined_params(parts: list[AttackResult]) -> dict[str, Any]:
    """The first chunk's parameters, with AutoAttack's per-component ``breakdown`` summed over chunks."""
    params = dict(parts[0].params)
    if not all(isinstance(p.params.get("breakdown"), list) for p in parts):
        return params
    joined = []
    for index, entry in enumerate(params["breakdown"]):
        same = [p.params["breakdown"][index] for p in parts if index < len(p.params["breakdown"])]
        merged = dict(entry)
        for key in ("rows_attacked", "rows_broken", "seconds", "queries"):
            if all(key in e for e in same):
                merged[key] = sum(e[key] for e in same)
        if all("robust_accuracy" in e for e in same):  # the share of every row still standing after this component
            rows = [p.n for p in parts][: len(same)]
            merged["robust_accuracy"] = sum(e["robust_accuracy"] * n for e, n in zip(same, rows, strict=True)) / max(1, sum(rows))
        joined.append(merged)
    params["breakdown"] = joined
    return params
