"""The Executor's contract and its bookkeeping (see :mod:`advkit.engine`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

def shard_seed(*parts: object) -> int:
    """A 63-bit seed from a run seed and a shard's identity (a step id, a row index, ...)."""
    text = ":".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class Shared:
    """A value put in the executor's store once and given to many tasks."""

    ref: Any
    nbytes: int


@dataclass
class Pending:
    """A submitted task; :meth:`Executor.wait` returns it with its value when done."""

    label: str
    ref: Any = None
    call: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
    seq: int = 0  # submission order


@dataclass
class ExecutorStats:
    """What moved: tasks run, bytes put once into the store, bytes of task arguments."""

    tasks: int = 0
    put_bytes: int = 0
    argument_bytes: int = 0
    puts: int = 0
    nodes: dict[str, int] = field(default_factory=dict)  # tasks finished per node (remote executors)

    def since(self, earlier: ExecutorStats) -> ExecutorStats:
        """What happened after ``earlier`` (a snapshot of these stats): one run's share."""
        nodes = {k: v - earlier.nodes.get(k, 0) for k, v in self.nodes.items() if v - earlier.nodes.get(k, 0)}
        return ExecutorStats(self.tasks - earlier.tasks, self.put_bytes - earlier.put_bytes, self.argument_bytes - earlier.argument_bytes, self.puts - earlier.puts, nodes)

    def snapshot(self) -> ExecutorStats:
        return ExecutorStats(self.tasks, self.put_bytes, self.argument_bytes, self.puts, dict(self.nodes))

    def to_dict(self) -> dict[str, Any]:
        per_task = self.argument_bytes / self.tasks if self.tasks else 0.0
        return {"tasks": self.tasks, "puts": self.puts, "put_bytes": self.put_bytes, "argument_bytes_per_task": per_task, "tasks_per_node": sorted(self.nodes.values(), reverse=True)}


@dataclass
class Executor:
    """Runs functions over shards. Subclasses implement ``_put``, ``_submit``, ``_wait``."""

    name: str = "local"
    workers: int = 1
    threads: int = 1
    remote: bool = False  # tasks run in other processes: their inputs must be portable
    stats: ExecutorStats = field(default_factory=ExecutorStats)

    def put(self, value: Any) -> Shared:
        """Store ``value`` once; tasks receive it wherever a :class:`Shared` is passed."""
        size = nbytes(value) if self.remote else 0
        self.stats.puts += 1
        self.stats.put_bytes += size
        return Shared(self._put(value), size)

    def submit(self, fn: Callable[..., Any], *args: Any, label: str = "task") -> Pending:
        """Start ``fn(*args)``; :class:`Shared` arguments arrive as their values."""
        self.stats.tasks += 1
        if self.remote:  # locally nothing is copied
            self.stats.argument_bytes += sum(nbytes(a) for a in args if not isinstance(a, Shared))
        task = self._submit(fn, args, label)
        task.seq = self.stats.tasks
        return task

    def wait(self, pending: list[Pending]) -> tuple[Pending, Any]:
        """Block until one of ``pending`` finishes; return it and its value (errors re-raised)."""
        if not pending:
            raise ValueError("wait() needs at least one pending task")
        return self._wait(pending)

    def map(self, fn: Callable[..., Any], shards: Iterable[Any], *shared: Any, label: str = "shard") -> list[Any]:
        """``[fn(shard, *shared) for shard in shards]``, at most ``workers`` in flight, in order."""
        queue = list(enumerate(shards))
        values: dict[int, Any] = {}
        in_flight: dict[int, int] = {}
        pending: list[Pending] = []
        while queue or pending:
            while queue and len(pending) < max(1, self.workers):
                index, shard = queue.pop(0)
                task = self.submit(fn, shard, *shared, label=f"{label} {index}")
                in_flight[id(task)] = index
                pending.append(task)
            done, value = self.wait(pending)
            pending = [p for p in pending if p is not done]
            values[in_flight.pop(id(done))] = value
        return [values[i] for i in range(len(values))]

    def poll(self, pending: list[Pending]) -> list[Pending]:
        """The tasks of ``pending`` already finished (without blocking); none for lazy executors."""
        return []

    def cancel(self, pending: list[Pending]) -> None:
        """Stop tasks whose results are no longer wanted (after a failure)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "workers": self.workers, "threads_per_task": self.threads}

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend hooks ------------------------------------------------------------------
    def _put(self, value: Any) -> Any:
        raise NotImplementedError

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Pending:
        raise NotImplementedError

    def _wait(self, pending: list[Pending]) -> tuple[Pending, Any]:
        raise NotImplementedError


def nbytes(value: Any) -> int:
    """Approximate payload size: tensors, arrays and bytes exactly, containers summed."""
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes"), int):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    if isinstance(value, dict):
        return sum(nbytes(k) + nbytes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return sum(nbytes(v) for v in value)
    if isinstance(value, str):
        return len(value.encode())
    if hasattr(value, "__dict__"):
        return nbytes(vars(value))
    return 8


_WORKER_CACHE: dict[str, Any] = {}


def worker_cache(key: str, build: Callable[[], Any], keep: int = 4) -> Any:
    """A value built once per worker process (a loaded model), keyed by its content."""
    if key not in _WORKER_CACHE:
        while len(_WORKER_CACHE) >= keep:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]
