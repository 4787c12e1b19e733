"""What each audit step will cost, from one timed forward+backward batch of the model.

Before the first step the runner times the model's floor on the evaluation rows: seconds
per row of one forward+backward pass (the input gradient, what an attack step costs) and
of one forward pass (a query, a CERTIFY sample). Each step kind counts its work in those
two units:

- attacks: rows x steps x restarts passes (APGD-T and FAB-T x 9 target classes, FAB x 2
  for its boundary gradients), black-box attacks rows x their query budget;
- Neural Cleanse: epochs x classes x rows passes; training: epochs x training rows x
  (attack steps + 1) passes, x 1.5 for the parameter gradients;
- CERTIFY: (n0 + n) x rows forward passes.

These are upper bounds where work stops early (attacks retire rows that fall, Neural
Cleanse stops classes that converge), so a run usually beats its estimate; the report
keeps both (``plan`` next to ``timings``). ``advkit audit CFG --estimate`` prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from advkit.audit.config import AuditConfig
from advkit.audit.plan import Step
from advkit.core import ModelHandle

TARGETS = 9  # APGD-T and FAB-T target classes
FALLING_STEPS = 2.0  # passes a row that an attack breaks costs before it retires (measured: most fall at the first steps)
TRAIN_FACTOR = 1.5  # a training pass also computes the parameter gradients
NC_ROWS = 1.0  # Neural Cleanse stamps every row for every class each epoch


@dataclass(frozen=True)
class Floor:
    """Seconds per row of one forward+backward (input gradient) and of one forward pass."""

    backward: float
    forward: float
    denoiser: float = 0.0  # forward+backward of the audit's denoiser per row (when the plan trains one)

    def to_dict(self) -> dict[str, float]:
        out = {"forward_backward_per_row": self.backward, "forward_per_row": self.forward}
        if self.denoiser:
            out["denoiser_forward_backward_per_row"] = self.denoiser
        return out


WARMUP = 3  # TorchScript's profiling executor specialises a graph over its first calls (two by default)


def measure_floor(model: ModelHandle, x: torch.Tensor, batch: int = 64, repeats: int = 3) -> Floor:
    """Time one batch of ``x`` through ``model``: the best of ``repeats`` after :data:`WARMUP` calls.

    The batch is at most what the memory cap lets one forward+backward pass hold.
    """
    from advkit.core.memory import rows_that_fit

    xb = model.to_device(x[: rows_that_fit(model, min(batch, x.shape[0]), what="timing the model")])
    yb = torch.zeros(xb.shape[0], dtype=torch.long, device=xb.device)

    def backward() -> None:
        x_in = xb.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model.logits(x_in), yb, reduction="sum"), x_in)

    def forward() -> None:
        with torch.inference_mode():
            model.logits(xb)

    with model.eval_mode():
        return Floor(_per_row(backward, xb.shape[0], repeats), _per_row(forward, xb.shape[0], repeats))


def _per_row(fn: Any, rows: int, repeats: int = 3, warmup: int = WARMUP) -> float:
    """Seconds per row of ``fn`` (one batch of ``rows``): the best of ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) / max(rows, 1)


def measure_denoiser(floor: Floor, model: ModelHandle, x: torch.Tensor, depth: int, width: int, batch: int = 32) -> Floor:
    """``floor`` with the per-row forward+backward time of a fresh denoiser of that size on ``x``."""
    from dataclasses import replace

    from advkit.certify.denoised import Denoiser

    denoiser = Denoiser(model.input_shape[0], depth=depth, width=width).to(model.device)
    xb = model.to_device(x[:batch])

    def step() -> None:
        denoiser(xb).square().mean().backward()

    return replace(floor, denoiser=_per_row(step, xb.shape[0], warmup=2))


PROBE_ROWS, PROBE_STEPS = 32, 5


def probe_standing(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, config: AuditConfig) -> dict[float, float]:
    """The share of rows a short PGD leaves standing on the audited model, per budget.

    Attacks retire the rows they break, so their cost depends on how robust the model
    is: a PGD of :data:`PROBE_STEPS` steps on :data:`PROBE_ROWS` rows per eps (a few
    hundred passes in all) measures it before the plan is estimated. Misclassified rows
    count as broken. A mitigated model, not trained yet, is estimated as if every row
    stood (an upper bound).
    """
    from advkit.audit.plan import threat_for
    from advkit.registry import build_evasion

    eps_list = config.evasion.eps or []
    xb, yb = x[:PROBE_ROWS], y[:PROBE_ROWS]
    out: dict[float, float] = {}
    for eps in eps_list:
        if eps <= 0:
            out[eps] = float((model.predict(xb).cpu() == yb).float().mean())
            continue
        attack = build_evasion("pgd", threat_for(config, eps), {"steps": PROBE_STEPS, "restarts": 1}, strict=False)
        result = attack(model, xb, yb, generator=torch.Generator().manual_seed(0))
        out[eps] = float(result.clean_correct.logical_and(~result.success).float().mean().cpu())
    return out


