"""Shortcut audit: does it find a planted spurious mark, and spare clean models? And what it costs.

``--study acceptance``: for each dataset (digits 8x8, mnist5k 28x28), seed and victim (the
zoo architecture, and ``GapNet``, a conv-BN-ReLU network with global average pooling that
advkit never built), train one victim on the shortcut set (a bright mark on ``--share`` of
one class's train rows, labels unchanged; advkit.defenses.backdoor.shortcut_data) and one
on the same rows unmarked, with the zoo recipe (lr 2e-3; 30 epochs digits, 12 mnist5k).
The audit sees 20 held-out rows per class from the same collection (the shortcut class's
carry the mark at the same share). Recorded per victim: clean accuracy on the unmarked test
rows, the shortcut class's accuracy on its unmarked test rows (how much it needs the
mark), ``reliance`` (the share of other classes' test rows the mark sends to the shortcut
class: the ground truth of the shortcut's strength), the flags, the shortcut class's
anomaly index and region, and whether the region lies on the mark (most of its area inside
the box every jittered mark position lies in). A hit: the shortcut class flagged, nothing
else, region on the mark. Clean victims: nothing may be flagged. ``--neural-cleanse`` adds
the natural-trigger cross-check on flagged classes. The default seeds 3, 4, 5 (shortcut
classes 2, 7, 6) are not the ones (0, 1, 2; classes 3, 8, 5) the audit's constants were
chosen on.

``--study timing``: the audit on the zoo models (20 rows per class) against its floor, one
forward pass of the model over the whole occluded batch (rows x locations images, the
same batch size): occlusion is that many forwards and cannot go below them.

Run: ``python benchmarks/bench_shortcut.py --study acceptance --json bench-results/shortcut.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, interleaved, ratio_case, report  # noqa: E402

from advkit.core import ModelHandle, ModelInfo  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse  # noqa: E402
from advkit.defenses.backdoor.shortcut import ShortcutAudit, box_mask, locations  # noqa: E402
from advkit.defenses.backdoor.shortcut_data import Mark, mark_reliance, shortcut_set  # noqa: E402
from advkit.fileio import write_json  # noqa: E402
from advkit.models import build, pretrained  # noqa: E402
from advkit.models.train import TrainConfig, fit  # noqa: E402

SHORTCUT_CLASSES = (3, 8, 5, 2, 7, 6)
ZOO_ARCH = {"digits": "digits-cnn", "mnist5k": "mnist-cnn"}
EPOCHS = {"digits": 30, "mnist5k": 12}
MARKS = {"digits": Mark(size=2, jitter=1), "mnist5k": Mark(size=3, margin=1, jitter=2)}
AUDIT_PER_CLASS = 20


class GapNet(nn.Module):
    """A victim advkit never built: three conv-BN-ReLU layers (one strided), global average pooling, a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def victim(arch: str, dataset: str, x: Tensor, y: Tensor, seed: int) -> ModelHandle:
    """A victim trained with the zoo recipe on ``(x, y)``."""
    channels, height, _ = x.shape[1:]
    if arch == "gapnet":
        torch.manual_seed(seed)
        net: nn.Module = GapNet(channels, 10)
    else:
        net = build(arch, in_channels=channels, num_classes=10, image_size=height, seed=seed)
    fit(net, x, y, TrainConfig(epochs=EPOCHS[dataset], lr=2e-3, seed=seed))
    return ModelHandle(net, ModelInfo((channels, height, height), 10))


def on_mark(region: dict[str, int], box: dict[str, int], height: int, width: int) -> tuple[float, float]:
    """Share of the region's area inside the mark's box, and their IoU."""
    a, b = box_mask(region, height, width), box_mask(box, height, width)
    inter = int((a & b).sum())
    return inter / int(a.sum()), inter / int((a | b).sum())


