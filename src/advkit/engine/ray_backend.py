"""Ray executor (``pip install 'advkit[ray]'``): tasks on an existing cluster or a local instance.

Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications" (OSDI 2018).
Each task asks for ``threads`` CPUs and runs with that many torch threads (1 unless told
otherwise), so tasks share a machine without oversubscribing it. A task whose worker
process dies is re-run up to ``retries`` times by Ray; an exception raised by the task
itself is not retried (it would fail again) and ends the caller with one line. Values
given to :meth:`put` travel to the object store once; they reach a task as a reference
that the worker process fetches and unpickles the first time it sees it, then keeps
(a worker running many tasks on one model reads it once).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advkit.engine.base import Executor, Pending, Shared
from advkit.errors import AdvkitError

_FETCHED: OrderedDict[str, Any] = OrderedDict()  # per worker process: object id -> value
_FETCHED_KEEP = 8


@dataclass(frozen=True)
class _Ref:
    """A store reference passed inside a list, so Ray does not fetch it for every task."""

    ref: Any


def _fetch(arg: Any) -> Any:
    if not isinstance(arg, _Ref):
        return arg
    import ray

    key = arg.ref.hex()
    if key not in _FETCHED:
        while len(_FETCHED) >= _FETCHED_KEEP:
            _FETCHED.popitem(last=False)
        _FETCHED[key] = ray.get(arg.ref)
    _FETCHED.move_to_end(key)
    return _FETCHED[key]


def _run_task(fn: Callable[..., Any], threads: int, *args: Any) -> tuple[Any, str]:
    """The body of every Ray task: pin torch's threads, resolve shared values, call, say where it ran."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*[_fetch(a) for a in args]), ray.get_runtime_context().get_node_id()


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
                else:  # a new instance of our own, even when another one runs on this machine
                    ray.init(address="local", num_cpus=workers * threads if workers else os.cpu_count() or 1, **options)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError...
                where = f"--address {address}: cannot join the Ray cluster" if address else "cannot start a local Ray instance"
                raise AdvkitError(f"{where} ({_first_line(exc)})") from None
            owns = True
        elif address is None:
            address = "the Ray instance this process already joined"
        cpus = int(ray.cluster_resources().get("CPU", 1))
        slots = max(1, cpus // threads)
        executor = cls(workers=min(workers, slots) if workers else slots, threads=threads, retries=retries, address=address, owns_instance=owns)
        executor._remote = ray.remote(num_cpus=threads, max_retries=retries, retry_exceptions=False)(_run_task)
        return executor

    def describe(self) -> dict[str, Any]:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {**super().describe(), "nodes": len(nodes), "address": self.address or "local instance"}

    def _put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Pending:
        refs = [_Ref(a.ref) if isinstance(a, Shared) else a for a in args]
        ref = self._remote.options(name=label[:100]).remote(fn, self.threads, *refs)
        return Pending(label=label, ref=ref)

    def poll(self, pending: list[Pending]) -> list[Pending]:
        import ray

        if not pending:
            return []
        ready, _ = ray.wait([p.ref for p in pending], num_returns=len(pending), timeout=0)
        done = {r.hex() for r in ready}
        return [p for p in pending if p.ref.hex() in done]

    def cancel(self, pending: list[Pending]) -> None:
        import ray

        for task in pending:
            try:
                ray.cancel(task.ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

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
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError) as exc:
            raise AdvkitError(f"{task.label} failed on Ray after {self.retries + 1} tries: {_first_line(exc)}") from None
        except rex.RayError as exc:  # out of memory, cancelled, runtime env, fetch timeout, ...
            raise AdvkitError(f"{task.label} failed on Ray: {type(exc).__name__}: {_first_line(exc)}") from None
        self.stats.nodes[node] = self.stats.nodes.get(node, 0) + 1
        return task, value

    def close(self) -> None:
        import ray

        if self.owns_instance and ray.is_initialized():
            ray.shutdown()
        self.owns_instance = False
