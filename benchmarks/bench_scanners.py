"""Poisoned-data scanners: their cost against one forward pass, and the F1 study.

Default (timing): activation clustering, spectral signatures and the STRIP scan (the
paper's 100 blends per row) on ``--rows`` rows of a 10% BadNets training set, with the
zoo's digits-cnn and mnist-cnn. The floor is ONE bare forward pass of the model over
the same rows (inference mode, batches of 512), timed in the same interleaved rounds;
``ratio`` = scanner seconds / floor seconds. A representation scanner costs one forward
pass plus its per-class algebra; STRIP costs ``replicas`` forward passes and more.

``--study f1``: on 10% BadNets sets (3x3 checkerboard patch, bottom right) of digits and
mnist5k, targets 0 and 7, each a victim trained from scratch on the poisoned rows, of
two architectures: advkit's CNN for the data (digits-cnn 30 epochs, mnist-cnn 4) and
``ConvBNNet``, one advkit never built (conv-BN-ReLU, max-pool, conv-BN-ReLU, adaptive
average pool, one linear layer; 10 and 6 epochs). Per victim: clean accuracy and
backdoor success on the test split, then precision / recall / F1 and seconds of

- ``activation-clustering`` (default: PCA to 10, 2-means, the cross-class mix test),
- ``activation-clustering/size`` (the paper's relative size + silhouette analysis,
  ART's thresholds 0.35 and 0.10),
- ``spectral-signatures`` (default: classes judged by the mix test, the poisoned
  share measured),
- ``spectral-signatures/paper`` (every class, ``expected_rate=0.1``, 1.5x),
- ``strip`` (the scan: ``--strip-replicas`` images laid over each row, the authors' sum,
  clipped; threshold from the rows), and with ``--strip-blend`` ``strip/blend`` (the
  0.5/0.5 blend, which doubles the study's time: STRIP is most of it),
- and ART's ``ActivationDefence`` and ``SpectralSignatureDefense`` at their defaults
  when ``import art`` works (skipped otherwise).

    python benchmarks/bench_scanners.py [--rows 600] [--json out.json]
    python benchmarks/bench_scanners.py --study f1 [--data digits] [--strip-blend] [--json f1.json]

The study takes about 5 minutes on one free core (STRIP on mnist5k is most of it;
``--data digits`` alone about one minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved, ratio_case, report  # noqa: E402

from advkit.attacks.poisoning.backdoor import BadNets, PatchTrigger, backdoor_success_rate  # noqa: E402
from advkit.core import ModelHandle, ModelInfo  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.defenses.data.activation_clustering import ActivationClustering  # noqa: E402
from advkit.defenses.data.scanning import score_against  # noqa: E402
from advkit.defenses.data.spectral import SpectralSignatures  # noqa: E402
from advkit.defenses.data.strip import StripScan  # noqa: E402
from advkit.fileio import write_json  # noqa: E402
from advkit.models import TrainConfig, build, fit, pretrained  # noqa: E402

ZOO_ARCH = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}
EPOCHS = {("digits", "zoo"): 30, ("digits", "convbn"): 10, ("mnist5k", "zoo"): 4, ("mnist5k", "convbn"): 6}
TARGETS = (0, 7)


class ConvBNNet(nn.Module):
    """conv-BN-ReLU, max-pool, conv-BN-ReLU, adaptive average pool, one linear layer."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["f1"], default=None, help="run the F1 study instead of the timing")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds after one warm-up round (timing)")
    parser.add_argument("--rows", type=int, default=600, help="training rows scanned in the timing")
    parser.add_argument("--data", default="digits,mnist5k", help="datasets, comma separated")
    parser.add_argument("--strip-replicas", type=int, default=100, help="STRIP images laid over each row (the paper's 100)")
    parser.add_argument("--strip-blend", action="store_true", help="also run STRIP with the 0.5/0.5 blend")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args()


def poisoned_set(data: str, target: int) -> Any:
    train = load_dataset(data, "train")
    return BadNets(target=target, rate=0.1)(train.x, train.y, num_classes=10, generator=torch.Generator().manual_seed(0))


def timing(args: argparse.Namespace) -> None:
    cases = []
    for data in args.data.split(","):
        model = pretrained(ZOO_ARCH[data])
        poisoned = poisoned_set(data, 0)
        x, y = poisoned.x[: args.rows], poisoned.y[: args.rows]
        network = model.network.eval()
        scanners = {
            "activation-clustering": ActivationClustering(),
            "spectral-signatures": SpectralSignatures(),
            "strip": StripScan(replicas=args.strip_replicas),
        }

        def floor() -> None:
            with torch.inference_mode():
                for first in range(0, x.shape[0], 512):
                    network(x[first : first + 512])

        runs = {"floor": floor, **{name: (lambda s=s: s(model, x, y)) for name, s in scanners.items()}}
        times = interleaved(runs, args.repeats)
        for name in scanners:
            cases.append(ratio_case(f"{ZOO_ARCH[data]} {name} ({x.shape[0]} rows)", times, name, "floor", rows=int(x.shape[0])))
    report("scanners", cases, args.json, strip_replicas=args.strip_replicas)


