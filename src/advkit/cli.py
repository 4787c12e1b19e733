"""The ``advkit`` command line (typer). Thin: parse, call the library, print.

Every problem with the user's input ends in one line on stderr and exit code 2; the
library itself prints nothing and reports progress through callbacks rendered here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from advkit.errors import AdvkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit and harden PyTorch image classifiers against adversarial machine learning.",
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, highlight=False)

# -- shared options ---------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, .safetensors, .pt state dict, TorchScript or .onnx")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="digits, mnist5k, or a path (IDX dir, CIFAR-10 dir, .npz, image folder)")]
SplitOpt = Annotated[str, typer.Option("--split", help="train|test")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="first N rows of the split")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the run's torch.Generator")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="rows per batch")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N")]


def _writable(path: Path | None, option: str, directory: bool = False) -> Path | None:
    """Check an output location before any work, so a run never ends in a failed write.

    Every command that writes calls it first (``--json`` does through its option callback).
    """
    if path is not None:
        from advkit.fileio import check_writable

        check_writable(path, option, directory=directory)
    return path


def _json_writable(value: Path | None) -> Path | None:
    """``--json`` callback: an unwritable results path fails while the options are parsed."""
    return _writable(value, "--json")


JsonOpt = Annotated[Path | None, typer.Option("--json", help="write machine-readable results here", callback=_json_writable)]


def _progress_callback(enabled: bool):  # noqa: ANN202 - returns a closure
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


def _device(name: str) -> str:
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


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdvkitError(f"{option} takes numbers separated by commas; got {text!r}") from None
    if not values:
        raise AdvkitError(f"{option} needs at least one value")
    return values


def _load(model: str, data: str, split: str, limit: int | None, device: str):  # noqa: ANN202
    from advkit.data import load_dataset
    from advkit.models.io import check_model_fits_data, load_model

    device = _device(device)
    dataset = load_dataset(data, split=split, limit=limit)
    handle = load_model(model, device=device, sample_shape=dataset.input_shape)
    check_model_fits_data(handle, dataset.input_shape, dataset.num_classes, model, data)
    return handle, dataset


def _percent(value: float | None) -> str:
    """A share as a percentage; '-' when it is undefined (e.g. no row to attack)."""
    return "-" if value is None else f"{value:.1%}"


def _write_json(path: Path | None, payload: Any) -> None:
    if path is not None:
        from advkit.fileio import write_json

        write_json(path, payload)
        err.print(f"wrote {path}")


# -- commands ---------------------------------------------------------------------------


@app.command()
def attack(
    names: Annotated[list[str], typer.Argument(help="attack name(s), e.g. fgsm pgd (see advkit list)")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    eps: Annotated[str, typer.Option("--eps", help="budget, or several separated by commas")] = "0.3",
    norm: Annotated[str, typer.Option("--norm", help="linf|l2")] = "linf",
    goal: Annotated[str, typer.Option("--goal", help="untargeted|targeted|confidence")] = "untargeted",
    target: Annotated[int | None, typer.Option("--target", help="target class for every row (targeted goal)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="iterations (iterative attacks)")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="restarts (pgd)")] = None,
    step_size: Annotated[float | None, typer.Option("--step-size", help="absolute step size")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="auto|ce|margin (pgd)")] = None,
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="query budget per image (black-box attacks)")] = None,
    knowledge: Annotated[str | None, typer.Option("--knowledge", help="what the attacker sees: white|score|label (default: what the attack needs)")] = None,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 500,
    device: DeviceOpt = "cpu",
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="run the reliability checks first")] = True,
    json_path: JsonOpt = None,
) -> None:
    """Run evasion attacks on a model and data; print accuracy under attack.

    With several attacks, each budget also gets a ``worst`` record: a row counts as robust
    only if every attack left it standing. Options an attack does not take (``--max-queries``
    for white-box attacks, ``--steps`` for FGSM) are passed only to the attacks that take them.
    """
    from advkit.attacks.evasion.base import EvasionAttack
    from advkit.core import AttackResult, Threat
    from advkit.metrics import worst_of_results
    from advkit.registry import build_evasion, check_settings_apply, lookup
    from advkit.sanity import SanityReport, check_eps_zero, run_checks

    entries = [lookup(name, "evasion") for name in names]
    if len({e.name for e in entries}) != len(entries):
        raise AdvkitError(f"each attack may be named once; got {' '.join(names)}")
    budgets = _floats(eps, "--eps")
    settings = {
        k: v for k, v in {"steps": steps, "restarts": restarts, "step_size": step_size, "loss": loss, "max_queries": max_queries}.items() if v is not None
    }
    check_settings_apply([e.name for e in entries], settings)
    threats = {(e.name, b): Threat(norm=norm, eps=b, goal=goal, knowledge=knowledge or e.knowledge) for e in entries for b in budgets}
    attack_objs: dict[tuple[str, float], EvasionAttack] = {
        key: build_evasion(key[0], threat, settings, strict=False, batch_size=batch_size) for key, threat in threats.items()
    }
    handle, dataset = _load(model, data, split, limit, device)
    progress = _progress_callback(True)
    results: list[dict[str, Any]] = []
    targets = None
    if target is not None:
        if not 0 <= target < handle.num_classes:
            raise AdvkitError(f"--target {target} is outside the model's classes 0..{handle.num_classes - 1}")
        targets = torch.full_like(dataset.y, target)
    rows = slice(None) if targets is None else dataset.y != target  # a row cannot move to its own class
    x_rows, y_rows = dataset.x[rows], dataset.y[rows]
    if x_rows.shape[0] == 0:
        raise AdvkitError(f"--target {target}: every row of {data}:{split} already has that label; nothing to attack")
    model_checks = run_checks(handle, dataset.x, dataset.y) if checks else None
    meta = {"model": model, "data": data, "split": split, "seed": seed}
    for budget in budgets:
        at_budget: list[AttackResult] = []
        for entry in entries:
            attack_obj = attack_objs[(entry.name, budget)]
            eps_zero = check_eps_zero(attack_obj, handle, x_rows[:64], y_rows[:64]) if model_checks is not None else None
            result = attack_obj(
                handle,
                x_rows,
                y_rows,
                target=targets[rows] if targets is not None else None,
                generator=torch.Generator().manual_seed(seed),
                progress=progress,
            )
            at_budget.append(result)
            record = {**result.to_dict(), **meta}
            if model_checks is not None and eps_zero is not None:
                record["sanity"] = SanityReport(model_checks.findings + [eps_zero]).to_dict()
            results.append(record)
        if len(at_budget) > 1:
            results.append({**worst_of_results(at_budget), **meta})
            if model_checks is not None:
                _add_blackbox_checks(results, at_budget)
    if model_checks is not None:
        seen: set[str] = set()
        for record in results:
            for reason in record.get("sanity", {}).get("reasons", []):
                if reason not in seen:
                    seen.add(reason)
                    err.print(f"unreliable: {reason}", markup=False)
    _print_attack_table(results)
    _write_json(json_path, results[0] if len(results) == 1 else results)


def _add_blackbox_checks(results: list[dict[str, Any]], at_budget: list[Any]) -> None:
    """Attach the black-box-vs-strongest-white-box findings to that white-box record of one budget."""
    from advkit.sanity import check_blackbox_vs_strongest

    strongest, findings = check_blackbox_vs_strongest(at_budget)
    if strongest is None:
        return
    record = next(rec for rec in results if rec["attack"] == strongest.attack and rec["threat"]["eps"] == strongest.threat.eps)
    sanity = record.get("sanity")
    if sanity is None:
        return
    for finding in findings:
        sanity["findings"].append(finding.to_dict())
        if not finding.ok:
            sanity["reasons"].append(f"{finding.check}: {finding.detail}")
            sanity["reliable"] = False


def _print_attack_table(results: list[dict[str, Any]]) -> None:
    table = Table(title="advkit attack")
    counted = any(r.get("queries") for r in results)
    columns = ("attack", "norm", "eps", "goal", "n", "clean acc", "adv acc", "success rate", *(("median queries",) if counted else ()), "seconds", "reliable")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("attack", "norm", "goal") else "left")
    for r in results:
        sanity = r.get("sanity")
        median = (r.get("queries") or {}).get("median")
        queries = (f"{median:.0f}" if median is not None else "-",) if counted else ()
        name = r["attack"] if r["attack"] != "worst" else f"worst of {', '.join(r['attacks'])}"
        table.add_row(
            name,
            r["threat"]["norm"],
            f"{r['threat']['eps']:g}",
            r["threat"]["goal"],
            str(r["n"]),
            f"{r['clean_accuracy']:.1%}",
            f"{r['adversarial_accuracy']:.1%}",
            _percent(r["attack_success_rate"]),
            *queries,
            f"{r['seconds']:.2f}",
            "-" if sanity is None else ("yes" if sanity["reliable"] else "NO"),
        )
    out.print(table)


@app.command()
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
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Train a model (optionally adversarially) on a dataset's train split and save it."""
    from advkit.attacks.evasion import PGD
    from advkit.certify.training import CERTIFIED_TRAINING, certified_objective
    from advkit.core import ModelHandle, ModelInfo, Threat
    from advkit.data import load_dataset
    from advkit.defenses.adversarial_training import DEFENSES
    from advkit.models import TrainConfig, build, fit, save_model

    if out_path is None:
        raise AdvkitError("--out FILE is required (.safetensors or .pt)")
    if out_path.suffix not in (".safetensors", ".pt", ".pth"):
        raise AdvkitError(f"--out {out_path}: model files end in .safetensors (preferred) or .pt")
    if defense != "none" and defense not in DEFENSES and defense not in CERTIFIED_TRAINING:
        raise AdvkitError(f"--defense must be one of none, {', '.join([*DEFENSES, *CERTIFIED_TRAINING])}; got {defense!r}")
    _writable(out_path, "--out")
    device = _device(device)
    # Everything the run needs is checked before it trains for minutes.
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    check_eps = eval_eps if eval_eps is not None else eps
    eval_threat = Threat(norm=norm, eps=check_eps)
    train_set = load_dataset(data, split="train", limit=limit)
    test_set = load_dataset(data, split="test")
    c, h, _ = train_set.input_shape
    net = build(model, in_channels=c, num_classes=train_set.num_classes, image_size=h, seed=seed)
    info = ModelInfo(
        input_shape=train_set.input_shape,
        num_classes=train_set.num_classes,
        classes=train_set.classes,
        arch=model,
        extra={"trained_on": f"{data}:train", "objective": defense, "eps": eps if defense in DEFENSES else None},
    )
    handle = ModelHandle(net, info, device=device)
    objective: Any = None
    steps_per_epoch = -(-len(train_set) // batch_size)
    warmup_steps = steps_per_epoch * max(1, epochs // 10)
    if defense in CERTIFIED_TRAINING:
        objective = certified_objective(defense, sigma, rows=len(train_set), epochs=epochs, batch_size=batch_size)
        info.extra["sigma"] = sigma
    elif defense != "none":
        objective = DEFENSES[defense](eps=eps, norm=norm, warmup_steps=warmup_steps)
    report = fit(handle.network, train_set.x, train_set.y, config, objective, progress=_progress_callback(True))
    robust = PGD(eval_threat)(handle, test_set.x, test_set.y, generator=torch.Generator().manual_seed(seed))
    save_model(handle, out_path)
    summary = {
        "model": model,
        "data": data,
        "defense": defense,
        "eps": eps,
        "epochs": epochs,
        "train_seconds": report.seconds,
        "clean_accuracy": robust.clean_accuracy,
        "robust_accuracy": robust.adversarial_accuracy,
        "robust_eval": {"attack": "pgd", **robust.threat.to_dict(), **robust.params},
        "out": str(out_path),
    }
    out.print(
        f"trained {model} on {data} ({defense}) in {report.seconds:.1f}s: clean accuracy {robust.clean_accuracy:.1%}, "
        f"PGD {norm} eps={check_eps:g} accuracy {robust.adversarial_accuracy:.1%}; saved {out_path}"
    )
    _write_json(json_path, summary)


@app.command()
def certify(
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    sigma: Annotated[float, typer.Option("--sigma", help="noise standard deviation")] = 0.25,
    n: Annotated[int, typer.Option("--n", help="noise samples for the estimate")] = 1000,
    n0: Annotated[int, typer.Option("--n0", help="noise samples to pick the class")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="failure probability of the certificate")] = 0.001,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 1000,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Certify L2 robustness with randomized smoothing (Cohen et al. 2019)."""
    from advkit.certify.smoothing import Smoothed

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
    handle, dataset = _load(model, data, split, limit, device)
    result = Smoothed(handle, sigma, batch_size).certify_dataset(
        dataset.x, dataset.y, n0, n, alpha, torch.Generator().manual_seed(seed), progress=_progress_callback(True)
    )
    record = result.to_dict()
    record = {"model": model, "data": data, **record, "clean_accuracy": float((handle.predict(dataset.x).cpu() == dataset.y).float().mean()), "rows": len(dataset)}
    table = Table(title=f"advkit certify sigma={sigma:g} n={n} alpha={alpha:g}")
    table.add_column("radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for radius, value in record["certified_accuracy"].items():
        table.add_row(radius, f"{value:.1%}")
    out.print(table)
    out.print(f"base model clean accuracy {record['clean_accuracy']:.1%}; ACR {record['acr']:.3f}; abstain {record['abstain_rate']:.1%}; {record['seconds']:.1f}s")
    _write_json(json_path, record)


@app.command()
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
    seed: SeedOpt = 0,
) -> None:
    """Poison a dataset's train split (backdoor or PACD); write it with a manifest of changed rows."""
    from advkit.attacks.poisoning import (
        PACD,
        BadNets,
        Blend,
        BlendTrigger,
        PatchTrigger,
    )
    from advkit.data import load_dataset
    from advkit.registry import lookup

    lookup(name, "poisoning")
    if out_dir is None:
        raise AdvkitError("--out DIR is required")
    _writable(out_dir, "--out", directory=True)
    train_set = load_dataset(data, split="train", limit=limit)
    test_set = load_dataset(data, split="test")
    if not 0 <= target < train_set.num_classes:
        raise AdvkitError(f"--target {target} is outside the data's classes 0..{train_set.num_classes - 1}")
    if name == "pacd":
        _poison_pacd(out_dir, data, train_set, test_set, PACD(target=target, eps=eps, method=method, sigma=sigma, outer_steps=steps), arch, seed)
        return
    if name == "badnets":
        where: Any = position
        if "," in position:
            where = tuple(int(v) for v in _floats(position, "--position"))
        per_channel = tuple(_floats(values, "--values")) if values else None
        attack_obj: Any = BadNets(PatchTrigger(size=size, position=where, pattern=pattern, values=per_channel, seed=seed), target=target, rate=rate, mode=mode)
    else:
        attack_obj = Blend(BlendTrigger(alpha=alpha, seed=seed), target=target, rate=rate, mode=mode)
    poisoned = attack_obj(train_set.x, train_set.y, num_classes=train_set.num_classes, generator=torch.Generator().manual_seed(seed))
    _write_poisoned(out_dir, data, train_set, test_set, poisoned, attack_obj)


def _default_arch(image_size: int) -> str:
    """The zoo architecture for an image size (a grey-box attacker's guess when none is named)."""
    return "digits-cnn" if image_size == 8 else "mnist-cnn" if image_size == 28 else "resnet8"


def _poison_pacd(out_dir: Path, data: str, train_set: Any, test_set: Any, attack_obj: Any, arch: str | None, seed: int) -> None:
    """PACD poisons: the attacker's validation rows are the target class in the first half of the test split."""
    from advkit.models import build

    c, h, _ = train_set.input_shape
    arch = arch or _default_arch(h)
    surrogate = build(arch, in_channels=c, num_classes=train_set.num_classes, image_size=h, seed=seed + 1000)
    half = len(test_set) // 2
    poisoned = attack_obj(
        surrogate, train_set.x, train_set.y, test_set.x[:half], test_set.y[:half],
        generator=torch.Generator().manual_seed(seed), progress=_progress_callback(True),
    )
    npz = _save_poisoned(
        out_dir, data, train_set, test_set, poisoned, "pacd", {**poisoned.params, "target": attack_obj.target, "arch": arch},
        {}, {"attacker_validation": f"{data}:test rows 0..{half - 1} of class {attack_obj.target}"},
    )
    out.print(
        f"PACD perturbed {len(poisoned.rows)} of {len(poisoned.y)} rows of {data}:train (class {attack_obj.target}, "
        f"labels kept, max |delta| {poisoned.params['max_perturbation']:.3f}); wrote {npz} and {out_dir / 'manifest.json'}"
    )


def _write_poisoned(out_dir: Path, data: str, train_set: Any, test_set: Any, poisoned: Any, attack_obj: Any) -> None:
    """A backdoor: the poisoned set plus the triggered test rows and the trigger itself."""
    from advkit.attacks.poisoning.backdoor import backdoor_labels

    mask, pattern = attack_obj.trigger.mask_and_pattern(train_set.input_shape)
    keep = test_set.y != attack_obj.target if attack_obj.mode == "all-to-one" else torch.ones_like(test_set.y, dtype=torch.bool)
    triggered = attack_obj.trigger.apply(test_set.x[keep])
    backdoor_y = backdoor_labels(test_set.y[keep], attack_obj.target, attack_obj.mode, train_set.num_classes)
    arrays = {
        "x_test_triggered": triggered, "y_test_backdoor": backdoor_y, "trigger_mask": mask, "trigger_pattern": pattern,
    }
    npz = _save_poisoned(out_dir, data, train_set, test_set, poisoned, attack_obj.name, attack_obj.params(), arrays, {})
    out.print(
        f"poisoned {len(poisoned.rows)} of {len(poisoned.y)} rows of {data}:train with {attack_obj.name} "
        f"(target {attack_obj.target}, {attack_obj.mode}); wrote {npz} and {out_dir / 'manifest.json'}"
    )


def _save_poisoned(
    out_dir: Path, data: str, train_set: Any, test_set: Any, poisoned: Any, attack: str, params: dict[str, Any],
    arrays: dict[str, torch.Tensor], extra: dict[str, Any],
) -> Path:
    """DIR/poisoned.npz (readable by --data) and DIR/manifest.json (changed rows, original labels, SHA-256)."""
    import numpy as np

    from advkit.fileio import atomic_path, sha256_file, write_json

    npz = out_dir / "poisoned.npz"
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                x_train=poisoned.x.numpy(),
                y_train=poisoned.y.numpy(),
                x_test=test_set.x.numpy(),
                y_test=test_set.y.numpy(),
                **{k: v.numpy() for k, v in arrays.items()},
                classes=np.array(train_set.classes),
            )
    manifest = {
        "attack": attack,
        "params": params,
        "source": data,
        "rows": len(poisoned.y),
        "poisoned_rows": poisoned.rows,
        "original_labels": [int(v) for v in poisoned.original_y[poisoned.poisoned].tolist()],
        "rate": poisoned.rate,
        **extra,
        "files": {"poisoned.npz": sha256_file(npz)},
    }
    write_json(out_dir / "manifest.json", manifest)
    return npz


@app.command()
def inspect(
    name: Annotated[str, typer.Argument(help="model-level backdoor check, e.g. neural-cleanse")],
    model: ModelOpt = "zoo:digits-cnn",
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", help="optimisation epochs per class (early stop may end sooner)")] = 60,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Inspect a model for backdoors with clean data: per-class anomaly index, flagged classes."""
    from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse, report_rows
    from advkit.registry import lookup

    lookup(name, "inspection")
    handle, dataset = _load(model, data, split, limit, device)
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        detector = NeuralCleanse(epochs=epochs, batch_size=batch_size)
        report = detector(handle, dataset.x, dataset.y, generator=torch.Generator().manual_seed(seed), progress=_progress_callback(True))
    for message in report.details["warnings"]:
        err.print(f"warning: {message}", markup=False)
    rows = report_rows(report)
    table = Table(title=f"advkit inspect {name}: {model}")
    for column in ("class", "mask L1", "anomaly index", "trigger success", "flagged"):
        table.add_column(column, justify="right")
    for row in rows:
        index = "inf" if row["anomaly_index"] is None else f"{row['anomaly_index']:.2f}"
        table.add_row(str(row["class"]), f"{row['score']:.2f}", index, f"{row['trigger_success']:.0%}", "BACKDOOR?" if row["flagged"] else "")
    out.print(table)
    flagged = report.flagged_ids
    out.print(f"flagged classes: {flagged if flagged else 'none'} ({report.seconds:.1f}s)")
    _write_json(
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
        },
    )


@app.command()
def audit(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default: the builtin audit)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/audit"),
    resume: Annotated[bool, typer.Option("--resume", help="continue a run: finished steps are not recomputed")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (ray: not yet)")] = "local",
    print_config: Annotated[bool, typer.Option("--print-config", help="print the default config and exit")] = False,
) -> None:
    """Attack, mitigate, attack again; write report.json and report.html in the run directory."""
    from advkit.audit.config import default_yaml, load_config
    from advkit.audit.report import write_views
    from advkit.audit.runner import AuditRunner

    if print_config:
        out.print(default_yaml(), markup=False, highlight=False, end="")
        return
    if executor != "local":
        raise AdvkitError(f"--executor {executor}: only 'local' is available in this version")
    cfg = load_config(config)
    _writable(out_dir, "--out", directory=True)
    runner = AuditRunner(cfg, out_dir, resume=resume, progress=_progress_callback(True), notify=lambda m: err.print(m, markup=False))
    report = runner.run()
    html = write_views(out_dir, report, ("html",))[0]
    _print_audit_summary(report)
    out.print(f"report: {html}")


def _print_audit_summary(report: dict[str, Any]) -> None:
    table = Table(title="advkit audit: accuracy under attack (clean accuracy in the header)")
    table.add_column("attack")
    table.add_column("eps", justify="right")
    for model in report["models"]:
        table.add_column(f"{model['label']}\nclean {model['clean_accuracy']:.1%}", justify="right")
    cells = {(r["model"], r["attack"], r["threat"]["eps"]): r for r in report["evasion"]}
    cells.update({(w["model"], "worst case", w["eps"]): w for w in report.get("evasion_worst", [])})
    budgets = sorted({r["threat"]["eps"] for r in report["evasion"]})
    for attack in [*sorted({r["attack"] for r in report["evasion"]}), "worst case"]:
        for eps in budgets:
            row = [attack, f"{eps:g}"]
            for model in report["models"]:
                r = cells.get((model["id"], attack, eps))
                row.append(f"{r['adversarial_accuracy']:.1%}" if r else "-")
            table.add_row(*row)
    out.print(table)
    for scenario in report["backdoor"]["scenarios"]:
        line = f"{scenario['id']}: backdoor success {scenario['attack_success_rate']:.1%}, clean {scenario['clean_accuracy']:.1%}"
        for m in scenario["mitigations"]:
            if m.get("applied"):
                line += f"; {m['mitigation']} -> {m['attack_success_rate_after']:.1%} (clean {m['held_out_clean_accuracy_after']:.1%})"
        out.print(line)
    out.print("findings:")
    for f in report["findings"]:
        out.print(f"  [{f['severity'].upper()}] {f['title']}", markup=False, highlight=False)


@app.command()
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
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
) -> None:
    """Steal a model from its answers, then attack the victim with examples crafted on the copy."""
    import torch.nn.functional as F

    from advkit.attacks.extraction import (
        Knockoff,
        PapernotSubstitute,
        agreement,
        transfer_success,
    )
    from advkit.core import Threat
    from advkit.data import load_dataset
    from advkit.registry import build_evasion, lookup

    lookup(name, "extraction")
    attack_obj = build_evasion(transfer_attack, Threat(eps=eps), {})  # checked before the theft, not after
    victim, test_set = _load(model, data, "test", None, device)
    c, h, _ = victim.input_shape
    arch = arch or victim.info.arch or _default_arch(h)
    from advkit.models.architectures import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise AdvkitError(f"--arch: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
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
        other = transfer_data or ("mnist5k" if data == "digits" else "digits")
        transfer = load_dataset(other, split="train").x
        if transfer.shape[1] != c:
            transfer = transfer.mean(1, keepdim=True).expand(-1, c, -1, -1) if transfer.shape[1] > 1 else transfer.expand(-1, c, -1, -1)
        if tuple(transfer.shape[2:]) != tuple(victim.input_shape[1:]):
            transfer = F.interpolate(transfer, size=tuple(victim.input_shape[1:]), mode="bilinear", align_corners=False)
        stolen = Knockoff(arch=arch, epochs=epochs, max_queries=max_queries)(victim, transfer.contiguous(), generator=generator)
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
    }
    out.print(
        f"{name}: substitute agrees with the victim on {summary['agreement']:.1%} of {summary['held_out_rows']} held-out rows "
        f"after {stolen.queries} queries; {transfer_attack} eps={eps:g} crafted on it fools the victim on "
        f"{summary['transfer_success_rate']:.1%}"
    )
    _write_json(json_path, summary)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory holding report.json")],
    fmt: Annotated[str, typer.Option("--format", help="html|md|sarif")] = "html",
) -> None:
    """Rebuild the HTML from report.json, or write Markdown or SARIF."""
    from advkit.audit.report import load_report, write_views

    if fmt not in ("html", "md", "sarif"):
        raise AdvkitError(f"--format must be html, md or sarif; got {fmt!r}")
    loaded = load_report(run_dir)
    _writable(run_dir, "run directory", directory=True)
    path = write_views(run_dir, loaded, (fmt,))[0]
    out.print(f"wrote {path}")


