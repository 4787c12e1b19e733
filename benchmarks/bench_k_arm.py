"""K-Arm against Neural Cleanse: wall time and whether they flag the same classes.

Both detectors run in the same process on the same clean rows with the same seed;
Neural Cleanse with the ``advkit inspect`` settings (60 epochs, batch 32), K-Arm with
its defaults. Each call is timed on its own, the two alternating (which one goes first
flips from model to model, and from round to round in the timing mode), so load changes
on a shared machine hit both. ``arm_epochs`` counts the rows each detector put through
the network (a forward hook, not the detectors' own counts) divided by the clean rows:
one arm-epoch is one class's trigger optimised for one epoch (pre-screening and the
final checks count too). CPU seconds (``time.process_time``) are recorded next to wall
seconds: on a machine shared with other work they show the detectors' own cost.

Modes:

* default (timing): one model (``--data``, BadNets to class 0, seed 0), ``--repeats``
  rounds after a warm-up; ``ratio`` = K-Arm seconds / Neural Cleanse seconds (min, median).
* ``--study agreement --seeds 5``: per data set, seed and kind of model (``badnets-0``:
  BadNets 10% to class 0; ``badnets-t``: to another class; ``blend``; ``clean``), both
  detectors once; ``agree`` is identical flagged classes. Where they differ, Neural
  Cleanse runs at two more seeds (``nc_other_seeds``; ``--no-recheck`` skips it) to tell
  its own seed noise from K-Arm's. The summary gives how many agree, the K-Arm / Neural
  Cleanse ratio of the summed seconds (wall and CPU) and the worst per model.

Victims are trained on the poisoned train split with the zoo recipe (digits-cnn 30
epochs, mnist-cnn 12, lr 2e-3; ``--train-epochs`` overrides) and cached under
``--cache`` (/tmp/karm_cache). mnist5k scans use the first ``--rows`` test rows (150 by
default; Neural Cleanse at 60 epochs on all 1,250 takes minutes per model on one thread).
Run: ``python benchmarks/bench_k_arm.py --json bench-results/k_arm.json`` and
``python benchmarks/bench_k_arm.py --study agreement --seeds 5 --json bench-results/k_arm_agreement.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, timed  # noqa: E402

from advkit.attacks.poisoning.backdoor import (  # noqa: E402
    BadNets,
    Blend,
    BlendTrigger,
    PatchTrigger,
    backdoor_success_rate,
)
from advkit.core import DetectionReport, ModelHandle, ModelInfo  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.defenses.backdoor.k_arm import KArm  # noqa: E402
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse  # noqa: E402
from advkit.fileio import write_json  # noqa: E402
from advkit.models import build  # noqa: E402
from advkit.models.train import TrainConfig, fit  # noqa: E402
from advkit.models.zoo import ZOO  # noqa: E402

ZOO_OF = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}
POSITIONS = ["bottom-right", "top-left", "top-right", "bottom-left", "bottom-right"]
OTHER_TARGETS = [4, 7, 2, 9, 5]
BLEND_TARGETS = [3, 8, 6, 1, 2]
KINDS = ("badnets-0", "badnets-t", "blend", "clean")


def attack_for(kind: str, seed: int) -> tuple[Any, int | None]:
    """The poisoning of one kind of model for one seed, and its target (None: clean)."""
    position = POSITIONS[seed % len(POSITIONS)]
    if kind == "badnets-0":
        return BadNets(PatchTrigger(size=3, position=position), target=0, rate=0.1), 0
    if kind == "badnets-t":
        target = OTHER_TARGETS[seed % len(OTHER_TARGETS)]
        return BadNets(PatchTrigger(size=3, position=position), target=target, rate=0.1), target
    if kind == "blend":
        target = BLEND_TARGETS[seed % len(BLEND_TARGETS)]
        return Blend(BlendTrigger(seed=seed), target=target, rate=0.1), target
    return None, None


def victim(data: str, kind: str, seed: int, cache: Path, train_epochs: int | None) -> tuple[ModelHandle, Any, int | None]:
    """The model of one kind trained on ``data``'s (poisoned) train split, cached by its recipe."""
    recipe = ZOO[ZOO_OF[data]]
    epochs = train_epochs or recipe.epochs
    train = load_dataset(data, "train")
    attack, target = attack_for(kind, seed)
    x, y = train.x, train.y
    if attack is not None:
        poisoned = attack(x, y, num_classes=train.num_classes, generator=torch.Generator().manual_seed(seed))
        x, y = poisoned.x, poisoned.y
    net = build(recipe.arch, in_channels=train.input_shape[0], num_classes=train.num_classes, image_size=x.shape[-1], seed=seed)
    path = cache / f"{data}_{kind}_{seed}_{epochs}_{recipe.lr}.pt"
    if path.exists():
        net.load_state_dict(torch.load(path))
    else:
        fit(net, x, y, TrainConfig(epochs=epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=seed))
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net.eval()
    return ModelHandle(net, ModelInfo(train.input_shape, train.num_classes, arch=recipe.arch)), attack, target


