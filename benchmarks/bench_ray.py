"""One audit locally and on Ray (2 workers): the speed-up, Ray's start-up cost, the bytes moved.

The audit: evasion (FGSM, PGD) at 4 budgets, CERTIFY of 200 rows with n = 5,000, Neural
Cleanse on the audited model (digits, zoo:digits-cnn). It runs three times, each in a
fresh run folder: locally with this process's torch threads (the floor), locally with
one thread, and on a local Ray instance with 2 workers of one thread each. The report
numbers of the one-thread local run and the Ray run must be identical (the script
fails otherwise). Start-up: ``ray.init`` plus the first round trip of a trivial task
(a worker process starting). Bytes: what went into the object store once (model,
data, artifacts) and the task arguments per task.
Run: ``python benchmarks/bench_ray.py --json bench-results/ray.json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import case, parse_args, report  # noqa: E402

from advkit.audit.config import AuditConfig  # noqa: E402
from advkit.audit.runner import AuditRunner  # noqa: E402
from advkit.engine import make_executor  # noqa: E402

CONFIG = {
    "evasion": {"attacks": ["fgsm", "pgd"], "eps": [0.05, 0.1, 0.2, 0.3]},
    "adversarial_training": None,
    "poisoning": [],
    "backdoor_defense": {"mitigations": []},
    "certification": {"n0": 100, "n": 5000, "limit": 200, "training": None},
}
VARYING = ("timings", "environment", "executor", "cached_steps", "plan", "floor")


def run_audit(executor, root: Path, name: str) -> tuple[dict, float]:  # noqa: ANN001
    start = time.perf_counter()
    result = AuditRunner(AuditConfig.model_validate(CONFIG), root / name, executor=executor).run()
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local instance
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        AuditRunner(AuditConfig.model_validate(CONFIG), root / "warm").model()  # zoo model trained/cached outside the timing
        with make_executor("local") as local:
            _, local_seconds = run_audit(local, root, "local")
        torch.set_num_threads(1)
        with make_executor("local") as local_one:
            one_report, one_seconds = run_audit(local_one, root, "local-1")
        torch.set_num_threads(threads)
        start = time.perf_counter()
        with make_executor("ray", workers=2) as ray_executor:
            init_seconds = time.perf_counter() - start
            first = time.perf_counter()
            ray_executor.map(abs, [-1, -2])  # worker processes start here
            round_trip = time.perf_counter() - first
            ray_report, ray_seconds = run_audit(ray_executor, root, "ray")
            stats = ray_executor.stats.to_dict()
    same = {k: v for k, v in one_report.items() if k not in VARYING} == {k: v for k, v in ray_report.items() if k not in VARYING}
    cases = [
        case(f"local, {threads} threads", local_seconds, local_seconds),
        case("local, 1 thread", one_seconds, local_seconds),
        case("ray, 2 workers x 1 thread", ray_seconds, local_seconds, speedup=local_seconds / ray_seconds, speedup_vs_one_thread=one_seconds / ray_seconds),
    ]
    report(
        "ray",
        cases,
        args.json,
        ray_start_seconds=init_seconds,
        first_task_round_trip_seconds=round_trip,
        object_store=stats,
        identical_to_local_one_thread=same,
        step_seconds={"local": one_report["timings"], "ray": ray_report["timings"]},
    )
    print(f"speed-up on Ray: {local_seconds / ray_seconds:.2f}x against local ({threads} threads), {one_seconds / ray_seconds:.2f}x against local (1 thread)")
    print(f"Ray start {init_seconds:.1f}s + first round trip {round_trip:.1f}s; object store {stats['put_bytes'] / 1e6:.2f} MB in {stats['puts']} puts; {stats['argument_bytes_per_task'] / 1e3:.1f} kB arguments per task over {stats['tasks']} tasks")
    if not same:
        raise SystemExit("the Ray report's numbers differ from the one-thread local run")


if __name__ == "__main__":
    main()
