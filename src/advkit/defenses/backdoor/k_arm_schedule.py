"""K-Arm's scheduler: arm pre-screening, the bandit's choice of arm and the honest stop.

Shen, Liu, Tao, An, Xu, Cheng, Ma & Zhang, "Backdoor Scanning for Deep Neural Networks
through K-Arm Optimization", ICML 2021 (reference code: PurduePAML/K-ARM_Backdoor_Optimization).

This module holds the decisions, none of the optimisation (that is :mod:`.k_arm`):

* :func:`pre_screen` is the paper's arm pre-screening on the softmax of clean rows: with
  ``k = 2`` top classes per row when there are at most 8 classes, else ``round(gamma * K)``,
  a class that is among the top-k of more than ``global_theta`` of the rows is the one
  global-trigger candidate; otherwise a pair (target j, victim i) is a label-specific
  candidate when at least ``local_theta`` of the rows predicted as i have j among their
  top-k (both its logit sum and median above 1e-8, at most 3 victims per target, the
  largest logit sums). No candidate is the paper's "benign".
* :func:`objective` is the bandit's score of an arm: the rate at which its trigger shrank
  (first successful size minus current best, over ``improvements + pulls / 2``, as the
  reference) plus ``beta`` over its current size. advkit measures sizes as the share of
  the image the mask covers, so one ``beta`` fits every image size; the reference counts
  pixels of 224x224 images and starts every decrease at a constant 2,500 pixels, which
  would make the rate negative for every arm of an 8x8 image; advkit starts it at the
  arm's own first successful size (the reference's commented-out original).
* :func:`choose_arm` is the paper's epsilon-greedy choice among the open arms;
  :func:`choose_arms` draws several in a row (advkit pulls a few arms per round).
* :func:`settled` is advkit's stop rule, which the paper does not have: the decision is
  Neural Cleanse's MAD rule over every class, so an arm may stay below the per-arm cap
  only while no value it could still reach changes the median or the MAD (see
  :mod:`.k_arm` for why that keeps the anomaly index honest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import median_abs_deviation
from torch import Tensor

PAIR_FLOOR = 1e-8
MAX_VICTIMS = 3


@dataclass
class PreScreen:
    """What the paper's pre-screening concluded from the clean rows' top-k classes."""

    trigger_type: str
    candidates: list[int]
    pairs: list[tuple[int, int]] = field(default_factory=list)
    global_share: list[float] = field(default_factory=list)
    top_k: int = 2


def top_k_size(num_classes: int, gamma: float) -> int:
    """The reference's k: 2 for at most 8 classes, else ``round(gamma * K)`` (at least 2, below K)."""
    if num_classes <= 8:
        return min(2, num_classes)
    return int(min(max(2, round(num_classes * gamma)), num_classes - 1))


def pre_screen(probabilities: Tensor, gamma: float = 0.25, global_theta: float = 0.95, local_theta: float = 0.9) -> PreScreen:
    """The paper's arm pre-screening from the softmax ``[N, K]`` of clean rows."""
    rows, num_classes = probabilities.shape
    k = top_k_size(num_classes, gamma)
    top_values, top_index = probabilities.topk(k, dim=1)
    share = torch.stack([(top_index == c).any(1).float().mean() for c in range(num_classes)])
    global_share = [float(s) for s in share]
    best = int(share.argmax())
    if float(share[best]) > global_theta:
        return PreScreen("global", [best], [], global_share, k)
    pairs: list[tuple[int, int]] = []
    for target in range(num_classes):
        found = []
        for victim in range(num_classes):
            if victim == target:
                continue
            own = top_index[:, 0] == victim
            if not bool(own.any()):
                continue
            hits = top_index[own] == target
            if float(hits.any(1).float().mean()) < local_theta:
                continue
            logits = top_values[own][hits]
            if float(logits.sum()) > PAIR_FLOOR and float(logits.median()) > PAIR_FLOOR:
                found.append((float(logits.sum()), victim))
        for _, victim in sorted(found, reverse=True)[:MAX_VICTIMS]:
            pairs.append((target, victim))
    candidates = sorted({target for target, _ in pairs})
    return PreScreen("label-specific" if pairs else "benign", candidates, pairs, global_share, k)


