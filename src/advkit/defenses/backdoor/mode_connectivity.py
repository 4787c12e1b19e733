"""Backdoor repair by mode connectivity: a point on a curve between two fine-tuned copies.

Zhao, Chen, Das, Ramamurthy & Lin, "Bridging Mode Connectivity in Loss Landscapes and
Adversarial Robustness", ICLR 2020 (code: IBM/model-sanitization), on the curves of
Garipov et al., NeurIPS 2018 (:mod:`advkit.defenses.backdoor.curve`). The defender has
the suspect model and a few clean rows, and never the trigger:

1. The clean rows are split, per class, into a *fitting* part and a held-out
   *validation* part (``validation_fraction``).
2. Two end models are fine-tuned from the suspect model on the fitting part (SGD with
   momentum 0.9 and weight decay, as the reference's ``train_baseline.py``; two seeds).
3. A quadratic Bezier curve joins them, its bend starting at their midpoint; the bend
   is trained on the fitting part with a fresh ``t ~ U(0, 1)`` per batch and the
   reference's L2 penalty on the point's weights, under the reference's schedule (the
   learning rate held for half the epochs, then down linearly to 1 % at 90 %).
4. ``points`` evenly spaced ``t`` in [0, 1] are evaluated: BatchNorm statistics are
   re-estimated on the fitting part at each ``t`` (the reference's ``update_bn``), then
   accuracy is measured on the validation part.
5. **Choice of t, without triggered data.** The paper reads ``t`` off plots of clean
   accuracy *and* attack success, which a defender cannot draw. Its finding is that
   the backdoor fades towards the middle of the curve while clean accuracy stays near
   the ends'. The rule here: among the evaluated ``t`` whose validation accuracy is at
   least the suspect model's minus ``max_accuracy_drop``, take the one farthest from
   both ends (closest to 0.5; the smaller ``t`` on a tie). The tolerance is never finer
   than one validation row (``1 / rows``): on a few dozen rows one mistake is several
   points. If no point qualifies, the point of best validation accuracy is taken and
   ``details["warning"]`` says so.

Simplifications versus the paper: the end models are always fine-tuned from the one
suspect model (the paper joins two independently tampered models), and their
fine-tuning uses a one-cycle cosine schedule instead of the reference's step schedule.
:func:`evaluate_curve` is the auditor's view (who knows the trigger): clean accuracy
and backdoor success at every evaluated ``t``, for a plot.

Measured (``benchmarks/bench_repair.py``: digits and mnist5k, BadNets and blend at
10 %, clean rows 5 % of the training split): **this repair does not remove the
backdoor.** Ends fine-tuned with the reference's settings stay in the suspect's basin,
the midpoint bend starts at a point of near-zero loss and hardly moves, and every
point of the curve keeps 98-100 % backdoor success. Ends fine-tuned hard enough to
leave the basin (``endpoint_lr=0.05, weight_decay=0.02``) lose it (2-19 %), but at
7-9 points of clean accuracy, and the curve's point is no better than its ends. A
permuted copy of the suspect as the second end (a distinct mode with the same
function, as Peng et al., ICML 2025, propose) left 17 % (digits) and 80 % (mnist5k)
success at the middle of the curve, 5-8 points down: with a few dozen clean rows the
path relearns the trigger from its ends.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advkit.attacks.poisoning.backdoor import Trigger, backdoor_success_rate
from advkit.core import ModelHandle
from advkit.defenses.backdoor.curve import BezierCurve, recompute_batchnorm
from advkit.errors import AdvkitError
from advkit.models.train import Progress, TrainConfig, fit
from advkit.registry import register

__all__ = [
    "ModeConnectivityRepair",
    "ModeConnectivityResult",
    "check_clean_rows",
    "choose_t",
    "evaluate_curve",
    "point_on_curve",
    "split_clean_rows",
]


@dataclass
class ModeConnectivityResult:
    """The repaired model (the curve at ``t``) and the curve's figures on the defender's data.

    ``curve`` has one row per evaluated ``t``: ``clean_accuracy`` on the held-out
    validation rows (what chose ``t``) and ``fitting_accuracy`` on the rows the curve
    was trained on. ``path`` and ``fitting_x`` let :func:`evaluate_curve` rebuild any point.
    """

    name: str
    model: ModelHandle
    t: float
    curve: list[dict[str, float]]
    clean_accuracy_before: float
    clean_accuracy_after: float
    seconds: float
    path: BezierCurve
    fitting_x: Tensor
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mitigation": self.name,
            "t": self.t,
            "defender_validation_accuracy_before": self.clean_accuracy_before,
            "defender_validation_accuracy_after": self.clean_accuracy_after,
            "curve": self.curve,
            "seconds": self.seconds,
            **self.details,
        }


def check_clean_rows(model: ModelHandle, x: Tensor, y: Tensor, method: str, per_class: int = 2) -> None:
    """The defender's clean rows fit the model, with at least ``per_class`` rows of every class
    (mode connectivity: two, one for each part of its split)."""
    if isinstance(model.net, torch.jit.ScriptModule):
        raise AdvkitError(f"{method} needs an eager nn.Module; a TorchScript model cannot be retrained here")
    if x.shape[0] != y.shape[0] or y.dim() != 1:
        raise AdvkitError(f"{method}: clean rows {list(x.shape)} and labels {list(y.shape)} do not match")
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise AdvkitError(f"{method}: clean rows have shape {list(x.shape[1:])}, the model takes {list(model.input_shape)}")
    classes = model.num_classes
    if x.shape[0] < per_class * classes:
        raise AdvkitError(f"{method}: {x.shape[0]} clean rows are too few; it needs at least {per_class} per class ({per_class * classes})")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or int(y.min()) < 0 or int(y.max()) >= classes:
        raise AdvkitError(f"{method}: clean labels must be integers in 0..{classes - 1}")
    counts = torch.bincount(y.long().cpu(), minlength=classes)
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        raise AdvkitError(f"{method}: class {short[0]} has {int(counts[short[0]])} clean rows; every class needs at least {per_class}")


def split_clean_rows(y: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per class, a seeded share ``fraction`` of the rows (at least one, never all) held out:
    returns the indices of the fitting part and of the validation part."""
    fitting, validation = [], []
    for label in torch.unique(y.cpu()):
        rows = (y.cpu() == label).nonzero().flatten()
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        held = min(rows.numel() - 1, max(1, round(fraction * rows.numel())))
        validation.append(rows[:held])
        fitting.append(rows[held:])
    return torch.sort(torch.cat(fitting)).values, torch.sort(torch.cat(validation)).values


