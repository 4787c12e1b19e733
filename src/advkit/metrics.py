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


def attack_success_rate(success: Tensor, clean_correct: Tensor) -> float:
    """Share of clean-correct rows on which the attack reached its goal."""
    n = int(clean_correct.sum())
    if n == 0:
        return 0.0
    return float((success & clean_correct).sum()) / n


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