def victim(data: str, arch: str, poisoned: Any) -> ModelHandle:
    size = poisoned.x.shape[-1]
    torch.manual_seed(0)
    net = build(ZOO_ARCH[data], in_channels=1, num_classes=10, image_size=size, seed=0) if arch == "zoo" else ConvBNNet()
    model = ModelHandle(net, ModelInfo((1, size, size), 10))
    fit(model.network, poisoned.x, poisoned.y, TrainConfig(epochs=EPOCHS[(data, arch)], lr=2e-3, seed=0))
    return model


def art_scores(model: ModelHandle, x: torch.Tensor, y: torch.Tensor, truth: list[int]) -> dict[str, Any]:
    """ART's activation clustering and spectral signatures at their defaults (when installed)."""
    try:
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return {"art": "not installed (skipped)"}
    out: dict[str, Any] = {}
    classifier = PyTorchClassifier(
        model=model.network.eval(), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0)
    )
    x_np, y_np = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]
    for name, make in (("art-activation", ActivationDefence), ("art-spectral", SpectralSignatureDefense)):
        start = time.perf_counter()
        try:
            _, is_clean = make(classifier, x_np, y_np).detect_poison()
            flagged = [int(i) for i in np.flatnonzero(np.asarray(is_clean) == 0)]
            out[name] = {**score_against(flagged, truth, x.shape[0]), "seconds": time.perf_counter() - start, "flagged": len(flagged)}
        except Exception as error:  # an ART version whose API differs: record it, keep the study going
            out[name] = {"error": f"{type(error).__name__}: {error}"}
    return out


def study(args: argparse.Namespace) -> None:
    scanners = {
        "activation-clustering": ActivationClustering(),
        "activation-clustering/size": ActivationClustering(analysis="size"),
        "spectral-signatures": SpectralSignatures(),
        "spectral-signatures/paper": SpectralSignatures(classes="all", expected_rate=0.1),
        "strip": StripScan(replicas=args.strip_replicas),
    }
    if args.strip_blend:
        scanners["strip/blend"] = StripScan(replicas=args.strip_replicas, superimpose="blend")
    cases: list[dict[str, Any]] = []
    start = time.perf_counter()
    for data in args.data.split(","):
        test = load_dataset(data, "test")
        for arch in ("zoo", "convbn"):
            for target in TARGETS:
                poisoned = poisoned_set(data, target)
                began = time.perf_counter()
                model = victim(data, arch, poisoned)
                case: dict[str, Any] = {
                    "data": data,
                    "arch": ZOO_ARCH[data] if arch == "zoo" else "ConvBNNet (not built by advkit)",
                    "target": target,
                    "poisoned_rows": len(poisoned.rows),
                    "target_class_rows": int((poisoned.y == target).sum()),
                    "train_seconds": time.perf_counter() - began,
                    "clean_accuracy": float((model.predict(test.x) == test.y).float().mean()),
                    "backdoor_success": backdoor_success_rate(model, test.x, test.y, PatchTrigger(), target),
                    "scanners": {},
                }
                for name, scanner in scanners.items():
                    result = scanner(model, poisoned.x, poisoned.y)
                    case["scanners"][name] = {**result.score(poisoned.rows), "seconds": result.seconds, "flagged": len(result.flagged_rows)}
                case["scanners"].update(art_scores(model, poisoned.x, poisoned.y, poisoned.rows))
                cases.append(case)
                line = "  ".join(f"{n} {_f1(r)}" for n, r in case["scanners"].items())
                print(f"{data:8s} {case['arch'][:12]:12s} t{target}  acc {case['clean_accuracy']:.3f}  asr {case['backdoor_success']:.3f}  {line}", flush=True)
    summary = {}
    for name in cases[0]["scanners"]:
        f1s = [c["scanners"][name].get("f1") for c in cases if isinstance(c["scanners"].get(name), dict)]
        f1s = [f for f in f1s if f is not None]
        if f1s:
            summary[name] = {"min_f1": min(f1s), "mean_f1": statistics.mean(f1s), "cases": len(f1s)}
            print(f"{name:28s} F1 min {min(f1s):.3f}  mean {statistics.mean(f1s):.3f}")
    total = time.perf_counter() - start
    print(f"study: {len(cases)} victims in {total:.0f}s")
    if args.json is not None:
        write_json(args.json, {"benchmark": "scanners-f1", "cases": cases, "summary": summary, "seconds": total,
                               "strip_replicas": args.strip_replicas, "environment": environment()})
        print(f"wrote {args.json}")


def _f1(row: Any) -> str:
    return f"{row['f1']:.2f}" if isinstance(row, dict) and row.get("f1") is not None else "-"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    study(args) if args.study == "f1" else timing(args)


if __name__ == "__main__":
    main()
