"""MagNet (Meng & Chen, CCS 2017): the acceptance study on mnist5k and the detection cost.

``--study acceptance``: MagNet with its defaults (the paper's MNIST autoencoders, the
union of both reconstruction-error detectors and both Jensen-Shannon detectors at
T = 10, 40) trained on the 3,750 mnist5k training rows, its thresholds calibrated for 5%
false positives in all on the first 500 test rows (rows neither the zoo classifier nor
the autoencoders trained on), and judged on the other 750 test rows against the zoo
``mnist-cnn``: FGSM eps 0.3 and PGD eps 0.1 (Linf, 20 steps), each oblivious, adaptive
(BPDA), adaptive with the reformer's exact gradient, and detector-aware adaptive
(:func:`advkit.defenses.input.pipeline.attack_defended`). Acceptance: clean
false-positive rate near 5%, oblivious detection >= 90% for both attacks.

``--study timing`` (default): ``defense.detect`` over the same rows against one bare
classifier forward pass over them (``predict_logits``), and the defended model's
reform-then-classify pass against the same floor; interleaved rounds, min and median.
Timing does not depend on how well the autoencoders are trained: they train 50 steps.

Run: ``python benchmarks/bench_magnet.py --study acceptance --json bench-results/magnet.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, interleaved, ratio_case, report  # noqa: E402

from advkit.attacks.evasion import FGSM, PGD  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.defenses.input.magnet import MagNet  # noqa: E402
from advkit.defenses.input.pipeline import attack_defended  # noqa: E402
from advkit.fileio import write_json  # noqa: E402
from advkit.models import pretrained  # noqa: E402

FPR = 0.05
VALIDATION_ROWS = 500


def acceptance(args: argparse.Namespace) -> dict[str, Any]:
    model = pretrained("mnist-cnn", device=args.device)
    train, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
    x_val = test.x[:VALIDATION_ROWS]
    x, y = test.x[VALIDATION_ROWS:], test.y[VALIDATION_ROWS:]
    start = time.perf_counter()
    stages: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            stages[stage] = time.perf_counter() - start
            print(f"{stage}: trained ({total} steps) at {stages[stage]:.1f}s", flush=True)

    defense = MagNet().fit(model, train.x, x_val, FPR, generator=torch.Generator().manual_seed(0), progress=progress)
    fit_seconds = time.perf_counter() - start
    if args.save:
        defense.save(args.save)
    print(f"fitted in {fit_seconds:.1f}s; calibration {defense.calibration}", flush=True)
    studies = {}
    for name, attack in (
        ("fgsm-linf-0.3", FGSM(Threat(norm="linf", eps=0.3))),
        ("pgd-linf-0.1", PGD(Threat(norm="linf", eps=0.1), steps=20, restarts=1)),
    ):
        began = time.perf_counter()
        figures = attack_defended(attack, model, defense, x, y, torch.Generator().manual_seed(0), detector_aware_steps=args.detector_aware_steps)
        for way in ("oblivious", "adaptive", "adaptive_exact_gradient", "adaptive_detector_aware"):
            figures[way].pop("result", None)  # the per-class tables; the defended figures stay
        figures["seconds"] = time.perf_counter() - began
        studies[name] = figures
        print_study(name, figures)
    checks = {
        "clean_false_positive_rate_near_5_percent": abs(studies["fgsm-linf-0.3"]["clean"]["false_positive_rate"] - FPR) <= 0.03,
        "fgsm_0.3_oblivious_detected_at_least_90_percent": studies["fgsm-linf-0.3"]["oblivious"]["detection_rate"] >= 0.9,
        "pgd_0.1_oblivious_detected_at_least_90_percent": studies["pgd-linf-0.1"]["oblivious"]["detection_rate"] >= 0.9,
    }
    print("acceptance:", checks)
    return {
        "benchmark": "magnet-acceptance",
        "data": {"train": "mnist5k train (3750 rows)", "validation": f"mnist5k test rows 0-{VALIDATION_ROWS - 1}", "evaluation": f"mnist5k test rows {VALIDATION_ROWS}-1249"},
        "model": "zoo:mnist-cnn",
        "false_positive_rate_target": FPR,
        "settings": defense.settings,
        "detectors": defense.detector_names,
        "calibration": defense.calibration,
        "fit_seconds": fit_seconds,
        "autoencoder_seconds": stages,
        "studies": studies,
        "acceptance": checks,
        "environment": environment(),
    }


def print_study(name: str, figures: dict[str, Any]) -> None:
    clean = figures["clean"]
    print(f"{name}: clean FP {clean['false_positive_rate']:.3f} accuracy {clean['accuracy']:.3f} after reform {clean['accuracy_after_reform']:.3f}")
    for way in ("oblivious", "adaptive", "adaptive_exact_gradient", "adaptive_detector_aware"):
        f = figures[way]
        print(
            f"  {way:<24} bare acc {f['accuracy_without_defense']:.3f}  detected {f['detection_rate']:.3f}  "
            f"acc after reform {f['accuracy_after_reform']:.3f} (accepted {f['accuracy_after_reform_of_accepted'] or 0:.3f})  "
            f"attack success {f['attack_success']:.3f}",
            flush=True,
        )


def timing(args: argparse.Namespace) -> None:
    cases = []
    for zoo, data in (("digits-cnn", "digits"), ("mnist-cnn", "mnist5k")):
        model = pretrained(zoo, device=args.device)
        train, test = load_dataset(data, split="train"), load_dataset(data, split="test")
        defense = MagNet(steps=50).fit(model, train.x, test.x[:200], FPR)
        x = test.x.to(args.device)
        pipeline = defense.pipeline()
        runs = {
            "floor": lambda: model.predict_logits(x),
            "detect": lambda: defense.detect(x),
            "defended": lambda: pipeline.predict_logits(x),
        }
        times = interleaved(runs, args.repeats)
        rows = int(x.shape[0])
        cases.append(ratio_case(f"{zoo} detect ({len(defense.detectors)} detectors, {rows} rows)", times, "detect", "floor", rows=rows))
        cases.append(ratio_case(f"{zoo} reform + classify ({rows} rows)", times, "defended", "floor", rows=rows))
    report("magnet", cases, args.json, device=args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", choices=("timing", "acceptance"), default="timing")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detector-aware-steps", type=int, default=50)
    parser.add_argument("--save", type=Path, default=None, help="acceptance: save the fitted defense into this folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.study == "timing":
        timing(args)
        return
    result = acceptance(args)
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
