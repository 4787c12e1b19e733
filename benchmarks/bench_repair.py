"""Backdoor repair with a little clean data: mode connectivity and fine-pruning.

``--study acceptance``: for digits and mnist5k, BadNets (3x3 checkerboard patch) and
blend (Chen et al., alpha 0.2) at 10 % poison with target 0; the victim is the zoo
architecture trained on the poisoned training split with the zoo recipe (cached under
``/tmp/repair_cache``). The defender gets clean rows as many as 5 % of the training
split, drawn (seeded) from the *test* split; every figure is measured on the rest of
the test split, which no repair sees. A repair passes when the trigger's success is at
most 10 % and clean accuracy falls by at most 3 points. Rows: mode connectivity with
its defaults (the reference's fine-tune and curve settings), mode connectivity with
hard-fine-tuned ends (SGD 0.05, weight decay 0.02: what it takes for the ends to leave
the suspect's basin), fine-pruning with its defaults (``features``) and with the
paper's last-convolution channels (``conv``). Mode connectivity's rows carry the
auditor's curve (clean accuracy and backdoor success at each evaluated t).

``--study timing``: each repair's seconds against the same number of bare training
steps (plain cross-entropy, same network, rows and batch size).

Run: ``python benchmarks/bench_repair.py --study acceptance --json repair.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from advkit.attacks.poisoning.backdoor import BadNets, Blend, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.fine_pruning import FinePruning
from advkit.defenses.backdoor.mode_connectivity import ModeConnectivityRepair, evaluate_curve, split_clean_rows
from advkit.fileio import write_json
from advkit.models import TrainConfig, build, fit
from advkit.models.zoo import ZOO

CACHE = Path("/tmp/repair_cache")
ZOO_OF = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}
ATTACKS = {"badnets": BadNets, "blend": Blend}
TARGET, RATE, CLEAN_SHARE = 0, 0.1, 0.05
MAX_SUCCESS, MAX_DROP = 0.10, 0.03


def victim(data: str, attack_name: str) -> tuple[ModelHandle, Any, Any, Any]:
    """The zoo architecture trained on the poisoned training split (cached), its trigger and the splits."""
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    attack = ATTACKS[attack_name](target=TARGET, rate=RATE)
    poisoned = attack(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(0))
    recipe = ZOO[ZOO_OF[data]]
    net = build(recipe.arch, in_channels=1, num_classes=10, image_size=train.x.shape[-1], seed=0)
    handle = ModelHandle(net, ModelInfo(tuple(train.x.shape[1:]), 10, arch=recipe.arch))  # type: ignore[arg-type]
    path = CACHE / f"{data}-{attack_name}-{recipe.arch}-e{recipe.epochs}-lr{recipe.lr}-r{RATE}-t{TARGET}-torch{torch.__version__}.pt"
    if path.exists():
        net.load_state_dict(torch.load(path))
    else:
        fit(handle.network, poisoned.x, poisoned.y, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=0))
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    return handle, attack.trigger, train, test


def defender_split(train: Any, test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the test split: the defender's clean rows (5 % of the training split's size) and the rest."""
    count = round(CLEAN_SHARE * len(train.y))
    order = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(1))
    return order[:count], order[count:]


def methods() -> dict[str, Any]:
    return {
        "mode-connectivity": ModeConnectivityRepair(),
        "mode-connectivity (hard-tuned ends)": ModeConnectivityRepair(endpoint_lr=0.05, weight_decay=0.02),
        "fine-pruning (features)": FinePruning(),
        "fine-pruning (conv, paper)": FinePruning(layer="conv"),
    }


