"""The Executor: map work over independent shards, in-process or on a Ray cluster.

DESIGN.md principle 9: work that splits into independent shards (certifying rows,
(model x attack x eps) evasion steps, training jobs, study seeds) goes through an
``Executor``. :class:`~advkit.engine.local.LocalExecutor` runs them in this process, in
submission order; :class:`~advkit.engine.ray_backend.RayExecutor` (``advkit[ray]``) runs
them as Ray tasks on an existing cluster or a local instance (Moritz et al., "Ray: A
Distributed Framework for Emerging AI Applications", OSDI 2018).

A shard's numbers must never depend on where or next to what it ran: every shard seeds
its own generator (:func:`shard_seed`), so a run on one worker and a run on many give
the same results. Large inputs shared by many tasks (model weights, data) are put into
the store once with :meth:`Executor.put` and passed as :class:`Shared` handles.
"""

from __future__ import annotations

import os

from advkit.engine.base import Executor, ExecutorStats, Pending, Shared, nbytes, shard_seed, worker_cache
from advkit.errors import AdvkitError

EXECUTORS = ("local", "ray")


def make_executor(kind: str = "local", *, address: str | None = None, workers: int | None = None, threads: int | None = None, retries: int = 3) -> Executor:
    """``local`` (default) or ``ray``: join ``address`` (or ``RAY_ADDRESS``) or start a local instance.

    ``threads``: torch threads per task. Locally the default is this process's threads;
    on Ray 1 (each task also asks Ray for that many CPUs). Equal thread counts give
    bit-identical numbers on either executor.
    """
    if workers is not None and workers < 1:
        raise AdvkitError(f"--workers must be >= 1; got {workers}")
    if threads is not None and threads < 1:
        raise AdvkitError(f"--threads must be >= 1; got {threads}")
    if kind == "local":
        if address is not None:
            raise AdvkitError("--address names a Ray cluster; use it with --executor ray")
        from advkit.engine.local import LocalExecutor

        return LocalExecutor(pinned_threads=threads)
    if kind == "ray":
        from advkit.engine.ray_backend import RayExecutor

        return RayExecutor.start(address=address or os.environ.get("RAY_ADDRESS") or None, workers=workers, threads=threads or 1, retries=retries)
    raise AdvkitError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "ExecutorStats", "Pending", "Shared", "make_executor", "nbytes", "shard_seed", "worker_cache"]
