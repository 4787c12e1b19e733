"""Data provenance: SHA-256 manifests of the files an audit used, and their verification.

A manifest maps each file's absolute path to its SHA-256 and size. ``verify`` re-hashes
the files and says which changed or disappeared — the "verify AI artifacts" mitigation
(MITRE ATLAS AML.M0014) and the data provenance measure the Poison Frogs authors call for
(Shafahi et al., NeurIPS 2018).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advkit.errors import AdvkitError
from advkit.fileio import read_json, sha256_file, write_json

MANIFEST_VERSION = 1


def build_manifest(files: dict[str, list[Path]]) -> dict[str, Any]:
    """``{"version", "files": [{role, path, sha256, bytes}]}`` for files grouped by role."""
    entries = []
    for role, paths in files.items():
        for path in paths:
            path = Path(path).resolve()
            entries.append({"role": role, "path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return {"version": MANIFEST_VERSION, "files": entries}


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest)


def verify_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Each manifest entry with ``status``: ``ok``, ``changed`` or ``missing``."""
    path = Path(path)
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise AdvkitError(f"{path}: not an advkit provenance manifest (no 'files' list)")
    rows = []
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not {"path", "sha256"} <= set(entry):
            raise AdvkitError(f"{path}: a manifest entry lacks 'path' or 'sha256'")
        target = Path(entry["path"])
        if not target.is_file():
            status = "missing"
        else:
            status = "ok" if sha256_file(target) == entry["sha256"] else "changed"
        rows.append({**entry, "status": status})
    return rows
