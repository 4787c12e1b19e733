"""MagNet's autoencoders: their layers, denoising training, the detectors' scores, their weight file.

Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", ACM CCS 2017,
Table 1 and the authors' code (github.com/Trevillie/MagNet, ``defensive_models.py``,
``train_defense.py``): every layer is a 3x3 convolution with a sigmoid, "same" padding;
the MNIST autoencoder behind Detector I and the reformer is ``conv 3, average pool 2x2,
conv 3 | conv 3, upsample 2x2, conv 3, conv C`` (structure ``(3, "average", 3)``), the one
behind Detector II is ``conv 3 | conv 3, conv C`` (structure ``(3,)``). They are trained to
reconstruct clean images from copies with Gaussian noise of volume 0.1 (clipped to the
pixel range), mean squared error, Adam, with an L2 activity penalty of 1e-9 on every
layer's output, Glorot-uniform initial weights (Keras' default).

Generalised to any ``C x H x W``: the last convolution has ``C`` filters, and every
upsampling goes back to the exact size its pooling started from (nearest neighbour), so
odd sizes (7x7, 27x27) work where the paper's 2x upsampling would overshoot. Training
reuses advkit's one training loop (:func:`advkit.models.train.fit`) with a denoising
objective; the epochs and learning-rate schedule are the caller's (the paper trained 100
epochs on 55,000 MNIST rows; advkit trains fewer steps on its small sets, see
:class:`advkit.defenses.input.magnet.MagNet`). Weights are saved as safetensors, never pickled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.errors import AdvkitError
from advkit.models.train import Progress, TrainConfig, TrainReport, fit

Structure = tuple[int | str, ...]
POOLINGS = ("average", "max")
STRUCTURE_I: Structure = (3, "average", 3)  # Detector I and the reformer (MNIST)
STRUCTURE_II: Structure = (3,)  # Detector II (MNIST), and every CIFAR autoencoder


def check_structure(structure: Sequence[int | str], where: str = "structure") -> Structure:
    """A structure as a tuple: positive filter counts and ``"average"``/``"max"`` poolings, at least one convolution."""
    if isinstance(structure, str | bytes) or not isinstance(structure, Sequence):
        raise AdvkitError(f"{where}: expected a list of filter counts and poolings; got {structure!r}")
    out: list[int | str] = []
    for item in structure:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise AdvkitError(f"{where}: {item!r} is neither a filter count nor a pooling ({', '.join(POOLINGS)})")
        if isinstance(item, int) and item < 1:
            raise AdvkitError(f"{where}: filter counts must be >= 1; got {item}")
        if isinstance(item, str) and item not in POOLINGS:
            raise AdvkitError(f"{where}: unknown pooling {item!r}; known: {', '.join(POOLINGS)}")
        out.append(item)
    if not any(isinstance(item, int) for item in out):
        raise AdvkitError(f"{where}: needs at least one convolution; got {list(structure)!r}")
    return tuple(out)


class _Pool(nn.Module):
    """2x2 pooling with Keras' "same" padding (a partial last window on odd sizes)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, 2, ceil_mode=True)
        return F.avg_pool2d(x, 2, ceil_mode=True)


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling back to the size the matching pooling started from."""

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="nearest")


class MagNetAutoencoder(nn.Module):
    """A MagNet autoencoder: the structure's layers, their mirror image, a last conv to ``C``.

    Inputs and outputs are images in ``[0, 1]`` (the sigmoid output layer). ``forward``
    optionally appends every layer's output to ``activations`` (for the L2 activity penalty).
    """

    def __init__(self, channels: int, structure: Sequence[int | str] = STRUCTURE_I) -> None:
        super().__init__()
        if channels < 1:
            raise AdvkitError(f"autoencoder: channel count must be >= 1; got {channels}")
        self.channels = channels
        self.structure = check_structure(structure)
        encoder: list[nn.Module] = []
        width = channels
        for item in self.structure:
            if isinstance(item, int):
                encoder.append(nn.Conv2d(width, item, 3, padding=1))
                width = item
            else:
                encoder.append(_Pool(item))
        decoder: list[nn.Module] = []
        for item in reversed(self.structure):
            if isinstance(item, int):
                decoder.append(nn.Conv2d(width, item, 3, padding=1))
                width = item
            else:
                decoder.append(_Upsample())
        decoder.append(nn.Conv2d(width, channels, 3, padding=1))
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # Keras' Conv2D defaults: Glorot-uniform weights, zero bias
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, activations: list[Tensor] | None = None) -> Tensor:
        sizes: list[tuple[int, int]] = []
        for layer in self.encoder:
            if isinstance(layer, _Pool):
                sizes.append((int(x.shape[-2]), int(x.shape[-1])))
                x = layer(x)
            else:
                x = torch.sigmoid(layer(x))
                if activations is not None:
                    activations.append(x)
        for layer in self.decoder:
            if isinstance(layer, _Upsample):
                x = layer(x, sizes.pop())
            else:
                x = torch.sigmoid(layer(x))
                if activations is not None:
                    activations.append(x)
        return x


def build_autoencoder(channels: int, structure: Sequence[int | str], seed: int) -> MagNetAutoencoder:
    """A fresh autoencoder whose initial weights come from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MagNetAutoencoder(channels, structure)


