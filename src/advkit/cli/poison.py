"""``advkit poison``: poison a train split (BadNets, blend, PACD) and write it with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from advkit.cli.common import (
    DataOpt,
    ImageSizeOpt,
    LimitOpt,
    SeedOpt,
    command,
    out,
    parse_floats,
    progress_callback,
    writable,
)
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.attacks.poisoning.backdoor import BackdoorPoisoning


@command()
def poison(
    name: Annotated[str, typer.Argument(help="badnets|blend|pacd")],
    data: DataOpt = "digits",
    out_dir: Annotated[Path | None, typer.Option("--out", help="directory for poisoned.npz and manifest.json")] = None,
    target: Annotated[int, typer.Option("--target", help="backdoor target class")] = 0,
    rate: Annotated[float, typer.Option("--rate", help="share of training rows to poison")] = 0.1,
    mode: Annotated[str, typer.Option("--mode", help="all-to-one|all-to-all")] = "all-to-one",
    size: Annotated[int, typer.Option("--size", help="patch side in pixels (badnets)")] = 3,
    position: Annotated[str, typer.Option("--position", help="bottom-right|bottom-left|top-right|top-left|center|ROW,COL")] = "bottom-right",
    pattern: Annotated[str, typer.Option("--pattern", help="checkerboard|solid|random (badnets)")] = "checkerboard",
    values: Annotated[str | None, typer.Option("--values", help="per-channel value of the patch, comma separated")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="blend weight (blend; Chen et al. 2017 use 0.2)")] = 0.2,
    eps: Annotated[float, typer.Option("--eps", help="Linf budget of each poison (pacd)")] = 0.2,
    method: Annotated[str, typer.Option("--method", help="victim's certified training: gaussian|smoothadv|macer (pacd)")] = "gaussian",
    sigma: Annotated[float, typer.Option("--sigma", help="victim's smoothing noise (pacd)")] = 0.25,
    arch: Annotated[str | None, typer.Option("--arch", help="victim's architecture (pacd; default: the data's zoo model)")] = None,
    steps: Annotated[int, typer.Option("--steps", help="outer ApproxGrad steps (pacd)")] = 150,
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Poison a dataset's train split (backdoor or PACD); write it with a manifest of changed rows."""
    from advkit.attacks.poisoning import PACD
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, poison_pacd, write_backdoor
    from advkit.data import load_dataset
    from advkit.registry import lookup

    lookup(name, "poisoning")
    if out_dir is None:
        raise AdvkitError("--out DIR is required")
    writable(out_dir, "--out", directory=True)
    train_set = load_dataset(data, split="train", limit=limit, image_size=image_size)
    test_set = load_dataset(data, split="test", image_size=image_size)
    if not 0 <= target < train_set.num_classes:
        raise AdvkitError(f"--target {target} is outside the data's classes 0..{train_set.num_classes - 1}")
    if name == "pacd":
        pacd = PACD(target=target, eps=eps, method=method, sigma=sigma, outer_steps=steps)
        poisoned, npz = poison_pacd(out_dir, data, train_set, test_set, pacd, arch, seed, progress=progress_callback(True))
        out.print(
            f"PACD perturbed {len(poisoned.rows)} of {len(poisoned.y)} rows of {data}:train (class {pacd.target}, "
            f"labels kept, max |delta| {poisoned.params['max_perturbation']:.3f}); wrote {npz} and {out_dir / MANIFEST_FILE}"
        )
        return
    attack_obj = _backdoor(name, target, rate, mode, size, position, pattern, values, alpha, seed)
    poisoned = attack_obj(train_set.x, train_set.y, num_classes=train_set.num_classes, generator=torch.Generator().manual_seed(seed))
    npz = write_backdoor(out_dir, data, train_set, test_set, poisoned, attack_obj)
    out.print(
        f"poisoned {len(poisoned.rows)} of {len(poisoned.y)} rows of {data}:train with {attack_obj.name} "
        f"(target {attack_obj.target}, {attack_obj.mode}); wrote {npz} and {out_dir / MANIFEST_FILE}"
    )


def _backdoor(
    name: str, target: int, rate: float, mode: str, size: int, position: str, pattern: str, values: str | None, alpha: float, seed: int,
) -> BackdoorPoisoning:
    """The BadNets (patch) or blend backdoor the options describe."""
    from advkit.attacks.poisoning import BadNets, Blend, BlendTrigger, PatchTrigger

    if name == "badnets":
        where: Any = position
        if "," in position:
            where = tuple(int(v) for v in parse_floats(position, "--position"))
        per_channel = tuple(parse_floats(values, "--values")) if values else None
        return BadNets(PatchTrigger(size=size, position=where, pattern=pattern, values=per_channel, seed=seed), target=target, rate=rate, mode=mode)
    return Blend(BlendTrigger(alpha=alpha, seed=seed), target=target, rate=rate, mode=mode)


__all__ = ["poison"]
