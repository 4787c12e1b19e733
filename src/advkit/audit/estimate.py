"""What each audit step will cost, from one timed forward+backward batch of the model.

Before the first step the runner times the model's floor on the evaluation rows: seconds
per row of one forward+backward pass (the input gradient, what an attack step costs) and
of one forward pass (a query, a CERTIFY sample). Each step kind counts its work in those
two units:

- attacks: rows x steps x restarts passes (APGD-T and FAB-T x ``evasion.target_classes``),
  black-box attacks rows x their query budget;
- Neural Cleanse: epochs x classes x rows passes; training: epochs x training rows x
  (attack steps + 1) passes, x 1.5 for the parameter gradients;
- CERTIFY: (n0 + n) x rows forward passes.

These are upper bounds where work stops early (attacks retire rows that fall, Neural
Cleanse stops classes that converge), so a run usually beats its estimate; the report
keeps both (``plan`` next to ``timings``). ``advkit audit CFG --estimate`` prints them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from advkit.audit.config import AuditConfig
from advkit.audit.plan import DENOISED, Step
from advkit.core import ModelHandle

FALLING_STEPS = 2.0  # passes a row that an attack breaks costs before it retires (measured: most fall at the first steps)
TRAIN_FACTOR = 1.5  # a training pass also computes the parameter gradients
NC_ROWS = 1.0  # Neural Cleanse stamps every row for every class each epoch


@dataclass(frozen=True)
class Floor:
    """Seconds per row of one forward+backward (input gradient) and of one forward pass."""

    backward: float
    forward: float
    denoiser: float = 0.0  # forward+backward of the audit's denoiser per row (when the plan trains one)
    denoiser_forward: float = 0.0  # its forward pass alone (each CERTIFY sample of the denoised model)

    def to_dict(self) -> dict[str, float]:
        out = {"forward_backward_per_row": self.backward, "forward_per_row": self.forward}
        if self.denoiser:
            out["denoiser_forward_backward_per_row"] = self.denoiser
            out["denoiser_forward_per_row"] = self.denoiser_forward
        return out


WARMUP = 3  # TorchScript's profiling executor specialises a graph over its first calls (two by default)


def measure_floor(model: ModelHandle, x: torch.Tensor, batch: int = 64, repeats: int = 3) -> Floor:
    """Time one batch of ``x`` through ``model``: the median of ``repeats`` after :data:`WARMUP` calls.

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
    """Seconds per row of ``fn`` (one batch of ``rows``): the median of ``repeats`` after
    ``warmup`` calls (the median, not the best: the estimate is of sustained work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / max(rows, 1)


def measure_denoiser(floor: Floor, model: ModelHandle, x: torch.Tensor, depth: int, width: int, batch: int = 32) -> Floor:
    """``floor`` with the per-row forward+backward time of a fresh denoiser of that size on ``x``."""
    from dataclasses import replace

    from advkit.certify.denoised import Denoiser

    denoiser = Denoiser(model.input_shape[0], depth=depth, width=width).to(model.device)
    xb = model.to_device(x[:batch])

    def step() -> None:
        denoiser(xb).square().mean().backward()

    def forward() -> None:
        with torch.inference_mode():
            denoiser(xb)

    return replace(floor, denoiser=_per_row(step, xb.shape[0], warmup=2), denoiser_forward=_per_row(forward, xb.shape[0], warmup=1))


PROBE_ROWS, PROBE_STEPS = 32, 5


@dataclass(frozen=True)
class Share:
    """What one attack step will face, as shares of the rows it is given.

    ``attacked``: the rows it attacks at all (with carry, those the smaller budget left
    standing); of those, ``standing`` stand the cross-entropy phase (a falling row costs
    ``falling`` passes) and ``hard`` also stand the targeted phase (a row that falls
    there costs ``hard_falling`` passes more).
    """

    attacked: float = 1.0
    standing: float = 1.0
    falling: float = FALLING_STEPS
    hard: float = 1.0
    hard_falling: float = FALLING_STEPS


@dataclass(frozen=True)
class Probe:
    """Per budget and probed row, the forward passes it took to fall under a short attack.

    ``fell_at``: under cross-entropy PGD from the clean point (0 for a row the model
    already gets wrong, ``inf`` for a row still standing after :data:`PROBE_STEPS`
    steps); ``targeted_at``: for the rows that stood, under a targeted margin PGD towards
    the runner-up class (what APGD-T, FAB-T and PGD's margin restarts add; 0 for rows
    that had already fallen, ``inf`` for rows that stand both).
    """

    fell_at: dict[float, tuple[float, ...]]
    targeted_at: dict[float, tuple[float, ...]] = field(default_factory=dict)

    def standing(self) -> dict[float, float]:
        """The share of rows left standing by the cross-entropy phase, per eps (``report.json`` ``floor.probe_standing``)."""
        return {eps: sum(math.isinf(v) for v in rows) / max(1, len(rows)) for eps, rows in self.fell_at.items()}

    def at_zero(self) -> Share:
        """The :class:`Share` of an attack at eps 0 (the zero-budget check): nothing can
        fall but the rows the model already gets wrong, which retire at the first pass."""
        rows = next(iter(self.fell_at.values()), ())
        if not rows:
            return Share()
        right = sum(v != 0.0 for v in rows) / len(rows)
        return Share(1.0, right, 1.0, right, FALLING_STEPS)

    def sweep(self, eps: float, previous: float | None) -> Share:
        """The :class:`Share` of the step at ``eps`` (carried from ``previous`` when given)."""
        rows = self.fell_at.get(eps)
        if not rows:
            return Share()
        second = self.targeted_at.get(eps) or tuple(math.inf if math.isinf(v) else 0.0 for v in rows)
        before = self.fell_at.get(previous, rows) if previous is not None else None
        keep = [i for i in range(len(rows)) if before is None or math.isinf(before[i])]
        if not keep:
            return Share(0.0, 0.0, FALLING_STEPS, 0.0, FALLING_STEPS)
        fell = [rows[i] for i in keep if not math.isinf(rows[i])]
        stood = [i for i in keep if math.isinf(rows[i])]
        later = [second[i] for i in stood if not math.isinf(second[i])]
        return Share(
            attacked=len(keep) / len(rows),
            standing=len(stood) / len(keep),
            falling=sum(fell) / len(fell) if fell else FALLING_STEPS,
            hard=(len(stood) - len(later)) / len(keep),
            hard_falling=sum(later) / len(later) if later else FALLING_STEPS,
        )


def probe_standing(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, config: AuditConfig) -> Probe:
    """How many rows a short PGD leaves standing on a model, and how fast the others fall.

    Attacks retire the rows they break, so their cost depends on how robust the model
    is. Per eps, on :data:`PROBE_ROWS` rows, PGD's own loop
    (:func:`advkit.attacks.evasion.steps.pgd`: first step eps from the clean point, then
    steps of 2.5 eps / ``evasion.steps``, rows retiring as they fall) runs for
    :data:`PROBE_STEPS` steps with cross-entropy (what APGD-CE and PGD's first restart
    do), then on the rows still standing with a targeted margin loss towards the
    runner-up class (what APGD-T, FAB-T and PGD's margin restarts add): a few hundred
    passes in all, before the plan is estimated. A mitigated model, not trained yet, is
    estimated as if every row stood (an upper bound); once its training step is done the
    runner probes it too and re-estimates the steps left (``report.json``
    ``plan[].reestimated_seconds``).
    """
    from advkit.attacks.evasion.apgd_losses import top_other_classes
    from advkit.attacks.evasion.steps import pgd

    xb, yb = model.to_device(x[:PROBE_ROWS]), y[:PROBE_ROWS].to(model.device)
    norm = config.evasion.norm
    fell_at: dict[float, tuple[float, ...]] = {}
    targeted_at: dict[float, tuple[float, ...]] = {}
    with model.eval_mode():
        clean = model.predict_logits(xb).to(xb.device)
        wrong = clean.argmax(1) != yb
        runner_up = top_other_classes(clean, yb, 1)[0]
        for eps in config.evasion.eps or []:
            if eps <= 0:
                fell_at[eps] = tuple(0.0 if w else math.inf for w in wrong.tolist())
                continue
            common = {"eps": eps, "norm": norm, "steps": PROBE_STEPS, "step_size": 2.5 * eps / config.evasion.steps, "bounds": model.bounds,
                      "first_step": eps, "track_best": False, "evaluate_final": False, "early_stop": True}
            run = pgd(model.logits, xb, yb, **common)
            assert run.reached_at is not None
            first = [0.0 if w else (float(r) if r > 0 else math.inf) for w, r in zip(wrong.tolist(), run.reached_at.tolist(), strict=True)]
            second = [0.0] * len(first)
            stood = [i for i, v in enumerate(first) if math.isinf(v)]
            if stood:
                rows = torch.tensor(stood, device=xb.device)
                again = pgd(model.logits, xb[rows], yb[rows], goal="targeted", target=runner_up[rows], loss="margin", **common)
                assert again.reached_at is not None
                for i, r in zip(stood, again.reached_at.tolist(), strict=True):
                    second[i] = float(r) if r > 0 else math.inf
            fell_at[eps], targeted_at[eps] = tuple(first), tuple(second)
    return Probe(fell_at, targeted_at)


def _attack_units(name: str, rows: float, config: AuditConfig, share: Share | None = None, classes: int = 10) -> tuple[float, float]:
    """(forward+backward rows, forward rows) of one attack on ``rows`` rows facing ``share``
    (:class:`Share`; none: every row stands every step, the upper bound)."""
    from advkit.registry import lookup

    share = share or Share()
    ev = config.evasion
    steps, restarts, queries = ev.steps, ev.restarts, ev.max_queries
    targets = max(1, min(ev.target_classes, classes - 1))  # APGD-T's and FAB-T's target classes
    live = rows * share.attacked
    stand = live * share.standing
    hard = live * min(share.hard, share.standing)
    soft = stand - hard  # stand cross-entropy, fall to a targeted loss
    fall = live - stand
    ce = fall * share.falling + stand * steps  # a cross-entropy run: the falling rows retire, the others run every step
    if name == "fgsm":
        return rows, rows
    if name == "pgd":  # restart 1 cross-entropy, restarts 2.. the margin loss on the rows still standing
        return ce + (soft * share.hard_falling + hard * steps * (restarts - 1) if restarts > 1 else 0.0), rows
    if name in ("bim", "illc", "apgd-ce", "apgd-dlr"):
        return ce, rows
    if name in ("apgd-t", "fab"):  # targeted (FAB-T by default): one gradient per step and target
        return fall * share.falling + soft * share.hard_falling + hard * steps * targets, rows
    if name == "autoattack":  # APGD-CE on every row, APGD-T on those standing, FAB-T and Square on those still standing
        return ce + soft * share.hard_falling + hard * steps * 2 * targets, rows + hard * (queries + 2)
    if lookup(name, "evasion").knowledge != "white":
        return 0.0, rows + stand * (queries + 2) + fall * share.falling * 10
    return ce, rows


def step_units(
    step: Step, config: AuditConfig, eval_rows: int, train_rows: int, classes: int, arch: str = "", floor: Floor | None = None,
    probes: dict[str, Probe] | None = None,
) -> tuple[float, float]:
    """(forward+backward rows, forward rows) a step will spend, at most (``arch``: the audited model's).

    ``probes`` maps a model (an evasion step's ``target``: ``model`` or a training
    step's id) to its :class:`Probe`; a model without one (a mitigated
    model not trained yet) is estimated as if every row stood.
    """
    attack_rows = min(eval_rows, config.evasion.limit or eval_rows)
    kind = step.kind
    if kind == "provenance":
        return 2 * min(eval_rows, 256), 2 * eval_rows
    if kind == "evasion":
        share = None
        probe = (probes or {}).get(step.inputs["target"])
        if probe is not None:
            eps = step.inputs["eps"]
            smaller = [e for e in config.evasion.eps or [] if e < eps] if step.inputs.get("carry_from") else []
            share = probe.sweep(eps, max(smaller) if smaller else None)
        backward, forward = _attack_units(step.inputs["attack"], attack_rows, config, share, classes)
        if not step.inputs.get("carry_from"):  # the sweep's zero-budget check: the attack at eps 0, where every row stands
            from advkit.audit.steps import EPS_ZERO_ROWS

            zero_rows = min(attack_rows, EPS_ZERO_ROWS)
            zero = probe.at_zero() if probe is not None else None
            zb, zf = (0.0, 2.0 * zero_rows) if step.inputs["attack"] == "autoattack" else _attack_units(step.inputs["attack"], zero_rows, config, zero, classes)
            backward, forward = backward + zb, forward + zf
        return backward, forward
    if kind == "gradient-masking":  # one input gradient and one forward on at most 256 rows (an escalation to Square is not counted)
        return min(attack_rows, 256), min(attack_rows, 256)
    if kind == "inspect":
        rows = min(eval_rows, step.inputs.get("limit") or eval_rows)
        epochs = step.inputs.get("epochs") or 16  # K-Arm's cap per class (pre-screening and early stops make it an upper bound)
        return epochs * classes * rows * NC_ROWS, eval_rows
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
        return _poisoning_units(step, config, eval_rows, train_rows, arch, fine_tuning)
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
        samples = (cert.n0 + cert.n) * rows
        if step.inputs.get("target") == DENOISED and floor is not None and floor.forward > 0:  # each sample also goes through the denoiser
            samples *= 1.0 + floor.denoiser_forward / floor.forward
        return 0.0, samples + eval_rows
    if kind == "data-defense":  # the scan (one pass over the train rows; STRIP 100 overlays each), then the retraining
        from advkit.models.recipes import zoo_epochs

        passes = 100 if step.inputs["scanner"] == "strip" else 1
        epochs = config.fine_tune.epochs if fine_tuning else zoo_epochs(arch)
        return epochs * train_rows * TRAIN_FACTOR, passes * train_rows + 2 * eval_rows
    if kind == "input-defense":  # the autoencoders (64-row batches), then per attack and eps four ways on the second half
        ev = config.evasion
        rows = eval_rows - eval_rows // 2
        per_attack = 3 * ev.steps * ev.restarts * rows + 2 * 50 * rows  # oblivious, BPDA, exact gradient; the detector-aware PGD
        return step.inputs["steps"] * 64 * TRAIN_FACTOR + len(ev.attacks) * len(ev.eps) * per_attack, 8 * eval_rows
    if kind == "backdoor-mitigation":
        from advkit.audit.steps import defender_rows
        from advkit.defenses.backdoor.mitigation import NeuronPruning, Unlearning

        defense = config.backdoor_defense
        rows = defender_rows(eval_rows, defense.limit if defense else None)
        held_out = eval_rows - eval_rows // 2
        if step.inputs["mitigation"] == "nc-unlearn":  # its fine-tuning epochs, then accuracy and trigger success before and after
            return Unlearning.epochs * rows * TRAIN_FACTOR, 4 * rows + 4 * held_out
        if step.inputs["mitigation"] == "fine-pruning":  # rank units, at most ``rounds`` accuracy checks, then the fine-tuning
            from advkit.defenses.backdoor.fine_pruning import FinePruning

            return FinePruning.epochs * rows * TRAIN_FACTOR, rows + FinePruning.rounds * rows + 4 * held_out
        if step.inputs["mitigation"] == "mode-connectivity":  # two ends and the curve trained; BatchNorm and accuracy at each point
            from advkit.defenses.backdoor.mode_connectivity import ModeConnectivityRepair as MCR

            points = MCR.points * (2 * rows + 2 * held_out)
            return (2 * MCR.endpoint_epochs + MCR.curve_epochs) * rows * TRAIN_FACTOR, points + 4 * held_out
        # pruning: rank the neurons (one pass), then at most ``rounds`` groups, each judged by accuracy and trigger success
        return 0.0, rows + NeuronPruning.rounds * 2 * rows + 4 * held_out
    return 0.0, eval_rows


def _poisoning_units(step: Step, config: AuditConfig, eval_rows: int, train_rows: int, arch: str, fine_tuning: bool) -> tuple[float, float]:
    """A poisoning scenario's (backward, forward) row-passes: its crafting, then each victim's training."""
    from advkit.attacks.poisoning import GradientMatching, PoisonFrogs
    from advkit.audit.poisoning_steps import GRADIENT_MATCHING_RESTARTS
    from advkit.models.recipes import zoo_epochs

    attack, targets = step.inputs.get("attack"), int(step.inputs.get("targets") or 1)
    if attack == "trojannet":  # the recogniser trains on synthetic 4x4 patches; then clean accuracy and each trigger on both models
        return 0.0, (2 + 2 * len(step.inputs.get("target_classes") or [0])) * eval_rows
    if attack == "poison-frogs":  # the collision (a feature pass per poison and step), then each victim
        poisons = int(step.inputs.get("poisons") or 1)
        collision = PoisonFrogs.steps * targets * poisons
        if step.inputs.get("setting") == "end-to-end":  # fine-tuned on train + poisons, 3 epochs
            return collision + targets * 3 * train_rows * TRAIN_FACTOR, targets * train_rows
        return collision, targets * (train_rows + 2 * eval_rows)  # features of the train rows, last layer by L-BFGS (feature-space only)
    epochs = config.fine_tune.epochs if fine_tuning else zoo_epochs(arch)
    victim = epochs * train_rows * TRAIN_FACTOR
    if attack == "gradient-matching":  # per target: restarts x steps over the poisons, each a double backward (~3 passes)
        poisons = max(1.0, float(step.inputs.get("rate") or 0.01) * train_rows)
        brew = GRADIENT_MATCHING_RESTARTS * GradientMatching.steps * poisons * 3
        return targets * (brew + victim), targets * 2 * eval_rows
    return victim, 3 * eval_rows  # then clean accuracy and the trigger's success on both models


def estimate_plan(
    plan: list[Step], config: AuditConfig, floor: Floor, eval_rows: int, train_rows: int, classes: int, arch: str = "",
    probes: dict[str, Probe] | None = None,
) -> list[dict[str, Any]]:
    """``[{step, kind, estimated_seconds}]`` in plan order."""
    out = []
    for step in plan:
        backward, forward = step_units(step, config, eval_rows, train_rows, classes, arch, floor, probes)
        out.append({"step": step.id, "kind": step.kind, "estimated_seconds": backward * floor.backward + forward * floor.forward})
    return out
