"""K-Arm: a bandit that spends the trigger optimisation on the classes that look like backdoors.

Shen, Liu, Tao, An, Xu, Cheng, Ma & Zhang, "Backdoor Scanning for Deep Neural Networks
through K-Arm Optimization", ICML 2021 (reference code: PurduePAML/K-ARM_Backdoor_Optimization).

Every class is an arm: a Neural Cleanse trigger (mask + pattern in tanh space, the cost
schedule and early stop of :mod:`.neural_cleanse`, its own Adam with lr 0.1 and betas
0.5/0.9) that one *pull* optimises for one epoch over the clean rows. The run:

1. **Pre-screening** (:func:`.k_arm_schedule.pre_screen`): the paper's top-k softmax test
   names a global candidate target or label-specific (target, victim) pairs; candidates
   are pulled first and always to the cap. Every other class is ``screened_out``: the
   paper drops it, advkit lets it stop early only as the stop rule below allows.
2. **Warm-up**: every arm gets ``warmup`` epochs (default: half the cap) batched in one
   tensor; with the same seed these are Neural Cleanse's first epochs step for step (same
   initial masks, batches, schedule). The reference pulls each arm until it improved twice.
3. **Bandit**: rounds of up to ``arms_per_round`` pulls (the reference pulls one arm per
   round; a few batched together cost about the same per pull), each chosen epsilon-greedy
   (epsilon 0.3) by the paper's objective (the trigger's decrease rate plus ``beta`` over
   its size) among the arms the stop rule still needs, until each has had ``epochs`` pulls
   (the per-arm cap, the reference's ``rounds``) or the stop rule holds.

The decision is not the paper's. The paper keeps the smallest arm's trigger and calls the
model trojaned when its size is under fixed pixel bounds (1,720 pixels for a global
trigger on 224x224 inputs; a label-specific one also needs its symmetric check). advkit
flags by Neural Cleanse's MAD rule over every class (anomaly index > 2, small side), so
the JSON and the flags match ``neural-cleanse``. That rule compares each class with the
median class, so sizes must be taken at equal effort: an arm pulled more than the others
looks smaller only because of it (on a clean model the bandit's favourite would end up
flagged). Hence the per-arm cap instead of the paper's "pull the best arm until it
stops", and advkit's **stop rule** (:func:`.k_arm_schedule.settled`): an arm may stay
below the cap only while, anywhere between its best mask so far (what it reports: a real
trigger, an upper bound on its size at the cap) and the least it could still shrink to
(its size times the largest shrink any capped arm showed over the same pulls), it changes
neither the median nor the MAD. Then every other class's anomaly index and flag are the
ones it would get with that arm pulled to the cap, and the stopped arm, above the median,
is not flagged. Arms at or below the median always reach the cap.

Where the saving comes from: mostly the cap (16 epochs per class against Neural Cleanse's
60; the MAD index is scale-free and the classes' sizes shrink at similar rates, so it is
the same decision on the models of benchmarks/bench_k_arm.py), then the clearly large
triggers the stop rule leaves below it. The pre-screening rarely helps here: on the
BadNets digits models the target is among the top 2 classes of about 20% of clean rows,
far from the paper's 95%, so it names no candidate and every class is screened out.

Not done: the paper's label-specific optimisation on victim rows (with ``central_init``
and a one-colour pattern) and its symmetric check, since a per-pair size is not
comparable with the per-class sizes the MAD rule ranks; pairs only make their targets
candidates. ``central_init`` starts every mask as the reference's centre square.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advkit.attacks.poisoning.backdoor import stamp
from advkit.core import DetectionReport, ModelHandle, check_images
from advkit.core.memory import rows_that_fit
from advkit.defenses.backdoor.k_arm_schedule import choose_arms, decay_ratio, needed, objective, pre_screen, settled
from advkit.defenses.backdoor.neural_cleanse import (
    MIN_IMAGES_PER_CLASS,
    NeuralCleanse,
    ReversedTrigger,
    _ClassState,
    _from_tanh,
    _to_tanh,
    anomaly_indices,
)
from advkit.errors import AdvkitError
from advkit.registry import register

CENTRE_SHARE = 50 / 224  # the reference's central_init square: 50 of 224 pixels a side


@dataclass
class _Arm:
    """One class's trigger, its cost schedule and what the bandit knows of it."""

    target: int
    mask_param: Tensor
    pattern_param: Tensor
    schedule: _ClassState = field(default_factory=_ClassState)
    pulls: int = 0
    improvements: int = 0
    first_size: float = float("inf")
    last_size: float = float("inf")
    best_l1: float = float("inf")
    best_mask: Tensor | None = None
    best_pattern: Tensor | None = None
    path: list[float] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.schedule.done