def _accuracy(model: ModelHandle, x: Tensor, y: Tensor) -> float:
    return float((model.predict(x).cpu() == y.cpu()).float().mean())


def _curve_lr(base: float, epoch: int, epochs: int) -> float:
    """The reference's schedule: ``base`` for half the epochs, linearly to 1 % by 90 %, then 1 %."""
    alpha = epoch / epochs
    if alpha <= 0.5:
        return base
    if alpha <= 0.9:
        return base * (1.0 - (alpha - 0.5) / 0.4 * 0.99)
    return base * 0.01


def choose_t(curve: list[dict[str, float]], reference: float, max_drop: float) -> tuple[float, str | None]:
    """The evaluated ``t`` farthest from both ends whose validation accuracy is within
    ``max_drop`` of ``reference``; else the most accurate one, with a warning."""
    within = [row for row in curve if row["clean_accuracy"] >= reference - max_drop - 1e-6]
    if within:
        return min(within, key=lambda row: (abs(row["t"] - 0.5), row["t"]))["t"], None
    best = max(curve, key=lambda row: (row["clean_accuracy"], -abs(row["t"] - 0.5)))
    return best["t"], (
        f"no point of the curve is within {max_drop:.0%} of the suspect model's validation accuracy "
        f"({reference:.1%}); took the most accurate, t={best['t']:.2f}"
    )


