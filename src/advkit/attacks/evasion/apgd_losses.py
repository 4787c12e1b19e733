"""Auto-PGD's row losses and success tests: cross-entropy, DLR and targeted DLR.

Each loss is ``loss(logits, y, target) -> [n]`` to ascend; each success test is
``test(logits, y, target) -> [n] bool``. Also the targets of APGD-T and FAB-T: each
row's top other classes by clean logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from advkit.attacks.evasion.steps import margin

RowLoss = Callable[[Tensor, Tensor, Tensor | None], Tensor]

TARGET_CLASSES = 9  # AutoAttack standard: the top 9 other classes


def _top(logits: Tensor, k: int) -> Tensor:
    """The ``k`` highest logits of each row (fewer when there are fewer classes)."""
    return logits.topk(min(k, logits.shape[1]), dim=1).values


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Difference of Logits Ratio ``(max_{i != y} z_i - z_y) / (z_pi1 - z_pi3)``, per row."""
    top = _top(logits, 3)
    scale = top[:, 0] - top[:, -1] if logits.shape[1] >= 3 else torch.ones_like(top[:, 0])
    return margin(logits, y) / (scale + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Targeted DLR ``(z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, per row."""
    assert target is not None
    top = _top(logits, 4)
    classes = logits.shape[1]
    if classes >= 4:
        scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3])
    elif classes == 3:
        scale = top[:, 0] - top[:, 2]
    else:
        scale = torch.ones_like(top[:, 0])
    diff = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return diff / (scale + 1e-12)


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy of the true class (to ascend)."""
    return F.cross_entropy(logits, y, reduction="none")


def ce_targeted_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Minus the cross-entropy of the target class (to ascend)."""
    assert target is not None
    return -F.cross_entropy(logits, target, reduction="none")


def misclassified(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Rows whose top-1 class is not ``y``."""
    return logits.argmax(1) != y


def on_target(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Rows whose top-1 class is their target."""
    assert target is not None
    return logits.argmax(1) == target


def never(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """No row ever retires (the reference's ``best_loss`` mode)."""
    return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)


def top_other_classes(clean_logits: Tensor, y: Tensor, count: int) -> list[Tensor | None]:
    """Per rank k < min(count, classes - 1): each row's k-th highest clean logit other than ``y``."""
    k = min(count, clean_logits.shape[1] - 1)
    order = clean_logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    return [order[:, j] for j in range(k)]
