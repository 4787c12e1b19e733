"""Poison Frogs: targeted clean-label poisoning by feature collision.

Shafahi, Huang, Najibi, Suciu, Studer, Dumitras & Goldstein, "Poison Frogs! Targeted
Clean-Label Poisoning Attacks on Neural Networks", NeurIPS 2018.

The attacker picks a *target* test image ``t`` and a *base* class; it perturbs base-class
images ``b`` into poisons ``p`` that keep their correct label (clean label) but collide with
``t`` in the victim's feature space, ``p = argmin_x ||f(x) - f(t)||^2 + beta ||x - b||^2``
(eq. 1), ``f`` the penultimate layer (here the input of the last ``nn.Linear``,
:class:`PenultimateFeatures`). A victim trained on clean data + poisons then puts ``t`` on
the base side of its decision boundary.

Algorithm 1 (forward-backward splitting), for every poison of a batch at once:

- forward step ``x^ = p - lr * grad_p ||f(p) - f(t)||^2``; backward (proximal) step
  ``p' = (x^ + lr * beta * b) / (1 + lr * beta)``, clipped to the pixel bounds;
- ``beta = beta0 * D_feature^2 / D_input^2``, ``beta0 = 0.25`` (the paper; the authors'
  ``coeff_sim_inp = coeffSimInp * (2048 / dim_b)^2``);
- step size and stop rule of the authors' code (ashafahi/inceptionv3-transferLearn-poison,
  ``do_optimization``): a large first step; a step whose objective is not below the mean
  of the last ``M = 40`` objectives is thrown away and the step halved; stop when
  ``||p' - p|| / ||p'|| < tol``, when the feature distance is below ``feature_tol``, or
  after ``steps`` iterations.

Each poison has its own step size, history and stop flag, so a batch (one target or
several) runs as one vectorised loop: one forward and one backward pass of the feature
extractor per iteration (the candidate's pass gives its objective and, once accepted, the
next gradient). For end-to-end training (section 4.2) each base is first *watermarked*,
``b' = (1 - gamma) b + gamma t`` (``gamma <= 0.3`` in the paper), and ``b'`` is the
optimisation's base (its start and its proximal anchor).

Deviations, all choices:

- pixels are in the model's bounds (``[0, 1]``), not the authors' ``0..255``. The paper's
  beta formula is applied in those units, which makes the penalty ``255^2`` times weaker
  than in 0..255 units: on mnist-cnn (D 128 / 784, beta 0.0067) poisons move ~10 in L2
  (a digit's own norm is ~9) and look like the target; ``beta`` or ``eps`` tighten it, at
  the price of the success rate (see the benchmark's transfer study);
- the objective uses the paper's squared norms (the TensorFlow code minimises the
  unsquared ones); the "objective went up" rule is checked every iteration (the reference
  checks it every ``M/2`` and accepts every other step);
- ``eps`` adds the reference's ``inf_norm`` option (projection onto an Linf ball);
- bases are the base-class training rows closest to the target in feature space
  (``base_choice="closest"``, the reference's ``closest_to_target_from_class``) or seeded
  random rows (``"random"``).

The poisons are *appended* to the training set with their base-class labels (the paper's
clean set + poisons); ``PoisonedData.poisoned`` marks them, ``params`` records the target's
test row and class and the base class, for :mod:`advkit.attacks.poisoning.poison_frogs_eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError
from advkit.registry import register

Progress = Callable[[str, int, int], None]
BASE_CHOICES = ("closest", "random")
PAPER_BETA0 = 0.25


def last_linear(network: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` among ``network.modules()``: the classifier head of a feed-forward net."""
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise AdvkitError(f"poison-frogs: {type(network).__name__} has no nn.Linear layer to take penultimate features from")
    return linears[-1]


class _FeaturesReady(Exception):
    """Raised by the feature hook to stop the forward pass once the features are recorded."""


