"""Neural Cleanse: all classes in one batched optimisation vs class by class.

Both runs take the same number of steps (early stopping off, fixed epochs) on the same
clean images in the same process. ``speedup`` = class-by-class time / batched time.
The floor is steps x one bare forward+backward (input gradient) of a batch of
classes x batch-size images: what the batched optimisation cannot go below.
On a CPU both runs sit at that floor (the work is compute-bound and linear in rows, so
batching only saves per-call overhead); on a GPU small class-by-class batches are
launch-bound, which is what batching removes: ``--device cuda``. The three runs are
timed in interleaved rounds (floor, batched, class by class), each with min and median.
Run: ``python benchmarks/bench_neural_cleanse.py --json bench-results/neural_cleanse.json``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report  # noqa: E402

from advkit.data import load_dataset  # noqa: E402
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse  # noqa: E402
from advkit.models import pretrained  # noqa: E402

EPOCHS = 3
BATCH = 32


def main() -> None:
    args = parse_args(__doc__ or "")
    cases = []
    speedups = {}
    for zoo, data, rows in (("digits-cnn", "digits", 320), ("mnist-cnn", "mnist5k", 320)):
        model = pretrained(zoo, device=args.device)
        x = load_dataset(data, split="test", limit=rows).x.to(args.device)
        classes = model.num_classes
        detector = NeuralCleanse(epochs=EPOCHS, batch_size=BATCH, early_stop=False)
        steps = EPOCHS * math.ceil(rows / BATCH)

        def batched() -> None:
            detector.reverse(model, x, generator=torch.Generator().manual_seed(0))

        def one_by_one() -> None:
            for k in range(classes):
                detector.reverse(model, x, classes=[k], generator=torch.Generator().manual_seed(0))

        network = model.network.eval()
        stamped = torch.rand(classes * BATCH, *model.input_shape, device=args.device)
        wanted = torch.arange(classes, device=args.device).repeat_interleave(BATCH)

        def floor() -> None:
            for _ in range(steps):
                x_in = stamped.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(network(x_in), wanted, reduction="sum"), x_in)

        times = interleaved({"floor": floor, "batched": batched, "serial": one_by_one}, args.repeats)
        speedups[zoo] = times["serial"]["median"] / times["batched"]["median"]
        cases.append(ratio_case(f"{zoo} batched ({classes} classes)", times, "batched", "floor", steps=steps))
        cases.append(ratio_case(f"{zoo} class by class", times, "serial", "floor", steps=steps, speedup=speedups[zoo]))
        print(f"{zoo}: speedup {speedups[zoo]:.2f}x (medians)")
    report(
        "neural_cleanse",
        cases,
        args.json,
        speedup=speedups.get("digits-cnn"),
        speedups=speedups,
        epochs=EPOCHS,
        batch_size=BATCH,
        device=args.device,
    )


if __name__ == "__main__":
    main()
