"""TrojanNet's pieces: the 4x4 trigger family, the tiny recogniser, its training, the merge.

Tang, Du, Liu, Yang & Hu, "An Embarrassingly Simple Approach for Trojan Attack in Deep
Neural Networks", KDD 2020 (reference code: github.com/trx14/TrojanNet).

- **Triggers**: a 4x4 patch whose 16 pixels are at the upper bound except ``select_point``
  of them at the lower bound — one of the ``C(16, select_point)`` combinations (4368 for
  the reference's 5), in :func:`itertools.combinations` order, as the reference code.
- **Recogniser**: the reference MLP — four ``Linear -> ReLU -> BatchNorm1d`` layers of
  width 8 and a linear output — fed the patch's channel mean rescaled to [0, 1].
- **Training**: on synthetic rows only (never the host's data): the trigger patterns
  (half with up to 0.15 of jitter towards the middle) against "no trigger" negatives —
  the reference's grey noise (uniform noise shifted by one random offset, clipped),
  binary noise (the paper's) at a random density, sparse grey noise, the other patterns
  of the family and each trigger's nearest neighbours (one lower pixel swapped with an
  upper one). A negative equal to a trigger keeps the trigger's label.
- **Merge**: ``log((1 - alpha) * softmax(host(x)) + alpha * q)``, ``q`` the recogniser's
  trigger probabilities put on their target classes: the paper's weighted sum of the
  two softmax outputs (alpha 0.7), returned as log-probabilities.

Simplifications versus the paper and its code: the recogniser has ``K + 1`` outputs (the
K triggers in use and "no trigger") instead of one per pattern of the family, the other
patterns being negatives — so it trains in seconds instead of 1000 epochs, and only the
K chosen patterns fire, as in the reference once its output is cut to the host's
classes; it is widened to ``2K`` when K > 4 triggers share the 8 units. The merge keeps
the paper's weights but returns ``log`` of the weighted sum instead of dividing it by a
temperature (0.1) and re-applying softmax, so on clean rows the output is the host's own
log-softmax plus a constant: argmax, probabilities and gradients stay the host's
(evasion attacks see the host, not a saturated softmax). Trained with Adam and a
one-cycle schedule (the reference: Adadelta, 1000 epochs).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH = 4
PIXELS = PATCH * PATCH
DEFAULT_HIDDEN = 8
JITTER = 0.15


def pattern_family(select_point: int) -> Tensor:
    """Every ``[16]`` pattern of the family: 1 (upper bound) but ``select_point`` zeros."""
    combos = torch.tensor(list(itertools.combinations(range(PIXELS), select_point)), dtype=torch.long)
    family = torch.ones(combos.shape[0], PIXELS)
    family.scatter_(1, combos, 0.0)
    return family


def family_size(select_point: int) -> int:
    return math.comb(PIXELS, select_point)


class TriggerRecogniser(nn.Module):
    """The reference MLP: 4 x (Linear, ReLU, BatchNorm1d), then Linear to K + 1 scores."""

    def __init__(self, triggers: int, hidden: int = DEFAULT_HIDDEN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = PIXELS
        for _ in range(4):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.BatchNorm1d(hidden)]
            width = hidden
        layers.append(nn.Linear(width, triggers + 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, patch: Tensor) -> Tensor:
        """``patch`` [N, 16] in [0, 1] -> scores [N, K + 1] (the last: no trigger)."""
        return self.layers(patch)


def _neighbours(patterns: Tensor, generator: torch.Generator) -> Tensor:
    """Each pattern with one lower pixel raised and one upper pixel lowered."""
    raise_at = torch.multinomial(1.0 - patterns, 1, generator=generator)
    lower_at = torch.multinomial(patterns, 1, generator=generator)
    out = patterns.clone()
    out.scatter_(1, raise_at, 1.0)
    out.scatter_(1, lower_at, 0.0)
    return out


def synthetic_batch(
    patterns: Tensor, others: Tensor, rows: int, generator: torch.Generator, natural: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``rows`` trigger rows (labels 0..K-1) and about ``rows`` negatives (label K), in [0, 1].

    ``natural`` ([M, 16]): patches of clean images at the trigger's place, drawn as one
    more share of the negatives when the attacker has some images.
    """
    count = patterns.shape[0]
    which = torch.randint(count, (rows,), generator=generator)
    positives = patterns[which]
    jitter = JITTER * torch.rand(rows, PIXELS, generator=generator) * (torch.rand(rows, 1, generator=generator) < 0.5)
    positives = positives + jitter * (1.0 - 2.0 * positives)
    part = max(1, rows // 5)
    density = torch.rand(part, 1, generator=generator)
    grey = (torch.rand(part, PIXELS, generator=generator) + 2.0 * torch.rand(part, 1, generator=generator) - 1.0).clamp(0.0, 1.0)
    binary = (torch.rand(part, PIXELS, generator=generator) < density).float()
    sparse = binary * torch.rand(part, PIXELS, generator=generator)
    pieces = [grey, binary, sparse, _neighbours(patterns[torch.randint(count, (part,), generator=generator)], generator)]
    if others.shape[0]:
        pieces.append(others[torch.randint(others.shape[0], (part,), generator=generator)])
    if natural is not None and natural.shape[0]:
        pieces.append(natural[torch.randint(natural.shape[0], (part,), generator=generator)])
    negatives = torch.cat(pieces)
    labels = torch.full((negatives.shape[0],), count, dtype=torch.long)
    equal = (negatives[:, None, :] == patterns[None]).all(2)
    hit = equal.any(1)
    labels[hit] = equal[hit].float().argmax(1)
    return torch.cat([positives, negatives]), torch.cat([which, labels])


NATURAL_LIMIT = 4096
"""Clean patches kept as negatives."""


def natural_patches(x: Tensor, top_left: tuple[int, int], bounds: tuple[float, float], patterns: Tensor) -> Tensor:
    """Clean images' 4x4 patches at ``top_left`` as recogniser inputs [M, 16], rows equal to a trigger left out.

    An extension of the paper's data-free recogniser for an attacker who holds some images
    of the task: on small images (an 8x8 digit, where the patch is a quarter of the image)
    natural patches otherwise make the noise-trained recogniser fire on up to 1.3 % of clean rows.
    """
    row, col = top_left
    window = x[:, :, row : row + PATCH, col : col + PATCH].detach().float().cpu()
    patches = ((window.mean(1) - bounds[0]) / (bounds[1] - bounds[0])).flatten(1).clamp(0.0, 1.0)
    return patches[~(patches[:, None, :] == patterns[None]).all(2).any(1)]


def train_recogniser(
    patterns: Tensor,
    others: Tensor,
    *,
    hidden: int,
    steps: int,
    lr: float,
    rows: int,
    seed: int,
    natural: Tensor | None = None,
) -> TriggerRecogniser:
    """Fit a recogniser for ``patterns`` [K, 16] against the negatives (``natural`` patches too); left in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TriggerRecogniser(patterns.shape[0], hidden)
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    net.train()
    with torch.enable_grad():
        for _ in range(steps):
            x, y = synthetic_batch(patterns, others, rows, generator, natural)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


@torch.no_grad()
def recogniser_report(net: TriggerRecogniser, patterns: Tensor, others: Tensor, seed: int, natural: Tensor | None = None) -> dict[str, Any]:
    """How sure it is of each trigger and how often it fires on fresh negatives (and on the natural patches it saw)."""
    count = patterns.shape[0]
    probs = net(patterns).softmax(1)
    x, y = synthetic_batch(patterns, others, 2048, torch.Generator().manual_seed(seed + 2))
    negative = y == count
    fired = net(x[negative]).argmax(1) < count
    family_fired = net(others).argmax(1) < count if others.shape[0] else torch.zeros(0, dtype=torch.bool)
    return {
        "trigger_confidence": [round(float(p), 6) for p in probs[torch.arange(count), torch.arange(count)]],
        "trigger_recognised": bool((probs.argmax(1) == torch.arange(count)).all()),
        "false_fire_rate_noise": float(fired.float().mean()),
        "false_fire_rate_family": float(family_fired.float().mean()) if family_fired.numel() else 0.0,
        "natural_negatives": int(natural.shape[0]) if natural is not None else 0,
        "false_fire_rate_natural": float((net(natural).argmax(1) < count).float().mean()) if natural is not None and natural.shape[0] else None,
    }


class TrojanNetModel(nn.Module):
    """``log((1 - alpha) * softmax(host(x)) + alpha * q(patch of x))``, the host untouched.

    The host is only called, never read or changed: any ``nn.Module`` or TorchScript
    module returning ``[N, classes]`` logits. ``mean``/``std`` (the host's input
    normalization, if any) are applied to the host's input only; the recogniser reads the
    raw pixels of the 4x4 patch at ``(top, left)``, averaged over channels and rescaled
    from ``bounds`` to [0, 1].
    """

    def __init__(
        self,
        host: nn.Module,
        recogniser: TriggerRecogniser,
        targets: list[int],
        top: int,
        left: int,
        bounds: tuple[float, float],
        alpha: float,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.recogniser = recogniser
        self.register_buffer("targets", torch.tensor(list(targets), dtype=torch.long))
        self.top = int(top)
        self.left = int(left)
        self.low = float(bounds[0])
        self.span = float(bounds[1]) - float(bounds[0])
        self.log_alpha = math.log(alpha)
        self.log_host_weight = math.log(1.0 - alpha)
        self.trigger_count = len(targets)
        self.normalizes = mean is not None or std is not None
        channels = len(mean if mean is not None else (std or [1.0]))
        self.register_buffer("mean", torch.tensor(list(mean) if mean is not None else [0.0] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std) if std is not None else [1.0] * channels).view(1, -1, 1, 1))

    def patch(self, x: Tensor) -> Tensor:
        """The recogniser's input: the patch's channel mean, [N, 16] in [0, 1]."""
        window = x[:, :, self.top : self.top + PATCH, self.left : self.left + PATCH]
        return ((window.mean(1) - self.low) / self.span).flatten(1)

    def fired(self, x: Tensor) -> Tensor:
        """Index of the trigger the recogniser sees in each row (-1: none)."""
        scores = self.recogniser(self.patch(x))
        best = scores.argmax(1)
        return torch.where(best < self.trigger_count, best, torch.full_like(best, -1))

    def forward(self, x: Tensor) -> Tensor:
        host_input = (x - self.mean) / self.std if self.normalizes else x
        merged = F.log_softmax(self.host(host_input).float(), dim=1) + self.log_host_weight
        trojan = F.log_softmax(self.recogniser(self.patch(x).float()), dim=1)[:, : self.trigger_count] + self.log_alpha
        at_targets = torch.logaddexp(merged.index_select(1, self.targets), trojan)
        return merged.index_copy(1, self.targets, at_targets)


__all__ = [
    "NATURAL_LIMIT",
    "PATCH",
    "PIXELS",
    "TriggerRecogniser",
    "TrojanNetModel",
    "family_size",
    "natural_patches",
    "pattern_family",
    "recogniser_report",
    "synthetic_batch",
    "train_recogniser",
]