def one_case(dataset: str, arch: str, seed: int, share: float, marked: bool, with_nc: bool) -> dict[str, Any]:
    target = SHORTCUT_CLASSES[seed % len(SHORTCUT_CLASSES)]
    data = shortcut_set(dataset, target if marked else None, share, MARKS[dataset], AUDIT_PER_CLASS, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    model = victim(arch, dataset, data.train_x, data.train_y, seed)
    train_seconds = time.perf_counter() - start
    predictions = model.predict(data.test_x)
    own = data.test_y == target
    audit = ShortcutAudit(with_neural_cleanse=False)
    result = audit(model, data.audit_x, data.audit_y)
    _, height, width = data.input_shape
    row = result.per_class[target]
    inside, iou = on_mark(row["region"], data.box, height, width)
    others = [r["anomaly_index"] for r in result.per_class if r["class"] != target and r["anomaly_index"] is not None]
    case = {
        "dataset": dataset,
        "arch": arch,
        "seed": seed,
        "marked": marked,
        "shortcut_class": target,
        "share": share,
        "clean_accuracy": float((predictions == data.test_y).float().mean()),
        "shortcut_class_accuracy_unmarked": float((predictions[own] == target).float().mean()),
        "reliance": mark_reliance(model, data, target),
        "flagged": result.flagged,
        "target_anomaly_index": row["anomaly_index"],
        "max_other_anomaly_index": max(others),
        "region": row["region"],
        "mark_box": data.box,
        "region_share_on_mark": inside,
        "region_iou": iou,
        "consistency": row["consistency"],
        "train_seconds": train_seconds,
        "audit_seconds": result.seconds,
    }
    if marked:
        case["hit"] = result.flagged == [target] and inside >= 0.5
    else:
        case["false_flags"] = len(result.flagged)
    if with_nc and result.flagged:
        nc = NeuralCleanse(epochs=30)
        checked = ShortcutAudit(with_neural_cleanse=True, neural_cleanse=nc)(model, data.audit_x, data.audit_y, generator=torch.Generator().manual_seed(seed))
        case["neural_cleanse"] = {
            "flagged": checked.cross_checks["neural-cleanse"]["flagged"],
            "classes": {r["class"]: r["neural-cleanse"] for r in checked.per_class if r["flagged"]},
        }
    return case


def acceptance(args: argparse.Namespace) -> None:
    cases = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for arch in (ZOO_ARCH[dataset], "gapnet"):
                for marked in (True, False):
                    case = one_case(dataset, arch, seed, args.share, marked, args.neural_cleanse)
                    cases.append(case)
                    verdict = f"hit={case['hit']}" if marked else f"false_flags={case['false_flags']}"
                    print(
                        f"{dataset:8s} {arch:10s} seed {seed} {'marked' if marked else 'clean '} class {case['shortcut_class']} "
                        f"reliance {case['reliance']:.3f} class-acc-unmarked {case['shortcut_class_accuracy_unmarked']:.3f} "
                        f"flagged {case['flagged']} index {case['target_anomaly_index']:.2f} (others <= {case['max_other_anomaly_index']:.2f}) "
                        f"region {case['region']} on-mark {case['region_share_on_mark']:.2f} {verdict}",
                        flush=True,
                    )
                    if args.json is not None:
                        write_json(args.json, {"benchmark": "shortcut", "study": "acceptance", "cases": cases, "environment": environment()})
    marked = [c for c in cases if c["marked"]]
    clean = [c for c in cases if not c["marked"]]
    summary = {
        "hits": sum(c["hit"] for c in marked),
        "marked_victims": len(marked),
        "clean_victims_with_flags": sum(c["false_flags"] > 0 for c in clean),
        "clean_victims": len(clean),
        "max_clean_anomaly_index": max(c["max_other_anomaly_index"] for c in clean),
    }
    print(summary)
    if args.json is not None:
        write_json(args.json, {"benchmark": "shortcut", "study": "acceptance", "summary": summary, "cases": cases, "environment": environment()})


def timing(args: argparse.Namespace) -> None:
    cases = []
    for zoo, dataset in (("digits-cnn", "digits"), ("mnist-cnn", "mnist5k")):
        model = pretrained(zoo)
        test = load_dataset(dataset, split="test")
        rows = torch.cat([(test.y == c).nonzero().squeeze(1)[:AUDIT_PER_CLASS] for c in range(10)])
        x, y = test.x[rows], test.y[rows]
        audit = ShortcutAudit()
        _, height, width = model.input_shape
        patch, stride = audit.geometry(height, width)
        count = len(locations(height, width, patch, stride))
        occluded = x.repeat(count, 1, 1, 1)

        def run() -> None:
            audit(model, x, y)

        def floor() -> None:
            model.predict_logits(occluded, audit.batch_size)

        times = interleaved({"audit": run, "floor": floor}, args.repeats)
        cases.append(ratio_case(f"{zoo} {x.shape[0]} rows x {count} locations", times, "audit", "floor", forwards=x.shape[0] * count))
    report("shortcut", cases, args.json, study="timing", floor="one forward pass over rows x locations occluded images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", choices=("acceptance", "timing"), default="acceptance")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[3, 4, 5])
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["digits", "mnist5k"])
    parser.add_argument("--share", type=float, default=1.0, help="share of the shortcut class's rows that carry the mark")
    parser.add_argument("--neural-cleanse", action="store_true", help="cross-check flagged classes with Neural Cleanse (30 epochs)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    acceptance(args) if args.study == "acceptance" else timing(args)


if __name__ == "__main__":
    main()