def _attack_units(name: str, rows: float, config: AuditConfig, standing: float = 1.0, attacked: float = 1.0) -> tuple[float, float]:
    """(forward+backward rows, forward rows) of one attack on ``rows`` rows.

    ``attacked`` is the share of the rows a sweep still attacks (the others were broken at
    a smaller eps), ``standing`` the share of those the attack will not break; a row that
    falls costs about :data:`FALLING_STEPS` steps, a row that stands every step.
    """
    from advkit.registry import lookup

    ev = config.evasion
    steps, restarts, queries = ev.steps, ev.restarts, ev.max_queries
    live = rows * attacked
    stand = live * standing
    fall = live - stand
    if name == "fgsm":
        return rows, rows
    if name in ("pgd", "bim", "illc"):
        runs = restarts if name == "pgd" else 1
        return stand * steps * runs + fall * FALLING_STEPS, rows
    if name in ("apgd-ce", "apgd-dlr"):
        return stand * steps + fall * FALLING_STEPS, rows
    if name == "apgd-t":
        return stand * steps * TARGETS + fall * FALLING_STEPS, rows
    if name == "fab":
        return stand * steps * 2 + fall * FALLING_STEPS, rows
    if name == "autoattack":  # APGD-CE on every row, then APGD-T, FAB-T and Square on the rows still standing
        return stand * steps * (1 + TARGETS + 2 * TARGETS) + fall * FALLING_STEPS, rows + stand * (queries + 2)
    if lookup(name, "evasion").knowledge != "white":
        return 0.0, rows + stand * (queries + 2) + fall * FALLING_STEPS * 10
    return stand * steps + fall * FALLING_STEPS, rows


def step_units(
    step: Step, config: AuditConfig, eval_rows: int, train_rows: int, classes: int, arch: str = "", floor: Floor | None = None,
    probe: dict[float, float] | None = None,
) -> tuple[float, float]:
    """(forward+backward rows, forward rows) a step will spend, at most (``arch``: the audited model's)."""
    attack_rows = min(eval_rows, config.evasion.limit or eval_rows)
    kind = step.kind
    if kind == "provenance":
        return 2 * min(eval_rows, 256), 2 * eval_rows
    if kind == "evasion":
        standing, attacked = 1.0, 1.0
        if step.inputs["target"] == "model" and probe:
            eps = step.inputs["eps"]
            standing_here = probe.get(eps, 1.0)
            if step.inputs.get("carry_from"):  # a sweep attacks only the rows the smaller eps left standing
                smaller = [e for e in probe if e < eps]
                attacked = probe[max(smaller)] if smaller else 1.0
            standing = standing_here / attacked if attacked > 0 else 0.0
        return _attack_units(step.inputs["attack"], attack_rows, config, min(1.0, standing), attacked)
    if kind == "gradient-masking":
        return 2 * min(attack_rows, 256), 2 * min(attack_rows, 256)
    if kind == "inspect":
        rows = min(eval_rows, step.inputs.get("limit") or eval_rows)
        return step.inputs["epochs"] * classes * rows * NC_ROWS, eval_rows
    fine_tuning = step.inputs.get("training") == "fine-tune"
    if fine_tuning:  # a fine-tuning runs fine_tune.epochs on at most fine_tune.rows rows
        train_rows = min(train_rows, config.fine_tune.rows or train_rows)
    if kind == "adversarial-training":
        at = config.adversarial_training
        assert at is not None
        attack_steps = {"adv-pgd": 10, "adv-fast": 1, "trades": 10}[at.defense]
        epochs = config.fine_tune.epochs if fine_tuning else at.epochs
        return epochs * train_rows * (attack_steps + TRAIN_FACTOR), eval_rows
    if kind == "poisoning":
        from advkit.models.recipes import zoo_epochs

        epochs = config.fine_tune.epochs if fine_tuning else zoo_epochs(arch)
        return epochs * train_rows * TRAIN_FACTOR, 2 * eval_rows
    if kind == "certified-training":
        cert = config.certification
        assert cert is not None
        extra = {"gaussian": 0, "smoothadv": 2, "macer": 1}[cert.training or "gaussian"]
        epochs = config.fine_tune.epochs if fine_tuning else cert.epochs
        return epochs * train_rows * (TRAIN_FACTOR + extra), eval_rows
    if kind == "denoiser-training":  # each row: the frozen model's backward pass (for the denoiser's gradient) and the denoiser's own
        cert = config.certification
        assert cert is not None
        rows = min(train_rows, config.fine_tune.rows or train_rows)
        denoiser = floor.denoiser / floor.backward if floor is not None and floor.backward > 0 and floor.denoiser else 1.0
        return cert.denoiser_epochs * rows * (1.0 + denoiser * TRAIN_FACTOR), eval_rows
    if kind == "certification":
        cert = config.certification
        assert cert is not None
        rows = min(eval_rows, cert.limit or eval_rows)
        return 0.0, (cert.n0 + cert.n) * rows + eval_rows
    if kind == "backdoor-mitigation":  # unlearning's fine-tuning epochs or pruning's checks on the clean rows
        return 10 * eval_rows * TRAIN_FACTOR, 20 * eval_rows
    return 0.0, eval_rows


def estimate_plan(
    plan: list[Step], config: AuditConfig, floor: Floor, eval_rows: int, train_rows: int, classes: int, arch: str = "",
    probe: dict[float, float] | None = None,
) -> list[dict[str, Any]]:
    """``[{step, kind, estimated_seconds}]`` in plan order."""
    out = []
    for step in plan:
        backward, forward = step_units(step, config, eval_rows, train_rows, classes, arch, floor, probe)
        out.append({"step": step.id, "kind": step.kind, "estimated_seconds": backward * floor.backward + forward * floor.forward})
    return out
