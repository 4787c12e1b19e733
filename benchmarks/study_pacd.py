"""PACD study: certified robustness of victims trained on clean vs PACD-poisoned data.

For each certified-training method (Gaussian augmentation, SmoothAdv, MACER) the
attacker crafts PACD poisons against a surrogate of the victim's architecture trained
with that method (its own seed: the victim's weights stay unknown). Every victim is then
trained from scratch, with its own seed, on clean data and on each poison set, and
certified (Cohen et al. CERTIFY) on the target class's held-out test rows: the
diagonal of the matrix is the attack as designed, the rest is transfer across methods,
and an extra column trains a different architecture (``--transfer-arch``).

The attacker's validation rows are the target class in the first half of the test
split; victims are certified on the target class in the second half, which the attack
never sees. Run: ``python benchmarks/study_pacd.py --json pacd.json`` (16 minutes measured
on 2 CPU cores for digits: crafting against SmoothAdv and MACER differentiates their noisy
objectives twice per step, and MACER victims train on 16 noise draws per row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from advkit.attacks.poisoning import PACD
from advkit.certify.smoothing import Smoothed
from advkit.certify.training import certified_objective
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.engine import make_executor
from advkit.fileio import write_json
from advkit.models import TrainConfig, build, fit

ARCH = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}


def train_victim(arch: str, method: str, x: torch.Tensor, y: torch.Tensor, sigma: float, epochs: int, seed: int) -> ModelHandle:
    net = build(arch, in_channels=x.shape[1], num_classes=10, image_size=x.shape[-1], seed=seed)
    objective = certified_objective(method, sigma, rows=x.shape[0], epochs=epochs)
    fit(net, x, y, TrainConfig(epochs=epochs, lr=2e-3, seed=seed), objective)
    return ModelHandle(net, ModelInfo(tuple(x.shape[1:]), 10, arch=arch))  # type: ignore[arg-type]


def certify(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, sigma: float, n: int) -> dict[str, Any]:
    result = Smoothed(model, sigma).certify_dataset(x, y, n0=100, n=n, alpha=0.001, generator=torch.Generator().manual_seed(0))
    return {"acr": result.acr, "certified_accuracy": result.to_dict((0.0, 0.25, 0.5, 0.75))["certified_accuracy"]}


def craft(method: str, train_set: Any, validation: tuple[torch.Tensor, torch.Tensor], args: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """PACD poisons against a surrogate trained with ``method`` (one executor shard)."""
    start = time.perf_counter()
    x_val, y_val = validation
    surrogate = build(ARCH[args["data"]], in_channels=train_set.x.shape[1], num_classes=10, image_size=train_set.x.shape[-1], seed=1000)
    attack = PACD(target=args["target"], eps=args["eps"], method=method, sigma=args["sigma"], outer_steps=args["outer_steps"])
    poisoned = attack(surrogate, train_set.x, train_set.y, x_val, y_val, generator=torch.Generator().manual_seed(args["seed"]))
    return poisoned.x, {**poisoned.params, "seconds": time.perf_counter() - start, "poisoned_rows": len(poisoned.rows), "rate": poisoned.rate}


def matrix_cell(cell: tuple[str, str, str, Any], labels: tuple[torch.Tensor, ...], args: dict[str, Any]) -> dict[str, Any]:
    """Train one victim on one training set and certify it (one executor shard)."""
    victim_arch, victim_method, source, x_train = cell
    y_train, x_eval, y_eval, x_test, y_test = labels
    start = time.perf_counter()
    model = train_victim(victim_arch, victim_method, x_train, y_train, args["sigma"], args["epochs"], seed=args["seed"] + 7)
    return {
        "victim_arch": victim_arch,
        "victim_method": victim_method,
        "poisons_from": source,
        "target_class": certify(model, x_eval, y_eval, args["sigma"], args["n"]),
        "clean_accuracy": float((model.predict(x_test) == y_test).float().mean()),
        "seconds": time.perf_counter() - start,
    }


def study(args: argparse.Namespace) -> dict[str, Any]:
    train_set, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    half = test.x.shape[0] // 2
    x_val, y_val = test.x[:half], test.y[:half]
    held_out = test.y[half:] == args.target
    x_eval, y_eval = test.x[half:][held_out], test.y[half:][held_out]
    arch = ARCH[args.data]
    methods = args.methods.split(",")
    victims = [(arch, m) for m in methods] + ([(args.transfer_arch, methods[0])] if args.transfer_arch else [])
    sources = {victim: ["clean", *methods] for victim in victims}
    if args.transfer_arch:  # the other architecture: clean vs the poisons made for its training method
        sources[(args.transfer_arch, methods[0])] = ["clean", methods[0]]
    # Crafting (one shard per method) and the matrix (one shard per cell) go through the
    # Executor: every shard seeds itself, so the numbers are the same on one worker or many.
    with make_executor(args.executor, address=args.address, workers=args.workers) as executor:
        train_ref, val_ref = executor.put(train_set), executor.put((x_val, y_val))
        crafted = executor.map(craft, methods, train_ref, val_ref, vars(args), label="craft")
        poisons: dict[str, torch.Tensor] = {"clean": train_set.x}
        crafting: dict[str, Any] = {}
        for method, (x_poisoned, info) in zip(methods, crafted, strict=True):
            poisons[method] = x_poisoned
            crafting[method] = info
            print(f"crafted against {method}: {info}", flush=True)
        cells = [(victim_arch, victim_method, source) for victim_arch, victim_method in victims for source in sources[(victim_arch, victim_method)]]
        shards = [executor.put((a, m, s, poisons[s])) for a, m, s in cells]  # a cell travels with its training images
        labels = executor.put((train_set.y, x_eval, y_eval, test.x[half:], test.y[half:]))
        matrix = executor.map(matrix_cell, shards, labels, vars(args), label="cell")
    for row in matrix:
        print(row, flush=True)
    for row in matrix:
        base = next(r for r in matrix if r["victim_arch"] == row["victim_arch"] and r["victim_method"] == row["victim_method"] and r["poisons_from"] == "clean")
        clean_acr = base["target_class"]["acr"]
        row["acr_drop"] = 1.0 - row["target_class"]["acr"] / clean_acr if clean_acr > 0 else None
    return {"study": "pacd", "data": args.data, "target": args.target, "eps": args.eps, "sigma": args.sigma, "crafting": crafting, "matrix": matrix}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", choices=sorted(ARCH), default="digits")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--methods", default="gaussian,smoothadv,macer")
    parser.add_argument("--transfer-arch", default="resnet8")
    parser.add_argument("--outer-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="run crafting and the matrix cells on Ray")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    result = study(args)
    print(f"{'victim':<24} {'poisons':<10} {'ACR':>6} {'drop':>6}")
    for row in result["matrix"]:
        drop = "" if row["acr_drop"] is None else f"{row['acr_drop']:.0%}"
        print(f"{row['victim_arch'] + '/' + row['victim_method']:<24} {row['poisons_from']:<10} {row['target_class']['acr']:6.3f} {drop:>6}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
