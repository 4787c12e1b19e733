"""Fit an audit into a time budget by cutting work in a documented order, never silently.

While the plan's estimate (:mod:`advkit.audit.estimate`, upper bounds) exceeds the
budget, the next cut in this order is applied, each halving its setting down to a floor
before the next one starts:

1. rows: ``evasion.limit`` (down to 50 rows), ``certification.limit`` (down to 20),
   ``backdoor_defense.limit`` (the rows Neural Cleanse optimises on, down to 50), then
   ``fine_tune.rows`` (the rows every fine-tuning trains on, down to 100);
2. restarts: ``evasion.restarts`` (down to 1);
3. Neural Cleanse epochs: ``backdoor_defense.epochs`` (down to 5);
4. samples: ``certification.n`` (down to 100, and ``n0`` with it), then
   ``evasion.max_queries`` (the queries of Square and the black-box attacks, down to 100);
5. training epochs: ``adversarial_training.epochs``, then ``certification.epochs`` and
   ``certification.denoiser_epochs`` (down to 2), then ``fine_tune.epochs`` (down to 1);
6. budgets: ``evasion.eps`` keeps every other value from the smallest (down to 2 values;
   with carry the smallest budget is the dearest: most rows stand there);
7. targets: ``evasion.target_classes`` (APGD-T's and FAB-T's, down to 3: the classes
   nearest the clean logit, where most targeted successes are found);
8. rows again, below the first floors: ``evasion.limit`` (down to 25),
   ``backdoor_defense.limit`` (down to 20), ``certification.limit`` (down to 10).

The cuts that weaken an attack (``max_queries``, ``target_classes``) come after the
ones that only cost statistics, and the report lists every cut next to the numbers.
A cut that would not lower the estimate (a setting this plan does not use) is not made.
Every cut is recorded ({key, from, to, estimated_seconds}) for ``report.json``'s
``budget``; a plan still over budget after every cut is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from advkit.audit.config import AuditConfig
from advkit.errors import AdvkitError

# (dotted key, floor); the current value of a key may be None ("every row"): rows of the data.
# A list (the eps) keeps every other value and its floor is a count.
CUT_ORDER: tuple[tuple[str, int], ...] = (
    ("evasion.limit", 50),
    ("certification.limit", 20),
    ("backdoor_defense.limit", 50),
    ("fine_tune.rows", 100),
    ("evasion.restarts", 1),
    ("backdoor_defense.epochs", 5),
    ("certification.n", 100),
    ("evasion.max_queries", 100),
    ("adversarial_training.epochs", 2),
    ("certification.epochs", 2),
    ("certification.denoiser_epochs", 2),
    ("fine_tune.epochs", 1),
    ("evasion.eps", 2),
    ("evasion.target_classes", 3),
    ("evasion.limit", 25),
    ("backdoor_defense.limit", 20),
    ("certification.limit", 10),
)


def _get(config: AuditConfig, key: str) -> tuple[Any, Any]:
    section, field = key.split(".")
    part = getattr(config, section)
    return part, None if part is None else getattr(part, field)


def _cut_once(config: AuditConfig, key: str, floor: int, rows: dict[str, int]) -> tuple[AuditConfig, Any, Any] | None:
    """``config`` with ``key`` halved (not below ``floor``), or None when it cannot shrink."""
    part, value = _get(config, key)
    if part is None:
        return None
    current = rows.get(key) if value is None else value
    new: Any
    if isinstance(current, list):
        if len(current) <= floor:
            return None
        new = current[::2] if len(current[::2]) >= floor else current[:floor]
    else:
        if current is None or current <= floor:
            return None
        new = max(floor, current // 2)
    update: dict[str, Any] = {key.split(".")[1]: new}
    if key == "certification.n" and part.n0 > new:
        update["n0"] = new
    section = key.split(".")[0]
    return config.model_copy(update={section: part.model_copy(update=update)}), current, new


def fit_to_budget(
    config: AuditConfig, estimate: Callable[[AuditConfig], float], seconds: float, rows: int, train_rows: int = 0
) -> tuple[AuditConfig, list[dict[str, Any]]]:
    """The config cut until ``estimate(config) <= seconds``, and the cuts made, in order.

    ``rows`` and ``train_rows`` are what an unset (``None``: every row) limit means.
    """
    counts = {"evasion.limit": rows, "certification.limit": rows, "backdoor_defense.limit": rows, "fine_tune.rows": train_rows}
    if not seconds > 0:
        raise AdvkitError(f"--budget must be a positive number of minutes; got {seconds / 60:g}")
    cuts: list[dict[str, Any]] = []
    total = estimate(config)
    for key, floor in CUT_ORDER:
        while total > seconds:
            step = _cut_once(config, key, floor, counts)
            if step is None:
                break
            cut, before, after = step
            new_total = estimate(cut)
            if new_total >= total:  # the setting does not apply to this plan (e.g. epochs of a retraining when fine-tuning)
                break
            config, total = cut, new_total
            cuts.append({"key": key, "from": before, "to": after, "estimated_seconds": total})
        if total <= seconds:
            return config, cuts
    raise AdvkitError(
        f"the audit needs about {total / 60:.1f} minutes even after every cut ({len(cuts)} made), over the --budget of {seconds / 60:g}; "
        "raise --budget, or remove sections from the config"
    )
