"""Acceptance study for backdoors: BadNets over 5 seeds, Neural Cleanse both ways, repairs.

For each seed (its own trigger corner and target class): train a model on BadNets-
poisoned data (3x3 patch, 10%) and a clean model; record clean accuracy and attack
success; run Neural Cleanse on held-out clean rows of both; repair the backdoored model
with unlearning and pruning (defender's half of the test split) and measure the real
trigger's success and clean accuracy on the other half; fit the input filter on the
defender's half and count the triggered and clean held-out rows it flags.
Run: ``python benchmarks/study_neural_cleanse.py --data digits --json study.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from advkit.attacks.poisoning import BadNets, PatchTrigger, backdoor_success_rate
from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.mitigation import (
    NeuronPruning,
    TriggerInputFilter,
    Unlearning,
)
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse
from advkit.engine import make_executor
from advkit.fileio import write_json
from advkit.models import TrainConfig, build, fit
from advkit.models.zoo import ZOO

PLANS = [("bottom-right", 4), ("top-left", 7), ("top-right", 2), ("bottom-left", 9), ("bottom-right", 0)]
SETTINGS = {"digits": {"zoo": "digits-cnn", "rows": 450, "epochs": 60}, "mnist5k": {"zoo": "mnist-cnn", "rows": 400, "epochs": 30}}


def train(zoo: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> ModelHandle:
    recipe = ZOO[zoo]
    net = build(recipe.arch, in_channels=1, num_classes=10, image_size=x.shape[-1], seed=seed)
    handle = ModelHandle(net, ModelInfo(tuple(x.shape[1:]), 10, arch=recipe.arch))  # type: ignore[arg-type]
    fit(handle.network, x, y, TrainConfig(epochs=recipe.epochs, lr=recipe.lr, seed=seed))
    return handle


def accuracy(model: ModelHandle, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def study(data: str, seeds: int = 5, repairs: bool = True, executor: Any = None) -> list[dict[str, Any]]:
    """One row of figures per seed; each seed is one shard of the Executor (local by default)."""
    setting = SETTINGS[data]
    train_set, test = load_dataset(data, "train"), load_dataset(data, "test")
    with executor if executor is not None else make_executor("local") as ex:
        rows = ex.map(one_seed, list(enumerate(PLANS[:seeds])), ex.put((train_set, test)), setting, repairs, label="seed")
    for row in rows:
        print(row, flush=True)
    return rows


def one_seed(plan: tuple[int, tuple[str, int]], splits: tuple[Any, Any], setting: dict[str, Any], repairs: bool) -> dict[str, Any]:
    """Plant BadNets with the seed's corner and target, train, scan both ways, repair."""
    seed, (position, target) = plan
    train_set, test = splits
    x_nc, y_nc = test.x[: setting["rows"]], test.y[: setting["rows"]]
    half = test.x.shape[0] // 2
    xd, yd, xe, ye = test.x[:half], test.y[:half], test.x[half:], test.y[half:]
    attack = BadNets(PatchTrigger(size=3, position=position), target=target, rate=0.1)
    poisoned = attack(train_set.x, train_set.y, num_classes=10, generator=torch.Generator().manual_seed(seed))
    backdoored = train(setting["zoo"], poisoned.x, poisoned.y, seed)
    clean = train(setting["zoo"], train_set.x, train_set.y, seed)
    detector = NeuralCleanse(epochs=setting["epochs"])
    start = time.perf_counter()
    found = detector(backdoored, x_nc, y_nc, generator=torch.Generator().manual_seed(seed))
    nc_seconds = time.perf_counter() - start
    spared = detector(clean, x_nc, y_nc, generator=torch.Generator().manual_seed(seed))
    row: dict[str, Any] = {
        "seed": seed,
        "position": position,
        "target": target,
        "clean_model_accuracy": accuracy(clean, test.x, test.y),
        "backdoored_accuracy": accuracy(backdoored, test.x, test.y),
        "attack_success_rate": backdoor_success_rate(backdoored, test.x, test.y, attack.trigger, target),
        "nc_flagged": found.flagged_ids,
        "nc_target_anomaly_index": float(found.details["anomaly_index"][target]),
        "nc_flags_target": found.flagged_ids == [target],
        "nc_seconds": nc_seconds,
        "nc_clean_flagged": spared.flagged_ids,
    }
    if repairs:
        trigger = NeuralCleanse(epochs=setting["epochs"])(backdoored, xd, yd).details["triggers"][target]

        def real_asr(model: ModelHandle) -> float:
            return backdoor_success_rate(model, xe, ye, attack.trigger, target)

        for mitigation in (Unlearning(), NeuronPruning()):
            result = mitigation(backdoored, trigger, xd, yd, evaluate=real_asr)
            row[result.name] = {
                "asr_before": result.asr_before,
                "asr_after": result.asr_after,
                "clean_before": accuracy(backdoored, xe, ye),
                "clean_after": accuracy(result.model, xe, ye),
                **{k: v for k, v in result.details.items() if k in ("pruned_neurons", "of_neurons", "layer")},
            }
        detector = TriggerInputFilter().fit(backdoored, trigger, xd, yd)
        row["nc-filter"] = {
            "triggered_flagged": float(detector(backdoored, attack.trigger.apply(xe[ye != target])).flagged.float().mean()),
            "clean_flagged": float(detector(backdoored, xe).flagged.float().mean()),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", choices=sorted(SETTINGS), default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="one seed per task on Ray")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    rows = study(args.data, args.seeds, executor=make_executor(args.executor, address=args.address, workers=args.workers))
    flagged = sum(r["nc_flags_target"] for r in rows)
    spared = sum(r["nc_clean_flagged"] == [] for r in rows)
    print(f"{args.data}: NC flags the target on {flagged}/{len(rows)} backdoored models, nothing on {spared}/{len(rows)} clean ones")
    if args.json:
        write_json(args.json, {"study": "neural_cleanse", "data": args.data, "rows": rows, "flagged": flagged, "spared": spared})


if __name__ == "__main__":
    main()
