"""The fastray command line. Progress goes to stderr; the last stdout line is one JSON object.

    fastray list
    fastray sample-data NAME --out DIR [--size N]
    fastray download NAME --out DIR [--source fastai|original] [--url U ...] [--checksum ...]
    fastray preprocess NAME [--data DIR] [--cache-dir DIR] [--config C] [--set k=v ...] [--storage S]
    fastray run NAME [--data DIR] [--config tiny|sample|default|FILE.json] [--set k=v ...]
                [--epochs N] [--num-workers N] [--use-gpu] [--tracking-uri URI] [--name NAME]
                [--storage PATH_OR_URI] [--placement pack|spread]
    fastray tune NAME ... [--storage PATH_OR_URI] [--placement pack|spread]
    fastray translate RUN_ID [--file F] [--beam K]     (a trained translate run, one line each)

--storage (or $FASTRAY_STORAGE) is where a run keeps what outlives it, laid out like the
local defaults: ROOT/runs (Ray Train checkpoints), ROOT/cache (the preprocessing cache)
and ROOT/mlartifacts (MLflow artifacts). On a cluster it must be a path every node sees
(NFS, EFS, Lustre ...); a run on several hosts refuses a path on the driver's own disk
before it starts. s3:// and gs:// URIs are laid out the same way (checkpoints go to Ray
Train as they are; the cache needs a file system path: give --cache-dir).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from preprocessing import DataError, download

from . import config as configs
from . import registry, tracking, translate
from .engine import is_uri

EXIT_USAGE, EXIT_ERROR = 2, 1
PLACEMENTS = ("pack", "spread")


def emit(obj: dict) -> None:
    """The job-friendly result: one JSON object, the last line on stdout."""
    sys.stdout.flush()
    print(json.dumps(obj, default=str), flush=True)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ storage


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
        if self.root is None:
            return None
        return f"{self.root}/{name}" if is_uri(self.root) else str(Path(self.root) / name)

    def checkpoints(self) -> str | None:
        """Ray Train's storage_path: None leaves the engine's default (./runs)."""
        return self.join("runs")

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
    if ckpt is None or not is_uri(ckpt):
        places.append(("checkpoints", Path(ckpt or "runs").absolute(), fix))
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


def _check_cluster(storage: Storage, cache, tracking_uri: str | None, data: Path | None = None) -> None:
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


@contextlib.contextmanager
def _placement(choice: str | None):
    """The engine's ScalingConfig reads FASTRAY_PLACEMENT; set it for this run only."""
    value = (choice or os.environ.get("FASTRAY_PLACEMENT") or "pack").lower()
    if value not in PLACEMENTS:
        raise ValueError(f"FASTRAY_PLACEMENT={value!r}: expected one of {', '.join(PLACEMENTS)}")
    before = os.environ.get("FASTRAY_PLACEMENT")
    os.environ["FASTRAY_PLACEMENT"] = value.upper()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FASTRAY_PLACEMENT", None)
        else:
            os.environ["FASTRAY_PLACEMENT"] = before


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastray", description="fast.ai Part 2 models as Ray pipelines")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the pipelines")

    s = sub.add_parser("sample-data", help="generate learnable sample data in the real layout")
    s.add_argument("name", help="a data set (cifar10) or a pipeline name")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--size", type=int, default=None, help="number of items")

    download.add_parser(sub)
    translate.add_parser(sub)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("name", help="pipeline name (see `fastray list`)")
        q.add_argument("--data", type=Path, default=None, help="the data set's folder (default: data/<dataset>)")
        q.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default: ./cache)")
        q.add_argument("--config", default=None, help="tiny | sample | default | FILE.json")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        q.add_argument("--on-bad-input", choices=("skip", "fail"), default="skip",
                       help="an unreadable input file: skip it and count it (default) or stop")
        q.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                       help="shared storage for checkpoints (runs/), the cache (cache/) and MLflow artifacts "
                            "(mlartifacts/): a path every node sees; default $FASTRAY_STORAGE, "
                            "else ./runs, ./cache and artifacts beside mlruns.db")

    q = sub.add_parser("preprocess", help="decode/tokenize into the cache (a second run does no work)")
    common(q)

    r = sub.add_parser("run", help="train a pipeline with Ray Train and record it in MLflow")
    common(r)
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--num-workers", type=int, default=1, help="data-parallel training workers")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    r.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    r.add_argument("--name", dest="run_name", default=None, help="run name; rerunning a name resumes it from its last checkpoint")
    r.add_argument("--placement", choices=PLACEMENTS, default=None,
                   help="pack the workers on few nodes (default) or spread them one a node where they fit; "
                        "default $FASTRAY_PLACEMENT or pack")

    t = sub.add_parser("tune", help="search dropout and schedule hyperparameters with Ray Tune + ASHA")
    common(t)
    t.add_argument("--epochs", type=int, default=None, help="epochs of each trial (ASHA's max_t)")
    t.add_argument("--num-samples", type=int, default=8, help="trials")
    t.add_argument("--max-concurrent", type=int, default=None, help="default: as many as the cluster fits")
    t.add_argument("--workers-per-trial", type=int, default=1, help=">1: each trial fits a TorchTrainer")
    t.add_argument("--gpus-per-worker", type=float, default=0)
    t.add_argument("--search", choices=("random", "tpe"), default="random", help="tpe needs optuna")
    t.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tracking-uri", default=None)
    t.add_argument("--placement", choices=PLACEMENTS, default=None,
                   help="with --workers-per-trial > 1: pack each trial's workers (default) or spread them")
    t.add_argument("--name", dest="run_name", default=None,
                   help="search name (default: derived from the command, so rerunning it resumes)")
    return p


