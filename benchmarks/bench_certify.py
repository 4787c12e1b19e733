"""Randomized-smoothing CERTIFY: throughput against the forward-pass floor, memory against n.

Throughput: CERTIFY (n0 + n noisy copies per row, streamed in batches) on the builtin
digits model, timed against the floor of bare forward passes over the very same noisy
batches, drawn beforehand and fed to the network in the same process (no noise
generation, no counting, no statistics). Target ratio <= 1.15.

Memory: one row certified with n = 1,000 / 10,000 / 100,000 in a fresh process each;
the process's peak resident memory should not grow with n (noise is streamed).
Run: ``python benchmarks/bench_certify.py --json bench-results/certify.json``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report  # noqa: E402

from advkit.certify.smoothing import Smoothed  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

ROWS, N0, N, BATCH, SIGMA = 10, 100, 10_000, 1000, 0.25

PEAK_RSS = """
import resource, sys, torch
from advkit.certify.smoothing import Smoothed
from advkit.data import load_dataset
from advkit.models import pretrained
model, data = pretrained("digits-cnn"), load_dataset("digits", split="test", limit=1)
smoothed = Smoothed(model, 0.25, batch_size=1000)
smoothed.certify(data.x[0], 100, 200, 0.001, torch.Generator().manual_seed(0))  # warm-up: allocator, kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
smoothed.certify(data.x[0], 100, int(sys.argv[1]), 0.001, torch.Generator().manual_seed(0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def peak_rss_kib(n: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(n)], check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    args = parse_args(__doc__ or "")
    model = pretrained("digits-cnn")
    data = load_dataset("digits", split="test", limit=ROWS)
    smoothed = Smoothed(model, SIGMA, batch_size=BATCH)
    network = model.network.eval()

    def certify() -> None:
        smoothed.certify_dataset(data.x, data.y, N0, N, 0.001, generator=torch.Generator().manual_seed(0))

    noisy = []  # the same rows and batch sizes CERTIFY uses, drawn beforehand
    for row in range(ROWS):
        for total in (N0, N):
            for size in [BATCH] * (total // BATCH) + ([total % BATCH] if total % BATCH else []):
                noisy.append(data.x[row].unsqueeze(0) + torch.randn((size, *data.x.shape[1:])) * SIGMA)

    def floor() -> None:
        with torch.inference_mode():
            for batch in noisy:
                network(batch).argmax(1)

    times = interleaved({"certify": certify, "floor": floor}, repeats=args.repeats)  # in turn, after a warm-up round
    cases = [
        ratio_case(
            f"certify {ROWS} rows, n0={N0}, n={N}",
            times,
            "certify",
            "floor",
            samples=ROWS * (N0 + N),
            note="floor: forward + argmax on the same number of pre-drawn noisy inputs, same batches",
        )
    ]
    memory = []
    for n in (1_000, 10_000, 100_000):
        before, after = peak_rss_kib(n)
        memory.append({"n": n, "peak_rss_mib_before": before / 1024, "peak_rss_mib_after": after / 1024, "growth_mib": (after - before) / 1024})
        print(f"n={n:>7}: peak RSS {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f} MiB over the warm-up)")
    report("certify", cases, args.json, memory=memory, batch_size=BATCH, sigma=SIGMA, model="zoo:digits-cnn")


if __name__ == "__main__":
    main()
