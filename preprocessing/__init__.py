"""Readers of the real on-disk formats, Ray Data transforms, the cache and sample data.

Imports no model: pipelines/ joins preprocessing/ and models/.

Every reader takes its inputs through the helpers below: a listed path is used only when it
is a regular file, or a symlink that resolves to one, judged by ``os.stat`` alone (never by
opening it: opening a FIFO waits for a writer, opening a device may act on it). A FIFO, a
socket, a device, a folder named like a file or a dangling symlink among the listed files
is an unusable entry: under ``--on-bad-input skip`` a counted skip, under ``fail`` a
DataError naming it (chunked.listing_skips). A file the user names (a table, a line file,
a JSON) that is not a regular file is a DataError (regular_file).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterable


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


# ---------------------------------------------------------------- regular files only

_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"))


def file_problem(path: str | os.PathLike) -> str | None:
    """None when path is a regular file or a symlink that resolves to one; else why it is
    not, in a word or two (the reason counted in a manifest's "bad_input"): "missing",
    "dangling symlink", "symlink loop", "folder", "FIFO", "socket", "device", "unreadable".
    Decided by os.stat alone: nothing is opened, so nothing can block."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symlink" if os.path.islink(path) else "missing"
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else "unreadable"
    return _mode_problem(st.st_mode)


def _mode_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


def problem_message(path: str | os.PathLike, problem: str) -> str:
    """One line naming path and its problem (file_problem's word)."""
    if problem == "missing":
        return f"{path}: no such file"
    if problem == "dangling symlink":
        return f"{path}: a dangling symlink (its target {os.readlink(path)!r} does not exist)" if os.path.islink(path) \
            else f"{path}: a dangling symlink"
    if problem == "symlink loop":
        return f"{path}: a symlink loop"
    if problem == "unreadable":
        try:
            os.stat(path)
        except OSError as e:
            return f"{path}: unreadable ({e.strerror or e})"
        return f"{path}: unreadable"
    return f"{path}: not a regular file (a {problem})"


def regular_file(path: str | Path) -> Path:
    """A file the user named, as an absolute path; DataError (one line naming it) unless
    it is a regular file or a symlink to one."""
    p = Path(path).absolute()
    problem = file_problem(p)
    if problem:
        raise DataError(problem_message(p, problem))
    return p


def split_usable(paths: Iterable, unusable: list[tuple[str, str]]) -> list:
    """The paths that are regular files (or symlinks to one), in order; each other one is
    appended to `unusable` as (path as a string, file_problem's word)."""
    out = []
    for p in paths:
        problem = file_problem(p)
        if problem is None:
            out.append(p)
        else:
            unusable.append((str(p), problem))
    return out


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """path opened for binary reading; DataError unless it is a regular file. Checked by
    stat before the open and by fstat after it (a FIFO swapped in between is opened
    non-blocking, so even then nothing waits)."""
    problem = file_problem(path)
    if problem is None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
        problem = _mode_problem(os.fstat(fd).st_mode)
        if problem is None:
            if hasattr(os, "set_blocking"):
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise DataError(problem_message(path, problem))


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file; DataError for anything else (see open_regular)."""
    with open_regular(path) as f:
        return f.read()