class PenultimateFeatures:
    """``x -> f(x)``: the input of the network's last ``nn.Linear`` (flattened to ``[N, D]``).

    A forward pre-hook on that layer records its input and stops the forward pass there
    (the class scores are never computed), so it works for any eager ``nn.Module`` whose
    classifier ends in an ``nn.Linear`` (advkit's CNNs, ResNets, logistic regression,
    torchvision models), normalisation included when given ``ModelHandle.network``.
    ``layer`` picks another ``nn.Linear`` explicitly (its input is then the feature).
    """

    def __init__(self, network: nn.Module, layer: nn.Linear | None = None) -> None:
        self.network = network
        self.layer = layer if layer is not None else last_linear(network)

    def __call__(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])
            raise _FeaturesReady

        hook = self.layer.register_forward_pre_hook(record)
        try:
            self.network(x)
        except _FeaturesReady:
            pass
        finally:
            hook.remove()
        if not captured:
            raise AdvkitError(f"poison-frogs: the feature layer {type(self.layer).__name__} never ran in the forward pass")
        return captured[0].flatten(1)


def watermark(base: Tensor, target: Tensor, opacity: float) -> Tensor:
    """The paper's watermark ``(1 - opacity) * base + opacity * target`` (target broadcast)."""
    return torch.lerp(base, target.to(base.dtype).expand_as(base), float(opacity))


def scaled_beta(feature_dim: int, input_dim: int, beta0: float = PAPER_BETA0) -> float:
    """The paper's ``beta = beta0 * D_feature^2 / D_input^2``."""
    return float(beta0) * (float(feature_dim) / float(input_dim)) ** 2


@dataclass
class Collision:
    """The poisons of :func:`feature_collision` and how far each got (per poison)."""

    poisons: Tensor
    feature_distance: Tensor
    start_distance: Tensor
    steps: Tensor
    step_size: Tensor
    objective: Tensor = field(repr=False)


