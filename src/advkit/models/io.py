"""Safe loading and saving of models: nothing a user hands us is ever unpickled.

Formats, by preference: safetensors with advkit metadata in its header; a state dict
read with ``torch.load(weights_only=True)`` (a pickle that names any Python object is
refused, not executed); TorchScript (``torch.jit.load``, any architecture); ONNX through
``onnx2torch``. Metadata (architecture, classes, input shape, bounds, normalization)
comes from the file itself, a sidecar ``<file>.json``, or is inferred from the data.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from advkit.core import ModelHandle, ModelInfo
from advkit.errors import AdvkitError
from advkit.fileio import atomic_path, parse_json, read_json
from advkit.models.architectures import ARCHITECTURES, build

META_KEY = "advkit"
INFO_FIELDS = {f for f in ModelInfo.__dataclass_fields__}


def info_from_dict(raw: dict[str, Any], where: str) -> ModelInfo:
    """Validate metadata read from a file into a :class:`ModelInfo`."""
    if not isinstance(raw, dict):
        raise AdvkitError(f"{where}: metadata must be a JSON object of keys (input_shape, num_classes, arch, ...); got {type(raw).__name__}")
    unknown = set(raw) - INFO_FIELDS
    if unknown:
        raise AdvkitError(f"{where}: unknown metadata key(s) {sorted(unknown, key=str)}")
    try:
        shape = tuple(int(v) for v in raw["input_shape"])
        if len(shape) != 3:
            raise ValueError("input_shape must be [C, H, W]")
        info = ModelInfo(
            input_shape=shape,  # type: ignore[arg-type]
            num_classes=int(raw["num_classes"]),
            bounds=tuple(float(b) for b in raw.get("bounds", (0.0, 1.0))),  # type: ignore[arg-type]
            mean=[float(v) for v in raw["mean"]] if raw.get("mean") is not None else None,
            std=[float(v) for v in raw["std"]] if raw.get("std") is not None else None,
            classes=[str(c) for c in raw["classes"]] if raw.get("classes") is not None else None,
            arch=raw.get("arch"),
            arch_kwargs=dict(raw.get("arch_kwargs") or {}),
            extra=dict(raw.get("extra") or {}),
        )
    except KeyError as exc:
        raise AdvkitError(f"{where}: metadata lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise AdvkitError(f"{where}: bad metadata ({exc})") from None
    if min(info.input_shape) < 1:
        raise AdvkitError(f"{where}: metadata input_shape {list(info.input_shape)} has an empty dimension")
    if info.num_classes < 2:
        raise AdvkitError(f"{where}: a classifier needs at least 2 classes; metadata says {info.num_classes}")
    return info


def save_model(handle: ModelHandle, path: str | Path) -> Path:
    """Save weights and metadata atomically: ``.safetensors`` (preferred) or ``.pt``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in handle.net.state_dict().items()}
    meta = asdict(handle.info)
    if path.suffix == ".safetensors":
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    elif path.suffix in (".pt", ".pth"):
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, META_KEY: json.dumps(meta)}, tmp)
    else:
        raise AdvkitError(f"{path}: model files end in .safetensors (preferred) or .pt")
    return path


def _sidecar(path: Path) -> dict[str, Any] | None:
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file():
            return read_json(candidate, "metadata sidecar")
    return None


def _build_from_info(info: ModelInfo, where: str) -> nn.Module:
    if not info.arch:
        raise AdvkitError(
            f"{where}: plain weights need an architecture; add 'arch' (one of {', '.join(ARCHITECTURES)}) "
            f"to the metadata or a sidecar {Path(where).name}.json"
        )
    c, h, _ = info.input_shape
    return build(info.arch, in_channels=c, num_classes=info.num_classes, image_size=h, seed=None)


