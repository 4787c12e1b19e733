"""Small file helpers shared by every writer: atomic writes and the user cache dir.

Files are written to a temporary name beside the target and renamed into place, so a
crash or Ctrl-C never leaves a half-written file where a good one stood.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where zoo models and parsed builtin data are cached (``ADVKIT_CACHE`` overrides)."""
    root = os.environ.get("ADVKIT_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "advkit"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line AdvkitError."""
    from advkit.errors import AdvkitError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AdvkitError(f"{path}: no such {what}") from None
    except json.JSONDecodeError as exc:
        raise AdvkitError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
