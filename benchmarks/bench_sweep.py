"""The audit's default evasion section swept (rows carried forward) against independent runs.

The section is the audit's default: fgsm, pgd and autoattack at eps 0.05, 0.1, 0.2, 0.3
(Linf) with the audit's settings (10 steps, 3 PGD restarts, 1,000 Square queries). The
floor is the sum of the independent per-eps runs (every eps attacks every row, as before
sweeps carried rows), timed in the same interleaved rounds: ``ratio < 1`` is time saved.
Each case also checks, row by row, that the swept result breaks every row the independent
one breaks, and records both robust accuracies and the rows each eps attacked and carried.
Run: ``python benchmarks/bench_sweep.py --data digits --json bench-results/sweep.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, ratio_case, report  # noqa: E402

from advkit.attacks.evasion.sweep import sweep  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402
from advkit.registry import build_evasion  # noqa: E402

ZOO = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}
ATTACKS = ("fgsm", "pgd", "autoattack")
EPS = (0.05, 0.1, 0.2, 0.3)
SETTINGS = {"steps": 10, "restarts": 3, "max_queries": 1000}  # the audit's evasion defaults


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--data", choices=sorted(ZOO), default="digits")
    parser.add_argument("--limit", type=int, default=None, help="first N test rows (default: all of digits, 500 of mnist5k)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = pretrained(ZOO[args.data])
    limit = args.limit or (None if args.data == "digits" else 500)
    data = load_dataset(args.data, split="test", limit=limit)
    x, y = data.x, data.y
    per_attack = {name: [build_evasion(name, Threat(eps=e), SETTINGS, strict=False) for e in EPS] for name in ATTACKS}
    outputs: dict[str, Any] = {}

    def section(carry: bool) -> None:
        outputs["carry" if carry else "independent"] = {name: sweep(attacks, model, x, y, carry=carry) for name, attacks in per_attack.items()}

    times = interleaved({"independent": lambda: section(False), "carry": lambda: section(True)}, repeats=args.repeats)
    print(", ".join(f"{k}: min {v['min']:.1f}s median {v['median']:.1f}s" for k, v in times.items()), flush=True)
    rows: list[dict[str, Any]] = []
    never_weaker = True
    for name in ATTACKS:
        for eps, alone, swept in zip(EPS, outputs["independent"][name], outputs["carry"][name]):
            holds = bool((alone.success <= swept.success).all())
            never_weaker &= holds
            rows.append(
                {
                    "attack": name,
                    "eps": eps,
                    "independent_robust_accuracy": alone.adversarial_accuracy,
                    "swept_robust_accuracy": swept.adversarial_accuracy,
                    "rows_attacked": swept.to_dict()["rows_attacked"],
                    "rows_carried": swept.rows_carried,
                    "row_by_row_never_weaker": holds,
                }
            )
            print(
                f"{name:<10} eps {eps:<4g} robust independent {alone.adversarial_accuracy:.4f} swept {swept.adversarial_accuracy:.4f}"
                f"  attacked {rows[-1]['rows_attacked']:>4} carried {swept.rows_carried:>4}  row by row: {'ok' if holds else 'WEAKER'}"
            )
    cases = [
        ratio_case(
            f"evasion section swept ({args.data}, {x.shape[0]} rows)",
            times,
            "carry",
            "independent",
            note="floor: the sum of the independent per-eps runs, timed in the same rounds",
            rows=int(x.shape[0]),
            row_by_row_never_weaker=never_weaker,
            per_eps=rows,
        )
    ]
    report("sweep", cases, args.json, data=args.data, model=f"zoo:{ZOO[args.data]}", attacks=list(ATTACKS), eps=list(EPS), settings=SETTINGS, threads=args.threads)


if __name__ == "__main__":
    main()
