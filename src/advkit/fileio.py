"""Small file helpers shared by every writer: atomic writes and the user cache dir.

Files are written to a temporary name beside the target and renamed into place, so a
crash or Ctrl-C never leaves a half-written file where a good one stood.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(target: str | os.PathLike[str]) -> int:
    """The permission bits a plain ``open(target, "w")`` would leave: an existing file's own,
    else ``0o666`` less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The result gets the permissions an ordinary write would give it (see
    :func:`new_file_mode`), not the owner-only ``0o600`` of ``mkstemp``'s temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, new_file_mode(target))
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a one-line AdvkitError."""
    from advkit.errors import AdvkitError

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise AdvkitError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise AdvkitError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise AdvkitError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AdvkitError(f"{path}: not a {what}: byte {exc.start} is not UTF-8 text") from None
    return parse_json(text, str(path))


def parse_json(text: str, where: str) -> Any:
    """Parse JSON text read from ``where`` (a file, a header field); malformed text is one line."""
    from advkit.errors import AdvkitError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdvkitError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise AdvkitError(f"{where}: invalid JSON (nested too deeply)") from None


def check_writable(target: str | os.PathLike[str], option: str, directory: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written (one-line AdvkitError).

    ``target`` is a file that will be written atomically (``directory=False``) or a
    directory that files will be written into. Missing parent folders are fine (they are
    created when the output is written); a parent that is a file, an existing target of
    the wrong kind, or a folder where files cannot be created is not. Writability is
    probed by creating and removing a temporary file in the nearest existing folder, so
    the answer is right for root (who ignores permission bits), read-only mounts and
    pseudo file systems alike. Nothing is left behind.
    """
    from advkit.errors import AdvkitError

    target = Path(target)
    if target.exists():
        if directory and not target.is_dir():
            raise AdvkitError(f"{option} {target}: exists and is not a directory")
        if not directory and target.is_dir():
            raise AdvkitError(f"{option} {target}: is a directory; give a file name")
    folder = target if directory else target.parent
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise AdvkitError(f"{option} {target}: {probe_dir} is a broken symbolic link")
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise AdvkitError(f"{option} {target}: {probe_dir} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".advkit-write-check.", dir=probe_dir)
    except OSError as exc:
        raise AdvkitError(f"{option} {target}: cannot write in {probe_dir} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return target


# A POSIX path inside free text: "~/..." or an absolute path of two or more parts, starting
# at a word boundary and running to whitespace, a quote or a bracket, without trailing
# punctuation. "8/255", "L2/Linf", "</b>" and URLs ("https://...") do not match.
_STOP = "\\s'\"<>()\\[\\]{},;|`"
_PATH_IN_TEXT = re.compile(rf"(?<![\w.:/~<-])(?:~/|/[^{_STOP}/]+/)[^{_STOP}]*[^{_STOP}.:!?/]")


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """A path as a shared report may show it: relative to the working directory when it lies
    inside it, else only its file name (never a home directory or an absolute path).

    Specs that are not files (``zoo:digits-cnn``, ``digits``) come back unchanged.
    """
    text = os.fspath(path)
    here = Path(os.path.normpath(Path.cwd() if cwd is None else Path(cwd).absolute()))
    full = Path(os.path.expanduser(text))
    full = Path(os.path.normpath(full if full.is_absolute() else here / full))
    home = Path(os.path.normpath(Path.home()))
    # a working directory at / or above the home directory would still spell out the user's name
    above_home = home != here and home.is_relative_to(here)
    if here != Path(here.anchor) and full.is_relative_to(here) and not (above_home and full.is_relative_to(home)):
        return full.relative_to(here).as_posix() or "."
    return full.name or text


def redact_paths(value: Any, known: Iterable[str] = (), cwd: str | os.PathLike[str] | None = None) -> Any:
    """A deep copy of ``value`` (dicts, lists, strings) with every path shown by :func:`display_path`.

    ``known`` paths (e.g. the model and data a user gave, relative or not) are replaced
    wherever they occur; any other absolute path found in a string is replaced too.
    """
    swaps = sorted({(k, display_path(k, cwd)) for k in known if k}, key=lambda pair: -len(pair[0]))
    swaps = [(raw, shown) for raw, shown in swaps if raw != shown]

    home = os.path.normpath(Path.home())
    bare_home = re.compile(rf"(?<![\w.:/~<-]){re.escape(home)}(?![\w-]|\.\w)") if home != os.sep else None

    def text(s: str) -> str:
        for raw, shown in swaps:
            s = s.replace(raw, shown)
        s = _PATH_IN_TEXT.sub(lambda m: display_path(m.group(0), cwd), s)
        return bare_home.sub(lambda m: display_path(m.group(0), cwd), s) if bare_home else s

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {k: walk(item) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        return v

    return walk(value)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_arrays(path: Path, **arrays: Any) -> None:
    """Write small numpy arrays (examples, triggers) atomically as an uncompressed npz."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
