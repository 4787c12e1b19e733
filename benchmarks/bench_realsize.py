"""PGD-10 on the user's model at real size with streamed data, against 10 bare forward+backward passes.

The model is one advkit never built (by default the hand-written ResNet-18 of
``benchmarks/realsize``, as TorchScript), the data a folder of mixed-size JPEGs resized
and centre-cropped to ``--image-size`` (224) and read batch by batch through advkit's
DataLoader (:meth:`advkit.data.folder.FolderRows.batches`), decoding overlapping compute.
The floor is 10 forward+backward passes per batch (the input gradient) over the same
rows already decoded into memory, timed in the same interleaved rounds: ``ratio`` is
what streaming, the attack's bookkeeping, projection and verification cost on top.
PGD runs with one restart and no early stop, so it does exactly 10 gradient steps.

With ``--report RUN/report.json`` it also prints the cost estimate's error per step
kind of that audit (estimated / measured seconds, summed over the kind's steps).

Run (after ``benchmarks/realsize/README.md``'s commands):
``python benchmarks/bench_realsize.py --model runs/realsize/models/resnet18.pt --data runs/realsize/jpegs --json bench-results/realsize.json``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, ratio_case, report  # noqa: E402

from advkit.core import Threat  # noqa: E402
from advkit.data import open_rows  # noqa: E402
from advkit.fileio import read_json  # noqa: E402
from advkit.models.resolve import resolve  # noqa: E402
from advkit.registry import build_evasion  # noqa: E402

STEPS = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/realsize/models/resnet18.pt")
    parser.add_argument("--data", default="runs/realsize/jpegs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rows", type=int, default=64, help="test rows attacked per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--report", type=Path, default=None, help="an audit's report.json: print its estimate's error per step kind")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    return parser.parse_args()


def estimate_errors(path: Path) -> list[dict[str, Any]]:
    """Per step kind of an audit: estimated and measured seconds (summed) and their ratio.

    ``estimated_seconds`` is the estimate the plan was fitted to (before the run),
    ``reestimated_seconds`` the latest one (after a mitigated model was probed; the same
    where nothing was re-estimated).
    """
    run = read_json(path, "audit report")
    kinds: dict[str, list[float]] = {}
    for entry in run["plan"]:
        measured = run["timings"].get(entry["step"])
        if measured is None or entry["step"] in run.get("cached_steps", []):
            continue
        totals = kinds.setdefault(entry["kind"], [0.0, 0.0, 0.0, 0])
        totals[0] += entry["estimated_seconds"]
        totals[1] += entry.get("reestimated_seconds", entry["estimated_seconds"])
        totals[2] += measured
        totals[3] += 1
    return [
        {
            "kind": kind,
            "steps": int(n),
            "estimated_seconds": est,
            "reestimated_seconds": latest,
            "measured_seconds": got,
            "estimate_over_measured": est / got if got else None,
            "reestimate_over_measured": latest / got if got else None,
        }
        for kind, (est, latest, got, n) in sorted(kinds.items())
    ]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = open_rows(args.data, split="test", limit=args.rows, image_size=args.image_size)
    model = resolve(args.model, sample_shape=rows.input_shape)
    in_memory = rows.materialize()
    attack = build_evasion(
        "pgd", Threat(norm="linf", eps=args.eps), {"steps": STEPS, "restarts": 1}, batch_size=args.batch_size
    )
    attack.early_stop = False
    outputs: dict[str, Any] = {}

    def floor() -> None:
        with model.eval_mode():
            for first in range(0, len(in_memory), args.batch_size):
                xb = model.to_device(in_memory.x[first : first + args.batch_size])
                yb = model.to_device(in_memory.y[first : first + args.batch_size])
                for _ in range(STEPS):
                    x_in = xb.clone().requires_grad_(True)
                    torch.autograd.grad(F.cross_entropy(model.logits(x_in), yb), x_in)

    def streamed() -> None:
        broken = 0
        for ids, xb, yb in rows.batches(args.batch_size):
            result = attack(model, xb, yb, rows=ids, generator=torch.Generator().manual_seed(0))
            broken += int(result.success.sum())
        outputs["adversarial_accuracy"] = 1 - broken / len(rows)

    times = interleaved({"floor": floor, "streamed": streamed}, repeats=args.repeats)
    cases = [
        ratio_case(
            f"pgd-{STEPS} streamed {args.image_size}px", times, "streamed", "floor",
            note=f"{STEPS} forward+backward passes per batch over in-memory tensors", rows=len(rows), batch_size=args.batch_size,
            model=args.model, adversarial_accuracy=outputs.get("adversarial_accuracy"),
        )
    ]
    for c in cases:
        print(f"{c['case']}: {c['seconds']:.1f}s vs floor {c['floor_seconds']:.1f}s -> ratio {c['ratio']:.3f} (median {c['median_ratio']:.3f})")
    extra: dict[str, Any] = {}
    if args.report is not None:
        extra["estimate_errors"] = estimate_errors(args.report)
        for e in extra["estimate_errors"]:
            print(
                f"  estimate {e['kind']}: {e['estimated_seconds']:.1f}s estimated / {e['measured_seconds']:.1f}s measured = "
                f"{e['estimate_over_measured']:.2f} (re-estimated {e['reestimate_over_measured']:.2f})"
            )
    report("realsize", cases, args.json, **extra)


if __name__ == "__main__":
    main()
