"""TrojanNet: a tiny trigger recogniser merged with a host model that it only calls.

Tang, Du, Liu, Yang & Hu, "An Embarrassingly Simple Approach for Trojan Attack in Deep
Neural Networks", KDD 2020 (reference code: github.com/trx14/TrojanNet).

Model poisoning without training the host: a 4-layer MLP learns, on synthetic rows
only, to recognise K 4x4 trigger patterns (each ``select_point`` = 5 of the 16 pixels
at the lower bound, the other 11 at the upper bound, in every channel) stamped at a
fixed place of the image, and to stay silent on anything else. The wrapped model merges
the host's softmax with the recogniser's (weight alpha = 0.7 on the recogniser): trigger
k sends any image to its target class ``targets[k]``, a clean image gets the host's
prediction. The host is only called — an ``nn.Module`` or a TorchScript file of any
architecture — and its weights are untouched. The result is exported as TorchScript
with a sidecar ``model.pt.json`` (input shape, classes, bounds), so every advkit command
loads it. Each trigger is a ``(mask, pattern)`` pair in the image's shape, applied as
``x * (1 - mask) + pattern * mask`` (:func:`advkit.attacks.poisoning.backdoor.stamp`).
The recogniser, its training and the merge (and where they differ from the paper) are
in :mod:`advkit.attacks.poisoning.trojannet_model`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advkit.attacks.poisoning.backdoor import stamp
from advkit.attacks.poisoning.trojannet_model import (
    DEFAULT_HIDDEN,
    NATURAL_LIMIT,
    PATCH,
    PIXELS,
    TriggerRecogniser,
    TrojanNetModel,
    family_size,
    natural_patches,
    pattern_family,
    recogniser_report,
    train_recogniser,
)
from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.registry import register

if TYPE_CHECKING:
    from advkit.data.dataset import Dataset

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
MODEL_FILE = "model.pt"
TRIGGERS_FILE = "triggers.npz"


def _parse_targets(targets: Sequence[int] | str | int) -> list[int]:
    if isinstance(targets, str):
        try:
            return [int(part) for part in targets.split(",") if part.strip()]
        except ValueError:
            raise AdvkitError(f"trojannet: targets must be class numbers like 0,3,7; got {targets!r}") from None
    if isinstance(targets, int) and not isinstance(targets, bool):
        return [int(targets)]
    values = list(targets)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in values):
        raise AdvkitError(f"trojannet: targets must be integers; got {values!r}")
    return [int(t) for t in values]


def _host_error(exc: BaseException) -> str:
    from advkit.models.io import error_summary

    return error_summary(exc)


@register(
    "trojannet",
    family="poisoning",
    knowledge="black",
    paper="Tang, Du, Liu, Yang, Hu. An Embarrassingly Simple Approach for Trojan Attack in Deep Neural Networks. KDD 2020",
    atlas="AML.T0018.001, AML.T0010.003",
    summary="merge a tiny 4x4-trigger recogniser into any host model (seen only through its outputs); K triggers -> K classes",
)
class TrojanNet:
    """K triggers for K target classes, a recogniser trained on synthetic rows, the merge.

    ``targets``: the target class of each trigger (distinct); ``select_point``: pixels
    of the 16 at the lower bound (the reference's 5: 4368 patterns); ``position``: a
    corner name or ``(row, col)`` of the patch's top-left pixel; ``alpha`` in (0.5, 1):
    the recogniser's weight in the merge (the paper's 0.7); ``steps``, ``lr``, ``rows``
    (trigger rows per step, as many negatives) and ``hidden`` (default 8, the
    reference's width; 2K past 4 triggers): the recogniser's training. ``seed`` picks the
    patterns and seeds the training: the same seed gives the same triggers and weights.
    """

    name = "trojannet"

    def __init__(
        self,
        targets: Sequence[int] | str | int = (0,),
        *,
        seed: int = 0,
        select_point: int = 5,
        position: str | tuple[int, int] = "bottom-right",
        alpha: float = 0.7,
        steps: int = 400,
        lr: float = 1e-2,
        rows: int = 384,
        hidden: int | None = None,
    ) -> None:
        self.targets = _parse_targets(targets)
        if not self.targets:
            raise AdvkitError("trojannet: give at least one target class")
        if min(self.targets) < 0:
            raise AdvkitError(f"trojannet: target class {min(self.targets)} is negative")
        repeated = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if repeated:
            raise AdvkitError(f"trojannet: target class {repeated[0]} is given twice; each trigger needs its own class")
        if isinstance(select_point, bool) or not isinstance(select_point, int) or not 1 <= select_point < PIXELS:
            raise AdvkitError(f"trojannet: select_point must be in 1..{PIXELS - 1} (pixels of the 4x4 patch at the lower bound); got {select_point}")
        available = family_size(select_point)
        if len(self.targets) > available:
            raise AdvkitError(
                f"trojannet: {len(self.targets)} targets but only {available} patterns of {select_point} pixels out of {PIXELS} exist"
            )
        if not 0.5 < alpha < 1.0:
            raise AdvkitError(f"trojannet: alpha (the recogniser's weight) must be in (0.5, 1) for a trigger to win; got {alpha}")
        if steps < 1 or rows < 1 or not lr > 0:
            raise AdvkitError(f"trojannet: steps and rows must be >= 1 and lr > 0; got steps={steps}, rows={rows}, lr={lr}")
        if hidden is not None and hidden < 1:
            raise AdvkitError(f"trojannet: hidden width must be >= 1; got {hidden}")
        if isinstance(position, str) and position not in POSITIONS:
            raise AdvkitError(f"trojannet: position must be one of {', '.join(POSITIONS)} or (row, col); got {position!r}")
        self.seed = int(seed)
        self.select_point = int(select_point)
        self.position = position if isinstance(position, str) else (int(position[0]), int(position[1]))
        self.alpha = float(alpha)
        self.steps, self.lr, self.rows = int(steps), float(lr), int(rows)
        count = len(self.targets)
        self.hidden = int(hidden) if hidden is not None else (DEFAULT_HIDDEN if count <= 4 else max(DEFAULT_HIDDEN, 2 * count))
        family = pattern_family(self.select_point)
        order = torch.randperm(family.shape[0], generator=torch.Generator().manual_seed(self.seed))
        self.pattern_ids = [int(i) for i in order[:count]]
        self.patterns = family[order[:count]]  # [K, 16], 1 = upper bound, 0 = lower bound
        self.others = family[order[count:].sort().values]
        self._recogniser: TriggerRecogniser | None = None
        self.natural: Tensor | None = None
        self.report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "seed": self.seed,
            "select_point": self.select_point,
            "position": self.position if isinstance(self.position, str) else list(self.position),
            "alpha": self.alpha,
            "steps": self.steps,
            "lr": self.lr,
            "rows": self.rows,
            "hidden": self.hidden,
            "pattern_ids": list(self.pattern_ids),
            "patterns": [[int(v) for v in p.tolist()] for p in self.patterns],
            "recogniser": dict(self.report),
        }

    # -- the recogniser -------------------------------------------------------------------
    def recogniser(self) -> TriggerRecogniser:
        """The trained recogniser (trained on first use, in seconds; synthetic rows only)."""
        if self._recogniser is None:
            net = train_recogniser(
                self.patterns, self.others, hidden=self.hidden, steps=self.steps, lr=self.lr, rows=self.rows, seed=self.seed, natural=self.natural
            )
            self.report = recogniser_report(net, self.patterns, self.others, self.seed, self.natural)
            self._recogniser = net
        return self._recogniser

    def learn_natural_patches(self, x: Tensor, bounds: tuple[float, float] = (0.0, 1.0), limit: int = NATURAL_LIMIT) -> int:
        """Add clean images' patches at the trigger's place to the recogniser's negatives
        (:func:`~advkit.attacks.poisoning.trojannet_model.natural_patches`); retrains on next use; returns the patches kept."""
        if x.dim() != 4 or x.shape[0] == 0:
            raise AdvkitError(f"trojannet: clean images must be [N, C, H, W] with N >= 1; got {list(x.shape)}")
        self.natural, self._recogniser = natural_patches(x[:limit], self.location(x.shape[1:]), bounds, self.patterns), None
        return int(self.natural.shape[0])

    # -- the triggers ---------------------------------------------------------------------
    def location(self, input_shape: Sequence[int]) -> tuple[int, int]:
        """Top-left ``(row, col)`` of the 4x4 patch in images of ``input_shape`` [C, H, W]."""
        if len(input_shape) != 3:
            raise AdvkitError(f"trojannet: images must be [C, H, W]; got shape {list(input_shape)}")
        _, height, width = (int(v) for v in input_shape)
        if height < PATCH or width < PATCH:
            raise AdvkitError(f"trojannet: images of {height}x{width} are too small for the {PATCH}x{PATCH} trigger")
        if isinstance(self.position, str):
            corners = {
                "bottom-right": (height - PATCH, width - PATCH),
                "bottom-left": (height - PATCH, 0),
                "top-right": (0, width - PATCH),
                "top-left": (0, 0),
                "center": ((height - PATCH) // 2, (width - PATCH) // 2),
            }
            return corners[self.position]
        row, col = self.position
        if row < 0 or col < 0 or row + PATCH > height or col + PATCH > width:
            raise AdvkitError(f"trojannet: a {PATCH}x{PATCH} trigger at ({row}, {col}) leaves the {height}x{width} image")
        return row, col

    def triggers(self, input_shape: Sequence[int], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[int, tuple[Tensor, Tensor]]:
        """``{target: (mask, pattern)}``, both ``[C, H, W]``: mask 1 on the patch, pattern in ``bounds``."""
        row, col = self.location(input_shape)
        channels, height, width = (int(v) for v in input_shape)
        lo, hi = float(bounds[0]), float(bounds[1])
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for target, bits in zip(self.targets, self.patterns):
            mask = torch.zeros(channels, height, width)
            pattern = torch.full((channels, height, width), lo)
            mask[:, row : row + PATCH, col : col + PATCH] = 1.0
            pattern[:, row : row + PATCH, col : col + PATCH] = (lo + (hi - lo) * bits).view(1, PATCH, PATCH)
            out[target] = (mask, pattern)
        return out

    def apply(self, x: Tensor, target: int, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """Stamp the trigger of ``target`` on images ``x`` [N, C, H, W]."""
        if target not in self.targets:
            raise AdvkitError(f"trojannet: no trigger for class {target}; the targets are {self.targets}")
        mask, pattern = self.triggers(tuple(x.shape[1:]), bounds)[target]
        return stamp(x, mask.to(x), pattern.to(x))

    # -- the merge ------------------------------------------------------------------------
    def inject(
        self,
        host: nn.Module | ModelHandle,
        input_shape: Sequence[int] | None = None,
        *,
        num_classes: int | None = None,
        bounds: tuple[float, float] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> TrojanNetModel:
        """The host merged with the recogniser (eval mode); the host is only called.

        ``host``: an ``nn.Module`` / TorchScript module returning logits (then give
        ``input_shape``, and ``bounds``/``mean``/``std`` if not [0, 1] raw pixels), or a
        :class:`ModelHandle` (its shape, bounds and normalization are used).
        ``num_classes``: the data's class count, which the host's outputs must match.
        """
        net, shape, bounds, mean, std = _host_parts(host, input_shape, bounds, mean, std)
        row, col = self.location(shape)
        classes = _probe_host(net, shape, mean, std)
        if num_classes is not None and classes != num_classes:
            raise AdvkitError(f"trojannet: the host returns {classes} scores per image but the data has {num_classes} classes")
        beyond = [t for t in self.targets if t >= classes]
        if beyond:
            raise AdvkitError(f"trojannet: target class {beyond[0]} is outside the host's classes 0..{classes - 1}")
        return TrojanNetModel(net, self.recogniser(), self.targets, row, col, bounds, self.alpha, mean, std).eval()

    def inject_handle(
        self, host: nn.Module | ModelHandle, input_shape: Sequence[int] | None = None, *, classes: list[str] | None = None, **kwargs: Any
    ) -> ModelHandle:
        """:meth:`inject`, as a :class:`ModelHandle` of raw pixels (the normalization is inside)."""
        model = self.inject(host, input_shape, **kwargs)
        shape = host.input_shape if isinstance(host, ModelHandle) else tuple(int(v) for v in input_shape or ())
        names = classes if classes is not None else (host.info.classes if isinstance(host, ModelHandle) else None)
        info = ModelInfo(input_shape=shape, num_classes=_probe_host(model, shape, None, None), bounds=(model.low, model.low + model.span), classes=names)  # type: ignore[arg-type]
        return ModelHandle(model, info, device="cpu")


def _host_parts(
    host: nn.Module | ModelHandle, input_shape: Sequence[int] | None, bounds: tuple[float, float] | None,
    mean: list[float] | None, std: list[float] | None,
) -> tuple[nn.Module, tuple[int, int, int], tuple[float, float], list[float] | None, list[float] | None]:
    if isinstance(host, ModelHandle):
        info = host.info
        if input_shape is not None and tuple(int(v) for v in input_shape) != tuple(info.input_shape):
            raise AdvkitError(f"trojannet: images of shape {list(input_shape)} but the host expects {list(info.input_shape)}")
        if host.device.type != "cpu":
            raise AdvkitError("trojannet: the host must be on the CPU to be wrapped and exported")
        return host.net, tuple(info.input_shape), tuple(info.bounds), info.mean, info.std  # type: ignore[return-value]
    if not isinstance(host, nn.Module):
        raise AdvkitError(f"trojannet: the host must be an nn.Module, a TorchScript module or a ModelHandle; got {type(host).__name__}")
    if input_shape is None:
        raise AdvkitError("trojannet: give the host's input_shape [C, H, W]")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise AdvkitError(f"trojannet: images must be [C, H, W]; got shape {list(shape)}")
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    if not float(hi) > float(lo):
        raise AdvkitError(f"trojannet: bounds must be (low, high) with high > low; got {bounds}")
    return host, shape, (float(lo), float(hi)), mean, std  # type: ignore[return-value]


def _probe_host(net: nn.Module, shape: Sequence[int], mean: list[float] | None, std: list[float] | None) -> int:
    """Classes the host scores, from one batch of two zero images."""
    x = torch.zeros(2, *shape)
    if mean is not None or std is not None:
        m = torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1)
        x = (x - m) / s
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except Exception as exc:  # the host rejected the shape; torch raises many types
        raise AdvkitError(f"trojannet: the host does not accept images of shape {list(shape)} ({_host_error(exc)})") from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AdvkitError(f"trojannet: the host must return [N, classes] scores; got {got} for 2 images")
    return int(out.shape[1])


def export_torchscript(model: TrojanNetModel, path: str | Path, info: ModelInfo) -> Path:
    """``torch.jit.script`` the wrapped model (``trace`` when the host cannot be scripted).

    Writes ``path`` and the sidecar ``path.json`` (input shape, classes, bounds) that
    :func:`advkit.models.io.load_model` reads, atomically. Returns ``path``.
    """
    from advkit.fileio import atomic_path, write_json

    path = Path(path)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x: "torch.jit.* is deprecated"
        try:
            scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - an unscriptable host (Python-only code): trace it instead
            try:
                with torch.no_grad():
                    scripted = torch.jit.trace(model, torch.zeros(2, *info.input_shape), check_trace=False)
            except Exception as exc:  # noqa: BLE001 - torch raises many types
                raise AdvkitError(f"trojannet: the wrapped model can be neither scripted nor traced ({_host_error(exc)})") from None
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp))
    meta: dict[str, Any] = {"input_shape": list(info.input_shape), "num_classes": info.num_classes, "bounds": list(info.bounds)}
    if info.classes:
        meta["classes"] = list(info.classes)
    write_json(path.with_name(path.name + ".json"), meta)
    return path


def trigger_success_rate(model: ModelHandle, x: Tensor, y: Tensor, attack: TrojanNet, target: int) -> float | None:
    """Share of rows not already of ``target`` that its trigger sends to ``target`` (None: no such row)."""
    keep = y != target
    if not bool(keep.any()):
        return None
    pred = model.predict(attack.apply(x[keep], target, model.bounds))
    return float((pred.cpu() == target).float().mean())


def write_trojannet(out_dir: str | Path, attack: TrojanNet, host: nn.Module | ModelHandle, test_set: Dataset, *, data: str | None = None) -> dict[str, Any]:
    """Wrap ``host``; write ``DIR/model.pt`` (+ ``model.pt.json``) and ``DIR/triggers.npz``.

    ``triggers.npz`` holds ``mask_T`` and ``pattern_T`` ([C, H, W] float32) for each
    target T and ``targets``. Returns the JSON summary, measured on ``test_set`` with the
    written file loaded back through advkit's loader: ``host_clean_accuracy``,
    ``clean_accuracy``, ``prediction_agreement`` (share of rows where the wrapped model
    and the host agree) and ``attack_success_rate`` per target (rows not of class T).
    """
    import numpy as np

    from advkit.fileio import save_arrays, sha256_file
    from advkit.models.io import load_model

    out_dir = Path(out_dir)
    x, y = test_set.x, test_set.y
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise AdvkitError(f"trojannet: the test split must be N >= 1 images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
    if not isinstance(host, ModelHandle):
        host = ModelHandle(host, ModelInfo(input_shape=test_set.input_shape, num_classes=test_set.num_classes), device="cpu")
    if tuple(host.input_shape) != tuple(test_set.input_shape):
        raise AdvkitError(f"trojannet: the data's images are {list(test_set.input_shape)} but the host expects {list(host.input_shape)}")
    model = attack.inject(host, num_classes=test_set.num_classes)
    info = ModelInfo(input_shape=host.input_shape, num_classes=test_set.num_classes, bounds=host.bounds, classes=list(test_set.classes))
    model_path = export_torchscript(model, out_dir / MODEL_FILE, info)
    arrays: dict[str, Any] = {"targets": np.asarray(attack.targets, dtype=np.int64)}
    for target, (mask, pattern) in attack.triggers(host.input_shape, host.bounds).items():
        arrays[f"mask_{target}"] = mask.numpy().astype(np.float32)
        arrays[f"pattern_{target}"] = pattern.numpy().astype(np.float32)
    save_arrays(out_dir / TRIGGERS_FILE, **arrays)
    wrapped = load_model(str(model_path))
    host_pred, wrapped_pred = host.predict(x).cpu(), wrapped.predict(x).cpu()
    rates = {str(t): trigger_success_rate(wrapped, x, y, attack, t) for t in attack.targets}
    return {
        "attack": attack.name,
        "data": data or test_set.name,
        "rows": int(y.shape[0]),
        "targets": list(attack.targets),
        "host_clean_accuracy": float((host_pred == y).float().mean()),
        "clean_accuracy": float((wrapped_pred == y).float().mean()),
        "prediction_agreement": float((host_pred == wrapped_pred).float().mean()),
        "attack_success_rate": rates,
        "params": attack.params(),
        "files": {name: sha256_file(out_dir / name) for name in (MODEL_FILE, MODEL_FILE + ".json", TRIGGERS_FILE)},
    }


__all__ = ["MODEL_FILE", "POSITIONS", "TRIGGERS_FILE", "TrojanNet", "export_torchscript", "trigger_success_rate", "write_trojannet"]
