"""Neural Cleanse: reverse-engineer a trigger per class, flag classes whose trigger is tiny.

Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao, "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019.

For every candidate target class k it finds the smallest mask m_k (L1) and pattern p_k
such that ``(1 - m_k) * x + m_k * p_k`` is classified as k, minimising
``CE(f(x'), k) + cost_k * |m_k|_1``. The cost follows the paper's schedule: it starts
at 0, is set to ``init_cost`` once the attack succeeds for ``patience`` epochs, then is
multiplied by 1.5 after ``patience`` successful epochs and divided by 1.5**1.5 after
``patience`` failing ones; a class stops early once its best mask has not shrunk by 1%
for ``early_stop_patience`` epochs after the cost went both up and down. Masks and
patterns live in tanh space (always in range). Classes are flagged by the median
absolute deviation of their mask norms (anomaly index > 2, consistency constant
1.4826, small-norm side only).

What advkit changes: **all classes are optimised in one batched tensor** — every step
stamps each image with every active class's trigger and runs one forward/backward for
all of them; finished classes drop out of the batch. Adam (lr 0.1, betas 0.5/0.9) as
in the reference code; early stopping is per class.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import median_abs_deviation
from torch import Tensor

from advkit.attacks.poisoning.backdoor import stamp
from advkit.core import DetectionReport, ModelHandle, check_images
from advkit.core.memory import rows_that_fit
from advkit.errors import AdvkitError
from advkit.registry import register

TANH_EPS = 1e-7
MIN_IMAGES_PER_CLASS = 10


@dataclass
class ReversedTrigger:
    """The smallest trigger found for one target class."""

    target: int
    mask: Tensor
    pattern: Tensor
    l1: float
    success: float

    def apply(self, x: Tensor, bounds: tuple[float, float] | None = None) -> Tensor:
        """Stamp the trigger (``bounds`` is accepted for the trigger interface; the pattern is already in them)."""
        return stamp(x, self.mask.to(x), self.pattern.to(x))


@dataclass
class _ClassState:
    """The cost schedule of one class (Wang et al.'s reference visualizer)."""

    cost: float = 0.0
    best_reg: float = float("inf")
    best_success: float = 0.0
    set_counter: int = 0
    up_counter: int = 0
    down_counter: int = 0
    up_flag: bool = False
    down_flag: bool = False
    stop_counter: int = 0
    stop_best: float = float("inf")
    done: bool = False
    epochs: int = 0


def anomaly_indices(norms: Tensor | np.ndarray) -> np.ndarray:
    """|norm - median| / (1.4826 * MAD) per class (0 where every norm is equal)."""
    values = np.asarray(norms, dtype=np.float64)
    mad = median_abs_deviation(values, scale="normal")
    deviation = np.abs(values - np.median(values))
    if mad == 0:
        return np.where(deviation > 0, np.inf, 0.0)
    return deviation / mad


@register(
    "neural-cleanse",
    family="inspection",
    knowledge="white",
    paper="Wang et al. Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks. IEEE S&P 2019",
    atlas="AML.M0008",
    summary="reverse-engineer a minimal trigger per class (batched), flag tiny ones by MAD anomaly index",
)
@dataclass
class NeuralCleanse:
    """Settings of the reverse-engineering; the model and clean data come at call time."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    patience: int = 5
    cost_multiplier: float = 1.5
    success_threshold: float = 0.99
    early_stop: bool = True
    early_stop_patience: int = 10
    early_stop_threshold: float = 0.99
    anomaly_threshold: float = 2.0
    warnings: list[str] = field(default_factory=list)

    name = "neural-cleanse"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise AdvkitError("neural-cleanse: epochs, batch size and patience must be >= 1")
        if not self.lr > 0 or not self.init_cost > 0:
            raise AdvkitError("neural-cleanse: lr and init_cost must be > 0")

    # -- reverse engineering ------------------------------------------------------------
    def reverse(
        self,
        model: ModelHandle,
        x: Tensor,
        classes: list[int] | None = None,
        generator: torch.Generator | None = None,
        progress: Any = None,
    ) -> list[ReversedTrigger]:
        """Reverse-engineer a trigger for each class in ``classes`` (all by default), batched."""
        x = check_images(x, model.info, "clean images")
        if x.shape[0] == 0:
            raise AdvkitError("neural-cleanse: no clean images to optimise on")
        classes = list(range(model.num_classes)) if classes is None else list(classes)
        if not classes:
            raise AdvkitError("neural-cleanse: no candidate classes")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        channels, height, width = model.input_shape
        lo, hi = model.bounds
        count = len(classes)
        device = model.device
        init_mask = torch.rand((count, 1, height, width), generator=generator) * 0.8 + 0.1
        init_pattern = torch.rand((count, channels, height, width), generator=generator) * 0.8 + 0.1
        mask_param = _to_tanh(init_mask).to(device).requires_grad_(True)
        pattern_param = _to_tanh(init_pattern).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([mask_param, pattern_param], lr=self.lr, betas=(0.5, 0.9))
        states = [_ClassState() for _ in classes]
        best_mask = torch.zeros(count, 1, height, width)
        best_pattern = torch.zeros(count, channels, height, width)
        targets_all = torch.tensor(classes, device=device)
        costs = torch.zeros(count, device=device)
        view = model.view("white")
        n = x.shape[0]
        x = x.to(device)
        with model.eval_mode():
            for epoch in range(self.epochs):
                active = torch.tensor([i for i, s in enumerate(states) if not s.done], dtype=torch.long)
                if active.numel() == 0:
                    break
                frozen = (mask_param.detach().clone(), pattern_param.detach().clone())
                success_sum = torch.zeros(active.numel(), device=device)
                reg_sum = torch.zeros(active.numel(), device=device)
                order = torch.randperm(n, generator=generator)
                # under the memory cap (core.memory) the active classes go through the model in groups; the loss is a
                # sum over classes, so the groups' gradients add up to the whole batch's
                group = max(1, rows_that_fit(model, active.numel() * min(self.batch_size, n), what="neural-cleanse") // min(self.batch_size, n))
                for first in range(0, n, self.batch_size):
                    xb = x[order[first : first + self.batch_size].to(device)]
                    b = xb.shape[0]
                    mask_grad, pattern_grad = torch.zeros_like(mask_param), torch.zeros_like(pattern_param)
                    for start in range(0, active.numel(), group):
                        part = active[start : start + group].to(device)
                        mask = _from_tanh(mask_param[part])
                        pattern = lo + (hi - lo) * _from_tanh(pattern_param[part])
                        stamped = stamp(xb.unsqueeze(0), mask.unsqueeze(1), pattern.unsqueeze(1)).reshape(-1, channels, height, width)
                        wanted = targets_all[part].repeat_interleave(b)
                        logits = view.logits(stamped)
                        ce = F.cross_entropy(logits, wanted, reduction="none").view(-1, b).mean(1)
                        reg = mask.abs().flatten(1).sum(1)
                        loss = (ce + costs[part] * reg).sum()
                        grads = torch.autograd.grad(loss, [mask_param, pattern_param])
                        mask_grad += grads[0]
                        pattern_grad += grads[1]
                        with torch.no_grad():
                            success_sum[start : start + group] += (logits.argmax(1) == wanted).view(-1, b).float().sum(1)
                            reg_sum[start : start + group] += reg.detach() * b
                        del logits, stamped, loss
                    mask_param.grad, pattern_param.grad = mask_grad, pattern_grad
                    optimizer.step()
                with torch.no_grad():  # classes that stopped keep their parameters
                    keep = torch.ones(count, dtype=torch.bool)
                    keep[active] = False
                    mask_param[keep.to(device)] = frozen[0][keep.to(device)]
                    pattern_param[keep.to(device)] = frozen[1][keep.to(device)]
                success = (success_sum / n).cpu()
                regs = (reg_sum / n).cpu()
                for j, i in enumerate(active.tolist()):
                    state = states[i]
                    state.epochs += 1
                    if success[j] >= self.success_threshold and regs[j] < state.best_reg:
                        state.best_reg, state.best_success = float(regs[j]), float(success[j])
                        best_mask[i] = _from_tanh(mask_param[i].detach()).cpu()
                        best_pattern[i] = (lo + (hi - lo) * _from_tanh(pattern_param[i].detach())).cpu()
                    self._schedule(state, float(success[j]))
                    costs[i] = state.cost
                if progress is not None:
                    progress(self.name, epoch + 1, self.epochs)
        triggers = []
        for i, target in enumerate(classes):
            state = states[i]
            if state.best_reg == float("inf"):  # never reached the threshold: keep the last mask
                best_mask[i] = _from_tanh(mask_param[i].detach()).cpu()
                best_pattern[i] = (lo + (hi - lo) * _from_tanh(pattern_param[i].detach())).cpu()
                with torch.inference_mode():
                    hit = model.predict(stamp(x.cpu(), best_mask[i], best_pattern[i])) == target
                state.best_success = float(hit.float().mean())
            triggers.append(
                ReversedTrigger(target, best_mask[i].clone(), best_pattern[i].clone(), float(best_mask[i].abs().sum()), state.best_success)
            )
        return triggers

    def _schedule(self, state: _ClassState, success: float) -> None:
        """One epoch of the reference cost schedule and early stop for one class."""
        reached = success >= self.success_threshold
        if self.early_stop:
            if state.best_reg < float("inf"):
                if state.best_reg >= self.early_stop_threshold * state.stop_best:
                    state.stop_counter += 1
                else:
                    state.stop_counter = 0
            state.stop_best = min(state.best_reg, state.stop_best)
            if state.up_flag and state.down_flag and state.stop_counter >= self.early_stop_patience:
                state.done = True
                return
        if state.cost == 0 and reached:
            state.set_counter += 1
            if state.set_counter >= self.patience:
                state.cost = self.init_cost
                state.up_counter = state.down_counter = 0
                state.up_flag = state.down_flag = False
        else:
            state.set_counter = 0
        if reached:
            state.up_counter += 1
            state.down_counter = 0
        else:
            state.up_counter = 0
            state.down_counter += 1
        if state.up_counter >= self.patience:
            state.up_counter = 0
            state.cost *= self.cost_multiplier
            state.up_flag = True
        elif state.down_counter >= self.patience:
            state.down_counter = 0
            state.cost /= self.cost_multiplier**1.5
            state.down_flag = True

    # -- detection --------------------------------------------------------------------
    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: Any = None,
    ) -> DetectionReport:
        """Reverse every class, then flag small-norm outliers. ``y`` checks class coverage."""
        self.warnings = []
        if x.shape[0] == 0:
            raise AdvkitError("neural-cleanse: the clean data is empty")
        x = check_images(x, model.info, "clean images")
        if y is not None:
            counts = torch.bincount(y.cpu().long(), minlength=model.num_classes)
            if counts.numel() > model.num_classes:
                raise AdvkitError(f"neural-cleanse: labels go up to {counts.numel() - 1} but the model has {model.num_classes} classes")
            empty = (counts == 0).nonzero().squeeze(1).tolist()
            if empty:
                raise AdvkitError(f"neural-cleanse: class {empty[0]} has no clean samples ({len(empty)} classes empty)")
            few = int(counts.min())
            if few < MIN_IMAGES_PER_CLASS:
                message = (
                    f"only {few} clean images for class {int(counts.argmin())} (fewer than {MIN_IMAGES_PER_CLASS} per class): "
                    "reversed triggers and anomaly indices are less reliable"
                )
                self.warnings.append(message)
                warnings.warn(message, stacklevel=2)
        start = time.perf_counter()
        triggers = self.reverse(model, x, generator=generator, progress=progress)
        norms = torch.tensor([t.l1 for t in triggers])
        index = anomaly_indices(norms.numpy())
        median = float(np.median(norms.numpy()))
        flagged = torch.tensor((index > self.anomaly_threshold) & (norms.numpy() < median))
        return DetectionReport(
            method=self.name,
            scores=norms,
            flagged=flagged,
            seconds=time.perf_counter() - start,
            details={
                "anomaly_index": torch.tensor(index),
                "triggers": triggers,
                "median_l1": median,
                "warnings": list(self.warnings),
            },
        )


def _to_tanh(values: Tensor) -> Tensor:
    return torch.atanh((values - 0.5) * (2 - TANH_EPS))


def _from_tanh(param: Tensor) -> Tensor:
    return torch.tanh(param) / (2 - TANH_EPS) + 0.5


def report_rows(report: DetectionReport) -> list[dict[str, Any]]:
    """The ``classes`` rows of the inspect JSON: ``{class, score, anomaly_index, flagged}``."""
    index = report.details["anomaly_index"]
    rows = []
    for c in range(report.scores.numel()):
        value = float(index[c])
        rows.append(
            {
                "class": c,
                "score": float(report.scores[c]),
                "anomaly_index": value if np.isfinite(value) else None,
                "flagged": bool(report.flagged[c]),
                "trigger_success": report.details["triggers"][c].success,
            }
        )
    return rows
