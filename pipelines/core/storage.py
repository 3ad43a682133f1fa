"""Where a run keeps what outlives it, and the checks that other nodes can reach it.

One root (--storage, else $FASTRAY_STORAGE) holds runs/ (Ray Train checkpoints), cache/
(the preprocessing cache) and mlartifacts/ (MLflow artifacts); with neither, ./runs,
./cache and artifacts beside mlruns.db. An object-store URI (s3://, gs://) goes to Ray
Train as it is; file:// is a path.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from . import tracking

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: `fastray preprocess` needs none
    import torch

logger = logging.getLogger("fastray")

CHECKPOINT_FILE = "state.pt"
EPOCH_FILE = "epoch.txt"


# file systems that other machines mount too; FUSE ones (s3fs, gcsfuse, sshfs, juicefs ...)
# reach a remote store. Anything else (ext4, xfs, tmpfs, overlay ...) is this machine's own.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "afs",
    "orangefs", "pvfs2", "wekafs", "panfs", "ocfs2", "gfs2",
})


@dataclass(frozen=True)
class Storage:
    """Where a run keeps what outlives it, laid out like the local defaults under one root:
    runs/ (Ray Train checkpoints), cache/ (the preprocessing cache), mlartifacts/ (MLflow
    artifacts). root None: the local defaults themselves."""

    root: str | None  # an absolute path or an s3:// / gs:// URI

    @classmethod
    def resolve(cls, cli: str | None) -> "Storage":
        root = cli or os.environ.get("FASTRAY_STORAGE") or None
        if root is None:
            return cls(None)
        if root.startswith("file://"):
            root = urlparse(root).path
        if is_uri(root):
            return cls(root.rstrip("/"))
        return cls(str(Path(root).expanduser().absolute()))

    def join(self, name: str) -> str | None:
        return None if self.root is None else join_storage(self.root, name)

    def checkpoints(self) -> str:
        """Ray Train's storage_path: root/runs, or ./runs (absolute) with no root."""
        return self.join("runs") or str(Path("runs").absolute())

    def cache_dir(self, cli: Path | None) -> Path | None:
        """--cache-dir wins; the cache is a file system's (it renames and locks), so a URI
        storage leaves it at its default."""
        if cli is not None or self.root is None or is_uri(self.root):
            return cli
        return Path(self.join("cache"))

    def artifacts(self) -> str | None:
        """New MLflow experiments' artifact location (a URI)."""
        where = self.join("mlartifacts")
        return where if where is None or is_uri(where) else Path(where).as_uri()


def filesystem_type(path: str | Path, mounts: str | None = None) -> str:
    """The type of the file system that holds (or would hold) `path`, from the mount table
    (/proc/mounts unless given); "unknown" where there is none."""
    p, missing = Path(path).absolute(), []
    while not p.exists() and p != p.parent:  # not made yet: where it would be made
        p, missing = p.parent, [p.name, *missing]
    p = p.resolve().joinpath(*missing)  # symlinks followed to the real file system
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    best, fstype = -1, "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " ").replace("\\011", "\t"))
        if (p == point or point in p.parents) and len(point.parts) > best:
            best, fstype = len(point.parts), fields[2]
    return fstype


def is_shared_filesystem(fstype: str) -> bool:
    return fstype in SHARED_FILESYSTEMS or (fstype.startswith("fuse.") and fstype != "fuse.lxcfs")


def cluster_hosts() -> set[str]:
    """The addresses of the machines whose Ray nodes are alive (several nodes may share one)."""
    import ray

    return {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}


def check_shared(storage: Storage, cache_root: Path, tracking_uri: str, hosts: set[str],
                 data: Path | None = None, mounts: str | None = None) -> None:
    """On a cluster of several machines, refuse a local path that other nodes must read or
    write: checkpoints (Ray Train's workers), the cache and the data (Ray Data's tasks), a
    SQLite MLflow store (rank 0 logs from its node). FASTRAY_SHARED_STORAGE=1 vouches for
    paths this cannot recognise as shared."""
    if len(hosts) < 2 or os.environ.get("FASTRAY_SHARED_STORAGE") == "1":
        return
    where = f"the cluster's nodes sit on {len(hosts)} machines"
    fix = "give --storage (or $FASTRAY_STORAGE) a shared file system path (NFS, EFS, Lustre ...)"
    places = []
    ckpt = storage.checkpoints()
    if not is_uri(ckpt):
        places.append(("checkpoints", Path(ckpt), fix))
    cache_fix = (f"the cache needs a file system: give --cache-dir on a shared one (--storage {storage.root} holds the rest)"
                 if storage.root and is_uri(storage.root) else fix)
    places.append(("the preprocessing cache", cache_root, cache_fix))
    if data is not None:
        places.append(("the data folder", Path(data).absolute(), "put the data on a shared file system"))
    if tracking_uri.startswith("sqlite:///"):
        places.append(("the MLflow store", Path(tracking_uri[len("sqlite:///"):]),
                       "run `mlflow server` on the head and set MLFLOW_TRACKING_URI=http://HEAD_IP:5000 "
                       "(README: Cluster)"))
    for what, path, how in places:
        fstype = filesystem_type(path, mounts)
        if not is_shared_filesystem(fstype):
            raise ValueError(f"{what} {path} is on this machine's own disk ({fstype}), but {where}: "
                             f"the others cannot see it; {how}; or set FASTRAY_SHARED_STORAGE=1 if it is shared")


