"""The audit and CERTIFY on Ray give the numbers of a local run (issue 13).

Marked ``ray`` (run with ``make test-ray``; CI runs the group after the default suite).
Every test works in a temporary home: Ray 2.x writes an auth token to ``~/.ray`` on
first start. On a private cluster ``RAY_AUTH_MODE=disabled`` turns token auth off.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

ray = pytest.importorskip("ray")

from advkit.audit.config import AuditConfig  # noqa: E402
from advkit.audit.plan import row_shards  # noqa: E402
from advkit.audit.runner import SHARDS_PER_WORKER, AuditRunner  # noqa: E402
from advkit.engine import make_executor  # noqa: E402
from advkit.errors import AdvkitError  # noqa: E402

pytestmark = pytest.mark.ray

EVERY_SECTION = {
    "evasion": {"attacks": ["fgsm", "pgd", "square", "autoattack"], "eps": [0.1, 0.2], "steps": 5, "restarts": 1, "limit": 48, "max_queries": 50},
    "adversarial_training": {"epochs": 2},
    "poisoning": [{"attack": "badnets"}],
    "backdoor_defense": {"epochs": 2, "mitigations": ["nc-unlearn"]},
    "certification": {"n0": 20, "n": 100, "limit": 12, "training": "gaussian", "epochs": 2},
}
CERTIFY_HEAVY = {
    "evasion": {"attacks": ["fgsm"], "eps": [0.1], "limit": 32},
    "adversarial_training": None,
    "poisoning": [],
    "backdoor_defense": None,
    "certification": {"n0": 50, "n": 1500, "limit": 40, "training": None},
}
VARYING = ("timings", "environment", "executor", "cached_steps", "plan", "floor", "replans")


def _config(raw: dict) -> AuditConfig:
    return AuditConfig.model_validate(yaml.safe_load(yaml.safe_dump(raw)))


def _audit(raw: dict, out: Path, executor=None) -> dict:  # noqa: ANN001
    report = AuditRunner(_config(raw), out, executor=executor).run()
    assert json.loads((out / "report.json").read_text())["findings"] == report["findings"]
    return report


def _numbers(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VARYING}


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):  # noqa: ANN201
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield home
    os.environ["HOME"] = old or ""


@pytest.fixture(scope="module")
def local_reports(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("local")
    return {name: _audit(raw, root / name) for name, raw in (("every", EVERY_SECTION), ("certify", CERTIFY_HEAVY))}


@pytest.fixture(scope="module")
def ray_executor(ray_home):  # noqa: ANN001, ANN201
    with make_executor("ray", workers=2, retries=3) as executor:
        yield executor


def test_audit_on_ray_matches_local(ray_executor, local_reports, tmp_path) -> None:  # noqa: ANN001
    for name, raw in (("every", EVERY_SECTION), ("certify", CERTIFY_HEAVY)):
        report = _audit(raw, tmp_path / name, ray_executor)
        assert _numbers(report) == _numbers(local_reports[name]), name
        assert report["executor"]["kind"] == "ray" and report["executor"]["workers"] == 2
    # per run: the model and the evaluation split went to the object store once, not once per task
    shards = row_shards(40, SHARDS_PER_WORKER * 2)  # 14 shards of up to 3 rows
    assert report["executor"]["puts"] == 2 and report["executor"]["tasks"] == 3 + len(shards), report["executor"]
    assert report["certification"][0]["rows"] == 40


def test_resume_under_ray_reads_finished_steps_back(ray_executor, local_reports, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    _audit(CERTIFY_HEAVY, out, ray_executor)
    (out / "steps" / "certify__model.json").unlink()
    (out / "report.json").unlink()
    resumed = AuditRunner(_config(CERTIFY_HEAVY), out, resume=True, executor=ray_executor).run()
    assert "certify/model" not in resumed["cached_steps"] and "evasion/model/fgsm@0.1" in resumed["cached_steps"]
    assert _numbers(resumed) == _numbers(local_reports["certify"])


def _running_task_pids(prefix: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].strip()
            except OSError:
                continue
            if title.startswith(f"ray::{prefix}".encode()):
                pids.append(int(entry))
    return pids


def test_worker_killed_mid_step_is_retried_and_the_report_is_unchanged(ray_executor, local_reports, tmp_path) -> None:  # noqa: ANN001
    killed: list[int] = []

    def assassin() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in _running_task_pids("certify/model"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    report = _audit(CERTIFY_HEAVY, tmp_path / "run", ray_executor)
    thread.join()
    assert killed, "no certify task was seen running"
    assert _numbers(report) == _numbers(local_reports["certify"])


def test_a_task_that_keeps_dying_ends_with_one_line(ray_executor) -> None:  # noqa: ANN001
    def die(_: int) -> None:
        os._exit(3)

    with make_executor("ray", retries=1) as executor:  # joins the running instance
        with pytest.raises(AdvkitError, match=r"^crash 0 failed on Ray after 2 tries: ") as info:
            executor.map(die, [0], label="crash")
    assert "\n" not in str(info.value)
    assert ray.is_initialized()  # it did not shut down the instance it joined


def test_certify_dataset_on_ray_matches_local(ray_executor, digits_model, digits_test) -> None:  # noqa: ANN001
    from advkit.certify.smoothing import Smoothed

    x, y = digits_test.x[:16], digits_test.y[:16]
    local = Smoothed(digits_model, 0.25).certify_dataset(x, y, 20, 300, 0.001, torch.Generator().manual_seed(1))
    remote = Smoothed(digits_model, 0.25).certify_dataset(x, y, 20, 300, 0.001, torch.Generator().manual_seed(1), executor=ray_executor)
    assert torch.equal(local.prediction, remote.prediction) and torch.equal(local.radius, remote.radius)


def test_two_node_cluster_runs_tasks_on_both_nodes(ray_executor, local_reports, tmp_path) -> None:  # noqa: ANN001
    from ray.cluster_utils import Cluster

    ray_executor.close()  # the module's local instance; the cluster below replaces it
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        with make_executor("ray", address=cluster.address) as executor:
            assert executor.describe()["nodes"] == 2 and executor.workers == 2
            report = _audit(CERTIFY_HEAVY, tmp_path / "run", executor)
            assert len(executor.stats.nodes) == 2, executor.stats.nodes
        assert _numbers(report) == _numbers(local_reports["certify"])
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_failing_step_ends_the_audit_with_one_line_and_keeps_finished_steps(ray_executor, tmp_path) -> None:  # noqa: ANN001
    raw = {**CERTIFY_HEAVY, "poisoning": [{"attack": "badnets", "trigger": {"size": 20}}]}  # found only when the step stamps 8x8 digits
    out = tmp_path / "run"
    with pytest.raises(AdvkitError, match=r"^trigger size 20x20 does not fit images of 8x8$"):
        AuditRunner(_config(raw), out, executor=ray_executor).run()
    finished = {p.name for p in (out / "steps").glob("*.json")}
    assert "provenance.json" in finished and "poison__0-badnets.json" not in finished
    assert not (out / "report.json").exists()
