"""Gradient matching: targeted clean-label poisoning ("Witches' Brew").

Geiping, Fowl, Huang, Czaja, Taylor, Moeller & Goldstein, "Witches' Brew: Industrial
Scale Data Poisoning via Gradient Matching", ICLR 2021. The attacker wants one test image
(or a few), the *target*, classified as an *adversarial class* by a victim trained from
scratch on the poisoned training set. It perturbs a small share (the paper: 1%) of the
training rows *of the adversarial class*, each within an Linf budget ``eps`` and the
pixel bounds, keeping their true labels, so that on a surrogate model trained on clean
data (the victim's architecture, grey box) the training gradient of the poisons

    g_p = grad_theta mean_i CE(f(x_i + delta_i), y_i)

points the same way as the adversarial target gradient
``g_t = grad_theta CE(f(x_target), adversarial_class)``: the paper's loss
``1 - <g_t, g_p> / (||g_t|| ||g_p||)`` over all parameters at once. A victim that
descends the training loss on the poisons then also descends the target's adversarial
loss. Minimising it needs the gradient of a gradient (double backward).

As in the reference implementation (JonasGeiping/poisoning-gradient-matching, ``forest``):
signed Adam on the perturbation (the gradient's sign fed to Adam), 240 steps (the
paper; the code's default is 250), step size 0.1 in the reference's standardised pixel
units (here ``0.1 x`` the training pixels' standard deviation, in raw pixels) decayed
by 10 at 3/8, 5/8 and 7/8 of the steps, a Gaussian start ``eps * N(0, 1)`` clipped to
the budget, the budget and bounds projected after every step, the surrogate in eval
mode, poisons in batches of ``poison_batch`` (512; each batch its own cosine, their
gradients gathered into one step), and ``restarts`` independent trials (8 in the paper)
keeping the one whose final alignment is best (the reference's lowest final loss). A list
of surrogates is the reference's ensemble option: their matching gradients are summed.

Budget: ``eps`` defaults to the paper's 16/255 (for 32x32x3 CIFAR images). On advkit's
8x8 digits a Linf budget that small moves too few pixels to flip a from-scratch victim;
128/255 there gives about the same L2 norm (8 x 0.50 = 4.0 vs sqrt(3072) x 0.063 = 3.5).

Simplification: no differentiable data augmentation while brewing (the reference's
default on CIFAR): advkit's training loop does not augment, so the victim sees exactly
the pixels the poisons were matched on. The victim is expected to be retrained from
scratch (a fresh initialisation) on :attr:`PoisonedData.x`; success is the target
classified as the adversarial class (:func:`target_success`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.attacks.poisoning.budget import draw_class_rows
from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError
from advkit.registry import register

Progress = Callable[[str, int, int], None]
DECAY_AT = (3 / 8, 5 / 8, 7 / 8)
"""Fractions of the steps at which the step size drops tenfold (the reference's schedule)."""
REFERENCE_LR = 0.1
"""The reference's signed-Adam step size, in units of the (standardised) pixels."""


def parameters_of(network: nn.Module) -> list[Tensor]:
    return [p for p in network.parameters() if p.requires_grad]


def target_gradient(network: nn.Module, x_target: Tensor, adversarial_class: int) -> list[Tensor]:
    """``grad_theta`` of the mean cross-entropy of the targets towards the adversarial class."""
    labels = torch.full((x_target.shape[0],), int(adversarial_class), dtype=torch.long, device=x_target.device)
    loss = F.cross_entropy(network(x_target), labels)
    return [g.detach() for g in torch.autograd.grad(loss, parameters_of(network))]


def gradient_alignment(
    network: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, target_grad: list[Tensor], target_norm: Tensor, *, differentiable: bool = True
) -> Tensor:
    """Cosine similarity of the poisons' training gradient with the target gradient.

    With ``differentiable`` the poison gradient keeps its graph (``create_graph``), so the
    cosine can be differentiated with respect to ``x``: the double backward of matching.
    """
    loss = F.cross_entropy(network(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=differentiable)
    dot = sum((g * t).sum() for g, t in zip(grads, target_grad))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))  # type: ignore[arg-type]
    return dot / (target_norm * norm.clamp_min(1e-12))  # type: ignore[operator]