provenance_app = typer.Typer(no_args_is_help=True, help="Data and model provenance manifests.")
app.add_typer(provenance_app, name="provenance")


@provenance_app.command("verify")
def provenance_verify(manifest: Annotated[Path, typer.Argument(help="a provenance.json manifest")]) -> None:
    """Re-hash every file in a manifest; exit 1 when any changed or is missing."""
    from advkit.data.provenance import verify_manifest

    rows = verify_manifest(manifest)
    table = Table(title=f"provenance {manifest}")
    for column in ("status", "role", "path"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["status"], row.get("role", ""), row["path"])
    out.print(table)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        err.print(f"{len(bad)} of {len(rows)} files changed or missing", markup=False)
        raise typer.Exit(1)
    out.print(f"all {len(rows)} files unchanged")


@app.command(name="list")
def list_methods(
    family: Annotated[str | None, typer.Option("--family", help="evasion|poisoning|extraction|defense|arch")] = None,
) -> None:
    """Every attack and defense: its family, knowledge, paper and MITRE ATLAS id."""
    from advkit.models.architectures import ARCHITECTURES
    from advkit.models.zoo import ZOO
    from advkit.registry import entries

    families = sorted({e.family for e in entries()} | {"arch"})
    if family is not None and family not in families:
        raise AdvkitError(f"--family must be one of {', '.join(families)}; got {family!r}")
    if family == "arch":
        for name in ARCHITECTURES:
            out.print(f"{name}" + (f"  (pretrained: zoo:{name})" if name in ZOO else ""))
        return
    table = Table(title="advkit methods")
    for column in ("name", "family", "knowledge", "ATLAS", "paper"):
        table.add_column(column)
    for e in entries():
        if family is None or e.family == family:
            table.add_row(e.name, e.family, e.knowledge, e.atlas, e.paper)
    out.print(table)


def _os_error_line(exc: OSError) -> str:
    """``FILE: reason`` for an OSError (``FILE -> OTHER`` for a failed rename), on one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    line = f"{' -> '.join(names)}: {reason}" if names else reason
    return " ".join(line.split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; bad input ends in one line and exit code 2."""
    try:
        code = app(args=argv, prog_name="advkit", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            raise SystemExit(code)
    except AdvkitError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except OSError as exc:
        # A file the user named (or a place they asked us to write) that the OS refused:
        # PermissionError, a full disk, a directory where a file was expected.
        err.print(f"error: {_os_error_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except Exception as exc:
        # Usage errors of typer's (possibly vendored) click: duck-typed to work with either.
        kind = type(exc).__name__
        if kind == "NoArgsIsHelpError":
            err.print(exc.format_message(), markup=False, highlight=False)  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2:
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            ctx = getattr(exc, "ctx", None)
            where = f" ({ctx.command_path})" if ctx is not None else ""
            err.print(f"error: {message}{where}", markup=False, highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        if kind == "Abort":
            err.print("aborted", markup=False)
            raise SystemExit(130) from None
        if kind == "Exit":
            raise SystemExit(getattr(exc, "exit_code", 0)) from None
        raise


if __name__ == "__main__":
    main()
