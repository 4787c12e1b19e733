"""AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) against torchattacks' on the same rows.

Per budget, three timed runs on the same rows, interleaved over ``--repeats`` rounds
after a warm-up round (this machine's speed drifts between runs; min and median ratios):

- advkit ``AutoAttack`` standard as in the paper (100 iterations per gradient attack);
- advkit ``AutoAttack(steps=10)``, the iteration count torchattacks' ``AutoAttack`` uses
  (it keeps each attack's default ``steps=10``; its Square keeps 5,000 queries);
- torchattacks ``AutoAttack(version="standard")``.

The floor is torchattacks' wall time on the same rows (a peer ratio, not a hardware
floor): ``ratio < 1`` means advkit is faster. torchattacks' ``MultiAttack`` loop (each
attack on the rows still standing) is spelled out here so each component is timed too. The like-for-like speed case is ``steps=10``;
the 100-step case does ten times the gradient work and is there for its robust accuracy.
Each case also records both robust accuracies, advkit's per-component breakdown, and
advkit's PGD (100 steps, 1 restart) robust accuracy on the same rows. Without
torchattacks the floor is advkit's own time (ratio 1). Square dominates the time on rows
the gradient attacks leave standing (5,000 forward passes each).
Run: ``python benchmarks/bench_autoattack.py --data digits --json bench-results/autoattack.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, ratio_case, report, timed  # noqa: E402

from advkit.attacks.evasion import PGD, AutoAttack  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

SETTINGS = {"digits": ("digits-cnn", (0.1, 0.2), 150), "mnist5k": ("mnist-cnn", (0.1, 0.3), 60)}
BATCH = 500


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds after one warm-up round (min and median reported)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--data", choices=sorted(SETTINGS), default="digits")
    parser.add_argument("--limit", type=int, default=None, help="first N test rows (default: 150 digits, 60 mnist5k)")
    parser.add_argument("--eps", default=None, help="Linf budgets, comma separated (default: digits 0.1,0.2; mnist5k 0.1,0.3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadier on a shared CPU)")
    return parser.parse_args()


def accuracy(model: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x, BATCH) == y).float().mean())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    zoo, default_eps, default_limit = SETTINGS[args.data]
    budgets = [float(e) for e in args.eps.split(",")] if args.eps else list(default_eps)
    model = pretrained(zoo, device=args.device)
    data = load_dataset(args.data, split="test", limit=args.limit or default_limit)
    x, y = model.to_device(data.x), model.to_device(data.y)
    try:
        import torchattacks
    except ImportError:
        torchattacks = None

    cases = []
    for eps in budgets:
        threat = Threat(norm="linf", eps=eps)
        standard = AutoAttack(threat, batch_size=BATCH)
        like_peer = AutoAttack(threat, steps=10, batch_size=BATCH)

        def peer_run(eps: float = eps) -> dict[str, Any]:
            """torchattacks' AutoAttack, its MultiAttack loop spelled out to time each component."""
            torch.manual_seed(0)
            attack = torchattacks.AutoAttack(model.network.eval(), norm="Linf", eps=eps, version="standard", n_classes=model.num_classes, seed=0)
            final, fails, parts = x.clone(), torch.arange(x.shape[0], device=x.device), []
            for component in attack._autoattack.attacks:  # MultiAttack.forward: each attack on the rows still standing
                adv, seconds = timed(lambda component=component, fails=fails: component(x[fails], y[fails]))
                wrong = model.predict(adv, BATCH) != y[fails]
                final[fails[wrong]] = adv[wrong]
                parts.append({"attack": type(component).__name__, "rows_attacked": int(fails.numel()), "rows_broken": int(wrong.sum()), "seconds": seconds})
                fails = fails[~wrong]
                if fails.numel() == 0:
                    break
            return {"robust_accuracy": accuracy(model, final, y), "breakdown": parts}

        results: dict[str, Any] = {}

        def keep(key: str, fn: Any) -> Any:
            return lambda: results.__setitem__(key, fn())

        runs = {
            "standard": keep("standard", lambda: standard(model, x, y, generator=torch.Generator().manual_seed(0))),
            "steps10": keep("steps10", lambda: like_peer(model, x, y, generator=torch.Generator().manual_seed(0))),
        }
        if torchattacks is not None:
            runs["peer"] = keep("peer", peer_run)
        times = interleaved(runs, repeats=args.repeats)  # advkit (both settings) and torchattacks in turn
        print(f"eps={eps:g}: " + ", ".join(f"{k} min {v['min']:.1f}s median {v['median']:.1f}s" for k, v in times.items()), flush=True)
        pgd = PGD(threat, steps=100, restarts=1, batch_size=BATCH)(model, x, y).adversarial_accuracy
        peer_acc = results["peer"]["robust_accuracy"] if "peer" in results else None
        peer_seconds = times["peer"]["min"] if "peer" in times else None
        for key, label in (("standard", "100 steps (paper)"), ("steps10", "10 steps (as torchattacks)")):
            res = results[key]
            cases.append(
                ratio_case(
                    f"advkit autoattack {label} eps={eps:g}",
                    times,
                    key,
                    "peer" if "peer" in times else key,
                    note="floor: torchattacks AutoAttack standard, same rows" if peer_seconds is not None else "floor: advkit itself (torchattacks not installed)",
                    eps=eps,
                    rows=int(x.shape[0]),
                    clean_accuracy=res.clean_accuracy,
                    robust_accuracy=res.adversarial_accuracy,
                    torchattacks_robust_accuracy=peer_acc,
                    torchattacks_seconds=peer_seconds,
                    pgd100_robust_accuracy=pgd,
                    breakdown=res.params["breakdown"],
                    torchattacks_breakdown=results["peer"]["breakdown"] if "peer" in results else None,
                )
            )
            print(
                f"  {label}: advkit robust {res.adversarial_accuracy:.4f} in {times[key]['min']:.1f}s | torchattacks "
                + (f"{peer_acc:.4f} in {peer_seconds:.1f}s" if peer_seconds is not None else "n/a")
                + f" | advkit pgd-100 {pgd:.4f}"
            )
    report(
        "autoattack",
        cases,
        args.json,
        data=args.data,
        model=f"zoo:{zoo}",
        threads=args.threads,
        batch_size=BATCH,
        note="floor_seconds is torchattacks' AutoAttack wall time on the same rows (peer ratio)",
    )


if __name__ == "__main__":
    main()
