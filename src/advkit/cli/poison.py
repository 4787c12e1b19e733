"""``advkit poison NAME``: poison a train split (or wrap a model) and write it with a manifest.

One command for the whole poisoning family. Each attack is a recipe in
:mod:`advkit.cli.poison_recipes` that names the options it takes; an option given to an
attack that does not take it is one line naming the attacks that do (as ``advkit attack``
does for evasion settings), so a misspelt scenario never runs with silent defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advkit.cli.common import DataOpt, ImageSizeOpt, JsonOpt, LimitOpt, SeedOpt, command, progress_callback, write_json_output, writable
from advkit.errors import AdvkitError


@command()
def poison(
    name: Annotated[str, typer.Argument(help="badnets|blend|pacd|labelflip|steinhardt|poison-frogs|gradient-matching|clean-label|trojannet")],
    data: DataOpt = "digits",
    out_dir: Annotated[Path | None, typer.Option("--out", help="directory for poisoned.npz and manifest.json (trojannet: model.pt and triggers.npz)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="the model the attacker knows: surrogate, feature extractor or host (poison-frogs, gradient-matching, clean-label, trojannet)")] = None,
    target: Annotated[int | None, typer.Option("--target", help="target class (backdoors, pacd, clean-label: 0; labelflip pair: the class rows are flipped to)")] = None,
    targets: Annotated[str | None, typer.Option("--targets", help="target classes, one trigger each, comma separated (trojannet)")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="share of training rows to poison (backdoors 0.1, labelflip 0.05, steinhardt 0.03, gradient-matching 0.01, clean-label 0.5 of the target class)")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="all-to-one|all-to-all (badnets, blend)")] = None,
    size: Annotated[int | None, typer.Option("--size", help="patch side in pixels (badnets, clean-label; 3)")] = None,
    position: Annotated[str | None, typer.Option("--position", help="bottom-right|bottom-left|top-right|top-left|center|ROW,COL (badnets, clean-label, trojannet)")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", help="checkerboard|solid|random (badnets, clean-label)")] = None,
    values: Annotated[str | None, typer.Option("--values", help="per-channel value of the patch, comma separated (badnets, clean-label)")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="blend weight (blend; Chen et al. 2017 use 0.2); the recogniser's weight in the merge (trojannet; 0.7)")] = None,
    eps: Annotated[float | None, typer.Option("--eps", help="Linf budget of each poison (pacd 0.2, gradient-matching, clean-label)")] = None,
    method: Annotated[str | None, typer.Option("--method", help="labelflip: random|pair|loss; pacd: the victim's certified training gaussian|smoothadv|macer")] = None,
    source: Annotated[int | None, typer.Option("--source", help="the class whose rows are flipped (labelflip pair)")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", help="victim's smoothing noise (pacd; 0.25)")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="the victim's architecture the attacker assumes (pacd, labelflip loss, steinhardt)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="optimisation steps (pacd 150; each attack's paper default otherwise)")] = None,
    target_row: Annotated[str | None, typer.Option("--target-row", help="test row(s) to misclassify, comma separated (poison-frogs, gradient-matching)")] = None,
    base_class: Annotated[int | None, typer.Option("--base-class", help="class of the base images / the label the target should get (poison-frogs)")] = None,
    adversarial_class: Annotated[int | None, typer.Option("--adversarial-class", help="the class the target row should get (gradient-matching)")] = None,
    poisons: Annotated[int | None, typer.Option("--poisons", help="number of poisons (poison-frogs)")] = None,
    watermark: Annotated[float | None, typer.Option("--watermark", help="opacity of the target blended into each base, < 1 (poison-frogs; 0.3 end to end)")] = None,
    setting: Annotated[str | None, typer.Option("--setting", help="transfer|end-to-end (poison-frogs)")] = None,
    limit: LimitOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    json_path: JsonOpt = None,
) -> None:
    """Poison a dataset's train split (or wrap a model); write it with a manifest of what changed."""
    from advkit.cli.poison_recipes import PoisonJob, recipe_for
    from advkit.data import load_dataset

    options: dict[str, Any] = {
        "model": model, "target": target, "targets": targets, "rate": rate, "mode": mode, "size": size, "position": position,
        "pattern": pattern, "values": values, "alpha": alpha, "eps": eps, "method": method, "source": source, "sigma": sigma,
        "arch": arch, "steps": steps, "target_row": target_row, "base_class": base_class, "adversarial_class": adversarial_class,
        "poisons": poisons, "watermark": watermark, "setting": setting,
    }
    given = {key: value for key, value in options.items() if value is not None}
    recipe = recipe_for(name)
    recipe.check_options(given)
    if out_dir is None:
        raise AdvkitError("--out DIR is required")
    writable(out_dir, "--out", directory=True)
    train_set = load_dataset(data, split="train", limit=limit, image_size=image_size)
    test_set = load_dataset(data, split="test", image_size=image_size)
    job = PoisonJob(data=data, out_dir=out_dir, train=train_set, test=test_set, options=given, seed=seed, image_size=image_size, progress=progress_callback(True))
    summary = recipe.run(job)
    write_json_output(json_path, summary)


__all__ = ["poison"]
