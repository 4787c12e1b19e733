"""Square Attack and HopSkipJump against the forward-pass floor of the same model evaluations.

Both attacks spend their time in model queries; everything else (random search, window
bookkeeping, bisection, gradient estimates) is overhead. The floor is a bare forward
pass (``inference_mode``) over as many rows as the attack queried, in batches of the
attack's batch size, on the same images, in the same process. Reported per case: the
attack's seconds, the floor's, their ratio (target <= 1.5; min and median over
interleaved rounds of floor, advkit and the peer in turn) and seconds per 1,000
queries x images. ART's SquareAttack and HopSkipJump are timed on the same rows when
``adversarial-robustness-toolbox`` is installed.
Run: ``python benchmarks/bench_blackbox.py --json bench-results/blackbox.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report  # noqa: E402

from advkit.attacks.evasion import HopSkipJump, SquareAttack  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

ROWS, QUERIES = 100, 1000


def main() -> None:
    args = parse_args(__doc__ or "")
    model = pretrained("mnist-cnn")
    data = load_dataset("mnist5k", split="test", limit=ROWS)
    x, y = data.x, data.y
    network = model.network.eval()

    def floor(total_rows: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            remaining = total_rows
            while remaining > 0:
                size = min(ROWS, remaining)
                network(x[:size]).argmax(1)
                remaining -= size
        return time.perf_counter() - start

    try:
        from art.attacks.evasion import HopSkipJump as ArtHSJ
        from art.attacks.evasion import SquareAttack as ArtSquare
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        ArtSquare = None  # noqa: N806
    peers = {}
    if ArtSquare is not None:
        classifier = PyTorchClassifier(network, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0))
        xs = x.numpy()
        art_square = ArtSquare(classifier, norm="inf", eps=0.3, max_iter=QUERIES, nb_restarts=1, batch_size=ROWS, verbose=False)
        art_hsj = ArtHSJ(classifier, norm=2, max_iter=5, max_eval=QUERIES, init_eval=100, batch_size=ROWS, verbose=False)
        peers = {"square": ("ART square linf eps=0.3", lambda: art_square.generate(xs)), "hopskipjump": ("ART hopskipjump l2 (5 iterations)", lambda: art_hsj.generate(xs))}
    cases = []
    attacks = [
        ("square", "advkit square linf eps=0.3", SquareAttack(Threat(norm="linf", eps=0.3), max_queries=QUERIES, batch_size=ROWS)),
        ("hopskipjump", "advkit hopskipjump l2", HopSkipJump(Threat(norm="l2", eps=100.0), max_queries=QUERIES, batch_size=ROWS)),
    ]
    for key, name, attack in attacks:
        result = attack(model, x, y, generator=torch.Generator().manual_seed(0))  # the (seeded) query count of every run
        total = int(result.queries.sum())
        runs = {
            "advkit": lambda attack=attack: attack(model, x, y, generator=torch.Generator().manual_seed(0)),
            "floor": lambda total=total: floor(total),
        }
        if key in peers:
            runs["peer"] = peers[key][1]
        times = interleaved(runs, repeats=args.repeats)  # floor, advkit and the peer in turn
        cases.append(
            ratio_case(
                name,
                times,
                "advkit",
                "floor",
                queries=total,
                seconds_per_1000_query_images=times["advkit"]["min"] / max(total, 1) * 1000,
                attack_success_rate=result.attack_success_rate,
                median_queries=result.to_dict()["queries"]["median"] if result.to_dict()["queries"] else None,
            )
        )
        if key in peers:
            cases.append(ratio_case(peers[key][0], times, "peer", "floor", note="floor of advkit's query count"))
    report("blackbox", cases, args.json, rows=ROWS, max_queries=QUERIES, model="zoo:mnist-cnn")


if __name__ == "__main__":
    main()
