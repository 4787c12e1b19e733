"""``advkit defend``: fit an input defense (MagNet) and save it; ``advkit attack --defense DIR`` attacks it.

MagNet (Meng & Chen, CCS 2017) trains its autoencoders on the train split and sets its
detectors' thresholds on the first ``--validation-rows`` rows of the test split (rows the
classifier never trained on), at the chosen false-positive rate. ``DIR/defend.json``
records which rows calibrated it, so an attack on the same rows is warned about.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from advkit.cli.common import (
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    ModelOpt,
    SeedOpt,
    command,
    err,
    out,
    preprocessing_of,
    progress_callback,
    writable,
    write_json_output,
)
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.core import ModelHandle

RECORD_FILE = "defend.json"


@command()
def defend(
    name: Annotated[str, typer.Argument(help="input defense: magnet")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the fitted defense (magnet.safetensors, magnet.json)")] = None,
    fpr: Annotated[float, typer.Option("--fpr", help="false-positive rate of all detectors together on clean validation rows")] = 0.05,
    steps: Annotated[int, typer.Option("--steps", help="autoencoder training steps", min=1)] = 1000,
    validation_rows: Annotated[int, typer.Option("--validation-rows", help="first N test rows that set the thresholds", min=1)] = 500,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Fit an input defense on the train split, calibrate it on held-out test rows, save it to --out."""
    from advkit.cli.common import load_model_and_data
    from advkit.data import load_dataset
    from advkit.defenses.input.magnet import MagNet
    from advkit.fileio import write_json
    from advkit.registry import lookup

    lookup(name, "defense")
    if name != "magnet":
        raise AdvkitError(f"advkit defend fits input defenses; {name!r} is not one (known: magnet)")
    if out_dir is None:
        raise AdvkitError("advkit defend: --out DIR is required (where the fitted defense is saved)")
    if not 0.0 < fpr < 1.0:
        raise AdvkitError(f"--fpr must be in (0, 1); got {fpr}")
    writable(out_dir, "--out", directory=True)
    handle, train = load_model_and_data(model, data, "train", None, device, image_size=image_size)
    test = load_dataset(data, split="test", image_size=image_size)
    if validation_rows >= len(test):
        raise AdvkitError(f"--validation-rows {validation_rows}: the test split of {data} has only {len(test)} rows (keep some to attack)")
    defense = MagNet(steps=steps).fit(
        handle, train.x, test.x[:validation_rows], fpr=fpr, generator=torch.Generator().manual_seed(seed), progress=progress_callback(True)
    )
    defense.save(out_dir)
    held_out = test.x[validation_rows:]
    report = defense.detect(held_out)
    clean_fp = float(report.flagged.float().mean())
    record = {
        "defense": name, "model": model, "data": data, "out": str(out_dir), "fpr_target": fpr, "steps": steps, "seed": seed,
        "calibration": {"data": data, "split": "test", "rows": [0, validation_rows]},
        "held_out_false_positive_rate": clean_fp, "held_out_rows": int(held_out.shape[0]), **preprocessing_of(test),
    }
    write_json(Path(out_dir) / RECORD_FILE, record)
    out.print(f"MagNet fitted on {data}:train, thresholds on test rows 0..{validation_rows - 1} at {fpr:.0%}; "
              f"held-out clean rows flagged {clean_fp:.1%}; saved {out_dir}")
    write_json_output(json_path, record)


def load_defense(folder: Path, handle: ModelHandle) -> Any:
    """The fitted defense in ``folder``, checked against the model before any attack runs."""
    from advkit.defenses.input.magnet import MagNetDefense

    return MagNetDefense.load(folder, handle)


def defended_records(
    results: list[dict[str, Any]], attack_objs: dict[tuple[str, float], Any], handle: ModelHandle, x: torch.Tensor, y: torch.Tensor,
    defense: Any, folder: Path, seed: int, data: str, split: str, limit: int | None,
) -> None:
    """``advkit attack --defense DIR``: attack the defended pipeline obliviously and adaptively; each record gains ``defended``."""
    from advkit.defenses.input.pipeline import attack_defended
    from advkit.fileio import read_json

    record_path = folder / RECORD_FILE
    if record_path.exists():
        calibration = read_json(record_path, "defend record").get("calibration", {})
        start, stop = calibration.get("rows", [0, 0])
        if calibration.get("data") == data and calibration.get("split") == split and start < (limit or len(y)) and stop > 0:
            err.print(f"warning: {data}:{split} rows {start}..{stop - 1} set the defense's thresholds; its false-positive rate there is not held out", markup=False)
    for record in results:
        if record["attack"] == "worst":
            continue
        attack = attack_objs[(record["attack"], record["threat"]["eps"])]
        figures = attack_defended(attack, handle, defense, x, y, torch.Generator().manual_seed(seed))
        record["defended"] = {"defense": str(folder), **_without_results(figures)}
        _print_defended(record)


def _without_results(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures, each way's attack record cut to its headline numbers (no per-row or per-class lists)."""
    keep = ("adversarial_accuracy", "attack_success_rate", "seconds", "queries")
    clean: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict) and isinstance(value.get("result"), dict):
            value = {**{k: v for k, v in value.items() if k != "result"}, "attack": {k: value["result"].get(k) for k in keep}}
        clean[key] = value
    return clean


def _print_defended(record: dict[str, Any]) -> None:
    d = record["defended"]
    parts = [f"{way}: detected {v['detection_rate']:.1%}, success {v['attack_success']:.1%}" for way, v in d.items() if isinstance(v, dict) and "detection_rate" in v]
    out.print(f"{record['attack']} eps={record['threat']['eps']:g} vs MagNet (clean rejected {d['clean']['false_positive_rate']:.1%}): " + "; ".join(parts))


__all__ = ["RECORD_FILE", "defend", "defended_records", "load_defense"]