def counted(model: ModelHandle, fn: Any) -> tuple[Any, float, float, int]:
    """Run ``fn``; its result, wall seconds, CPU seconds and the rows it put through the network."""
    rows = [0]
    hook = model.network.register_forward_pre_hook(lambda _module, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    cpu = time.process_time()
    try:
        out, seconds = timed(fn)
    finally:
        hook.remove()
    return out, seconds, time.process_time() - cpu, rows[0]


def both(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, seed: int, karm_first: bool) -> dict[str, Any]:
    """Neural Cleanse and K-Arm once each on the same rows and seed, in the given order."""
    detectors = {"nc": NeuralCleanse(epochs=60, batch_size=32), "k_arm": KArm()}
    order = ["k_arm", "nc"] if karm_first else ["nc", "k_arm"]
    out: dict[str, Any] = {}
    for name in order:
        detector = detectors[name]
        report, seconds, cpu, rows = counted(model, lambda d=detector: d(model, x, y, generator=torch.Generator().manual_seed(seed)))
        out[name] = summary_of(report, seconds, rows / x.shape[0])
        out[name]["cpu_seconds"] = cpu
    return out


def summary_of(report: DetectionReport, seconds: float, arm_epochs: float) -> dict[str, Any]:
    details = report.details
    row = {
        "flagged": report.flagged_ids,
        "seconds": seconds,
        "arm_epochs": arm_epochs,
        "l1": [round(float(v), 3) for v in report.scores],
        "anomaly_index": [round(float(v), 3) if float(v) != float("inf") else None for v in details["anomaly_index"]],
    }
    if "pulls_per_class" in details:
        row.update({k: details[k] for k in ("pulls_per_class", "stopped_early", "rounds", "trigger_type", "candidates")})
    return row


def scan_rows(data: str, rows: int | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    test = load_dataset(data, "test")
    limit = rows if rows is not None else (150 if data == "mnist5k" else None)
    return test.x[:limit], test.y[:limit], test


def timing(args: argparse.Namespace) -> dict[str, Any]:
    data = args.data[0]
    model, _, _ = victim(data, "badnets-0", 0, args.cache, args.train_epochs)
    x, y, _ = scan_rows(data, args.rows)
    both(model, x, y, 0, True)  # warm-up
    rounds = [both(model, x, y, 0, karm_first=i % 2 == 0) for i in range(args.repeats)]
    times = {name: [r[name]["seconds"] for r in rounds] for name in ("nc", "k_arm")}
    cpu = {name: [r[name]["cpu_seconds"] for r in rounds] for name in ("nc", "k_arm")}
    result = {
        "mode": "timing",
        "data": data,
        "model": "badnets-0 seed 0",
        "rows": x.shape[0],
        "seconds": {name: {"min": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()},
        "ratio_min": min(times["k_arm"]) / min(times["nc"]),
        "ratio_median": statistics.median(times["k_arm"]) / statistics.median(times["nc"]),
        "cpu_ratio_median": statistics.median(cpu["k_arm"]) / statistics.median(cpu["nc"]),
        "agree": all(r["nc"]["flagged"] == r["k_arm"]["flagged"] for r in rounds),
        "last_round": rounds[-1],
    }
    print(f"{data}: K-Arm / Neural Cleanse {result['ratio_min']:.3f} (min) {result['ratio_median']:.3f} (median); agree {result['agree']}")
    return result


def warm_up(model: ModelHandle, x: torch.Tensor, y: torch.Tensor) -> None:
    """One short run of each detector, so one-time costs (lazy imports, first allocations) are timed for neither."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NeuralCleanse(epochs=1)(model, x[:64], None)
        KArm(epochs=1, warmup=1)(model, x[:64], None)


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for data in args.data:
        x, y, test = scan_rows(data, args.rows)
        warm_up(victim(data, "clean", 0, args.cache, args.train_epochs)[0], x, y)
        for seed in range(args.seeds):
            for kind in args.kinds:
                model, attack, target = victim(data, kind, seed, args.cache, args.train_epochs)
                row: dict[str, Any] = {"data": data, "seed": seed, "kind": kind, "target": target, "rows": x.shape[0]}
                row["clean_accuracy"] = float((model.predict(test.x) == test.y).float().mean())
                if attack is not None:
                    row["attack_success_rate"] = backdoor_success_rate(model, test.x, test.y, attack.trigger, target)
                row.update(both(model, x, y, seed, karm_first=len(rows) % 2 == 0))
                row["agree"] = row["nc"]["flagged"] == row["k_arm"]["flagged"]
                row["ratio"] = row["k_arm"]["seconds"] / row["nc"]["seconds"]
                row["cpu_ratio"] = row["k_arm"]["cpu_seconds"] / row["nc"]["cpu_seconds"]
                if not row["agree"] and getattr(args, "recheck", True):  # is it Neural Cleanse's own seed noise? two more seeds of it
                    row["nc_other_seeds"] = {
                        str(seed + k): NeuralCleanse(epochs=60)(model, x, y, generator=torch.Generator().manual_seed(seed + k)).flagged_ids
                        for k in (10, 20)
                    }
                rows.append(row)
                if getattr(args, "json", None) is not None:  # what is done so far, in case the study is cut short
                    write_json(args.json, {"benchmark": "k_arm", "mode": "agreement", "partial": True, "rows": rows})
                print(
                    f"{data} seed {seed} {kind:<9} target {target}: NC {row['nc']['flagged']} {row['nc']['seconds']:.1f}s "
                    f"K-Arm {row['k_arm']['flagged']} {row['k_arm']['seconds']:.1f}s ratio {row['ratio']:.2f} (CPU {row['cpu_ratio']:.2f}) "
                    f"arm-epochs {row['k_arm']['arm_epochs']:.0f}/{row['nc']['arm_epochs']:.0f} agree {row['agree']}",
                    flush=True,
                )
    nc_total = sum(r["nc"]["seconds"] for r in rows)
    karm_total = sum(r["k_arm"]["seconds"] for r in rows)
    summary = {
        "models": len(rows),
        "agree": sum(r["agree"] for r in rows),
        "ratio_total": karm_total / nc_total if nc_total else None,
        "ratio_worst": max(r["ratio"] for r in rows) if rows else None,
        "cpu_ratio_total": sum(r["k_arm"]["cpu_seconds"] for r in rows) / max(sum(r["nc"]["cpu_seconds"] for r in rows), 1e-9),
        "cpu_ratio_worst": max(r["cpu_ratio"] for r in rows) if rows else None,
        "arm_epochs_ratio": sum(r["k_arm"]["arm_epochs"] for r in rows) / max(sum(r["nc"]["arm_epochs"] for r in rows), 1e-9),
        "nc_flags_target": sum(r["nc"]["flagged"] == [r["target"]] for r in rows if r["target"] is not None),
        "k_arm_flags_target": sum(r["k_arm"]["flagged"] == [r["target"]] for r in rows if r["target"] is not None),
        "backdoored": sum(r["target"] is not None for r in rows),
        # disagreements where Neural Cleanse itself flags differently at another seed
        "nc_unstable": sum(any(f != r["nc"]["flagged"] for f in r.get("nc_other_seeds", {}).values()) for r in rows),
    }
    print(f"agreement {summary['agree']}/{summary['models']}; K-Arm / NC time {summary['ratio_total']:.3f} (worst {summary['ratio_worst']:.3f})")
    return {"mode": "agreement", "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["agreement"], default=None)
    parser.add_argument("--data", nargs="+", choices=sorted(ZOO_OF), default=None, help="digits (timing) or digits mnist5k (study)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--rows", type=int, default=None, help="clean test rows scanned (default: all for digits, 150 for mnist5k)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/karm_cache"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-recheck", dest="recheck", action="store_false", help="skip Neural Cleanse at 2 more seeds on a disagreement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.data = args.data or (["digits", "mnist5k"] if args.study else ["digits"])
    result = agreement(args) if args.study == "agreement" else timing(args)
    if args.json is not None:
        write_json(args.json, {"benchmark": "k_arm", **result, "environment": environment()})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
