"""Denoised smoothing: certify a frozen, pretrained classifier by prepending a denoiser.

Salman, Sun, Yang, Kapoor & Kolter, "Denoised Smoothing: A Provable Defense for Pretrained
Image Classifiers", NeurIPS 2020 (reference code: github.com/microsoft/denoised-smoothing).

Randomized smoothing (Cohen et al. 2019, :mod:`advkit.certify.smoothing`) needs a base
classifier that is accurate under Gaussian noise, which an off-the-shelf classifier ``f``
is not. Denoised smoothing keeps ``f`` frozen and smooths ``f(D(.))`` instead, where ``D``
is a DnCNN denoiser (Zhang et al., IEEE TIP 2017) trained for the noise level ``sigma``:

- ``"mse"``: ``E ||D(x + delta) - x||^2`` (the paper's "MSE"; needs no classifier);
- ``"stability"``: ``E CE(f(D(x + delta)), f(x))``, the cross-entropy to the frozen
  classifier's own argmax on the clean image (the paper's "Stab": no labels needed).

with ``delta ~ N(0, sigma^2 I)``, noisy inputs not clipped. The paper's best denoisers
("Stab+MSE") are first trained with MSE and then fine-tuned with the stability objective;
:func:`train_denoiser` does both in one call (``mse_epochs`` MSE warm-up epochs, then
stability). Gradients flow through ``f`` to ``D`` only; ``f``'s weights never change.
Certify with :func:`denoised_handle` and :class:`advkit.certify.smoothing.Smoothed`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError

OBJECTIVES = ("mse", "stability", "stability+mse")
# Adam's L2 weight decay: the reference train_denoiser.py default (--weight-decay 1e-4)
WEIGHT_DECAY = 1e-4


class Denoiser(nn.Module):
    """A DnCNN residual denoiser, fully convolutional: ``D(x) = x - net(x)``.

    ``net`` is conv+ReLU, ``depth - 2`` x (conv+BatchNorm+ReLU), conv, all 3x3 with
    padding 1, so any image size works. As in the reference DnCNN: biases only on the
    first conv, BatchNorm eps 1e-4, orthogonal init and a zero last conv, so a fresh
    denoiser is the identity. (The reference's BatchNorm ``momentum=0.95`` is a Keras
    port that makes PyTorch's running statistics almost the last batch's; PyTorch's
    default 0.1 is kept here.) Works in pixel space: inputs are noisy [0, 1] images and
    may lie outside [0, 1].
    """

    def __init__(self, channels: int, depth: int = 8, width: int = 64) -> None:
        super().__init__()
        for name, value, least in (("channels", channels, 1), ("depth", depth, 2), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise AdvkitError(f"denoiser {name} must be an integer >= {least}; got {value!r}")
        self.channels, self.depth, self.width = channels, depth, width
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, eps=1e-4), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.net = nn.Sequential(*layers)
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(convs[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.net(x)

    def settings(self) -> dict[str, int]:
        """The constructor's arguments: ``Denoiser(**d.settings())`` rebuilds the architecture."""
        return {"channels": self.channels, "depth": self.depth, "width": self.width}


def denoiser_from_settings(settings: dict[str, Any]) -> Denoiser:
    """A fresh :class:`Denoiser` from :meth:`Denoiser.settings` (e.g. read from saved metadata)."""
    if not isinstance(settings, dict) or set(settings) != {"channels", "depth", "width"}:
        got = sorted(settings) if isinstance(settings, dict) else type(settings).__name__
        raise AdvkitError(f"denoiser settings must have exactly channels, depth and width; got {got}")
    return Denoiser(settings["channels"], settings["depth"], settings["width"])