def check_cluster(storage: Storage, cache, tracking_uri: str | None, data: Path | None = None) -> None:
    """Check the storage against the cluster this command runs on: the one RAY_ADDRESS names
    (a submitted job always has it), joined now, or the Ray this process already joined.
    Otherwise the command starts a local Ray, one machine: nothing to check, and no Ray
    started for it (a warm preprocess starts none at all)."""
    if os.environ.get("RAY_ADDRESS"):
        from preprocessing.runtime import init_ray

        init_ray()
    elif "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        return
    check_shared(storage, cache.root, tracking.resolve_uri(tracking_uri), cluster_hosts(), data=data)



LOCK_FILE = ".fastray.lock"


@contextlib.contextmanager
def run_lock(run_dir: str, name: str):
    """One process trains a run name at a time: an exclusive flock on run_dir/.fastray.lock,
    held for the run and released on any exit (a killed process holds none, so a rerun after
    a crash takes it over). A second start says who holds it. A run folder this call made
    and nothing but the lock filled is removed again. Object storage has no lock."""
    if is_uri(run_dir):
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"run {name!r} is being trained by {holder}; wait for it to end, "
                             "or use another --name") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:  # a run that stopped before it made anything (bad input) leaves no folder behind
            if created and [p.name for p in path.parent.iterdir()] == [LOCK_FILE]:
                path.unlink()
                path.parent.rmdir()


def save_state(state: dict, folder: Path) -> None:
    import torch

    torch.save(state, Path(folder) / CHECKPOINT_FILE)
    (Path(folder) / EPOCH_FILE).write_text(str(state["epoch"]))


def load_state(folder: Path) -> dict:
    """A checkpoint's state: tensors and plain containers only (weights_only: no pickled code)."""
    import torch

    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def load_newest(folders: list[Path], warn: bool = True) -> dict | None:
    """The state of the newest checkpoint folder (by its epoch) that loads; a damaged or
    half-copied one is named on stderr and the one before it tried."""
    for folder in sorted(folders, key=checkpoint_epoch, reverse=True):
        try:
            return load_state(folder)
        except Exception as e:
            if warn:
                logger.warning(f"warning: checkpoint {folder} does not load ({type(e).__name__}): "
                               "resuming from the one before it")
    return None


def is_uri(location: str) -> bool:
    """An object-store URI (s3://, gs:// ...) that Ray Train takes as it is; file:// is a path."""
    return "://" in location and not location.startswith("file://")


def join_storage(root: str, name: str) -> str:
    return f"{root}/{name}" if is_uri(root) else str(Path(root) / name)


def check_resumable(pipeline: str, model: torch.nn.Module, run_dir: str | Path, name: str) -> int | None:
    """Refuse, before any training, a run folder whose checkpoint another pipeline or an
    incompatible config (other shapes) wrote: resuming from it would fail on every worker.
    The epoch of the newest checkpoint that loads (the one a resume starts from), or None.
    (On object storage Ray Train's own restore is the only check.)"""
    if not run_dir or is_uri(str(run_dir)):
        return None
    folders = sorted(Path(run_dir).glob("checkpoint_*"), key=checkpoint_epoch, reverse=True)
    for folder in folders:
        try:
            state = load_state(folder)
        except Exception:
            continue
        hint = f"use another --name, or delete {run_dir} to start over"
        if state.get("pipeline", pipeline) != pipeline:
            raise ValueError(f"run {name!r}: its checkpoint {folder} is from pipeline {state['pipeline']!r}, "
                             f"not {pipeline!r}; {hint}")
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state["model"].items()}
        if want != have:
            diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
            what = diff[0] + (f" {have.get(diff[0])} in the checkpoint, {want.get(diff[0])} now" if diff[0] in want and diff[0] in have else "")
            raise ValueError(f"run {name!r}: its checkpoint {folder} does not fit this config ({len(diff)} "
                             f"tensor(s) differ, e.g. {what}); {hint}")
        return int(state["epoch"])
    if folders:
        logger.warning(f"[{name}] warning: none of the {len(folders)} checkpoint(s) in {run_dir} loads (damaged?): "
            "this run starts from epoch 0")


def checkpoint_epoch(folder: Path) -> int:
    try:
        return int((folder / EPOCH_FILE).read_text())
    except (OSError, ValueError):
        return -1


