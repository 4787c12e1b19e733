"""Clean-label (label-consistent) backdoor: hard target-class images with a trigger.

Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", arXiv:1912.02771, 2019.
A plain trigger stamped on training images *of the target class* (labels untouched)
barely plants a backdoor: the victim classifies those images from their natural
features and has no reason to learn the trigger. Turner et al. first make the images
hard to classify — here their adversarial-perturbation variant: an Linf PGD step
sequence (Madry et al., ICLR 2018) that *maximises* the cross-entropy of the true label
on a model trained on clean data, ``x' = argmax_{||x' - x||_inf <= eps} CE(f(x'), y)`` —
and then stamp the trigger. The victim, unable to fit the perturbed images from their
content, leans on the trigger, which at test time sends other classes' images to the
target class (:func:`~advkit.attacks.poisoning.backdoor.backdoor_success_rate`).

Choices and simplifications versus the paper:

- the trigger is one :class:`~advkit.attacks.poisoning.backdoor.PatchTrigger` (default a
  3x3 full-amplitude checkerboard in the bottom-right corner, the paper's
  ``bottom-right`` pattern), the same one stamped at training and at test time; the
  paper's reduced-amplitude four-corner variant (an additive +-amplitude pattern, for
  visibility and robustness to flips) is not provided;
- the perturbations come from the model given (a standard model trained on clean data);
  the paper prefers an adversarially trained one, whose perturbations transfer better;
- PGD: ``steps`` (20) steps of ``2.5 * eps / steps`` from the clean image, no random
  start, the last iterate kept (the maximum-loss point, not the first misclassified one);
- ``eps = 0`` gives the paper's baseline: the trigger on the same rows, no perturbation;
- ``rate`` is the share of *all* training rows poisoned (every poisoned row is of the
  target class, so it is at most that class's share); the share of the target class is
  recorded as ``class_share`` (the paper's "proportion of the target class").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advkit.attacks.evasion.steps import pgd
from advkit.attacks.poisoning.backdoor import PatchTrigger
from advkit.attacks.poisoning.budget import draw_class_rows
from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError
from advkit.registry import register


@register(
    "clean-label",
    family="poisoning",
    knowledge="data",
    paper="Turner, Tsipras, Madry. Label-Consistent Backdoor Attacks. arXiv:1912.02771, 2019",
    atlas="AML.T0020, AML.T0018.000, AML.T0043",
    summary="label-consistent backdoor: adversarially hardened target-class images carrying a trigger, labels kept",
)
@dataclass
class CleanLabel:
    """Poison a share ``rate`` of the training rows, all of class ``target``, labels kept.

    ``eps`` is the Linf budget of the hardening perturbation (0: trigger only, the
    paper's baseline); the model handed to :meth:`__call__` is the attacker's own,
    trained on clean data (not the victim).
    """

    target: int
    rate: float = 0.05
    eps: float = 64 / 255
    steps: int = 20
    step_size: float | None = None
    trigger: PatchTrigger = field(default_factory=PatchTrigger)

    name = "clean-label"

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise AdvkitError(f"clean-label: rate must be in (0, 1); got {self.rate}")
        if not self.eps >= 0:
            raise AdvkitError(f"clean-label: eps must be >= 0; got {self.eps}")
        if self.steps < 1:
            raise AdvkitError(f"clean-label: steps must be >= 1; got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise AdvkitError(f"clean-label: step size must be > 0; got {self.step_size}")
        if not isinstance(self.trigger, PatchTrigger):
            raise AdvkitError(f"clean-label: the trigger must be a PatchTrigger; got {type(self.trigger).__name__}")

    def params(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "rate": self.rate,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps,
            "trigger": self.trigger.to_dict(),
        }

    def choose_rows(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """``round(rate * N)`` rows of the target class, drawn at random, sorted."""
        return draw_class_rows(y, self.target, self.rate, generator, "clean-label")

    def harden(self, network: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float]) -> Tensor:
        """The maximum-loss PGD iterate of every row within ``eps`` (``x`` itself for eps 0)."""
        if self.eps == 0:
            return x.clone()
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        run = pgd(network, x, y, eps=self.eps, norm="linf", steps=self.steps, step_size=step, bounds=bounds, loss="ce", track_best=False, evaluate_final=False)
        return run.final_x.detach()

    def _crafted(self, model: ModelHandle | nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, float]:
        """The hardened rows (on ``x``'s device) and the crafting model's accuracy on them."""
        network = model.network if isinstance(model, ModelHandle) else model
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        try:
            hard = self.harden(network, x.to(device), y.to(device), bounds)
            with torch.no_grad():
                accuracy = float((network(hard).argmax(1) == y.to(device)).float().mean())
        finally:
            network.train(was_training)
        return hard.to(x.device, x.dtype), accuracy

    def __call__(
        self,
        model: ModelHandle | nn.Module | None,
        x: Tensor,
        y: Tensor,
        *,
        num_classes: int | None = None,
        bounds: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> PoisonedData:
        """Poison ``(x, y)``; ``model`` crafts the perturbations (it may be ``None`` only with ``eps = 0``)."""
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise AdvkitError(f"clean-label: needs images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
        if isinstance(model, ModelHandle):
            num_classes = num_classes or model.num_classes
            bounds = bounds or model.bounds
        num_classes = num_classes or int(y.max()) + 1
        bounds = bounds or (0.0, 1.0)
        if not 0 <= self.target < num_classes:
            raise AdvkitError(f"clean-label: target class {self.target} is outside 0..{num_classes - 1}")
        if self.eps > bounds[1] - bounds[0]:
            raise AdvkitError(f"clean-label: eps {self.eps} exceeds the pixel range {bounds}")
        if model is None and self.eps > 0:
            raise AdvkitError("clean-label: a model trained on clean data is needed to perturb the poisons (or eps 0)")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        rows = self.choose_rows(y, generator)
        hard, accuracy = x[rows], None
        if model is not None and self.eps > 0:
            hard, accuracy = self._crafted(model, x[rows], y[rows], bounds)
        poisoned_x = x.clone()
        poisoned_x[rows] = self.trigger.apply(hard, bounds)
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[rows] = True
        params = self.params()
        params["class_share"] = rows.numel() / int((y == self.target).sum())
        params["max_perturbation"] = float((hard - x[rows]).abs().max())
        params["crafting_model_accuracy"] = accuracy  # on the hardened rows, before the trigger
        return PoisonedData(poisoned_x, y.clone(), mask, y.clone(), self.name, self.target, params)
