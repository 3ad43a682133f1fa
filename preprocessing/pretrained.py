"""Pretrained weights the lessons start from: torchvision's ImageNet files, by name.

A weights spec, as a config gives it (`pretrained`, `vgg_weights`):

- ``auto``: torchvision's own file (``WEIGHTS``: its name, address and sha256 prefix), from
  torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where ``resnet34(weights=...)`` keeps
  it too), downloaded there first when absent with `fastray download`'s machinery: a
  dropped transfer resumes from its ``.part`` file (HTTP Range), and a file whose sha256
  does not start with the 8 hex digits in its name (torch.hub's check_hash convention) is
  refused and deleted.
- ``none``: random initialisation.
- anything else: the path of a state-dict file.

The driver resolves a spec once (``resolve``: it may download, and hashes the file for the
run's MLflow tags); workers only ``locate`` the same file and never download, so on a
cluster every node must see it: the hub cache on shared storage (``TORCH_HOME``), or a path
there. ``FASTRAY_WEIGHTS_URL`` replaces torchvision's base address (a mirror, or a folder
that holds the files under their own names).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import DataError
from .download import CHUNK, _join, _say, fetch

BASE_URL = "https://download.pytorch.org/models/"  # torchvision's weights
URL_ENV = "FASTRAY_WEIGHTS_URL"  # another base address: a mirror, or a folder of the files
RETRIES = 2      # resumes after a dropped connection (1 s, then 2 s apart)
TIMEOUT = 30.0   # seconds to wait for the server to connect or to send more
_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub.HASH_REGEX, at least 8 digits


@dataclass(frozen=True)
class Weights:
    """One of torchvision's published weights files."""

    name: str       # what `fastray download` takes: resnet34, vgg16 ...
    file: str       # torchvision's file name: <arch>-<first hex digits of its sha256>.pth
    published: str  # torchvision's enum that names the file

    @property
    def sha256_prefix(self) -> str:
        m = _HASH.search(self.file)
        assert m is not None, self.file
        return m.group(1)

    @property
    def url(self) -> str:
        return _join(base_url(), self.file)


WEIGHTS: dict[str, Weights] = {w.name: w for w in [
    Weights("resnet34", "resnet34-b627a593.pth", "ResNet34_Weights.IMAGENET1K_V1"),  # pascal-*, carvana-unet
    Weights("resnet18", "resnet18-f37072fd.pth", "ResNet18_Weights.IMAGENET1K_V1"),  # pascal-* with backbone=resnet18
    Weights("vgg16", "vgg16-397923af.pth", "VGG16_Weights.IMAGENET1K_V1"),  # super-res, style-net, style-transfer
]}


@dataclass(frozen=True)
class Resolved:
    """A weights file the driver found (and hashed) for a run."""

    path: Path    # absolute
    sha256: str   # of the whole file
    source: str   # torchvision:<file> for auto, file:<name> for a path

    def tags(self, tag: str) -> dict[str, str]:
        """The MLflow tags that record it: tag = source, tag.sha256, tag.path."""
        return {tag: self.source, f"{tag}.sha256": self.sha256, f"{tag}.path": str(self.path)}


def base_url() -> str:
    base = os.environ.get(URL_ENV) or BASE_URL
    return base if base.endswith("/") else base + "/"


def hub_checkpoints() -> Path:
    """torch.hub's folder of downloaded weights ($TORCH_HOME/hub/checkpoints by default)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_spec(spec: str, key: str = "pretrained") -> str:
    """A config's spec normalised on the driver: auto, none, or an absolute path (Ray Train
    workers run in other folders); ValueError when empty."""
    s = str(spec).strip()
    if not s:
        raise ValueError(f"{key} is empty: expected auto, none or a weights file")
    if s.lower() in ("auto", "none"):
        return s.lower()
    return str(Path(s).expanduser().absolute())


def cached(name: str) -> Path | None:
    """torchvision's file for `name` in the hub cache, or None (nothing is downloaded)."""
    path = hub_checkpoints() / WEIGHTS[name].file
    return path if path.is_file() else None


def resolve(spec: str, name: str, key: str = "pretrained") -> Resolved | None:
    """On the driver: the file `spec` names (None for none); for auto, torchvision's file for
    `name` from the hub cache, downloaded there first when absent. FileNotFoundError in one
    line (which file, from where, how to pass it by hand) when it cannot be had."""
    spec = weights_spec(spec, key)
    if spec == "none":
        return None
    if spec != "auto":
        path = _existing(spec, key)
        return Resolved(path, sha256_of(path), f"file:{path.name}")
    w = WEIGHTS[name]
    dest = hub_checkpoints() / w.file
    if not dest.is_file():
        _download(w, dest, key)
    sha = sha256_of(dest)
    if not sha.startswith(w.sha256_prefix):
        raise ValueError(f"{key}=auto: {dest}: sha256 {sha[:16]}..., not torchvision's {w.file} (sha256 "
                         f"{w.sha256_prefix}...): delete it to download it again, or pass --set {key}=FILE")
    return Resolved(dest, sha, f"torchvision:{w.file}")


