"""``advkit scan``: find poisoned rows in a training set with the model trained on it.

Activation clustering (Chen et al. 2019), spectral signatures (Tran et al. 2018) and
STRIP (Gao et al. 2019) over the split's rows in file order; nothing is shuffled, so
``flagged_rows`` index the rows as they are stored. When the data is a folder written by
``advkit poison`` (its ``manifest.json`` lists ``poisoned_rows``), or ``--manifest`` names
one, precision, recall and F1 are measured against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

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
    load_model_and_data,
    out,
    preprocessing_of,
    write_json_output,
)
from advkit.errors import AdvkitError

SCANNERS = ("activation-clustering", "spectral-signatures", "strip")


def known_poisoned_rows(data: str, manifest: Path | None, split: str, rows: int) -> list[int] | None:
    """The ``poisoned_rows`` of the data's ``manifest.json`` (or ``--manifest``), when there is one."""
    from advkit.fileio import read_json

    if manifest is None:
        path = Path(data)
        candidate = (path if path.is_dir() else path.parent) / "manifest.json"
        if not path.exists() or not candidate.exists():
            return None
        manifest = candidate
    record = read_json(manifest, "poisoning manifest")
    poisoned = record.get("poisoned_rows") if isinstance(record, dict) else None
    if not isinstance(poisoned, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in poisoned):
        raise AdvkitError(f"{manifest}: not a poisoning manifest (no 'poisoned_rows' list of row numbers)")
    if split != "train":
        raise AdvkitError(f"{manifest}: its poisoned_rows index the train split; scan --split train to score against it")
    return [r for r in poisoned if 0 <= r < rows]


@command()
def scan(
    name: Annotated[str, typer.Argument(help="poisoned-data scanner: activation-clustering, spectral-signatures or strip")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    split: SplitOpt = "train",
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    expected_rate: Annotated[float | None, typer.Option("--expected-rate", help="spectral-signatures: the poison rate to expect (default: judged per class)")] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="manifest.json with poisoned_rows to score against (default: next to --data)")] = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 512,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Scan the training rows for poisons with the model trained on them: flagged rows (file order), per class, and F1 when the poisons are known."""
    from advkit.registry import lookup

    entry = lookup(name, "defense")
    if entry.name not in SCANNERS:
        raise AdvkitError(f"advkit scan runs the poisoned-data scanners ({', '.join(SCANNERS)}); {name!r} is another kind of defense")
    settings: dict[str, Any] = {"batch_size": batch_size}
    if expected_rate is not None:
        if entry.name != "spectral-signatures":
            raise AdvkitError(f"--expected-rate applies to spectral-signatures, not {entry.name}")
        settings["expected_rate"] = expected_rate
    handle, dataset = load_model_and_data(model, data, split, limit, device, image_size=image_size)
    truth = known_poisoned_rows(data, manifest, split, len(dataset))
    result = entry.factory(**settings)(handle, dataset.x, dataset.y, generator=torch.Generator().manual_seed(seed))
    record = result.to_dict(truth)
    record.update(
        {
            "flagged": list(result.flagged_rows),
            "scores": [float(v) for v in result.scores.tolist()] if result.scores is not None else None,
            "model": model, "data": data, "split": split, "rows": len(dataset), "poisoned_rows_known": None if truth is None else len(truth),
            **preprocessing_of(dataset),
        }
    )
    line = f"{entry.name}: flagged {len(result.flagged_rows)} of {len(dataset)} rows of {data}:{split} ({result.seconds:.1f}s)"
    if truth is not None:
        f1 = record["f1"]
        line += f"; against the manifest's {len(truth)} poisoned rows: precision {_share(record['precision'])}, recall {_share(record['recall'])}, F1 {_share(f1)}"
    flagged_classes = [row["class"] for row in result.per_class if row.get("flagged")]
    out.print(line + (f"; classes with flagged rows: {flagged_classes}" if flagged_classes else ""))
    write_json_output(json_path, record)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


__all__ = ["SCANNERS", "known_poisoned_rows", "scan"]
