"""``advkit steal``: model extraction (Papernot substitute, Knockoff) and the transferred attack."""

from __future__ import annotations

import time
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
    load_model_and_data,
    out,
    preprocessing_of,
    write_json_output,
)
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.core import ModelHandle


@command()
def steal(
    name: Annotated[str, typer.Argument(help="papernot|knockoff")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    arch: Annotated[str | None, typer.Option("--arch", help="substitute architecture (default: the victim's, else the data's zoo model)")] = None,
    seed_size: Annotated[int, typer.Option("--seed-size", help="attacker's seed images (papernot)")] = 150,
    rounds: Annotated[int, typer.Option("--rounds", help="substitute epochs rho, i.e. augmentation rounds + 1 (papernot)")] = 6,
    epochs: Annotated[int, typer.Option("--epochs", help="training epochs per round (papernot) or in all (knockoff)")] = 10,
    step: Annotated[float, typer.Option("--step", help="Jacobian augmentation step lambda (papernot)")] = 0.2,
    reservoir: Annotated[int | None, typer.Option("--reservoir", help="new points per round after round 3 (papernot)")] = None,
    transfer_data: Annotated[str | None, typer.Option("--transfer-data", help="natural images of another distribution (knockoff; default: the other builtin set, resized)")] = None,
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="query budget for the whole theft")] = None,
    eps: Annotated[float, typer.Option("--eps", help="Linf budget of the transferred attack")] = 0.3,
    transfer_attack: Annotated[str, typer.Option("--transfer-attack", help="white-box attack crafted on the substitute (fgsm, pgd, ...)")] = "fgsm",
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Steal a model from its answers, then attack the victim with examples crafted on the copy."""
    from advkit.attacks.extraction import Knockoff, PapernotSubstitute, agreement, transfer_success
    from advkit.core import Threat
    from advkit.registry import build_evasion, lookup

    lookup(name, "extraction")
    attack_obj = build_evasion(transfer_attack, Threat(eps=eps), {})  # checked before the theft, not after
    victim, test_set = load_model_and_data(model, data, "test", None, device, image_size=image_size)
    arch = _substitute_arch(arch, victim)
    half = len(test_set) // 2
    attacker_x, held_x, held_y = test_set.x[:half], test_set.x[half:], test_set.y[half:]
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    if name == "papernot":
        if not 1 <= seed_size <= half:
            raise AdvkitError(f"--seed-size must be in 1..{half} (the attacker's half of the test split)")
        stolen = PapernotSubstitute(arch=arch, rounds=rounds, epochs=epochs, step=step, reservoir=reservoir, max_queries=max_queries)(
            victim, attacker_x[:seed_size], generator=generator
        )
    else:
        transfer = _transfer_images(transfer_data or ("mnist5k" if data == "digits" else "digits"), victim.input_shape)
        stolen = Knockoff(arch=arch, epochs=epochs, max_queries=max_queries)(victim, transfer, generator=generator)
    moved = transfer_success(stolen.substitute, victim, attack_obj, held_x, held_y, generator=generator)
    summary = {
        "method": name,
        "model": model,
        "data": data,
        "substitute_arch": arch,
        "agreement": agreement(stolen.substitute, victim, held_x),
        "queries": stolen.queries,
        "transfer_attack": {"attack": transfer_attack, "eps": eps, "norm": "linf"},
        **moved,
        "held_out_rows": int(held_y.shape[0]),
        "history": stolen.history,
        "seconds": time.perf_counter() - start,
        **preprocessing_of(test_set),
    }
    _print_theft(summary)
    write_json_output(json_path, summary)


def _print_theft(summary: dict[str, Any]) -> None:
    """One line: the substitute's agreement, the queries it took and the transferred attack's success."""
    attack = summary["transfer_attack"]
    out.print(
        f"{summary['method']}: substitute agrees with the victim on {summary['agreement']:.1%} of {summary['held_out_rows']} held-out rows "
        f"after {summary['queries']} queries; {attack['attack']} eps={attack['eps']:g} crafted on it fools the victim on "
        f"{summary['transfer_success_rate']:.1%}"
    )


def _substitute_arch(arch: str | None, victim: ModelHandle) -> str:
    """``--arch``, else the victim's architecture, else the zoo architecture for the image size."""
    from advkit.models.architectures import ARCHITECTURES
    from advkit.models.recipes import default_arch

    arch = arch or victim.info.arch or default_arch(victim.input_shape[1])
    if arch not in ARCHITECTURES:
        raise AdvkitError(f"--arch: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return arch


def _transfer_images(spec: str, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Knockoff's natural images: a dataset's train split, made to the victim's channels and size."""
    import torch.nn.functional as F

    from advkit.data import load_dataset

    c = input_shape[0]
    transfer = load_dataset(spec, split="train").x
    if transfer.shape[1] != c:
        transfer = transfer.mean(1, keepdim=True).expand(-1, c, -1, -1) if transfer.shape[1] > 1 else transfer.expand(-1, c, -1, -1)
    if tuple(transfer.shape[2:]) != tuple(input_shape[1:]):
        transfer = F.interpolate(transfer, size=tuple(input_shape[1:]), mode="bilinear", align_corners=False)
    return transfer.contiguous()


__all__ = ["steal"]
