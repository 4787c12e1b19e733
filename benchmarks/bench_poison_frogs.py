"""Poison Frogs (Shafahi et al., NeurIPS 2018): crafting speed, and the two success studies.

Default (timing): poisons per second of :func:`feature_collision` on mnist-cnn for a batch
of P poisons and S steps, against the floor: a bare loop of the same S forward + backward
passes of the feature extractor alone (the network without its last layer, input
gradient only, a plain gradient step), timed in interleaved rounds. Ratio = our seconds /
floor seconds (= floor poisons/s / our poisons/s); wanted <= 1.2.

``--study transfer``: one-shot kills on mnist5k. Targets are seeded random test rows the
clean model classifies correctly, each with a random other base class; one poison per
target (all crafted in one batch); the victim's last layer is retrained on clean train +
the poison (warm start, L-BFGS to convergence). Reports the success rate, the feature
distances, the perturbation sizes, and the control (the unperturbed base appended instead).

``--study end-to-end``: success against the number of poisons (1, 5, 10, 25, 50) with the
watermark (opacity 0.3), the whole network fine-tuned (3 epochs, SGD lr 0.01) on clean +
poisons, over ``--targets`` targets; a control row fine-tunes on the 50 watermarked bases
without the feature-collision optimisation. Writes a table, ``--png`` and ``--json``.

    python benchmarks/bench_poison_frogs.py [--json out.json]
    python benchmarks/bench_poison_frogs.py --study transfer --targets 20 --json t.json
    python benchmarks/bench_poison_frogs.py --study end-to-end --targets 5 --png e2e.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved, ratio_case, report  # noqa: E402

from advkit.attacks.poisoning.poison_frogs import PenultimateFeatures, PoisonFrogs, feature_collision, scaled_beta  # noqa: E402
from advkit.attacks.poisoning.poison_frogs_eval import poison_success  # noqa: E402
from advkit.core import PoisonedData  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.fileio import write_json  # noqa: E402
from advkit.models import pretrained  # noqa: E402

COUNTS = (1, 5, 10, 25, 50)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--study", choices=("timing", "transfer", "end-to-end"), default="timing")
    parser.add_argument("--targets", type=int, default=None, help="target images (transfer: 20, end-to-end: 5)")
    parser.add_argument("--steps", type=int, default=None, help="collision steps (timing: 200, studies: 1000)")
    parser.add_argument("--beta", type=float, default=None, help="override the paper's scaled beta")
    parser.add_argument("--watermark", type=float, default=0.3, help="end-to-end watermark opacity")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end fine-tuning epochs")
    parser.add_argument("--png", type=Path, default=None, help="end-to-end: plot of success against poisons")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def bare_extractor(network: nn.Module) -> nn.Module:
    """mnist-cnn without its last layer: the feature extractor the floor runs."""
    net = network.net
    return nn.Sequential(net.features, *list(net.classifier)[:-1]).eval()


def timing(args: argparse.Namespace) -> None:
    handle = pretrained("mnist-cnn")
    train = load_dataset("mnist5k", split="train")
    test = load_dataset("mnist5k", split="test")
    steps = args.steps or 200
    extractor = bare_extractor(handle.network)
    channels_last = handle.network.channels_last
    cases = []
    for batch in (1, 10, 50):
        bases = train.x[:batch].clone()
        with torch.no_grad():
            targets = PenultimateFeatures(handle.network)(test.x[:batch])
        beta = scaled_beta(targets.shape[1], bases[0].numel())

        def ours(bases=bases, targets=targets, beta=beta) -> None:
            feature_collision(handle.network, bases, targets, beta=beta, steps=steps, tol=0.0)

        def floor(bases=bases, targets=targets) -> None:
            x = bases.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                loss = (extractor(inp) - targets).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, x)
                x = (x.detach() - 1e-3 * grad).clamp_(0.0, 1.0)

        times = interleaved({"ours": ours, "floor": floor}, repeats=args.repeats)
        case = ratio_case(f"collision mnist-cnn P={batch} S={steps}", times, "ours", "floor", batch=batch, steps=steps)
        case["poisons_per_second"] = batch / case["seconds"]
        case["floor_poisons_per_second"] = batch / case["floor_seconds"]
        cases.append(case)
    report("poison_frogs", cases, args.json)


def pick_pairs(handle: Any, test: Any, count: int, seed: int) -> list[tuple[int, int]]:
    """Seeded random test rows the clean model classifies correctly, each with a random other class."""
    gen = torch.Generator().manual_seed(seed)
    correct = (handle.predict(test.x).cpu() == test.y).nonzero().squeeze(1)
    rows = correct[torch.randperm(correct.numel(), generator=gen)[:count]]
    shift = torch.randint(1, test.num_classes, (count,), generator=gen)
    return [(int(r), int((test.y[r] + s) % test.num_classes)) for r, s in zip(rows, shift)]


def with_rows(data: PoisonedData, x_extra: torch.Tensor, count: int) -> PoisonedData:
    """The clean rows of ``data`` + the first ``count`` rows of ``x_extra`` (labelled as its poisons)."""
    first = int(data.params["first_poison_row"])
    x = torch.cat([data.x[:first], x_extra[:count]])
    y = torch.cat([data.y[:first], data.y[first : first + count]])
    mask = torch.arange(x.shape[0]) >= first
    return PoisonedData(x, y, mask, y.clone(), data.attack, data.target, {**data.params, "poisons": count})


def transfer_study(args: argparse.Namespace) -> None:
    handle = pretrained("mnist-cnn")
    train, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
    pairs = pick_pairs(handle, test, args.targets or 20, args.seed)
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1], beta=args.beta, steps=args.steps or 1000)
    start = time.perf_counter()
    results = attack.craft_many(handle, train.x, train.y, test.x, test.y, pairs)
    craft_seconds = time.perf_counter() - start
    rows = []
    for (target, base_class), data in zip(pairs, results):
        outcome = poison_success(handle, data, test.x[target])
        bases = train.x[data.params["base_rows"]]
        control = poison_success(handle, with_rows(data, bases, 1), test.x[target])
        rows.append({"target_row": target, "target_class": data.params["target_class"], "base_class": base_class,
                     "start_feature_distance": data.params["start_feature_distance"][0],
                     "feature_distance": data.params["feature_distance"][0], "linf": data.params["max_perturbation"],
                     "l2": data.params["mean_l2_perturbation"], "success": outcome.success, "control_success": control.success,
                     "base_probability": outcome.base_probability, "clean_accuracy": outcome.clean_accuracy})
        print(f"target {target:4d} ({data.params['target_class']} -> {base_class}): feature distance "
              f"{rows[-1]['start_feature_distance']:.1f} -> {rows[-1]['feature_distance']:.2f}, L2 {rows[-1]['l2']:.2f}, "
              f"success {outcome.success} (p_base {outcome.base_probability:.2f}), control {control.success}", flush=True)
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    summary = {"pairs": len(rows), "success_rate": mean("success"), "control_success_rate": mean("control_success"),
               "mean_start_feature_distance": mean("start_feature_distance"), "mean_feature_distance": mean("feature_distance"),
               "mean_l2": mean("l2"), "mean_linf": mean("linf"), "beta": results[0].params["beta"],
               "steps": attack.steps, "craft_seconds": craft_seconds}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if args.json is not None:
        write_json(args.json, {"benchmark": "poison_frogs_transfer", "summary": summary, "pairs": rows, "environment": environment()})


def end_to_end_study(args: argparse.Namespace) -> None:
    handle = pretrained("mnist-cnn")
    train, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
    pairs = pick_pairs(handle, test, args.targets or 5, args.seed)
    attack = PoisonFrogs(target=pairs[0][0], base_class=pairs[0][1], poisons=max(COUNTS), watermark=args.watermark,
                         beta=args.beta, steps=args.steps or 1000)
    results = attack.craft_many(handle, train.x, train.y, test.x, test.y, pairs)
    table: dict[str, list[bool]] = {str(n): [] for n in COUNTS}
    table["control"] = []
    for (target, _), data in zip(pairs, results):
        first = int(data.params["first_poison_row"])
        poisons = data.x[first:]
        marked = attack.watermark * test.x[target] + (1 - attack.watermark) * train.x[data.params["base_rows"]]
        for n in COUNTS:
            outcome = poison_success(handle, with_rows(data, poisons, n), test.x[target], setting="end-to-end", epochs=args.epochs)
            table[str(n)].append(outcome.success)
            print(f"target {target:4d}: {n:2d} poisons -> {outcome.target_prediction} (p_base {outcome.base_probability:.2f})", flush=True)
        control = poison_success(handle, with_rows(data, marked, max(COUNTS)), test.x[target], setting="end-to-end", epochs=args.epochs)
        table["control"].append(control.success)
    rates = {k: sum(v) / len(v) for k, v in table.items()}
    print(f"{'poisons':>8} | success over {len(pairs)} targets (watermark {attack.watermark})")
    for key, rate in rates.items():
        print(f"{key:>8} | {rate:.2f}")
    if args.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(COUNTS, [rates[str(n)] for n in COUNTS], "o-", label=f"poison frogs (watermark {attack.watermark})")
        ax.axhline(rates["control"], color="gray", ls="--", label="50 watermarked bases, no collision")
        ax.set(xlabel="poisons", ylabel="attack success rate", ylim=(-0.05, 1.05), title=f"mnist-cnn end to end, {len(pairs)} targets")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")
    if args.json is not None:
        write_json(args.json, {"benchmark": "poison_frogs_end_to_end", "rates": rates, "outcomes": table, "pairs": pairs,
                               "watermark": attack.watermark, "epochs": args.epochs, "environment": environment()})


def main() -> None:
    torch.set_num_threads(1)
    args = parse()
    {"timing": timing, "transfer": transfer_study, "end-to-end": end_to_end_study}[args.study](args)


if __name__ == "__main__":
    main()
