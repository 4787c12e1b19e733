"""Honest metrics, all computed on the same rows (DESIGN.md principle 7).

``attack_success_rate`` is over the rows the model got right on clean inputs: the
share whose adversarial version reaches the attack's goal. Per-class tables say which
classes fall first (the per-class trust figures of the audit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Share of rows whose prediction equals the label (0.0 for no rows)."""
    if y.numel() == 0:
        return 0.0
    return float((pred.to(y.device) == y).float().mean())


def attack_success_rate(success: Tensor, clean_correct: Tensor) -> float | None:
    """Share of clean-correct rows on which the attack reached its goal.

    ``None`` when the model gets no row right: there is nothing to attack, and 0 would
    read as "the attack never works".
    """
    n = int(clean_correct.sum())
    if n == 0:
        return None
    return float((success.to(clean_correct.device) & clean_correct).sum()) / n


def per_class_table(y: Tensor, clean_pred: Tensor, adv_pred: Tensor, num_classes: int) -> list[dict[str, Any]]:
    """Rows ``{class, n, clean_accuracy, adversarial_accuracy}`` for every class present."""
    y = y.cpu()
    n = torch.bincount(y, minlength=num_classes)
    clean = torch.bincount(y[clean_pred.cpu() == y], minlength=num_classes)
    adv = torch.bincount(y[adv_pred.cpu() == y], minlength=num_classes)
    rows = []
    for c in range(num_classes):
        count = int(n[c])
        if count == 0:
            continue
        rows.append(
            {
                "class": c,
                "n": count,
                "clean_accuracy": int(clean[c]) / count,
                "adversarial_accuracy": int(adv[c]) / count,
            }
        )
    return rows


def query_summary(queries: Tensor | None, rows: Tensor) -> dict[str, float] | None:
    """Mean and median queries over the given rows (successful attacks), or None."""
    if queries is None:
        return None
    q = queries[rows.to(queries.device)].double()
    if q.numel() == 0:
        return {"mean": None, "median": None}  # type: ignore[dict-item]
    return {"mean": float(q.mean()), "median": float(q.median())}


def perturbation_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-row size of a perturbation in the threat's norm.

    ``l0`` counts changed pixel positions (a pixel counts once whatever its channels).
    """
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (delta.abs().amax(1) > 0).flatten(1).sum(1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}")


def worst_case(
    y: Tensor,
    clean_pred: Tensor,
    adv_preds: list[Tensor],
    successes: list[Tensor],
    num_classes: int,
    names: list[str],
) -> dict[str, Any]:
    """The per-row worst case over several attacks on the same rows (DESIGN.md principle 7).

    A row is robust only if every attack left it standing: it counts as correct under
    attack only when every attack's adversarial prediction is its label, and as an attack
    success when any attack reached its goal. ``broken_by`` says, per attack, how many
    clean-correct rows it was the first in ``names`` order to break.
    """
    if not adv_preds or len(adv_preds) != len(successes) or len(adv_preds) != len(names):
        raise ValueError("worst_case needs one prediction and one success vector per attack")
    y, clean_pred = y.cpu(), clean_pred.cpu()
    worst_pred = y.clone()
    any_success = torch.zeros_like(y, dtype=torch.bool)
    clean_correct = clean_pred == y
    broken_by: dict[str, int] = {}
    for name, pred, success in zip(names, adv_preds, successes, strict=True):
        pred, success = pred.cpu(), success.cpu().bool()
        if pred.shape != y.shape or success.shape != y.shape:
            raise ValueError(f"{name}: per-row results cover {pred.shape[0]} rows, not the {y.shape[0]} of the others")
        fresh = (worst_pred == y) & (pred != y)
        worst_pred[fresh] = pred[fresh]
        newly = success & ~any_success & clean_correct
        broken_by[name] = int(newly.sum())
        any_success |= success
    return {
        "attack": "worst",
        "attacks": list(names),
        "n": int(y.shape[0]),
        "clean_accuracy": accuracy(clean_pred, y),
        "adversarial_accuracy": accuracy(worst_pred, y),
        "attack_success_rate": attack_success_rate(any_success, clean_correct),
        "per_class": per_class_table(y, clean_pred, worst_pred, num_classes),
        "broken_by": broken_by,
    }


def worst_of_results(results: list[Any]) -> dict[str, Any]:
    """The ``worst`` record of several :class:`~advkit.core.AttackResult` on the same rows and budget.

    :func:`worst_case` plus the threat (the least knowledge any of the attacks needed, so
    a worst case that includes a black-box attack says so) and the summed seconds.
    """
    from advkit.core.threat import KNOWLEDGE_LEVELS

    first = results[0]
    record = worst_case(
        first.y, first.clean_pred, [r.adv_pred for r in results], [r.success for r in results], first.num_classes, [r.attack for r in results]
    )
    threat = first.threat.to_dict()
    threat["knowledge"] = min((r.threat.knowledge for r in results), key=KNOWLEDGE_LEVELS.index)
    record.update({"threat": threat, "queries": None, "seconds": sum(r.seconds for r in results)})
    return record
