"""FGSM and PGD-10 on 1,000 MNIST images, as a ratio to the bare gradient floor.

The floor is k bare forward+backward passes (input gradient of the summed cross-entropy)
over the same batches in the same process: k=10 for PGD-10; FGSM's honest floor is its one
pass plus the forward pass that verifies the result. On a CPU a
pass costs more on perturbed images than on clean MNIST (mostly exact zeros), so the
floor's passes walk the same kind of inputs an attack sees: pass 1 on the clean batch,
each next pass on the previous input moved by one bare sign step (no projection to the
bounds, no tracking, no verification). advkit's
attacks add their mandatory work on top (clean prediction, projection, per-row best
tracking, the verifying forward pass). torchattacks is timed on the same rows when
installed. Run: ``python benchmarks/bench_evasion.py --json bench-results/evasion.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_time, case, parse_args, report  # noqa: E402

from advkit.attacks.evasion import FGSM, PGD  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

BATCH = 500


def main() -> None:
    args = parse_args(__doc__ or "")
    handle = pretrained("mnist-cnn")
    data = load_dataset("mnist5k", split="test", limit=1000)
    x, y = data.x, data.y
    network = handle.network.eval()
    for p in network.parameters():
        p.requires_grad_(False)  # attackers need input gradients only (so does the floor)

    eps = 0.3
    alpha = 2.5 * eps / 10

    def floor(passes: int) -> None:
        for start in range(0, x.shape[0], BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            for _ in range(passes):
                x_in = xb.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(network(x_in), yb, reduction="sum"), x_in)
                xb = xb + alpha * grad.sign()

    fgsm = FGSM(Threat(eps=eps), batch_size=BATCH)
    pgd1 = PGD(Threat(eps=eps), steps=10, restarts=1, batch_size=BATCH)
    pgd_default = PGD(Threat(eps=eps), steps=10, batch_size=BATCH)
    floor1 = best_time(lambda: floor(1), args.repeats)
    floor10 = best_time(lambda: floor(10), args.repeats)
    def floor_verified() -> None:  # one pass, the FGSM point in the bounds, and the forward that re-checks it
        for start in range(0, x.shape[0], BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            x_in = xb.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(network(x_in), yb, reduction="sum"), x_in)
            with torch.inference_mode():
                network((xb + eps * grad.sign()).clamp(0, 1))

    cases = [
        case(
            "advkit fgsm",
            best_time(lambda: fgsm(handle, x, y), args.repeats),
            best_time(floor_verified, args.repeats),
            bare_pass_seconds=floor1,
            note="floor: one forward+backward plus the forward that re-checks the result (DESIGN.md principle 3)",
        ),
        case("advkit pgd-10 (1 restart)", best_time(lambda: pgd1(handle, x, y), args.repeats), floor10),
        case(
            "advkit pgd-10 (default, 3 restarts)",
            best_time(lambda: pgd_default(handle, x, y), args.repeats),
            floor10,
            note="later restarts attack only the rows still standing",
        ),
    ]
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    if torchattacks is not None:
        peer_fgsm = torchattacks.FGSM(network, eps=eps)
        peer_pgd = torchattacks.PGD(network, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)

        def batched(attack):  # noqa: ANN001, ANN202
            return lambda: [attack(x[s : s + BATCH], y[s : s + BATCH]) for s in range(0, x.shape[0], BATCH)]

        cases.append(case("torchattacks fgsm", best_time(batched(peer_fgsm), args.repeats), floor1))
        cases.append(case("torchattacks pgd-10", best_time(batched(peer_pgd), args.repeats), floor10))
    report("evasion", cases, args.json, rows=int(x.shape[0]), batch_size=BATCH, model="zoo:mnist-cnn")


if __name__ == "__main__":
    main()