def accuracy(model: ModelHandle, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def acceptance(datasets: list[str]) -> list[dict[str, Any]]:
    rows = []
    for data in datasets:
        for attack_name in ATTACKS:
            model, trigger, train, test = victim(data, attack_name)
            mine, held = defender_split(train, test)
            xd, yd, xe, ye = test.x[mine], test.y[mine], test.x[held], test.y[held]
            acc0, asr0 = accuracy(model, xe, ye), backdoor_success_rate(model, xe, ye, trigger, TARGET)
            for name, method in methods().items():
                start = time.perf_counter()
                if isinstance(method, ModeConnectivityRepair):
                    result = method(model, xd, yd, generator=torch.Generator().manual_seed(0))
                    extra: dict[str, Any] = {"t": result.t, "curve": evaluate_curve(result, xe, ye, trigger, TARGET), **result.details}
                else:
                    result = method(model, xd, yd)
                    extra = {"pruned_units": len(result.pruned), "of_units": result.units}
                seconds = time.perf_counter() - start
                acc1, asr1 = accuracy(result.model, xe, ye), backdoor_success_rate(result.model, xe, ye, trigger, TARGET)
                row = {
                    "data": data,
                    "attack": attack_name,
                    "method": name,
                    "defender_rows": int(mine.numel()),
                    "defender_rows_from": "test split",
                    "evaluation_rows": int(held.numel()),
                    "clean_accuracy_before": acc0,
                    "clean_accuracy_after": acc1,
                    "backdoor_success_before": asr0,
                    "backdoor_success_after": asr1,
                    "passes": asr1 <= MAX_SUCCESS and acc0 - acc1 <= MAX_DROP,
                    "seconds": seconds,
                    **extra,
                }
                rows.append(row)
                print(
                    f"{data:8} {attack_name:8} {name:37} acc {acc0:.3f} -> {acc1:.3f}  backdoor {asr0:.3f} -> {asr1:.3f}"
                    f"  {'PASS' if row['passes'] else 'fail'}  {seconds:5.1f}s" + (f"  t={row['t']:.2f}" if "t" in row else ""),
                    flush=True,
                )
    return rows


def _bare_steps(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int) -> float:
    """Seconds for ``steps`` plain training steps on a copy of the model (rows and batch size as the repair's)."""
    copy_ = ModelHandle(copy.deepcopy(model.net), copy.deepcopy(model.info))
    per_epoch = math.ceil(y.shape[0] / batch_size)
    start = time.perf_counter()
    fit(copy_.network, x, y, TrainConfig(epochs=max(1, round(steps / per_epoch)), batch_size=batch_size, optimizer="sgd", lr=0.01))
    return time.perf_counter() - start


def timing(datasets: list[str]) -> list[dict[str, Any]]:
    cases = []
    for data in datasets:
        model, _trigger, train, test = victim(data, "badnets")
        mine, _held = defender_split(train, test)
        xd, yd = test.x[mine], test.y[mine]
        repair = ModeConnectivityRepair()
        fitting, _ = split_clean_rows(yd, repair.validation_fraction, torch.Generator().manual_seed(0))
        per_epoch = math.ceil(fitting.numel() / repair.batch_size)
        steps = (2 * repair.endpoint_epochs + repair.curve_epochs) * per_epoch
        start = time.perf_counter()
        repair(model, xd, yd, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        floor = _bare_steps(model, xd[fitting], yd[fitting], steps, repair.batch_size)
        cases.append({"case": f"{data} mode-connectivity", "seconds": seconds, "floor_seconds": floor, "ratio": seconds / floor, "training_steps": steps})
        pruning = FinePruning()
        steps = pruning.epochs * math.ceil(yd.numel() / pruning.batch_size)
        start = time.perf_counter()
        pruning(model, xd, yd)
        seconds = time.perf_counter() - start
        floor = _bare_steps(model, xd, yd, steps, pruning.batch_size)
        cases.append({"case": f"{data} fine-pruning", "seconds": seconds, "floor_seconds": floor, "ratio": seconds / floor, "training_steps": steps})
        for case in cases[-2:]:
            print(f"{case['case']:28} {case['seconds']:7.2f}s  bare steps {case['floor_seconds']:6.2f}s  ratio {case['ratio']:.2f}", flush=True)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["acceptance", "timing"], default="acceptance")
    parser.add_argument("--data", nargs="+", choices=sorted(ZOO_OF), default=["digits", "mnist5k"])
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = acceptance(args.data) if args.study == "acceptance" else timing(args.data)
    if args.json is not None:
        import platform

        write_json(args.json, {"benchmark": "repair", "study": args.study, "rows": rows, "torch": torch.__version__, "python": platform.python_version()})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
