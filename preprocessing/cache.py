"""Content-addressed cache of preprocessed data.

A key hashes everything that decides the output: the input files (path, size, mtime),
the transform's parameters and a version string of the transform code. Same key: the
cached folder is used as it is and no work is done. A cache is built in a temporary
folder and renamed into place when complete, so a half-written cache is never read;
its manifest records every file's size, so a truncated or altered file is detected.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST = "manifest.json"


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_files(paths: Iterable[Path], root: Path) -> str:
    """Hash of (path relative to root, size, mtime_ns) of each file: touching or
    changing any input gives a new key, reading no file's content."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FASTRAY_CACHE", "cache")).absolute()


class Cache:
    """root/<name>-<key>/ holds one complete cache entry and its manifest.json."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).absolute() if root else default_cache_dir()

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def lookup(self, name: str, key: str) -> dict | None:
        """The manifest of a complete, intact entry, or None (a damaged entry is removed)."""
        folder = self.path(name, key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        for rel, size in manifest["files"].items():
            f = folder / rel
            if not f.is_file() or f.stat().st_size != size:
                # a truncated or altered file: drop the entry so it is rebuilt
                shutil.rmtree(folder, ignore_errors=True)
                return None
        return manifest

    def build(self, name: str, key: str, make: Callable[[Path], dict]) -> tuple[dict, bool]:
        """Return (manifest, hit). On a miss, `make(tmp_folder)` writes the data and
        returns the manifest's info; the folder is then renamed into place."""
        manifest = self.lookup(name, key)
        if manifest is not None:
            return manifest, True
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{key}-{uuid.uuid4().hex[:8]}"
        try:
            info = make(tmp)
            files = {
                str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()
            }
            manifest = {"name": name, "key": key, **info, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            final = self.path(name, key)
            try:
                os.rename(tmp, final)
            except OSError:
                # another process finished the same key first: keep its entry
                if self.lookup(name, key) is None:
                    raise
            return self.lookup(name, key) or manifest, False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
