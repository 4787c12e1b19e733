"""``advkit inspect``: model-level backdoor checks (Neural Cleanse, K-Arm) with clean data."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from advkit.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    SeedOpt,
    SplitOpt,
    command,
    err,
    load_model_and_data,
    out,
    preprocessing_of,
    progress_callback,
    write_json_output,
)


EXTRA_DETAILS = ("screened_out", "candidates", "rounds", "steps_per_class", "optimisation_steps")
"""Method-specific details (K-Arm's schedule) added to the JSON when the method reports them."""


@command()
def inspect(
    name: Annotated[str, typer.Argument(help="model-level backdoor check: neural-cleanse, k-arm, or shortcut (occlusion per class)")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="optimisation epochs per class (early stop may end sooner; default neural-cleanse 60, k-arm 16)", min=1)
    ] = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Inspect a model for backdoors with clean data: per-class anomaly index, flagged classes."""
    import warnings

    from advkit.defenses.backdoor.neural_cleanse import report_rows
    from advkit.registry import lookup

    method = lookup(name, "inspection").factory
    handle, dataset = load_model_and_data(model, data, split, limit, device, image_size=image_size)
    if name == "shortcut":  # occlusion per class, no trigger optimisation: its own record
        _shortcut(method, handle, dataset, model, data, seed, json_path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = method(batch_size=batch_size, **({} if epochs is None else {"epochs": epochs}))
        report = detector(handle, dataset.x, dataset.y, generator=torch.Generator().manual_seed(seed), progress=progress_callback(True))
    for message in report.details["warnings"]:
        err.print(f"warning: {message}", markup=False)
    rows = report_rows(report)
    _print_classes(rows, f"advkit inspect {name}: {model}")
    flagged = report.flagged_ids
    out.print(f"flagged classes: {flagged if flagged else 'none'} ({report.seconds:.1f}s)")
    write_json_output(
        json_path,
        {
            "method": name,
            "model": model,
            "data": data,
            "classes": rows,
            "flagged": flagged,
            "median_l1": report.details["median_l1"],
            "warnings": report.details["warnings"],
            "seconds": report.seconds,
            **{key: report.details[key] for key in EXTRA_DETAILS if key in report.details},
            **preprocessing_of(dataset),
        },
    )


def _shortcut(method: Any, handle: Any, dataset: Any, model: str, data: str, seed: int, json_path: Any) -> None:
    """The shortcut audit (occlusion sensitivity per class): flagged classes and the region each relies on."""
    result = method()(handle, dataset.x, dataset.y, generator=torch.Generator().manual_seed(seed), progress=progress_callback(True))
    record = {**result.to_dict(), "model": model, "data": data, **preprocessing_of(dataset)}
    for row in record["classes"]:
        if row["flagged"]:
            r = row["region"]
            out.print(f"class {row['class']}: relies on rows {r['top']}..{r['top'] + r['height'] - 1}, columns {r['left']}..{r['left'] + r['width'] - 1} (anomaly index {row['anomaly_index']:.2f})")
    out.print(f"shortcut classes: {result.flagged if result.flagged else 'none'} ({result.seconds:.1f}s)")
    write_json_output(json_path, record)


def _print_classes(rows: list[dict[str, Any]], title: str) -> None:
    """One row per class: reversed mask L1, anomaly index, trigger success, flag."""
    table = Table(title=title)
    for column in ("class", "mask L1", "anomaly index", "trigger success", "flagged"):
        table.add_column(column, justify="right")
    for row in rows:
        index = "inf" if row["anomaly_index"] is None else f"{row['anomaly_index']:.2f}"
        table.add_row(str(row["class"]), f"{row['score']:.2f}", index, f"{row['trigger_success']:.0%}", "BACKDOOR?" if row["flagged"] else "")
    out.print(table)


__all__ = ["inspect"]
