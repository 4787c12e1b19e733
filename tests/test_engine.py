"""The Executor contract without Ray: order, shared values, seeds, errors, certify sharding."""

from __future__ import annotations

import pytest
import torch

from advkit.certify.smoothing import Smoothed
from advkit.engine import make_executor, shard_seed
from advkit.engine.local import LocalExecutor
from advkit.errors import AdvkitError


def test_local_map_keeps_order_and_passes_shared_values() -> None:
    with make_executor("local") as executor:
        base = executor.put(10)
        assert executor.map(lambda x, b: x * b, [3, 1, 2], base) == [30, 10, 20]
        assert executor.stats.tasks == 3 and executor.stats.puts == 1
        assert executor.describe()["kind"] == "local"


def test_local_tasks_run_in_submission_order() -> None:
    order: list[int] = []
    executor = LocalExecutor()
    pending = [executor.submit(order.append, i, label=f"t{i}") for i in range(3)]
    executor.wait(pending[::-1])  # waits on any: the local executor runs the oldest first
    assert order == [0]


def test_shard_seed_depends_on_every_part() -> None:
    assert shard_seed(0, "certify/model", 3) == shard_seed(0, "certify/model", 3)
    seeds = {shard_seed(0, "a", 1), shard_seed(0, "a", 2), shard_seed(1, "a", 1), shard_seed(0, "b", 1)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "dask"}, "choose one of local, ray"), ({"kind": "local", "address": "ray://x:1"}, "--address names a Ray cluster"), ({"kind": "ray", "workers": 0}, "--workers must be >= 1")],
)
def test_bad_executor_settings_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(AdvkitError, match=message):
        make_executor(**kwargs)


class _ManyWorkers(LocalExecutor):
    """A local executor that splits work as a 3-worker remote one would (same process)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.remote, self.workers = True, 3


def test_certify_numbers_do_not_depend_on_sharding(digits_model, digits_test) -> None:
    x, y = digits_test.x[:10], digits_test.y[:10]
    smoothed = Smoothed(digits_model, 0.25)
    one = smoothed.certify_dataset(x, y, 20, 200, 0.001, torch.Generator().manual_seed(5))
    many = _ManyWorkers()
    split = smoothed.certify_dataset(x, y, 20, 200, 0.001, torch.Generator().manual_seed(5), executor=many)
    assert many.stats.tasks == 10  # 4 shards per worker wanted: 10 rows in shards of one row
    assert torch.equal(one.prediction, split.prediction) and torch.equal(one.radius, split.radius)
    assert (one.prediction == y).float().mean() >= 0.8  # the smoothed digits model is accurate
    other = smoothed.certify_dataset(x, y, 20, 200, 0.001, torch.Generator().manual_seed(6))
    assert not torch.equal(one.radius, other.radius)  # the seed matters