def objective(first_size: float, best_size: float, last_size: float, improvements: int, pulls: int, beta: float) -> float:
    """The paper's arm score: how fast the trigger shrank plus ``beta`` over its size (shares of the image).

    An arm that has not found a working trigger yet scores infinity (it is pulled first).
    """
    if not np.isfinite(best_size) or improvements == 0:
        return float("inf")
    rate = (first_size - best_size) / (improvements + pulls / 2)
    return rate + beta / max(last_size, 1e-12)


def choose_arm(scores: dict[int, float], epsilon: float, generator: torch.Generator) -> int:
    """Epsilon-greedy over the open arms: the best score, or with probability epsilon any open arm."""
    arms = sorted(scores)
    if len(arms) > 1 and float(torch.rand((), generator=generator)) < epsilon:
        return arms[int(torch.randint(len(arms), (), generator=generator))]
    return max(arms, key=lambda a: (scores[a], -a))


def choose_arms(scores: dict[int, float], count: int, epsilon: float, generator: torch.Generator) -> list[int]:
    """Up to ``count`` distinct arms, each chosen by :func:`choose_arm` among those not chosen yet."""
    left = dict(scores)
    chosen = []
    while left and len(chosen) < count:
        arm = choose_arm(left, epsilon, generator)
        chosen.append(arm)
        del left[arm]
    return chosen


def decay_ratio(trajectories: list[list[float]], finished: list[bool], effort: int, cap: int) -> float:
    """The most any finished arm's best size shrank from ``effort`` pulls to ``cap`` (0 when none tells).

    Finished arms are those that went the whole ``cap``; their ratio size(cap) / size(effort)
    is how much an arm stopped at ``effort`` could still have shrunk. The smallest ratio
    seen is used, so the estimate errs towards an arm still mattering.
    """
    ratios = []
    for path, done in zip(trajectories, finished):
        if done and len(path) >= cap and effort >= 1 and np.isfinite(path[effort - 1]) and path[effort - 1] > 0:
            ratios.append(path[cap - 1] / path[effort - 1])
    return float(min(ratios)) if ratios else 0.0


def settled(low: np.ndarray, high: np.ndarray, open_arms: np.ndarray) -> bool:
    """True when the open arms, anywhere between ``low`` and ``high``, change neither median nor MAD.

    ``low``/``high`` are every class's size with the open arms at the least and most they
    could end at (finished arms equal in both). The median is non-decreasing in each size
    and, above the median, so is the MAD; equal at both corners and every open arm above
    the median at its least, they are equal everywhere between, so every finished class's
    anomaly index and flag are the ones it would get at full effort, and no open arm (above
    the median) can be flagged.
    """
    if not bool(open_arms.any()):
        return True
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return False
    median_low, median_high = float(np.median(low)), float(np.median(high))
    if not np.isclose(median_low, median_high, rtol=1e-12, atol=0.0):
        return False
    if bool((low[open_arms] <= median_low).any()):
        return False
    mad_low = float(median_abs_deviation(low, scale="normal"))
    mad_high = float(median_abs_deviation(high, scale="normal"))
    return bool(np.isclose(mad_low, mad_high, rtol=1e-12, atol=0.0))


def needed(low: np.ndarray, high: np.ndarray, open_arms: np.ndarray) -> np.ndarray:
    """The open arms that must still be pulled: those that could end at or below the median.

    They can never be left open (:func:`settled` needs every open arm above the median).
    When there are none but the open arms still move the MAD, all open arms are needed.
    """
    finite = np.isfinite(low) & np.isfinite(high)
    median_low = float(np.median(low)) if bool(finite.all()) else np.inf
    must = open_arms & (~finite | (low <= median_low))
    return must if bool(must.any()) else open_arms.copy()


__all__ = ["PreScreen", "choose_arm", "choose_arms", "decay_ratio", "needed", "objective", "pre_screen", "settled", "top_k_size"]
