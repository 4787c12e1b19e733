"""What the ``advkit`` commands share: option types, output checks, consoles and helpers.

The library prints nothing; these helpers render its progress callbacks (tqdm bars on a
terminal), check outputs before any work and write ``--json`` results. A command module
marks each command with :func:`command`; :mod:`advkit.cli` registers them on the app.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import torch
import typer
from rich.console import Console

from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.core import ModelHandle
    from advkit.data import Dataset, FolderRows

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])
COMMANDS: dict[str, Callable[..., Any]] = {}
"""Every top-level command by name; :mod:`advkit.cli` registers them on the app."""


def command(name: str | None = None) -> Callable[[F], F]:
    """Mark a function as the top-level command ``name`` (default: the function's name)."""

    def mark(fn: F) -> F:
        COMMANDS[name or fn.__name__.replace("_", "-")] = fn
        return fn

    return mark


# -- shared options ---------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, .safetensors, .pt state dict, TorchScript or .onnx")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="digits, mnist5k, or a path (IDX dir, CIFAR-10 dir, .npz, image folder)")]
SplitOpt = Annotated[str, typer.Option("--split", help="train|test")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="first N rows of the split")]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", help="resize the shorter side to round(S/0.875) and centre-crop S x S (image folders)")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the run's torch.Generator")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="rows per batch")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local|ray")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (ray; default: RAY_ADDRESS, else a new local instance)")
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="tasks in flight at once (default: all CPUs)")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="torch threads per task (default: all of this process's locally, 1 on Ray; equal counts give identical numbers)")
]


def writable(path: Path | None, option: str, directory: bool = False) -> Path | None:
    """Check an output location before any work, so a run never ends in a failed write.

    Every command that writes calls it first (``--json`` does through its option callback).
    """
    if path is not None:
        from advkit.fileio import check_writable

        check_writable(path, option, directory=directory)
    return path


def _json_writable(value: Path | None) -> Path | None:
    """``--json`` callback: an unwritable results path fails while the options are parsed."""
    return writable(value, "--json")


JsonOpt = Annotated[Path | None, typer.Option("--json", help="write machine-readable results here", callback=_json_writable)]


def progress_callback(enabled: bool) -> Callable[[str, int, int], None] | None:
    """A progress callback drawing tqdm bars on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = tqdm(total=total, desc=label, leave=False, file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(label, None)

    return update


def check_device(name: str) -> str:
    """``--device``: a device this machine has (cpu, cuda, cuda:N, mps); returns the name."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AdvkitError(f"--device {name!r} is not a device name (cpu, cuda, cuda:0)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AdvkitError(f"--device {name}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise AdvkitError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise AdvkitError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise AdvkitError(f"--device {name}: advkit runs on cpu, cuda or mps")
    return name


PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32|bf16|fp16: autocast for the attacks' passes; every verdict is re-checked in fp32")]


def check_precision(name: str) -> str:
    """``--precision``: fp32, bf16 or fp16."""
    from advkit.core.handle import PRECISIONS

    if name not in PRECISIONS:
        raise AdvkitError(f"--precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


def parse_floats(text: str, option: str) -> list[float]:
    """Numbers separated by commas (``--eps 0.1,0.3``); at least one."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdvkitError(f"{option} takes numbers separated by commas; got {text!r}") from None
    if not values:
        raise AdvkitError(f"{option} needs at least one value")
    return values


def load_model_and_data(
    model: str, data: str, split: str, limit: int | None, device: str, *, image_size: int | None = None
) -> tuple[ModelHandle, Dataset]:
    """The model handle and the dataset split (``--image-size``: resized), checked to fit each other."""
    from advkit.data import load_dataset
    from advkit.models.io import check_model_fits_data
    from advkit.models.resolve import resolve

    device = check_device(device)
    dataset = load_dataset(data, split=split, limit=limit, image_size=image_size)
    handle = resolve(model, device=device, sample_shape=dataset.input_shape)
    check_model_fits_data(handle, dataset.input_shape, dataset.num_classes, model, data)
    return handle, dataset


def load_model_and_rows(
    model: str, data: str, split: str, limit: int | None, device: str, *, image_size: int | None = None
) -> tuple[ModelHandle, Dataset | FolderRows]:
    """:func:`load_model_and_data` for a command that can stream: an image folder stays on disk
    (:func:`advkit.data.open_rows`; only its headers and first row are read here)."""
    from advkit.data import open_rows
    from advkit.models.io import check_model_fits_data
    from advkit.models.resolve import resolve

    device = check_device(device)
    rows = open_rows(data, split=split, limit=limit, image_size=image_size)
    handle = resolve(model, device=device, sample_shape=rows.input_shape)
    check_model_fits_data(handle, rows.input_shape, rows.num_classes, model, data)
    return handle, rows


def preprocessing_of(dataset: Dataset | FolderRows) -> dict[str, Any]:
    """``{"preprocessing": ...}`` for a ``--json`` record when the images were resized, else ``{}``.

    Data read as the files hold it adds no key, so such records stay as they were.
    """
    return {} if dataset.preprocessing is None else {"preprocessing": dict(dataset.preprocessing)}


def percent(value: float | None) -> str:
    """A share as a percentage; '-' when it is undefined (e.g. no row to attack)."""
    return "-" if value is None else f"{value:.1%}"


def write_json_output(path: Path | None, payload: Any) -> None:
    """Write ``--json`` results (atomically) and say so on stderr; nothing when no path."""
    if path is not None:
        from advkit.fileio import write_json

        write_json(path, payload)
        err.print(f"wrote {path}")


def check_executor_options(kind: str, address: str | None, workers: int | None, threads: int | None = None) -> None:
    """``--executor``/``--address``/``--workers``, checked before any work (Ray starts later)."""
    from advkit.engine import EXECUTORS

    if kind not in EXECUTORS:
        raise AdvkitError(f"--executor {kind}: choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise AdvkitError(f"--workers must be >= 1; got {workers}")
    if threads is not None and threads < 1:
        raise AdvkitError(f"--threads must be >= 1; got {threads}")
    if kind == "local" and address is not None:
        raise AdvkitError("--address names a Ray cluster; use it with --executor ray")

