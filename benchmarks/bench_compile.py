"""Does ``torch.compile`` pay for itself on the attacks' inner loop? (It is not used where it does not.)

The inner loop of every gradient attack is one forward+backward pass for the input
gradient. This times that pass eager (advkit's channels-last CPU layout) and compiled
(``torch.compile``, inductor), on 500 rows of each zoo model, and reports the compile
time and after how many steps it would pay back. On this project's 2-core CPU the
compiled pass was slower than the eager one (mnist-cnn 481 vs 282 ms, digits-cnn 52 vs
33 ms, 31 s and 7.5 s to compile), so advkit does not compile; rerun it on a GPU with
``--device cuda``.
Run: ``python benchmarks/bench_compile.py --json bench-results/compile.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report, timed  # noqa: E402

from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402


def main() -> None:
    args = parse_args(__doc__ or "")
    cases: list[dict[str, Any]] = []
    for zoo, data in (("mnist-cnn", "mnist5k"), ("digits-cnn", "digits")):
        model = pretrained(zoo, device=args.device)
        network = model.network.eval()
        for p in network.parameters():
            p.requires_grad_(False)
        x = model.to_device(load_dataset(data, "test", limit=500).x)
        y = torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)

        def step(forward: Any) -> None:
            x_in = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(forward(x_in), y, reduction="sum"), x_in)

        compiled = torch.compile(network)
        _, compile_seconds = timed(lambda: step(compiled))
        times = interleaved({"eager": lambda: step(network), "compiled": lambda: step(compiled)}, repeats=args.repeats)
        saved = times["eager"]["min"] - times["compiled"]["min"]
        payback = compile_seconds / saved if saved > 0 else None
        cases.append(ratio_case(f"{zoo} compiled fwd+bwd (500 rows)", times, "compiled", "eager", compile_seconds=compile_seconds, payback_steps=payback))
        print(f"{zoo}: compile {compile_seconds:.1f}s, " + (f"pays back after {payback:.0f} steps" if payback else "never pays back (slower than eager)"))
    report("compile", cases, args.json, note="floor: the same pass eager; ratio > 1 means compiling is slower")


if __name__ == "__main__":
    main()