class DenoisedClassifier(nn.Module):
    """``classifier(denoiser(x))``: the base classifier that denoised smoothing smooths.

    ``classifier`` is a pixel-space module with its input normalisation inside (in advkit,
    ``ModelHandle.network``).
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.denoiser(x))


def denoised_handle(model: ModelHandle, denoiser: nn.Module) -> ModelHandle:
    """A :class:`ModelHandle` of ``model``'s network behind ``denoiser``, ready for :class:`Smoothed`.

    Normalisation stays inside ``model.network``, so the new handle has none of its own.
    ``denoiser`` is put in eval mode on ``model``'s device (and, like every CPU handle's
    network, laid out channels-last: call ``.contiguous()`` on its tensors before saving).
    """
    extra = {"denoiser": denoiser.settings()} if isinstance(denoiser, Denoiser) else {}
    info = ModelInfo(model.input_shape, model.num_classes, bounds=model.bounds, classes=model.info.classes, extra=extra)
    return ModelHandle(DenoisedClassifier(denoiser.to(model.device).eval(), model.network), info, device=model.device)


@dataclass
class DenoiserReport:
    """A trained denoiser (in eval mode) and how it was trained; ``losses``/``phases`` per epoch."""

    denoiser: Denoiser
    objective: str
    epochs: int
    losses: list[float]
    seconds: float
    sigma: float = 0.0
    mse_epochs: int = 0
    phases: list[str] = field(default_factory=list)


def _check(x: Any, sigma: float, epochs: int, lr: float, batch_size: int, objective: str, mse_epochs: int | None) -> int:
    """Validate :func:`train_denoiser`'s input; return the number of MSE warm-up epochs."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise AdvkitError(f"sigma must be a number > 0; got {sigma}")
    if not isinstance(epochs, int) or epochs < 1:
        raise AdvkitError(f"epochs must be an integer >= 1; got {epochs}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise AdvkitError(f"lr must be a number > 0; got {lr}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise AdvkitError(f"batch size must be an integer >= 1; got {batch_size}")
    if objective not in OBJECTIVES:
        raise AdvkitError(f"unknown denoiser objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if not isinstance(x, Tensor):
        raise AdvkitError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise AdvkitError(f"images must be [N, C, H, W]; got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise AdvkitError("images: no rows to train the denoiser on")
    if not x.is_floating_point():
        raise AdvkitError(f"images must be floating point in [0, 1]; got {x.dtype}")
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        raise AdvkitError(f"images: row {int((~finite).nonzero()[0])} has NaN or infinite pixels")
    if objective == "mse":
        if mse_epochs not in (None, epochs):
            raise AdvkitError(f"mse_epochs is for the stability objective; objective 'mse' trains all {epochs} epochs with MSE")
        return epochs
    warm = min(max(1, epochs // 4), epochs - 1) if mse_epochs is None else mse_epochs
    if not isinstance(warm, int) or not 0 <= warm < epochs:
        raise AdvkitError(f"mse_epochs must be an integer in 0..{epochs - 1} (epochs={epochs}); got {mse_epochs}")
    if objective == "stability+mse" and warm == 0:
        raise AdvkitError("objective 'stability+mse' needs mse_epochs >= 1 (MSE first, then stability)")
    return warm


def train_denoiser(
    classifier: nn.Module,
    x: Tensor,
    sigma: float,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    objective: str = "stability",
    mse_epochs: int | None = None,
    depth: int = 8,
    width: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DenoiserReport:
    """Train a :class:`Denoiser` for noise ``sigma`` in front of the frozen ``classifier``.

    ``x`` are unlabelled training images in [0, 1]. ``objective`` is ``"mse"`` (every
    epoch MSE), ``"stability"`` (``mse_epochs`` MSE warm-up epochs, then the stability
    objective against ``classifier``'s argmax on clean ``x``; ``mse_epochs=0`` is the
    paper's stability-from-scratch "Stab") or ``"stability+mse"`` (the paper's name for
    the same two-stage recipe; it insists on a warm-up). The paper found MSE first, then
    stability best: its reference code trains an MSE denoiser (90 epochs) and fine-tunes
    it with the stability objective in a second run. Here the default warm-up is a
    quarter of the epochs (``max(1, epochs // 4)``, none when ``epochs == 1``): on the
    digits zoo model at sigma 0.25 a longer stability phase certified slightly larger
    radii than an even split (ACR 0.386 vs 0.377; 12 epochs, depth 6, width 32).

    Each phase gets a fresh Adam (``lr``, weight decay 1e-4, as the reference) with the
    reference's step decay (``StepLR(30, 0.1)`` over 90 epochs): ``lr`` falls tenfold after
    each third of the phase, counted in optimiser steps. Shuffling, noise and the
    denoiser's initialisation come from ``seed`` alone, so one seed gives one denoiser.

    The classifier stays in ``eval()`` with its parameters untouched: their
    ``requires_grad`` flags are switched off during training and restored afterwards,
    as are its modules' train/eval modes. ``progress("denoiser", step, total)`` is called
    after every optimiser step.
    """
    warm = _check(x, sigma, epochs, lr, batch_size, objective, mse_epochs)
    if not isinstance(classifier, nn.Module):
        raise AdvkitError(f"classifier must be a torch.nn.Module; got {type(classifier).__name__}")
    params = list(classifier.parameters())
    device = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    x = x.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser = Denoiser(x.shape[1], depth, width).to(device)

    modes = [(m, m.training) for m in classifier.modules()]
    flags = [p.requires_grad for p in params]
    start = time.perf_counter()
    try:
        classifier.eval()
        for p in params:
            p.requires_grad_(False)
        targets = torch.empty(0, dtype=torch.long)
        if warm < epochs:  # the stability targets: the frozen classifier's own labels on clean x
            with torch.no_grad():
                targets = torch.cat([classifier(x[i : i + 512].to(device)).argmax(1).cpu() for i in range(0, x.shape[0], 512)])
        rows = x.shape[0]
        per_epoch = -(-rows // batch_size)
        total = epochs * per_epoch
        losses: list[float] = []
        phases: list[str] = []
        step = 0
        for phase, phase_epochs in (("mse", warm), ("stability", epochs - warm)):
            if phase_epochs == 0:
                continue
            optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
            phase_steps = phase_epochs * per_epoch
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, n=phase_steps: 0.1 ** min(2, 3 * s // n))
            denoiser.train()
            for _ in range(phase_epochs):
                order = torch.randperm(rows, generator=generator)
                summed = 0.0
                for first in range(0, rows, batch_size):
                    index = order[first : first + batch_size]
                    clean = x[index]
                    noisy = (clean + torch.randn(clean.shape, generator=generator) * sigma).to(device)
                    denoised = denoiser(noisy)
                    if phase == "mse":
                        loss = F.mse_loss(denoised, clean.to(device))
                    else:
                        loss = F.cross_entropy(classifier(denoised), targets[index].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    summed += float(loss.detach()) * index.numel()
                    step += 1
                    if progress is not None:
                        progress("denoiser", step, total)
                losses.append(summed / rows)
                phases.append(phase)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
    denoiser.eval()
    return DenoiserReport(denoiser, objective, epochs, losses, time.perf_counter() - start, float(sigma), warm, phases)


DENOISES_KEY = "denoises"  # the SHA-256 of the frozen model's weights a saved denoiser was trained for


def save_denoiser(denoiser: Denoiser, path: str | Path, model: ModelHandle, sigma: float) -> Path:
    """The denoiser's weights as safetensors, with its settings, ``sigma`` and the frozen model's digest."""
    import json

    from safetensors.torch import save_file

    from advkit.fileio import atomic_path
    from advkit.models.finetune import weights_digest
    from advkit.models.io import META_KEY

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    meta = {"denoiser": denoiser.settings(), "sigma": sigma, DENOISES_KEY: weights_digest(model.net)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def is_denoiser(meta: dict[str, Any] | None) -> bool:
    return isinstance(meta, dict) and isinstance(meta.get("denoiser"), dict) and isinstance(meta.get(DENOISES_KEY), str)


def load_denoised(model: ModelHandle, path: str | Path) -> ModelHandle:
    """The frozen ``model`` behind the denoiser saved at ``path`` (which must have been trained for it)."""
    from safetensors.torch import load_file

    from advkit.models.finetune import read_metadata, weights_digest

    meta = read_metadata(path)
    if not is_denoiser(meta):
        raise AdvkitError(f"{path}: not a saved denoiser (no denoiser settings in its metadata)")
    assert meta is not None
    if meta[DENOISES_KEY] != weights_digest(model.net):
        raise AdvkitError(f"{path}: the denoiser was trained for another model than the one given (weights differ)")
    denoiser = denoiser_from_settings(meta["denoiser"])
    try:
        denoiser.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise AdvkitError(f"{path}: weights do not fit the denoiser's settings ({' '.join(str(exc).split())[:200]})") from None
    return denoised_handle(model, denoiser)