@register(
    "mode-connectivity",
    family="defense",
    knowledge="white",
    paper="Zhao, Chen, Das, Ramamurthy, Lin. Bridging Mode Connectivity in Loss Landscapes and Adversarial Robustness. ICLR 2020",
    atlas="AML.M0003",
    summary="repair a backdoored model: a point on a Bezier curve between two clean fine-tuned copies",
)
@dataclass
class ModeConnectivityRepair:
    """Train a curve between two clean fine-tunes of the suspect model and take a point on it.

    Defaults are the reference code's: the ends fine-tuned for 100 epochs with SGD at
    0.015 and weight decay 1e-4 (``train_baseline.py``), the curve trained for 100 epochs
    at 0.01 (``train.py``); batches of 32 instead of 128, as the clean sets are small.
    """

    validation_fraction: float = 0.25
    endpoint_epochs: int = 100
    endpoint_lr: float = 0.015
    curve_epochs: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 32
    points: int = 11
    max_accuracy_drop: float = 0.03

    def __post_init__(self) -> None:
        if self.points < 3:
            raise AdvkitError(f"mode-connectivity: points must be >= 3 (both ends and the middle); got {self.points}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise AdvkitError(f"mode-connectivity: validation_fraction must be in (0, 1); got {self.validation_fraction}")
        if self.endpoint_epochs < 0 or self.curve_epochs < 1 or self.batch_size < 1:
            raise AdvkitError("mode-connectivity: endpoint_epochs must be >= 0, curve_epochs and batch_size >= 1")
        for name in ("endpoint_lr", "lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise AdvkitError(f"mode-connectivity: {name} must be a positive number; got {value}")
        if not (0.0 <= self.max_accuracy_drop <= 1.0 and self.weight_decay >= 0.0):
            raise AdvkitError("mode-connectivity: max_accuracy_drop must be in [0, 1] and weight_decay >= 0")

    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> ModeConnectivityResult:
        """Repair ``model`` with the defender's clean rows ``(x, y)``; no triggered row is ever seen."""
        check_clean_rows(model, x, y, "mode-connectivity")
        start_time = time.perf_counter()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        y = y.long()
        fit_rows, val_rows = split_clean_rows(y, self.validation_fraction, generator)
        x_fit, y_fit, x_val, y_val = x[fit_rows], y[fit_rows], x[val_rows], y[val_rows]
        seeds = torch.randint(0, 2**31 - 1, (3,), generator=generator).tolist()
        ends = [self._endpoint(model, x_fit, y_fit, seed, f"endpoint {i + 1}", progress) for i, seed in enumerate(seeds[:2])]
        path = BezierCurve(ends[0].network, ends[1].network)
        self._train_curve(path, x_fit.to(model.device), y_fit.to(model.device), seeds[2], progress)
        table = []
        for t in torch.linspace(0.0, 1.0, self.points).tolist():
            point = point_on_curve(path, t, x_fit, model)
            table.append({"t": round(t, 6), "clean_accuracy": _accuracy(point, x_val, y_val), "fitting_accuracy": _accuracy(point, x_fit, y_fit)})
        before = _accuracy(model, x_val, y_val)
        tolerance = max(self.max_accuracy_drop, 1.0 / val_rows.numel())  # never finer than one validation row
        t, warning = choose_t(table, before, tolerance)
        repaired = point_on_curve(path, t, x_fit, model)
        details: dict[str, Any] = {
            "fitting_rows": int(fit_rows.numel()),
            "validation_rows": int(val_rows.numel()),
            "endpoint_epochs": self.endpoint_epochs,
            "curve_epochs": self.curve_epochs,
            "accuracy_tolerance": tolerance,
        }
        if warning:
            details["warning"] = warning
        after = next(row["clean_accuracy"] for row in table if row["t"] == t)
        return ModeConnectivityResult(
            "mode-connectivity", repaired, t, table, before, after, time.perf_counter() - start_time, path, x_fit.cpu(), details
        )

    def _endpoint(self, model: ModelHandle, x: Tensor, y: Tensor, seed: int, stage: str, progress: Progress | None) -> ModelHandle:
        """A copy of the suspect model fine-tuned on the clean fitting rows."""
        end = ModelHandle(copy.deepcopy(model.net), copy.deepcopy(model.info), device=model.device)
        if self.endpoint_epochs > 0:
            config = TrainConfig(
                epochs=self.endpoint_epochs,
                lr=self.endpoint_lr,
                batch_size=self.batch_size,
                seed=seed,
                optimizer="sgd",
                weight_decay=self.weight_decay,
            )
            fit(end.network, x, y, config, progress=(lambda _name, step, total: progress(stage, step, total)) if progress else None)
        return end

    def _train_curve(self, path: BezierCurve, x: Tensor, y: Tensor, seed: int, progress: Progress | None) -> None:
        """Train the bend: SGD, a fresh ``t ~ U(0, 1)`` per batch, L2 on the point's weights."""
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(path.bend.parameters(), lr=self.lr, momentum=0.9)
        n = y.shape[0]
        steps = math.ceil(n / self.batch_size)
        total = self.curve_epochs * steps
        path.template.train()
        for epoch in range(self.curve_epochs):
            for group in optimizer.param_groups:
                group["lr"] = _curve_lr(self.lr, epoch + 1, self.curve_epochs)
            order = torch.randperm(n, generator=generator).to(y.device)
            for step in range(steps):
                rows = order[step * self.batch_size : (step + 1) * self.batch_size]
                t = torch.rand((), generator=generator)
                weights = path.point(t)
                logits = torch.func.functional_call(path.template, weights, (x[rows],))
                loss = F.cross_entropy(logits, y[rows])
                if self.weight_decay:
                    loss = loss + 0.5 * self.weight_decay * sum(w.pow(2).sum() for w in weights.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not math.isfinite(float(loss.detach())):
                    raise AdvkitError(f"mode-connectivity: curve training diverged at epoch {epoch + 1}; lower lr")
                if progress is not None:
                    progress("curve", epoch * steps + step + 1, total)
        path.template.eval()


def point_on_curve(path: BezierCurve, t: float, x_fit: Tensor, like: ModelHandle) -> ModelHandle:
    """The model at ``t``: weights from the curve, BatchNorm statistics re-estimated on ``x_fit``."""
    network = path.materialise(t)
    recompute_batchnorm(network, x_fit.to(like.device))
    return ModelHandle(network.net, copy.deepcopy(like.info), device=like.device)  # type: ignore[arg-type]


def evaluate_curve(
    result: ModeConnectivityResult, x: Tensor, y: Tensor, trigger: Trigger, target: int, mode: str = "all-to-one"
) -> list[dict[str, float]]:
    """The auditor's curve: clean accuracy and the real trigger's success at every evaluated ``t``."""
    rows = []
    for entry in result.curve:
        point = point_on_curve(result.path, entry["t"], result.fitting_x, result.model)
        rows.append(
            {
                "t": entry["t"],
                "clean_accuracy": _accuracy(point, x, y),
                "backdoor_success": backdoor_success_rate(point, x, y, trigger, target, mode),
                "chosen": entry["t"] == result.t,
            }
        )
    return rows