def _load_state(net: nn.Module, state: dict[str, Any], where: str) -> None:
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdvkitError(f"{where}: the checkpoint holds things other than tensors")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc) or "mismatch"]
        detail = " ".join(" ".join(lines).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise AdvkitError(f"{where}: weights do not fit the architecture in the metadata ({detail})") from None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def error_summary(exc: BaseException) -> str:
    """The line of a model's exception that says what went wrong, on one line.

    TorchScript pastes its interpreter traceback into the message; the cause is the last
    ``SomeError: ...`` line, which is what the user needs (e.g. a shape mismatch).
    """
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        for line in reversed(lines):
            found = re.match(r"^[\w.]*(?:Error|Exception):\s*(.+)$", line)
            if found:
                return found.group(1)[:300]
    summary = " ".join(text.split())
    return (summary[:297] + "...") if len(summary) > 300 else summary or type(exc).__name__


def _first_layer_hint(net: nn.Module, given: tuple[int, ...]) -> str:
    """What the first weighted layer takes (channels or values per image), when that says more."""
    for module in net.modules():
        kind = getattr(module, "original_name", type(module).__name__)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if kind == "Conv2d" and weight.dim() == 4:
            groups = int(getattr(module, "groups", 1) or 1)
            channels = int(weight.shape[1]) * groups
            return f"; its first layer (Conv2d) takes {channels}-channel images, the data has {given[0]}" if channels != given[0] else ""
        if kind == "Linear" and weight.dim() == 2:
            values = int(weight.shape[1])
            if values == int(torch.Size(given).numel()):
                return ""
            guess = next((f", e.g. [{c}, {int(round((values / c) ** 0.5))}, {int(round((values / c) ** 0.5))}]" for c in (1, 3) if values % c == 0 and round((values / c) ** 0.5) ** 2 * c == values), "")
            return f"; its first layer (Linear) takes {values} values per image{guess}, the data has {int(torch.Size(given).numel())}"
        return ""
    return ""


def _probe(net: nn.Module, shape: tuple[int, int, int], where: str, source: str) -> torch.Tensor:
    """Run the model once on a batch of two zero images; one line when it refuses them."""
    try:
        with torch.inference_mode():
            return net.eval()(torch.zeros(2, *shape))
    except Exception as exc:  # the user's model rejected the shape; torch raises many types
        raise AdvkitError(
            f"{where}: the model does not accept {source} of shape {list(shape)}{_first_layer_hint(net, shape)} ({error_summary(exc)})"
        ) from None


def _infer_info(net: nn.Module, sample_shape: tuple[int, int, int] | None, where: str) -> ModelInfo:
    if sample_shape is None:
        raise AdvkitError(f"{where}: no metadata; give the data (or a sidecar {Path(where).name}.json) so the input shape is known")
    out = _probe(net, sample_shape, where, "the data's images")
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        raise AdvkitError(f"{where}: the model must return [N, classes] scores; got {list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return ModelInfo(input_shape=sample_shape, num_classes=int(out.shape[1]))


def _info_for_foreign(net: nn.Module, sidecar: dict[str, Any] | None, declared: tuple[int, int, int] | None, sample_shape: tuple[int, int, int] | None, where: str) -> ModelInfo:
    """Metadata of a TorchScript or ONNX model: its sidecar, else its declared input shape, else the data's."""
    if sidecar is not None:
        info = info_from_dict(sidecar, where)
        out = _probe(net, info.input_shape, where, "inputs of its metadata's input_shape")
    elif declared is not None:
        out = _probe(net, declared, where, "inputs of its declared shape")
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
            raise AdvkitError(f"{where}: the model must return [N, classes] scores; got {list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return ModelInfo(input_shape=declared, num_classes=int(out.shape[1]))
    else:
        return _infer_info(net, sample_shape, where)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != info.num_classes:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AdvkitError(f"{where}: the model returns {got} for 2 images; its metadata says [2, {info.num_classes}] scores")
    return info


def load_model(
    spec: str,
    device: str | None = None,
    sample_shape: tuple[int, int, int] | None = None,
) -> ModelHandle:
    """Load a model file into a :class:`ModelHandle`.

    ``sample_shape`` (the data's ``[C, H, W]``) lets advkit infer what a TorchScript or
    ONNX file without metadata expects. Specs in general (``zoo:NAME`` or a path) go
    through :func:`advkit.models.resolve.resolve`.
    """
    if spec.startswith("zoo:"):
        raise AdvkitError(f"--model {spec}: a zoo spec, not a file; load it with advkit.models.resolve.resolve (advkit.load_model)")
    path = Path(spec)
    where = str(path)
    if not path.is_file():
        raise AdvkitError(f"--model {spec}: no such file (zoo models are named like zoo:digits-cnn)")
    sidecar = _sidecar(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            state = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdvkitError(f"{where}: not a valid safetensors file ({exc}); truncated?") from None
        raw = parse_json(header[META_KEY], f"{where}: the advkit metadata in its header") if META_KEY in header else sidecar
        if raw is None:
            raise AdvkitError(f"{where}: no advkit metadata in the header and no sidecar {path.name}.json")
        return _handle_from_weights(state, raw, where, device)
    if suffix == ".onnx":
        return _load_onnx(path, sidecar, sample_shape, device)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises several types for a bad archive
            raise AdvkitError(f"{where}: not a loadable TorchScript archive ({error_summary(exc)[:200]})") from None
        info = _info_for_foreign(net, sidecar, None, sample_shape, where)
        return ModelHandle(net.eval(), info, device=device or "cpu")
    return _load_checkpoint(path, sidecar, device)


def check_model_fits_data(handle: ModelHandle, input_shape: tuple[int, ...], num_classes: int, model: str, data: str) -> None:
    """One-line error when the data's image shape or label range does not fit the model."""
    if tuple(input_shape) != tuple(handle.input_shape):
        raise AdvkitError(
            f"--data {data} has images of shape {list(input_shape)} but --model {model} expects {list(handle.input_shape)}"
        )
    if num_classes > handle.num_classes:
        raise AdvkitError(
            f"--data {data} has labels up to {num_classes - 1} but --model {model} has only {handle.num_classes} classes"
        )


def _load_checkpoint(path: Path, sidecar: dict[str, Any] | None, device: str | None) -> ModelHandle:
    where = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" chatter
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        named = f" (it names {found.group(1)})" if found else ""
        raise AdvkitError(
            f"{where}: refused: the checkpoint contains pickled Python objects{named}; only plain weights load"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError... for a non-checkpoint
        raise AdvkitError(
            f"{where}: not a readable PyTorch checkpoint ({type(exc).__name__}: {error_summary(exc)[:200]}); truncated or another format?"
        ) from None
    if not isinstance(obj, dict):
        raise AdvkitError(f"{where}: expected a state dict, found {type(obj).__name__}")
    raw: dict[str, Any] | None = sidecar
    state: Any = obj
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
        if isinstance(obj.get(META_KEY), str):
            raw = parse_json(obj[META_KEY], f"{where}: the advkit metadata in the checkpoint")
    if raw is None:
        raise AdvkitError(f"{where}: a plain state dict needs a sidecar {path.name}.json naming arch, input_shape, num_classes")
    return _handle_from_weights(state, raw, where, device)


def _handle_from_weights(state: dict[str, Any], raw: dict[str, Any], where: str, device: str | None) -> ModelHandle:
    """Metadata + weights -> the named architecture with those weights, in eval mode."""
    info = info_from_dict(raw, where)
    net = _build_from_info(info, where)
    _load_state(net, state, where)
    return ModelHandle(net.eval(), info, device=device or "cpu")


def _load_onnx(path: Path, sidecar: dict[str, Any] | None, sample_shape: tuple[int, int, int] | None, device: str | None) -> ModelHandle:
    where = str(path)
    try:
        import onnx

        convert = _import_onnx2torch()
    except ImportError:
        raise AdvkitError(
            f"{where}: ONNX models need the optional extra: pip install onnx && pip install --no-deps onnx2torch"
        ) from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises its own and protobuf errors
        raise AdvkitError(f"{where}: not an ONNX model ({error_summary(exc)[:200]})") from None
    declared = _onnx_input_shape(model)
    if declared is not None and sample_shape is not None and sidecar is None and tuple(declared) != tuple(sample_shape):
        raise AdvkitError(f"{where}: the ONNX graph takes images of shape {list(declared)}; the data's images are {list(sample_shape)}")
    try:
        net = convert(model)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... for what it cannot map
        raise AdvkitError(f"{where}: not a convertible ONNX model ({error_summary(exc)[:200]})") from None
    info = _info_for_foreign(net, sidecar, declared, sample_shape, where)
    return ModelHandle(net.eval(), info, device=device or "cpu")


def _onnx_input_shape(model: Any) -> tuple[int, int, int] | None:
    """``[C, H, W]`` of an ONNX graph's one image input when its dimensions are fixed numbers."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
        return None
    return tuple(int(d.dim_value) for d in dims[1:])  # type: ignore[return-value]


def _import_onnx2torch():  # noqa: ANN202 - returns onnx2torch.convert
    """Import onnx2torch, which imports torchvision only for its NMS/RoIAlign converters.

    torchvision cannot load beside the CPU torch wheel, so when it is absent a placeholder
    module stands in during the import; converting a graph that really uses those two
    detection operators then fails with a clear error instead of a wrong model.
    """
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("onnx2torch").convert
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
    for name in [m for m in sys.modules if m == "onnx2torch" or m.startswith("onnx2torch.")]:
        del sys.modules[name]

    def unsupported(*args: object, **kwargs: object) -> None:
        raise AdvkitError("this ONNX graph uses NonMaxSuppression/RoIAlign, which need torchvision")

    placeholder = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = unsupported  # type: ignore[attr-defined]
    placeholder.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": placeholder, "torchvision.ops": ops})
    try:
        return importlib.import_module("onnx2torch").convert
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (placeholder, ops):
                del sys.modules[name]
