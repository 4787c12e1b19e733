"""``advkit certify``: certified L2 robustness by randomized smoothing (Cohen et al. 2019)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from advkit.cli.common import (
    AddressOpt,
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ExecutorOpt,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    WorkersOpt,
    check_executor_options,
    command,
    load_model_and_rows,
    out,
    preprocessing_of,
    progress_callback,
    write_json_output,
)
from advkit.errors import AdvkitError


STREAM_CHUNK = 256  # rows certified at a time when the data is streamed


@command()
def certify(
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    sigma: Annotated[float, typer.Option("--sigma", help="noise standard deviation")] = 0.25,
    n: Annotated[int, typer.Option("--n", help="noise samples for the estimate")] = 1000,
    n0: Annotated[int, typer.Option("--n0", help="noise samples to pick the class")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="failure probability of the certificate")] = 0.001,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 1000,
    device: DeviceOpt = "cpu",
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Certify L2 robustness with randomized smoothing (Cohen et al. 2019)."""
    from advkit.certify.smoothing import Smoothed
    from advkit.engine import make_executor

    _check_settings(sigma, alpha, n, n0, batch_size)
    check_executor_options(executor, address, workers, threads)
    from advkit.certify.smoothing import join_results
    from advkit.data import Dataset, streams

    handle, rows = load_model_and_rows(model, data, split, limit, device, image_size=image_size)
    # a large image folder is certified chunk by chunk; every row keeps its own noise seed (its id)
    if streams(rows):
        chunks: Any = rows.batches(STREAM_CHUNK)
    else:
        whole = rows if isinstance(rows, Dataset) else rows.materialize()
        chunks = [(None, whole.x, whole.y)]
    parts, correct = [], 0
    with make_executor(executor, address=address, workers=workers, threads=threads) as engine:
        for ids, x, y in chunks:
            parts.append(
                Smoothed(handle, sigma, batch_size).certify_dataset(
                    x, y, n0, n, alpha, torch.Generator().manual_seed(seed), progress=progress_callback(True),
                    executor=engine, first_row=0 if ids is None else int(ids[0]),
                )
            )
            correct += int((handle.predict(x).cpu() == y).sum())
    result = join_results(parts)
    record = {"model": model, "data": data, **result.to_dict(), "clean_accuracy": correct / len(rows), "rows": len(rows), **preprocessing_of(rows)}
    _print_certificates(record, sigma, n, alpha)
    write_json_output(json_path, record)


def _check_settings(sigma: float, alpha: float, n: int, n0: int, batch_size: int) -> None:
    """The smoothing settings, checked before the model is loaded."""
    if not (sigma > 0):
        raise AdvkitError(f"--sigma must be > 0; got {sigma}")
    if not 0 < alpha < 1:
        raise AdvkitError(f"--alpha must be in (0, 1); got {alpha}")
    if n < 1:
        raise AdvkitError(f"--n must be >= 1 noise sample; got {n}")
    if not 1 <= n0 <= n:
        raise AdvkitError(f"--n0 must be in 1..--n ({n}); got {n0}")
    if batch_size < 1:
        raise AdvkitError(f"--batch-size must be >= 1; got {batch_size}")


def _print_certificates(record: dict[str, Any], sigma: float, n: int, alpha: float) -> None:
    """Certified accuracy per radius, then the clean accuracy, ACR, abstain rate and time."""
    table = Table(title=f"advkit certify sigma={sigma:g} n={n} alpha={alpha:g}")
    table.add_column("radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for radius, value in record["certified_accuracy"].items():
        table.add_row(radius, f"{value:.1%}")
    out.print(table)
    out.print(
        f"base model clean accuracy {record['clean_accuracy']:.1%}; ACR {record['acr']:.3f}; "
        f"abstain {record['abstain_rate']:.1%}; {record['seconds']:.1f}s"
    )


__all__ = ["certify"]
