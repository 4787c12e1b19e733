"""Ray executor (``pip install 'advkit[ray]'``): tasks on an existing cluster or a local instance.

Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications" (OSDI 2018).
Each task asks for one CPU and runs with ``threads`` torch threads (1 unless told
otherwise), so ``workers`` tasks share a machine without oversubscribing it. A task
whose worker process dies is re-run up to ``retries`` times by Ray; an exception
raised by the task itself is not retried (it would fail again) and ends the caller
with one line. Values given to :meth:`put` travel to the object store once and are
read by every task from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advkit.engine import Executor, Pending, Shared
from advkit.errors import AdvkitError


def _run_task(fn: Callable[..., Any], threads: int, *args: Any) -> tuple[Any, str]:
    """The body of every Ray task: pin torch's threads, call the shard function, say where it ran."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*args), ray.get_runtime_context().get_node_id()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class RayExecutor(Executor):
    """Tasks as Ray remote functions; see the module docstring."""

    name: str = "ray"
    remote: bool = True
    retries: int = 3
    address: str | None = None
    owns_instance: bool = False
    _remote: Any = None

    @classmethod
    def start(cls, *, address: str | None, workers: int | None, threads: int = 1, retries: int = 3) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise AdvkitError("--executor ray needs Ray: pip install 'advkit[ray]'") from None
        owns = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if address is not None:
                    ray.init(address=address, **options)
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
            except ConnectionError as exc:
                raise AdvkitError(f"--address {address}: cannot join the Ray cluster ({_first_line(exc)})") from None
            owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        executor = cls(workers=min(workers, cpus) if workers else cpus, threads=threads, retries=retries, address=address, owns_instance=owns)
        executor._remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(_run_task)
        return executor

    def describe(self) -> dict[str, Any]:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {**super().describe(), "nodes": len(nodes), "address": self.address or "local instance"}

    def _put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Pending:
        refs = [a.ref if isinstance(a, Shared) else a for a in args]  # top-level refs arrive as values
        ref = self._remote.options(name=label[:100]).remote(fn, self.threads, *refs)
        return Pending(label=label, ref=ref)

    def _wait(self, pending: list[Pending]) -> tuple[Pending, Any]:
        import ray
        from ray import exceptions as rex

        ready, _ = ray.wait([p.ref for p in pending], num_returns=1)
        task = next(p for p in pending if p.ref == ready[0])
        try:
            value, node = ray.get(task.ref)
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AdvkitError):
                raise AdvkitError(str(cause)) from None
            detail = f"{type(cause).__name__}: {_first_line(cause)}" if cause is not None else _first_line(exc)
            raise AdvkitError(f"{task.label} failed on a Ray worker: {detail}") from exc
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.RaySystemError) as exc:
            raise AdvkitError(f"{task.label} failed on Ray after {self.retries + 1} tries: {_first_line(exc)}") from None
        self.stats.nodes[node] = self.stats.nodes.get(node, 0) + 1
        return task, value

    def close(self) -> None:
        import ray

        if self.owns_instance and ray.is_initialized():
            ray.shutdown()
        self.owns_instance = False
