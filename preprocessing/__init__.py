"""Readers of the real on-disk formats, Ray Data transforms, the cache and sample data.

Imports no model: pipelines/ joins preprocessing/ and models/.
"""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used: a missing or empty folder, a corrupt file. The
    message names the path and what is wrong; the CLI prints it as one line."""


def data_folder(data_dir: str | Path) -> Path:
    """data_dir as an absolute path (Ray workers run in other folders); DataError unless
    it is an existing folder."""
    root = Path(data_dir).absolute()
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


def with_subfolders(root: Path) -> list[Path]:
    """root and the folders right below it, sorted: where an archive's top folder may be."""
    return [root] + sorted(p for p in root.iterdir() if p.is_dir())
