"""The rows an audit holds in memory: its evaluation split and its training rows, memory-capped.

An image folder is listed from its file names and headers (:func:`advkit.data.open_rows`),
then only the rows the audit reads are decoded: the split's first ``limit`` (or, for
the training rows of a fine-tuning audit, ``fine_tune.rows``), and never more than fit in
:data:`HELD_ROWS_SHARE` of the memory cap (:mod:`advkit.core.memory`). A cut made for
memory is recorded (``report.json`` ``defaults_applied``). Arrays (builtin sets, IDX,
CIFAR-10, ``.npz``) come whole, as they are stored.
"""

from __future__ import annotations

from typing import Any

from advkit.audit.config import AuditConfig
from advkit.data import Dataset

HELD_ROWS_SHARE = 0.25  # of the memory cap: the most the evaluation rows, and the training rows, each take in memory


def memory_rows(rows: Any) -> int:
    """How many of ``rows`` (a folder's, still on disk) fit in :data:`HELD_ROWS_SHARE` of the memory cap."""
    from advkit.core.memory import memory_cap
    from advkit.data import FolderRows

    if not isinstance(rows, FolderRows):
        return len(rows)
    c, h, w = rows.input_shape
    return max(1, int(memory_cap() * HELD_ROWS_SHARE) // (c * h * w * 4))


def _open(config: AuditConfig, split: str, limit: int | None = None) -> Any:
    from advkit.data import open_rows

    return open_rows(config.data, split=split, limit=limit, image_size=config.image_size, crop_fraction=config.crop_fraction)


def count_rows(config: AuditConfig, split: str) -> int:
    """The rows of ``split`` the audit could hold (from the file names alone)."""
    rows = _open(config, split)
    return min(len(rows), memory_rows(rows))


def held_rows(config: AuditConfig, split: str, limit: int | None, key: str, caps: list[dict[str, Any]]) -> Dataset:
    """``split``'s first ``limit`` rows, decoded, at most what fits; a memory cut is appended to ``caps`` ({key, value, because})."""
    rows = _open(config, split, limit)
    fit = memory_rows(rows)
    if len(rows) > fit:
        c, h, w = rows.input_shape
        caps.append({
            "key": key,
            "value": fit,
            "because": f"the {split} split's {len(rows)} decoded rows would take {len(rows) * c * h * w * 4 / 2**30:.1f} GiB, "
            f"over {HELD_ROWS_SHARE:.0%} of the memory cap; set {key} (or max_memory_gb) to choose",
        })
        rows = rows.head(fit)
    return rows if isinstance(rows, Dataset) else rows.materialize()
