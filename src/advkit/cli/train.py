"""``advkit train``: train a model (standard, adversarial or certified) and save it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from advkit.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    SeedOpt,
    check_device,
    command,
    out,
    preprocessing_of,
    progress_callback,
    writable,
    write_json_output,
)
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.core import AttackResult


@command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="architecture (see advkit list --family arch)")] = "digits-cnn",
    data: DataOpt = "digits",
    out_path: Annotated[Path | None, typer.Option("--out", help="where to save (.safetensors or .pt)")] = None,
    defense: Annotated[str, typer.Option("--defense", help="none|adv-pgd|adv-fast|trades|gaussian|smoothadv|macer")] = "none",
    eps: Annotated[float, typer.Option("--eps", help="adversarial training budget")] = 0.2,
    sigma: Annotated[float, typer.Option("--sigma", help="smoothing noise level (gaussian, smoothadv, macer)")] = 0.25,
    norm: Annotated[str, typer.Option("--norm", help="linf|l2")] = "linf",
    epochs: Annotated[int, typer.Option("--epochs")] = 30,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    eval_eps: Annotated[float | None, typer.Option("--eval-eps", help="PGD budget for the robust accuracy check (default: --eps)")] = None,
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    sanitize: Annotated[str | None, typer.Option("--sanitize", help="drop suspect training rows first: sphere, slab or sphere,slab (Steinhardt et al. 2017)")] = None,
    sanitize_remove: Annotated[float, typer.Option("--sanitize-remove", help="share of each class each sanitiser's threshold removes from clean data")] = 0.05,
    json_path: JsonOpt = None,
) -> None:
    """Train a model (optionally adversarially) on a dataset's train split and save it."""
    from advkit.attacks.evasion import PGD
    from advkit.core import Threat
    from advkit.data import load_dataset
    from advkit.models import TrainConfig, save_model
    from advkit.models.recipes import check_defense, data_info, train_recipe

    path = _check_out(out_path)
    check_defense(defense)
    writable(path, "--out")
    device = check_device(device)
    # Everything the run needs is checked before it trains for minutes.
    TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    check_eps = eval_eps if eval_eps is not None else eps
    eval_threat = Threat(norm=norm, eps=check_eps)
    methods = _sanitizers(sanitize, sanitize_remove)
    train_set = load_dataset(data, split="train", limit=limit, image_size=image_size)
    test_set = load_dataset(data, split="test", image_size=image_size)
    x_train, y_train, sanitized = train_set.x, train_set.y, None
    if methods:
        from advkit.defenses.data import sanitize as sanitize_rows

        sanitized = sanitize_rows(train_set.x, train_set.y, methods, remove=sanitize_remove, num_classes=train_set.num_classes)
        x_train, y_train = train_set.x[sanitized.keep], train_set.y[sanitized.keep]
        out.print(f"--sanitize {','.join(methods)}: removed {int((~sanitized.keep).sum())} of {len(train_set)} training rows")
    trained = train_recipe(
        model, data_info(train_set), x_train, y_train, defense=defense, epochs=epochs, lr=lr, eps=eps, norm=norm,
        sigma=sigma, batch_size=batch_size, seed=seed, device=device, trained_on=f"{data}:train", progress=progress_callback(True),
    )
    handle, report = trained.handle, trained.report
    robust = PGD(eval_threat)(handle, test_set.x, test_set.y, generator=torch.Generator().manual_seed(seed))
    save_model(handle, path)
    summary = _summary(model, data, defense, eps, epochs, report.seconds, robust, path)
    out.print(
        f"trained {model} on {data} ({defense}) in {report.seconds:.1f}s: clean accuracy {robust.clean_accuracy:.1%}, "
        f"PGD {norm} eps={check_eps:g} accuracy {robust.adversarial_accuracy:.1%}; saved {out_path}"
    )
    if sanitized is not None:
        summary["sanitize"] = {**sanitized.details(train_set.y), "removed_rows": [int(i) for i in (~sanitized.keep).nonzero().squeeze(1).tolist()]}
    write_json_output(json_path, {**summary, **preprocessing_of(train_set)})


def _sanitizers(spec: str | None, remove: float) -> tuple[str, ...]:
    """``--sanitize``'s methods (checked before any work), or () when not given."""
    if spec is None:
        return ()
    from advkit.defenses.data.sanitize import check_methods

    if not 0.0 <= remove < 1.0:
        raise AdvkitError(f"--sanitize-remove must be in [0, 1); got {remove}")
    return check_methods([part.strip() for part in spec.split(",") if part.strip()])


def _summary(model: str, data: str, defense: str, eps: float, epochs: int, seconds: float, robust: AttackResult, path: Path) -> dict[str, Any]:
    """The ``--json`` record of a training run."""
    return {
        "model": model,
        "data": data,
        "defense": defense,
        "eps": eps,
        "epochs": epochs,
        "train_seconds": seconds,
        "clean_accuracy": robust.clean_accuracy,
        "robust_accuracy": robust.adversarial_accuracy,
        "robust_eval": {"attack": "pgd", **robust.threat.to_dict(), **robust.params},
        "out": str(path),
    }


def _check_out(out_path: Path | None) -> Path:
    """``--out`` is required and names a model file; returns it."""
    if out_path is None:
        raise AdvkitError("--out FILE is required (.safetensors or .pt)")
    if out_path.suffix not in (".safetensors", ".pt", ".pth"):
        raise AdvkitError(f"--out {out_path}: model files end in .safetensors (preferred) or .pt")
    return out_path


__all__ = ["train"]