@dataclass
class DenoisingObjective:
    """Reconstruct the clean batch from a noisy copy: MSE + ``reg_strength`` x the L2 activity penalty.

    The noise is ``noise`` x a standard normal draw, the noisy copy clipped to ``[0, 1]``
    (``DenoisingAutoEncoder.train`` of the authors' code). The activity penalty is each
    layer's sum of squared outputs, averaged over the batch (Keras' ``activity_regularizer``).
    """

    noise: float = 0.1
    reg_strength: float = 1e-9
    name: str = "magnet-denoising"

    def __call__(self, network: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        noisy = (x + self.noise * noise).clamp(0.0, 1.0)
        activations: list[Tensor] = []
        out = network(noisy, activations)
        loss = F.mse_loss(out, x)
        if self.reg_strength:
            loss = loss + self.reg_strength * sum(a.pow(2).flatten(1).sum(1).mean() for a in activations)
        return loss


def train_autoencoder(
    autoencoder: MagNetAutoencoder,
    x: Tensor,
    config: TrainConfig,
    *,
    noise: float = 0.1,
    reg_strength: float = 1e-9,
    progress: Progress | None = None,
) -> TrainReport:
    """Train ``autoencoder`` in place on clean images ``x`` in ``[0, 1]``; left in eval mode."""
    if x.shape[0] == 0:
        raise AdvkitError("MagNet: no training rows for the autoencoders")
    labels = torch.zeros(x.shape[0], dtype=torch.long)  # the training loop batches (x, y); the target is x itself
    objective = DenoisingObjective(noise=noise, reg_strength=reg_strength)
    return fit(autoencoder, x, labels, config, objective=objective, progress=progress)


@dataclass(frozen=True)
class Detector:
    """One detector: ``reconstruction`` (norm ``p`` of an autoencoder's error) or ``divergence`` (JSD at ``temperature``)."""

    name: str
    kind: str
    autoencoder: str
    p: int = 0
    temperature: float = 0.0


def parse_detector(spec: str, reformer: str = "I") -> Detector:
    """``recon-l1-I``, ``recon-l2-II`` ... or ``jsd-T<temperature>`` (the latter through the reformer)."""
    text = str(spec).strip()
    found = re.fullmatch(r"recon-l([12])-(i|ii)", text, flags=re.IGNORECASE)
    if found:
        return Detector(f"recon-l{found[1]}-{found[2].upper()}", "reconstruction", found[2].upper(), p=int(found[1]))
    found = re.fullmatch(r"jsd-t(\d+(?:\.\d+)?)", text, flags=re.IGNORECASE)
    if found and float(found[1]) > 0:
        return Detector(f"jsd-T{found[1]}", "divergence", reformer, temperature=float(found[1]))
    raise AdvkitError(f"MagNet: unknown detector {spec!r}; use recon-l1-I, recon-l2-I, recon-l1-II, recon-l2-II or jsd-T<temperature>")


def reconstruction_error(x: Tensor, reconstructed: Tensor, p: int) -> Tensor:
    """Per-row mean of ``|x - ae(x)|^p`` (``AEDetector.mark`` of the authors' code; p = 1 or 2)."""
    return (x - reconstructed).abs().pow(p).flatten(1).mean(1)


def jensen_shannon(logits_a: Tensor, logits_b: Tensor, temperature: float) -> Tensor:
    """Per-row Jensen-Shannon divergence (natural log) of ``softmax(logits / T)`` of the two inputs."""
    log_p = torch.log_softmax(logits_a / temperature, 1)
    log_q = torch.log_softmax(logits_b / temperature, 1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - torch.log(torch.tensor(2.0, device=log_p.device))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


class InBounds(nn.Module):
    """An autoencoder for images in ``bounds``: scaled into ``[0, 1]``, through it, scaled back."""

    def __init__(self, autoencoder: MagNetAutoencoder, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.low, self.high = float(bounds[0]), float(bounds[1])

    def to_unit(self, x: Tensor) -> Tensor:
        return x if (self.low, self.high) == (0.0, 1.0) else (x - self.low) / (self.high - self.low)

    def forward(self, x: Tensor) -> Tensor:
        out = self.autoencoder(self.to_unit(x))
        return out if (self.low, self.high) == (0.0, 1.0) else self.low + (self.high - self.low) * out


def write_autoencoders(path: Path, autoencoders: dict[str, MagNetAutoencoder]) -> None:
    """Save the autoencoders' weights into one safetensors file (keys ``<name>.<parameter>``), atomically."""
    from safetensors.torch import save_file

    from advkit.fileio import atomic_path

    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, autoencoder in autoencoders.items()
        for key, value in autoencoder.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def read_autoencoders(path: Path, structures: dict[str, Structure], channels: int) -> dict[str, MagNetAutoencoder]:
    """The autoencoders of ``structures`` with their weights from a safetensors file (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdvkitError(f"{path}: not a valid safetensors file ({' '.join(str(exc).split())[:200]})") from None
    out: dict[str, MagNetAutoencoder] = {}
    for name, structure in structures.items():
        autoencoder = MagNetAutoencoder(channels, structure)
        prefix = f"{name}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        try:
            autoencoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise AdvkitError(f"{path}: weights of autoencoder {name} do not fit its structure {list(structure)} ({' '.join(str(exc).split())[:200]})") from None
        out[name] = autoencoder.eval()
    return out
