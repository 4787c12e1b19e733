"""In-process executor: tasks run one after another, in the order they were submitted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advkit.engine.base import Executor, Pending, Shared


@dataclass
class LocalExecutor(Executor):
    """The default: no processes, no copies; a task runs when it is waited for.

    Running lazily in submission order keeps a local audit's step order (and its
    progress output) exactly the plan's order.
    """

    name: str = "local"
    pinned_threads: int | None = None  # torch threads per task; None: this process's

    def __post_init__(self) -> None:
        import torch

        self.threads = self.pinned_threads or torch.get_num_threads()

    def _put(self, value: Any) -> Any:
        return value

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Pending:
        return Pending(label=label, call=(fn, args))

    def _wait(self, pending: list[Pending]) -> tuple[Pending, Any]:
        task = min(pending, key=lambda p: p.seq)
        assert task.call is not None
        fn, args = task.call
        task.call = None
        values = [a.ref if isinstance(a, Shared) else a for a in args]
        if self.pinned_threads is None:
            return task, fn(*values)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.pinned_threads)
        try:
            return task, fn(*values)
        finally:
            torch.set_num_threads(before)
