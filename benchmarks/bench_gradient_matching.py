"""Gradient matching (Witches' Brew): time per step against the bare passes a step must do.

A matching step differentiates the cosine between the poisons' parameter gradient and
the target gradient with respect to the poisons: one forward pass of the poison batch,
one backward pass that keeps its graph (``create_graph``) and one double backward to the
pixels. The floor is exactly those passes, ``steps`` times, on the same batch, plus the
attack's fixed work (the target gradient; the final alignment, one forward and backward),
with nothing else: no signed-Adam update, projection, schedule or bookkeeping. The attack
runs one restart of ``steps`` steps; ``ratio`` = attack time / floor time, both timed in
interleaved rounds (min and median). Cases: 1% of digits (13 poisons, digits-cnn), 1% of
MNIST 5k (37 poisons, mnist-cnn) and a 128-poison batch on digits.
Run: ``python benchmarks/bench_gradient_matching.py --json bench-results/gradient_matching.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report  # noqa: E402

from advkit.attacks.poisoning.gradient_matching import GradientMatching, parameters_of, target_gradient  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

STEPS = 40
TARGET_ROW = 0


def main() -> None:
    args = parse_args(__doc__ or "")
    if args.device == "cpu":
        torch.set_num_threads(1)  # the shared CPU: one thread, as the test suite runs
    cases = []
    for zoo, data, rate in (("digits-cnn", "digits", 0.01), ("mnist-cnn", "mnist5k", 0.01), ("digits-cnn", "digits", 0.095)):
        model = pretrained(zoo, device=args.device)
        train, test = load_dataset(data, split="train"), load_dataset(data, split="test")
        adversarial = (int(test.y[TARGET_ROW]) + 1) % model.num_classes
        attack = GradientMatching(target_row=TARGET_ROW, adversarial_class=adversarial, rate=rate, steps=STEPS, restarts=1)
        network = model.network.eval()
        params = parameters_of(network)
        rows = attack.choose_poisons(train.y, torch.Generator().manual_seed(0))
        base, labels = train.x[rows].to(args.device), train.y[rows].to(args.device)
        target = test.x[[TARGET_ROW]].to(args.device)

        def brew() -> None:
            attack(model, train.x, train.y, test.x, generator=torch.Generator().manual_seed(0))

        def floor() -> None:
            grad_t = target_gradient(network, target, adversarial)
            delta = torch.zeros_like(base)
            for _ in range(STEPS):
                d = delta.requires_grad_(True)
                grads = torch.autograd.grad(F.cross_entropy(network(base + d), labels), params, create_graph=True)
                cosine = sum((g * t).sum() for g, t in zip(grads, grad_t)) / torch.sqrt(sum(g.pow(2).sum() for g in grads))
                torch.autograd.grad(cosine, d)  # type: ignore[arg-type]
                delta = d.detach()
            torch.autograd.grad(F.cross_entropy(network(base + delta), labels), params)

        times = interleaved({"floor": floor, "brew": brew}, args.repeats)
        name = f"{zoo} {rows.numel()} poisons x {STEPS} steps"
        cases.append(ratio_case(name, times, "brew", "floor", steps=STEPS, poisons=int(rows.numel()), seconds_per_step=times["brew"]["min"] / STEPS))
        print(f"{name}: {1e3 * times['brew']['min'] / STEPS:.2f} ms/step, floor {1e3 * times['floor']['min'] / STEPS:.2f} ms/step")
    report("gradient_matching", cases, args.json, steps=STEPS, device=args.device)


if __name__ == "__main__":
    main()