@register(
    "k-arm",
    family="inspection",
    knowledge="white",
    paper="Shen et al. Backdoor Scanning for Deep Neural Networks through K-Arm Optimization. ICML 2021",
    atlas="AML.M0008",
    summary="Neural Cleanse triggers scheduled by a bandit: pre-screening, epsilon-greedy pulls, MAD anomaly index",
)
@dataclass
class KArm:
    """Settings of the scan; the model and clean data come at call time."""

    epochs: int = 16
    warmup: int | None = None
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    patience: int = 5
    cost_multiplier: float = 1.5
    success_threshold: float = 0.99
    epsilon: float = 0.3
    arms_per_round: int = 4
    beta: float = 1e-3
    gamma: float = 0.25
    global_theta: float = 0.95
    local_theta: float = 0.9
    central_init: bool = False
    anomaly_threshold: float = 2.0
    warnings: list[str] = field(default_factory=list)

    name = "k-arm"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.arms_per_round < 1:
            raise AdvkitError("k-arm: epochs, batch size, patience and arms_per_round must be >= 1")
        if self.warmup is None:  # half the cap: 8 epochs of the default 16
            self.warmup = max(1, self.epochs // 2)
        if not 1 <= self.warmup <= self.epochs:
            raise AdvkitError(f"k-arm: warmup must be in 1..epochs ({self.epochs}); got {self.warmup}")
        if not self.lr > 0 or not self.init_cost > 0 or self.beta < 0:
            raise AdvkitError("k-arm: lr and init_cost must be > 0 and beta >= 0")
        if not 0.0 <= self.epsilon <= 1.0 or not 0.0 < self.gamma <= 1.0:
            raise AdvkitError("k-arm: epsilon must be in [0, 1] and gamma in (0, 1]")
        if not (0.0 < self.global_theta <= 1.0 and 0.0 < self.local_theta <= 1.0):
            raise AdvkitError("k-arm: global_theta and local_theta must be in (0, 1]")
        # the cost schedule and the early stop are Neural Cleanse's, step for step
        self._nc = NeuralCleanse(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            init_cost=self.init_cost,
            patience=self.patience,
            cost_multiplier=self.cost_multiplier,
            success_threshold=self.success_threshold,
        )

    # -- detection --------------------------------------------------------------------
    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: Any = None,
    ) -> DetectionReport:
        """Pre-screen, warm up, pull arms, then flag small-norm outliers. ``y`` checks class coverage."""
        self.warnings = []
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise AdvkitError("k-arm: the clean data is empty")
        x = check_images(x, model.info, "k-arm clean images")
        if y is not None:
            self._check_labels(model, x, y)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            screen = pre_screen(torch.softmax(model.predict_logits(x), 1).cpu(), self.gamma, self.global_theta, self.local_theta)
        arms = self._arms(model, generator)
        rounds = self._run(model, x, arms, set(screen.candidates), generator, progress)
        triggers = [self._trigger(model, x, arm) for arm in arms]
        norms = np.array([t.l1 for t in triggers])
        index = anomaly_indices(norms)
        median = float(np.median(norms))
        flagged = torch.tensor((index > self.anomaly_threshold) & (norms < median))
        batches = -(-x.shape[0] // self.batch_size)
        return DetectionReport(
            method=self.name,
            scores=torch.tensor(norms, dtype=torch.float32),
            flagged=flagged,
            seconds=time.perf_counter() - start,
            details={
                "anomaly_index": torch.tensor(index),
                "triggers": triggers,
                "median_l1": median,
                "warnings": list(self.warnings),
                "trigger_type": screen.trigger_type,
                "candidates": list(screen.candidates),
                "pairs": [list(p) for p in screen.pairs],
                "screened_out": [c for c in range(model.num_classes) if c not in screen.candidates],
                "rounds": rounds,
                "pulls_per_class": [arm.pulls for arm in arms],
                "steps_per_class": [arm.pulls * batches for arm in arms],
                "stopped_early": [arm.target for arm in arms if arm.pulls < self.epochs and not arm.finished],
                "cap": self.epochs,
                "warmup": self.warmup,
            },
        )

    def _check_labels(self, model: ModelHandle, x: Tensor, y: Tensor) -> None:
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise AdvkitError(f"k-arm: labels must be one per image ({x.shape[0]}); got {shape}")
        y = y.cpu().long()
        if bool((y < 0).any()) or int(y.max()) >= model.num_classes:
            raise AdvkitError(f"k-arm: labels go from {int(y.min())} to {int(y.max())} but the model has classes 0..{model.num_classes - 1}")
        counts = torch.bincount(y, minlength=model.num_classes)
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        if empty:
            raise AdvkitError(f"k-arm: class {empty[0]} has no clean samples ({len(empty)} classes empty)")
        few = int(counts.min())
        if few < MIN_IMAGES_PER_CLASS:
            message = (
                f"only {few} clean images for class {int(counts.argmin())} (fewer than {MIN_IMAGES_PER_CLASS} per class): "
                "reversed triggers and anomaly indices are less reliable"
            )
            self.warnings.append(message)
            warnings.warn(message, stacklevel=3)

    # -- the arms ---------------------------------------------------------------------
    def _arms(self, model: ModelHandle, generator: torch.Generator) -> list[_Arm]:
        channels, height, width = model.input_shape
        count = model.num_classes
        masks = torch.rand((count, 1, height, width), generator=generator) * 0.8 + 0.1
        patterns = torch.rand((count, channels, height, width), generator=generator) * 0.8 + 0.1
        if self.central_init:
            side_h, side_w = max(1, round(height * CENTRE_SHARE)), max(1, round(width * CENTRE_SHARE))
            top, left = (height - side_h) // 2, (width - side_w) // 2
            masks = masks * 0.001 / 0.9
            masks[:, :, top : top + side_h, left : left + side_w] = 0.99
        arms = []
        for k in range(count):
            mask_param = _to_tanh(masks[k]).to(model.device).requires_grad_(True)
            pattern_param = _to_tanh(patterns[k]).to(model.device).requires_grad_(True)
            arms.append(_Arm(k, mask_param, pattern_param))
        return arms

    def _run(
        self, model: ModelHandle, x: Tensor, arms: list[_Arm], candidates: set[int], generator: torch.Generator, progress: Any
    ) -> int:
        """Warm every arm up together, then pull a few arms per round; the number of bandit rounds."""
        x = x.to(model.device)
        total = self.epochs * len(arms)
        done = 0
        # one Adam over every arm's tensors: a tensor without a gradient is skipped and keeps its own step count,
        # so each arm steps exactly as with an Adam of its own (and the warm-up as Neural Cleanse's shared one)
        optimizer = torch.optim.Adam([p for arm in arms for p in (arm.mask_param, arm.pattern_param)], lr=self.lr, betas=(0.5, 0.9))
        with model.eval_mode():
            for _ in range(self.warmup):
                active = [arm for arm in arms if not arm.finished]
                if not active:
                    break
                self._epoch(model, x, active, optimizer, generator)
                done += len(active)
                if progress is not None:
                    progress(self.name, done, total)
            rounds = 0
            while True:
                low, high, open_arms = self._bounds(arms)
                if not open_arms.any() or (not any(open_arms[c] for c in candidates) and settled(low, high, open_arms)):
                    break
                must = np.array([open_arms[c] and c in candidates for c in range(len(arms))])
                pool = must if must.any() else needed(low, high, open_arms)
                scores = {
                    int(k): objective(arms[k].first_size, arms[k].schedule.best_reg / arms[k].mask_param.numel(), arms[k].last_size, arms[k].improvements, arms[k].pulls, self.beta)
                    for k in np.nonzero(pool)[0]
                }
                picks = [arms[k] for k in choose_arms(scores, self.arms_per_round, self.epsilon, generator)]
                self._epoch(model, x, picks, optimizer, generator)
                rounds += 1
                done += len(picks)
                if progress is not None:
                    progress(self.name, done, total)
        if progress is not None and done < total:  # arms the stop rule left below the cap: the bar is complete
            progress(self.name, total, total)
        return rounds

    def _bounds(self, arms: list[_Arm]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every class's least and most final size, and which arms are still open (below the cap)."""
        capped = [arm.pulls >= self.epochs or arm.finished for arm in arms]
        went_the_distance = [c and not arm.finished for c, arm in zip(capped, arms)]
        paths = [arm.path for arm in arms]
        high = np.array([arm.best_l1 for arm in arms])
        low = high.copy()
        open_arms = ~np.array(capped)
        for i in np.nonzero(open_arms)[0]:
            if np.isfinite(high[i]):  # an arm with no working trigger yet stays open (settled needs finite sizes)
                low[i] = high[i] * decay_ratio(paths, went_the_distance, arms[i].pulls, self.epochs)
        return low, high, open_arms

    def _epoch(self, model: ModelHandle, x: Tensor, arms: list[_Arm], optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """One epoch over the clean rows for ``arms``, batched; then each arm's best mask and cost schedule."""
        channels, height, width = model.input_shape
        lo, hi = model.bounds
        device = model.device
        view = model.view("white")
        n = x.shape[0]
        count = len(arms)
        wanted_all = torch.tensor([arm.target for arm in arms], device=device)
        costs = torch.tensor([arm.schedule.cost for arm in arms], device=device)
        success_sum = torch.zeros(count, device=device)
        reg_sum = torch.zeros(count, device=device)
        order = torch.randperm(n, generator=generator)
        rows = min(self.batch_size, n)
        group = max(1, rows_that_fit(model, count * rows, what="k-arm") // rows)
        for first in range(0, n, self.batch_size):
            xb = x[order[first : first + self.batch_size].to(device)]
            b = xb.shape[0]
            for start in range(0, count, group):
                part = arms[start : start + group]
                mask = _from_tanh(torch.stack([arm.mask_param for arm in part]))
                pattern = lo + (hi - lo) * _from_tanh(torch.stack([arm.pattern_param for arm in part]))
                stamped = stamp(xb.unsqueeze(0), mask.unsqueeze(1), pattern.unsqueeze(1)).reshape(-1, channels, height, width)
                wanted = wanted_all[start : start + len(part)].repeat_interleave(b)
                logits = view.logits(stamped)
                ce = F.cross_entropy(logits, wanted, reduction="none").view(-1, b).mean(1)
                reg = mask.abs().flatten(1).sum(1)
                leaves = [p for arm in part for p in (arm.mask_param, arm.pattern_param)]
                # gradients of the triggers only (backward() would also fill the model's weights' .grad)
                grads = torch.autograd.grad((ce + costs[start : start + len(part)] * reg).sum(), leaves)
                for leaf, grad in zip(leaves, grads):
                    leaf.grad = grad if leaf.grad is None else leaf.grad + grad
                with torch.no_grad():
                    success_sum[start : start + len(part)] += (logits.argmax(1) == wanted).view(-1, b).float().sum(1)
                    reg_sum[start : start + len(part)] += reg.detach() * b
                del logits, stamped
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        success = (success_sum / n).cpu()
        regs = (reg_sum / n).cpu()
        for j, arm in enumerate(arms):
            self._after_epoch(arm, float(success[j]), float(regs[j]), lo, hi)

    def _after_epoch(self, arm: _Arm, success: float, reg: float, lo: float, hi: float) -> None:
        """Neural Cleanse's bookkeeping for one arm's epoch, plus the bandit's statistics."""
        state = arm.schedule
        state.epochs += 1
        arm.pulls += 1
        area = arm.mask_param.numel()
        arm.last_size = reg / area
        if success >= self.success_threshold and reg < state.best_reg:
            state.best_reg, state.best_success = reg, success
            with torch.no_grad():
                arm.best_mask = _from_tanh(arm.mask_param.detach()).cpu()
                arm.best_pattern = (lo + (hi - lo) * _from_tanh(arm.pattern_param.detach())).cpu()
            arm.best_l1 = float(arm.best_mask.abs().sum())
            arm.improvements += 1
            if arm.improvements == 1:
                arm.first_size = reg / area
        arm.path.append(arm.best_l1)
        self._nc._schedule(state, success)

    def _trigger(self, model: ModelHandle, x: Tensor, arm: _Arm) -> ReversedTrigger:
        """The arm's best trigger; one that never reached the threshold keeps its last mask (as Neural Cleanse)."""
        if arm.best_mask is None or arm.best_pattern is None:
            lo, hi = model.bounds
            with torch.no_grad():
                mask = _from_tanh(arm.mask_param.detach()).cpu()
                pattern = (lo + (hi - lo) * _from_tanh(arm.pattern_param.detach())).cpu()
            with torch.inference_mode():
                hit = model.predict(stamp(x.cpu(), mask, pattern)).cpu() == arm.target
            return ReversedTrigger(arm.target, mask, pattern, float(mask.abs().sum()), float(hit.float().mean()))
        return ReversedTrigger(arm.target, arm.best_mask.clone(), arm.best_pattern.clone(), arm.best_l1, arm.schedule.best_success)


__all__ = ["KArm"]