def _config(pipe: registry.Pipeline, args, default_name: str):
    cfg, label = configs.load(pipe.configs, args.config or default_name)
    overrides = configs.parse_sets(args.set)
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = str(args.epochs)
    if overrides:
        cfg = configs.apply(cfg, overrides)
    return cfg, label


def _data_dir(pipe: registry.Pipeline, args) -> tuple[Path, bool]:
    """(folder, is_sample). With no --data: the default folder, else generated sample data."""
    if args.data is not None:
        return args.data, False
    default = pipe.default_data_dir()
    if default.is_dir() and any(default.iterdir()):
        return default, False
    sample = Path("data") / "samples" / pipe.dataset
    say(f"no {pipe.dataset} data in {default}/: using generated sample data in {sample}/")
    if not (sample / ".complete").exists():
        info = pipe.sample_data(sample)
        (sample / ".complete").write_text(json.dumps(info))
        say(f"generated {info}")
    return sample, True


def cmd_list(args) -> dict:
    rows = []
    for name in registry.names():
        pipe = registry.get(name)
        rows.append({"name": name, "dataset": pipe.dataset, "metric": pipe.metric, "configs": list(pipe.configs)})
        say(f"{name:24s} data={pipe.dataset:10s} metric={pipe.metric}")
    return {"pipelines": rows}


def cmd_sample_data(args) -> dict:
    name = args.name
    if name in registry.names():
        pipe = registry.get(name)
    else:
        pipe = next((registry.get(n) for n in registry.names() if registry.get(n).dataset == name), None)
        if pipe is None:
            datasets = sorted({registry.get(n).dataset for n in registry.names()})
            raise KeyError(f"unknown data set or pipeline {name!r}; data sets: {', '.join(datasets)}")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    t0 = time.perf_counter()
    info = pipe.sample_data(args.out, args.size)
    return {"dataset": pipe.dataset, **info, "seconds": round(time.perf_counter() - t0, 2)}


def cmd_preprocess(args) -> dict:
    from preprocessing.cache import Cache

    pipe = registry.get(args.name)
    storage = Storage.resolve(args.storage)
    cache = Cache(storage.cache_dir(args.cache_dir))
    data, is_sample = _data_dir(pipe, args)
    cfg, _ = _config(pipe, args, "sample" if is_sample else "default")
    # a cold build on a cluster reads and writes from many nodes: check that they see the folders
    _check_cluster(storage, cache, None, data=data)
    t0 = time.perf_counter()
    manifest, hit = pipe.preprocess(cfg, data, cache, args.on_bad_input)
    seconds = time.perf_counter() - t0
    say(f"cache {'hit' if hit else 'miss'}: {manifest['key']} ({seconds:.2f}s)")
    return {
        "cache": "hit" if hit else "miss", "key": manifest["key"], "rows": manifest["rows"],
        "skipped": manifest.get("skipped", {}), "path": str(cache.path(manifest["name"], manifest["key"])),
        "seconds": round(seconds, 3),
    }


def cmd_run(args) -> dict:
    from preprocessing.cache import Cache

    pipe = registry.get(args.name)
    storage = Storage.resolve(args.storage)
    checkpoints = storage.checkpoints()
    cache = Cache(storage.cache_dir(args.cache_dir))
    with _placement(args.placement):  # a bad $FASTRAY_PLACEMENT fails before any work
        data, is_sample = _data_dir(pipe, args)
        cfg, label = _config(pipe, args, "sample" if is_sample else "default")
        _check_cluster(storage, cache, args.tracking_uri, data=data)
        if is_sample and args.config is None:
            say("using the 'sample' config")
        name = args.run_name or f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        with tracking.artifact_storage(storage.artifacts()):
            return pipe.run(
                cfg, data_dir=data, cache=cache, name=name,
                num_workers=args.num_workers, use_gpu=args.use_gpu, tracking_uri=args.tracking_uri,
                storage=checkpoints, on_bad=args.on_bad_input, config_label=label,
            )


def cmd_tune(args) -> dict:
    from preprocessing.cache import Cache, digest

    from .tuning import tune

    pipe = registry.get(args.name)
    storage = Storage.resolve(args.storage)
    checkpoints = storage.checkpoints()
    cache = Cache(storage.cache_dir(args.cache_dir))
    data, is_sample = _data_dir(pipe, args)
    cfg, label = _config(pipe, args, "sample" if is_sample else "default")
    _check_cluster(storage, cache, args.tracking_uri, data=data)
    search = {k: getattr(args, k) for k in ("num_samples", "max_concurrent", "workers_per_trial",
                                            "gpus_per_worker", "search", "time_budget", "seed")}
    name = args.run_name or f"{args.name}-tune-{digest([configs.to_dict(cfg), search, str(data)])[:8]}"
    with _placement(args.placement), tracking.artifact_storage(storage.artifacts()):
        return tune(
            args.name, cfg, data_dir=data, cache=cache, name=name, config_label=label,
            num_samples=args.num_samples, max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial,
            gpus_per_worker=args.gpus_per_worker, search=args.search, time_budget_s=args.time_budget, seed=args.seed,
            tracking_uri=args.tracking_uri, storage=checkpoints, on_bad=args.on_bad_input,
        )


def cmd_download(args) -> dict:
    return download.cmd_download(args, pipelines={n: registry.get(n).dataset for n in registry.names()})


COMMANDS = {"list": cmd_list, "sample-data": cmd_sample_data, "download": cmd_download, "preprocess": cmd_preprocess,
            "run": cmd_run, "tune": cmd_tune, "translate": translate.cmd_translate}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        emit(COMMANDS[args.command](args))
        return 0
    except (DataError, configs.ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        say(f"fastray: error: {msg}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        say("fastray: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
