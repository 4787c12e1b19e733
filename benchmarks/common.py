"""Shared benchmark plumbing: timing, the environment record and the JSON file."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from advkit.fileio import write_json

T = TypeVar("T")


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """One run of ``fn``: its result and wall time (GPU work waited for)."""
    _synchronize()
    start = time.perf_counter()
    out = fn()
    _synchronize()
    return out, time.perf_counter() - start


def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Minimum wall time over ``repeats`` runs after one warm-up run."""
    fn()
    return min(timed(fn)[1] for _ in range(repeats))


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def case(name: str, seconds: float, floor_seconds: float, **extra: Any) -> dict[str, Any]:
    return {"case": name, "seconds": seconds, "floor_seconds": floor_seconds, "ratio": seconds / floor_seconds, **extra}


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="torch device for benchmarks that take one (cpu, cuda)")
    return parser.parse_args()


def report(name: str, cases: list[dict[str, Any]], path: Path | None, **extra: Any) -> None:
    for c in cases:
        median = f"  median ratio {c['median_ratio']:.3f}" if "median_ratio" in c else ""
        print(f"{c['case']:<40} {c['seconds']:8.3f}s  floor {c['floor_seconds']:8.3f}s  ratio {c['ratio']:.3f}{median}")
    if path is not None:
        write_json(path, {"benchmark": name, "cases": cases, "environment": environment(), **extra})
        print(f"wrote {path}")


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int = 5) -> dict[str, dict[str, float]]:
    """Time every run in turn, ``repeats`` rounds after one warm-up round (A B C A B C ...).

    Interleaving spreads a machine's load changes over every contender instead of one
    block; each run reports its ``min`` and ``median`` seconds.
    """
    import statistics

    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn)[1])
    return {name: {"min": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()}


def ratio_case(name: str, times: dict[str, dict[str, float]], run: str, floor: str, **extra: Any) -> dict[str, Any]:
    """A case whose ratio is against a floor timed in the same interleaved rounds (min and median)."""
    t, f = times[run], times[floor]
    return {
        "case": name,
        "seconds": t["min"],
        "floor_seconds": f["min"],
        "ratio": t["min"] / f["min"],
        "median_seconds": t["median"],
        "median_ratio": t["median"] / f["median"],
        **extra,
    }