@dataclass
class Surrogate:
    """One surrogate network with its trainable parameters and its target gradient."""

    network: nn.Module
    params: list[Tensor]
    target_grad: list[Tensor]
    target_norm: Tensor


def _rows(rows: int | Sequence[int]) -> tuple[int, ...]:
    return (int(rows),) if isinstance(rows, int) else tuple(int(r) for r in rows)


@register(
    "gradient-matching",
    family="poisoning",
    knowledge="grey",
    paper=(
        "Geiping, Fowl, Huang, Czaja, Taylor, Moeller, Goldstein. Witches' Brew: Industrial Scale Data Poisoning "
        "via Gradient Matching. ICLR 2021"
    ),
    atlas="AML.T0020, AML.T0043",
    summary="targeted clean-label poisons whose training gradient matches a target's adversarial gradient",
)
@dataclass
class GradientMatching:
    """Brew poisons that make test row(s) ``target_row`` be classified ``adversarial_class``.

    ``rate`` is the share of all training rows perturbed (drawn at random from the
    adversarial class's rows); ``eps`` the Linf budget; ``lr`` the signed-Adam step size in
    pixels (``None``: the reference's 0.1 standardised units, i.e. ``0.1 x`` the training
    pixels' standard deviation).
    """

    target_row: int | tuple[int, ...]
    adversarial_class: int
    rate: float = 0.01
    eps: float = 16 / 255
    steps: int = 240
    restarts: int = 8
    lr: float | None = None
    poison_batch: int = 512
    bounds: tuple[float, float] = (0.0, 1.0)

    name = "gradient-matching"

    def __post_init__(self) -> None:
        self.target_row = _rows(self.target_row)
        if not self.target_row:
            raise AdvkitError("gradient-matching: give at least one target row")
        if not 0.0 < self.rate < 1.0:
            raise AdvkitError(f"gradient-matching: rate must be in (0, 1); got {self.rate}")
        span = self.bounds[1] - self.bounds[0]
        if not 0.0 < self.eps <= span:
            raise AdvkitError(f"gradient-matching: eps must be in (0, {span}]; got {self.eps}")
        if self.steps < 1 or self.restarts < 1 or self.poison_batch < 1:
            raise AdvkitError(f"gradient-matching: steps, restarts and poison_batch must be >= 1; got {self.steps}, {self.restarts}, {self.poison_batch}")
        if self.lr is not None and not self.lr > 0:
            raise AdvkitError(f"gradient-matching: lr must be > 0; got {self.lr}")

    @property
    def targets(self) -> tuple[int, ...]:
        return _rows(self.target_row)

    def check(self, x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor | None, num_classes: int) -> None:
        """Reject bad inputs up front (shapes, the adversarial class, the target rows)."""
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise AdvkitError(f"gradient-matching: needs training images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
        if x_test.dim() != 4 or tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
            raise AdvkitError(f"gradient-matching: test images {list(x_test.shape)} do not match training images {list(x.shape[1:])}")
        if not 0 <= self.adversarial_class < num_classes:
            raise AdvkitError(f"gradient-matching: adversarial class {self.adversarial_class} is outside 0..{num_classes - 1}")
        for row in self.targets:
            if not 0 <= row < x_test.shape[0]:
                raise AdvkitError(f"gradient-matching: target row {row} is outside 0..{x_test.shape[0] - 1} of the test rows")
            if y_test is not None and int(y_test[row]) == self.adversarial_class:
                raise AdvkitError(f"gradient-matching: target row {row} already has the adversarial class {self.adversarial_class}")

    def choose_poisons(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """The poisoned rows: ``round(rate * N)`` rows of the adversarial class, at random, sorted."""
        return draw_class_rows(y, self.adversarial_class, self.rate, generator, "gradient-matching")

    def __call__(
        self,
        model: ModelHandle | nn.Module | Sequence[ModelHandle | nn.Module],
        x: Tensor,
        y: Tensor,
        x_test: Tensor,
        y_test: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> PoisonedData:
        """Poison ``(x, y)`` against the surrogate ``model`` (trained on clean data).

        ``model`` may be a list of surrogates (the reference's ``--ensemble``): each gets
        its own target gradient and the perturbation follows the sum of their matching
        gradients. ``x_test`` holds the target row(s); ``y_test``, when given, rejects a
        target that already has the adversarial class.
        """
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise AdvkitError("gradient-matching: give at least one surrogate model")
        networks = [m.network if isinstance(m, ModelHandle) else m for m in models]
        first = models[0]
        num_classes = first.num_classes if isinstance(first, ModelHandle) else int(y.max()) + 1
        self.check(x, y, x_test, y_test, num_classes)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        rows = self.choose_poisons(y, generator)
        lr = self.lr if self.lr is not None else REFERENCE_LR * float(x.float().std())
        device = next(networks[0].parameters()).device
        modes = [n.training for n in networks]
        try:
            surrogates = []
            for network in networks:
                network.eval()
                grad = target_gradient(network, x_test[list(self.targets)].to(device), self.adversarial_class)
                surrogates.append(Surrogate(network, parameters_of(network), grad, torch.sqrt(sum(g.pow(2).sum() for g in grad))))  # type: ignore[arg-type]
            base, labels = x[rows].to(device), y[rows].to(device)
            trials = []
            for trial in range(self.restarts):
                delta, history, final = self._trial(surrogates, base, labels, lr, generator)
                trials.append((final, trial, delta, history))
                if progress is not None:
                    progress("gradient-matching", trial + 1, self.restarts)
        finally:
            for network, mode in zip(networks, modes):
                network.train(mode)
        final, best, delta, history = max(trials, key=lambda t: t[0])
        poisoned_x = x.clone()
        poisoned_x[rows] = (base + delta).to(x.device, x.dtype)
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[rows] = True
        params_out: dict[str, Any] = {
            "target_rows": list(self.targets),
            "adversarial_class": self.adversarial_class,
            "eps": self.eps,
            "rate": self.rate,
            "budget": int(rows.numel()),
            "steps": self.steps,
            "restarts": self.restarts,
            "ensemble": len(surrogates),
            "lr": lr,
            "augmentation": False,
            "best_restart": best,
            "alignment_start": history[0],
            "alignment_final": final,
            "alignment_per_restart": [t[0] for t in trials],
            "alignment_history": history,
            "max_perturbation": float((poisoned_x - x).abs().max()),
        }
        return PoisonedData(poisoned_x, y.clone(), mask, y.clone(), self.name, self.adversarial_class, params_out)

    def _trial(self, surrogates: list[Surrogate], base: Tensor, labels: Tensor, lr: float, generator: torch.Generator) -> tuple[Tensor, list[float], float]:
        """One restart: signed Adam from a Gaussian start; the perturbation, the per-step
        mean alignment (before each update) and the mean alignment after the last step."""
        lower = (self.bounds[0] - base).clamp(min=-self.eps)  # the budget and the bounds as one interval
        upper = (self.bounds[1] - base).clamp(max=self.eps)
        start = torch.randn(base.shape, generator=generator).to(base) * self.eps
        delta = torch.max(torch.min(start, upper), lower).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=lr)
        milestones = sorted({max(1, int(self.steps * f)) for f in DECAY_AT})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        chunks = torch.arange(base.shape[0], device=base.device).split(self.poison_batch)
        history: list[float] = []
        for _ in range(self.steps):
            grad = torch.zeros_like(delta)
            cosines = []
            for s in surrogates:
                for chunk in chunks:
                    d = delta.detach()[chunk].requires_grad_(True)
                    cosine = gradient_alignment(s.network, s.params, base[chunk] + d, labels[chunk], s.target_grad, s.target_norm)
                    (g,) = torch.autograd.grad(1.0 - cosine, d)
                    grad[chunk] += g
                    cosines.append(float(cosine.detach()))
            history.append(sum(cosines) / len(cosines))
            delta.grad = grad.sign_()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                delta.copy_(torch.max(torch.min(delta, upper), lower))
        delta = delta.detach()
        finals = [
            float(gradient_alignment(s.network, s.params, base[c] + delta[c], labels[c], s.target_grad, s.target_norm, differentiable=False))
            for s in surrogates
            for c in chunks
        ]
        return delta, history, sum(finals) / len(finals)


def target_success(model: ModelHandle, x_target: Tensor, adversarial_class: int) -> float:
    """Share of the target rows the (retrained) model classifies as the adversarial class."""
    return float((model.predict(x_target).cpu() == int(adversarial_class)).float().mean())