def locate(spec: str, name: str, key: str = "pretrained") -> Path | None:
    """On a worker: the file resolve() found on the driver (None for none). Never downloads:
    FileNotFoundError when this node cannot see it."""
    spec = weights_spec(spec, key)
    if spec == "none":
        return None
    if spec != "auto":
        return _existing(spec, key, " on this node (on a cluster every node must see it: put it on shared storage)")
    w = WEIGHTS[name]
    path = hub_checkpoints() / w.file
    if not path.is_file():
        raise FileNotFoundError(f"{key}=auto: {path}: no such file on this node (the driver resolved {w.file}; on a "
                                f"cluster every node must see it: set TORCH_HOME to shared storage on every node, or "
                                f"fastray download {w.name} --out DIR on shared storage and --set {key}=DIR/{w.file})")
    return path


def missing_message(w: Weights, key: str, why: str) -> str:
    """One line: which file, from where, and how to pass it by hand."""
    return (f"{key}=auto needs {w.file} (torchvision's {w.published}) from {w.url}: {why}; on a machine with "
            f"internet run `fastray download {w.name} --out DIR` and pass --set {key}=DIR/{w.file}, or put the "
            f"file in {hub_checkpoints()}/")


def _existing(spec: str, key: str, where: str = "") -> Path:
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{key} {path}: no such file{where}")
    return path


def _download(w: Weights, dest: Path, key: str) -> None:
    """torchvision's file into dest (checked, resumable), one process at a time."""
    check = {"size": None, "md5": None, "sha256": w.sha256_prefix, "by": f"torchvision ({w.published}, in its name)",
             "note": "", "advice": "nothing was kept"}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(dest):
            if not dest.is_file():  # another process may have fetched it while this one waited
                _say(f"{key}=auto: downloading {w.file} from {w.url} into {dest.parent}/")
                _, info = fetch(w.url, dest, check, retries=RETRIES, timeout=TIMEOUT)
                _HASHED[_stamp(dest)] = info["sha256"]
    except (DataError, OSError) as e:
        raise FileNotFoundError(missing_message(w, key, str(e) if isinstance(e, DataError) else
                                                f"{e.filename or dest.parent}: {e.strerror or e}")) from None


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """An exclusive lock on dest.lock while a process fetches dest (two runs starting at once
    would append to one .part file); the lock file is removed on the way out. A lock file,
    not the folder: flock on NFS needs a file open for writing."""
    lock = _lock_file(dest)
    while True:
        f = open(lock, "a")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                break  # still the lock file: not removed by the holder before this one
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while held: a waiter on this file sees it gone and opens a new one
        f.close()


def _lock_file(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file hashed once a process


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.absolute()), st.st_size, st.st_mtime_ns


def sha256_of(path: Path) -> str:
    """The file's sha256 (remembered for this process while its size and mtime hold)."""
    stamp = _stamp(path)
    if stamp not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        _HASHED[stamp] = h.hexdigest()
    return _HASHED[stamp]


# ---------------------------------------------------------------- fastray download NAME


def cmd_download(args: argparse.Namespace) -> dict:
    """`fastray download resnet34|vgg16 --out DIR`: torchvision's file into DIR, checked and
    resumable (a second run checks the file and fetches nothing); `--url` a mirror or a local
    copy. The result says how to pass it to a run."""
    t0 = time.perf_counter()
    w = WEIGHTS[args.name]
    if args.source or args.checksum:
        raise ValueError(f"{w.name}: --source and --checksum are for data sets; the weights are torchvision's "
                         f"{w.file}, checked against the sha256 prefix in its name")
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    if len(args.url) > 1:
        raise ValueError(f"{w.name}: one file: give one --url, got {len(args.url)}")
    url = w.url if not args.url else (_join(args.url[0], w.file) if args.url[0].endswith("/") or
                                      Path(args.url[0]).is_dir() else args.url[0])
    out = Path(args.out).expanduser().absolute()
    dest = out / w.file
    check = {"size": None, "md5": None, "sha256": w.sha256_prefix, "by": f"torchvision ({w.published}, in its name)",
             "note": "; a mirror must serve the very same file" if args.url else "",
             "advice": "run the command again to download it anew"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        present = dest.is_file()
        _, info = fetch(url, dest, check, retries=args.retries)
    except OSError as e:
        raise DataError(f"{e.filename or out}: {e.strerror or e}") from None
    key = "vgg_weights" if w.name.startswith("vgg") else "pretrained"
    _say(f"{w.name}: {dest}; pass --set {key}={dest}, or put it in TORCH_HOME/hub/checkpoints/ on storage every "
         f"node sees")
    return {"weights": w.name, "file": str(dest), "url": url, "published": w.published, "sha256": info["sha256"],
            "bytes": info["bytes"], "resumed_from": info["resumed_from"], "use": f"--set {key}={dest}",
            "status": "present" if present else "downloaded", "seconds": round(time.perf_counter() - t0, 3)}