def feature_collision(
    network: nn.Module,
    bases: Tensor,
    target_features: Tensor,
    *,
    beta: float,
    steps: int = 1000,
    lr: float = 10.0,
    decay: float = 0.5,
    window: int = 40,
    tol: float = 1e-5,
    feature_tol: float | None = None,
    eps: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    layer: nn.Linear | None = None,
    progress: Progress | None = None,
) -> Collision:
    """Algorithm 1 for a batch: row ``i`` of ``bases`` is pulled towards ``target_features[i]``.

    ``target_features`` is ``[P, D]`` (one target per poison) or ``[D]`` (one target for
    all). ``network`` runs in ``eval()`` mode (its modes are restored after). Returns the
    poisons and, per poison, the final and starting feature distances ``||f(p) - f(t)||``,
    the iterations run and the final step size. ``eps`` adds the reference code's
    ``inf_norm`` option: after the proximal step the poison is projected onto the Linf
    ball of radius ``eps`` around its base (use ``beta=0`` for the reference's pure box).
    """
    if bases.dim() < 2 or bases.shape[0] == 0:
        raise AdvkitError(f"poison-frogs: bases must be a non-empty batch [P, ...]; got shape {list(bases.shape)}")
    if steps < 1 or window < 1 or not lr > 0 or not 0 < decay < 1 or not beta >= 0 or not tol >= 0:
        raise AdvkitError("poison-frogs: need steps >= 1, window >= 1, lr > 0, 0 < decay < 1, beta >= 0, tol >= 0")
    if eps is not None and not eps > 0:
        raise AdvkitError(f"poison-frogs: eps must be > 0; got {eps}")
    lo, hi = bounds
    extractor = PenultimateFeatures(network, layer)
    device = next((p.device for p in network.parameters()), bases.device)
    base = bases.detach().to(device, torch.float32)
    count = base.shape[0]
    target = target_features.detach().to(device, torch.float32)
    target = target.expand(count, -1) if target.dim() == 1 else target
    if target.shape[0] != count:
        raise AdvkitError(f"poison-frogs: {target.shape[0]} target feature rows for {count} bases")
    view, dims = (count,) + (1,) * (base.dim() - 1), tuple(range(1, base.dim()))
    box_lo = lo if eps is None else (base - eps).clamp_(min=lo)
    box_hi = hi if eps is None else (base + eps).clamp_(max=hi)

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gradient of the feature loss at ``x``, the objective and the squared feature distance per row."""
        x = x.detach().requires_grad_(True)
        feature_sq = (extractor(x) - target).square().sum(1)
        (grad,) = torch.autograd.grad(feature_sq.sum(), x)
        feature_sq = feature_sq.detach()
        return grad, torch.add(feature_sq, (x.detach() - base).flatten(1).square().sum(1), alpha=beta), feature_sq

    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        poison = base.clone()
        grad, objective, feature_sq = evaluate(poison)
        start = feature_sq.sqrt()
        step_size = torch.full((count,), float(lr), device=device)
        history = torch.zeros(count, window, device=device)
        history[:, 0] = objective
        filled, head = 1, 1 % window
        active = torch.ones(count, dtype=torch.bool, device=device)
        if feature_tol is not None:
            active &= start > feature_tol
        iterations = torch.zeros(count, device=device)
        for it in range(steps):
            if it % 8 == 0 and not bool(active.any()):  # a host sync: not every iteration
                break
            weight = step_size * beta
            shrink = (weight / (1 + weight)).view(view)  # the proximal step is a lerp towards the base
            candidate = torch.lerp(torch.addcmul(poison, step_size.view(view), grad, value=-1.0), base, shrink)
            candidate = candidate.clamp_(box_lo, box_hi)
            cand_grad, cand_objective, cand_feature_sq = evaluate(candidate)
            recent = history if filled == window else history[:, :filled]
            accept = (cand_objective < recent.mean(1)) & active
            moving = torch.linalg.vector_norm(candidate - poison, dim=dims) >= tol * torch.linalg.vector_norm(candidate, dim=dims)
            keep = accept.view(view)
            poison = torch.where(keep, candidate, poison)
            grad = torch.where(keep, cand_grad, grad)
            objective = torch.where(accept, cand_objective, objective)
            feature_sq = torch.where(accept, cand_feature_sq, feature_sq)
            step_size = torch.where(active ^ accept, step_size * decay, step_size)  # rejected: halve the step
            iterations += active
            active &= moving
            if feature_tol is not None:
                active &= feature_sq > feature_tol**2
            history[:, head] = objective
            head, filled = (head + 1) % window, min(filled + 1, window)
            if progress is not None:
                progress("poison-frogs", it + 1, steps)
    finally:
        for module, mode in modes:
            module.train(mode)
    return Collision(poison.detach(), feature_sq.sqrt(), start, iterations.long().cpu(), step_size.cpu(), objective)


@register(
    "poison-frogs",
    family="poisoning",
    knowledge="white",
    paper="Shafahi, Huang, Najibi, Suciu, Studer, Dumitras, Goldstein. Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018",
    atlas="AML.T0020, AML.T0018.000",
    summary="clean-label targeted poisons: base-class images that collide with one target image in feature space",
)
@dataclass
class PoisonFrogs:
    """Craft ``poisons`` clean-label poisons that make the victim call test row ``target`` ``base_class``.

    ``target`` indexes the target pool handed to :meth:`__call__` (the test split);
    ``watermark`` is the target's opacity in each base (0 for transfer learning, up to 0.3
    for end-to-end training in the paper); ``beta`` overrides the paper's scaled
    ``beta0 * D_feature^2 / D_input^2``; ``eps`` adds a Linf budget around each base;
    ``steps``/``lr``/``decay``/``window``/``tol`` drive :func:`feature_collision`.
    """

    target: int
    base_class: int
    poisons: int = 1
    watermark: float = 0.0
    beta0: float = PAPER_BETA0
    beta: float | None = None
    eps: float | None = None
    steps: int = 1000
    lr: float = 10.0
    decay: float = 0.5
    window: int = 40
    tol: float = 1e-5
    base_choice: str = "closest"
    name: ClassVar[str] = "poison-frogs"

    def __post_init__(self) -> None:
        if not 0.0 <= self.watermark < 1.0:
            raise AdvkitError(f"poison-frogs: watermark opacity must be in [0, 1); got {self.watermark}")
        if self.poisons < 1 or self.steps < 1 or self.window < 1:
            raise AdvkitError(f"poison-frogs: poisons, steps and window must be >= 1; got {self.poisons}, {self.steps}, {self.window}")
        if not self.beta0 > 0 or (self.beta is not None and not self.beta >= 0) or (self.eps is not None and not self.eps > 0):
            raise AdvkitError(f"poison-frogs: need beta0 > 0, beta >= 0, eps > 0; got {self.beta0}, {self.beta}, {self.eps}")
        if not self.lr > 0 or not 0 < self.decay < 1 or not self.tol >= 0:
            raise AdvkitError(f"poison-frogs: need lr > 0, 0 < decay < 1, tol >= 0; got {self.lr}, {self.decay}, {self.tol}")
        if self.base_choice not in BASE_CHOICES:
            raise AdvkitError(f"poison-frogs: base_choice must be one of {', '.join(BASE_CHOICES)}; got {self.base_choice!r}")
        if self.target < 0 or self.base_class < 0:
            raise AdvkitError(f"poison-frogs: target row and base class must be >= 0; got {self.target}, {self.base_class}")

    def params(self) -> dict[str, Any]:
        return {
            "target_row": self.target, "base_class": self.base_class, "poisons": self.poisons, "watermark": self.watermark,
            "beta0": self.beta0, "beta": self.beta, "eps": self.eps, "steps": self.steps, "lr": self.lr, "decay": self.decay,
            "window": self.window, "tol": self.tol, "base_choice": self.base_choice,
        }

    def check(self, model: ModelHandle, x: Tensor, y: Tensor, x_target: Tensor, y_target: Tensor, pairs: list[tuple[int, int]]) -> list[int]:
        """Check the inputs up front (one-line errors); returns each pair's target class."""
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise AdvkitError(f"poison-frogs: need training images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
        if tuple(x.shape[1:]) != tuple(model.input_shape) or x_target.dim() != 4 or tuple(x_target.shape[1:]) != tuple(model.input_shape):
            raise AdvkitError(f"poison-frogs: training and target images must be [N, {', '.join(map(str, model.input_shape))}]")
        if y_target.dim() != 1 or y_target.shape[0] != x_target.shape[0]:
            raise AdvkitError(f"poison-frogs: {x_target.shape[0]} target-pool images but labels of shape {list(y_target.shape)}")
        classes = []
        for target, base_class in pairs:
            if not 0 <= target < x_target.shape[0]:
                raise AdvkitError(f"poison-frogs: target row {target} is outside the target pool's rows 0..{x_target.shape[0] - 1}")
            if not 0 <= base_class < model.num_classes:
                raise AdvkitError(f"poison-frogs: base class {base_class} is outside 0..{model.num_classes - 1}")
            target_class = int(y_target[target])
            if target_class == base_class:
                raise AdvkitError(f"poison-frogs: base class {base_class} is target row {target}'s own class; pick another")
            available = int((y == base_class).sum())
            if available < self.poisons:
                raise AdvkitError(f"poison-frogs: {self.poisons} poisons need as many base-class rows; class {base_class} has {available}")
            classes.append(target_class)
        return classes

    def choose_bases(self, features: PenultimateFeatures, x: Tensor, y: Tensor, base_class: int, target_features: Tensor, generator: torch.Generator) -> Tensor:
        """Indices of the ``poisons`` base-class training rows to perturb."""
        rows = (y == base_class).nonzero().squeeze(1)
        if self.base_choice == "random":
            return rows[torch.randperm(rows.numel(), generator=generator)[: self.poisons]]
        device = target_features.device
        dist = torch.cat([(features(x[chunk].to(device)) - target_features).norm(dim=1).cpu() for chunk in rows.split(1024)])
        return rows[dist.argsort()[: self.poisons]]

    def __call__(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        x_target: Tensor,
        y_target: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> PoisonedData:
        """Poison ``(x, y)`` against row ``target`` of ``(x_target, y_target)``; poisons are appended."""
        return self.craft_many(model, x, y, x_target, y_target, generator=generator, progress=progress)[0]

    def craft_many(
        self,
        model: ModelHandle,
        x: Tensor,
        y: Tensor,
        x_target: Tensor,
        y_target: Tensor,
        pairs: list[tuple[int, int]] | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> list[PoisonedData]:
        """One poisoned set per ``(target row, base class)`` pair (default: this attack's own).

        The ``poisons`` poisons of every pair are optimised together in one batch of
        :func:`feature_collision`; each result holds the clean set + that pair's poisons.
        """
        pairs = [(int(t), int(b)) for t, b in (pairs if pairs is not None else [(self.target, self.base_class)])]
        if not pairs:
            raise AdvkitError("poison-frogs: no (target row, base class) pair to poison")
        target_classes = self.check(model, x, y, x_target, y_target, pairs)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        features = PenultimateFeatures(model.network)
        rows = torch.tensor([t for t, _ in pairs])
        target_images = x_target[rows].to(model.device, torch.float32)
        with model.eval_mode(), torch.no_grad():
            target_features = features(target_images)
            base_rows = [self.choose_bases(features, x, y, b, target_features[i], generator) for i, (_, b) in enumerate(pairs)]
        per_pair = [watermark(x[r].to(model.device, torch.float32), target_images[i : i + 1], self.watermark) for i, r in enumerate(base_rows)]
        bases = torch.cat(per_pair)
        beta = self.beta if self.beta is not None else scaled_beta(target_features.shape[1], bases[0].numel(), self.beta0)
        result = feature_collision(
            model.network, bases, target_features.repeat_interleave(self.poisons, 0), beta=beta, steps=self.steps,
            lr=self.lr, decay=self.decay, window=self.window, tol=self.tol, eps=self.eps, bounds=model.bounds, progress=progress,
        )
        out = []
        for i, ((target, base_class), chosen) in enumerate(zip(pairs, base_rows)):
            part = slice(i * self.poisons, (i + 1) * self.poisons)
            poisons = result.poisons[part].to(x.device, x.dtype)
            labels = torch.full((self.poisons,), base_class, dtype=y.dtype, device=y.device)
            x_out, y_out = torch.cat([x, poisons]), torch.cat([y, labels])
            mask = torch.cat([torch.zeros(x.shape[0], dtype=torch.bool), torch.ones(self.poisons, dtype=torch.bool)])
            moved = (poisons - x[chosen]).flatten(1)
            params = {
                **self.params(), "target_row": target, "base_class": base_class, "beta": beta, "target_class": target_classes[i],
                "base_rows": [int(r) for r in chosen], "feature_dim": int(target_features.shape[1]),
                "feature_distance": [float(d) for d in result.feature_distance[part]],
                "start_feature_distance": [float(d) for d in result.start_distance[part]],
                "iterations": [int(n) for n in result.steps[part]],
                "max_perturbation": float(moved.abs().max()), "mean_l2_perturbation": float(moved.norm(dim=1).mean()),
                "placement": "appended", "first_poison_row": int(x.shape[0]),
            }
            out.append(PoisonedData(x_out, y_out, mask, y_out.clone(), self.name, base_class, params))
        return out


__all__ = ["Collision", "PenultimateFeatures", "PoisonFrogs", "feature_collision", "last_linear", "scaled_beta", "watermark"]
