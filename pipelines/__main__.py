"""The fastray command line. Progress goes to stderr; the last stdout line is one JSON object.

    fastray list
    fastray sample-data NAME --out DIR [--size N]
    fastray download NAME --out DIR [--source fastai|original] [--url U ...] [--checksum ...]
    fastray download resnet34|resnet18|vgg16 --out DIR [--url U]   (torchvision's ImageNet weights)
    fastray preprocess NAME [--data DIR] [--cache-dir DIR] [--config C] [--set k=v ...] [--storage S]
    fastray run NAME [--data DIR] [--config tiny|sample|default|FILE.json] [--set k=v ...]
                [--epochs N] [--num-workers N] [--use-gpu] [--tracking-uri URI] [--name NAME]
                [--storage PATH_OR_URI] [--placement pack|spread]
    fastray tune NAME ... [--storage PATH_OR_URI] [--placement pack|spread]
    fastray flow NAME [--data DIR] [--config C] [--set [STAGE.]key=value ...] [--dry-run] [--from S] [--until S]
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
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from preprocessing import DataError, download, pretrained

from .core import config as configs
from .core import logs, registry, tracking
from .core.storage import Storage, check_cluster, is_uri

EXIT_USAGE, EXIT_ERROR = 2, 1
PLACEMENTS = ("pack", "spread")


def emit(obj: dict) -> None:
    """The job-friendly result: one strict JSON object (nan and inf as null), the last line on stdout."""
    sys.stdout.flush()
    print(json.dumps(_strict(obj), default=str, allow_nan=False), flush=True)


def _strict(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


say = logs.logger.info


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
    s.add_argument("--out", required=True, type=Path, help="the folder to write it into (made if missing)")
    s.add_argument("--size", type=int, default=None, help="how many items (images, reviews, pairs ...; default: the data set's own sample size)")

    download.add_parser(sub, weights=tuple(pretrained.WEIGHTS))
    ui = sub.add_parser("ui", help="the MLflow UI on the runs' store, at http://127.0.0.1:PORT")
    ui.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    ui.add_argument("--port", type=_port, default=5000, help="default 5000 (the port the runs' printed links use)")
    tr = sub.add_parser("translate", help="translate lines (stdin or --file) with a trained translate run")
    tr.add_argument("run_id", help="a finished `fastray run translate`: its MLflow run id, or its --name")
    tr.add_argument("--file", type=Path, default=None, help="one sentence a line (default: stdin)")
    tr.add_argument("--beam", type=int, default=None, help="beam size (default: the run's; 1: greedy)")
    tr.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")

    def common(q: argparse.ArgumentParser, what: str = "pipeline") -> None:
        q.add_argument("name", help=f"{what} name (see `fastray list`)")
        q.add_argument("--data", type=Path, default=None, help="the data set's folder (default: data/<dataset>)")
        q.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default: ./cache)")
        q.add_argument("--config", default=None,
                       help="tiny (a smoke test: seconds, learns nothing) | sample | default | FILE.json; "
                            "default: sample on generated sample data, else default")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        q.add_argument("--on-bad-input", choices=("skip", "fail"), default="skip",
                       help="an unreadable input file: skip it and count it (default) or stop")
        q.add_argument("-v", "--verbose", action="store_true",
                       help="show Ray's, Ray Data's, Ray Train's and MLflow's own lines (default: they go to a "
                            "log file, the run folder's fastray.log; a preprocess's in cache/logs/)")
        q.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                       help="shared storage for checkpoints (runs/), the cache (cache/) and MLflow artifacts "
                            "(mlartifacts/): a path every node sees; default $FASTRAY_STORAGE, "
                            "else ./runs, ./cache and artifacts beside mlruns.db")

    q = sub.add_parser("preprocess", help="decode/tokenize into the cache (a second run does no work)")
    common(q)

    r = sub.add_parser("run", help="train a pipeline with Ray Train and record it in MLflow")
    common(r)
    r.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the config's)")
    r.add_argument("--num-workers", type=int, default=1, help="data-parallel training workers (default 1)")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    r.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    r.add_argument("--name", dest="run_name", type=_run_name, default=None, help="run name; rerunning a name resumes it from its last checkpoint")
    r.add_argument("--placement", choices=PLACEMENTS, default=None,
                   help="pack the workers on few nodes (default) or spread them one a node where they fit; "
                        "default $FASTRAY_PLACEMENT or pack")

    f = sub.add_parser("flow", help="run a lesson's stages as one command (each stage cached and resumable)")
    common(f, "flow")
    f.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    f.add_argument("--dry-run", action="store_true", help="print the plan (which stages are reused) and stop")
    f.add_argument("--from", dest="start", default=None, metavar="STAGE", help="run from this stage (those before reused)")
    f.add_argument("--until", default=None, metavar="STAGE", help="run up to this stage")
    f.add_argument("--num-workers", type=int, default=1, help="each stage's data-parallel training workers (default 1)")
    f.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    f.add_argument("--placement", choices=PLACEMENTS, default=None, help="each stage's worker placement (see run)")

    t = sub.add_parser("tune", help="search dropout and schedule hyperparameters with Ray Tune + ASHA")
    common(t)
    t.add_argument("--epochs", type=int, default=None, help="epochs of each trial (ASHA's max_t)")
    t.add_argument("--num-samples", type=int, default=8, help="trials (default 8)")
    t.add_argument("--max-concurrent", type=int, default=None, help="default: as many as the cluster fits")
    t.add_argument("--workers-per-trial", type=int, default=1, help="workers of each trial (default 1; >1: each trial fits a TorchTrainer)")
    t.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs each trial's worker holds (a fraction shares one)")
    t.add_argument("--search", choices=("random", "tpe"), default="random", help="default random; tpe needs optuna")
    t.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop the search after this long (its running trials too)")
    t.add_argument("--seed", type=int, default=0, help="the search's seed: which values it samples (default 0)")
    t.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    t.add_argument("--placement", choices=PLACEMENTS, default=None,
                   help="with --workers-per-trial > 1: pack each trial's workers (default) or spread them")
    t.add_argument("--name", dest="run_name", type=_run_name, default=None,
                   help="search name (default: derived from the command, so rerunning it resumes)")
    return p


def _config(pipe, args, default_name: str):
    cfg, label = configs.load(pipe.configs, args.config or default_name)
    overrides = configs.parse_sets(args.set)
    if overrides:
        cfg = configs.apply(cfg, overrides)
    if getattr(args, "epochs", None) is not None:  # after --set, as it always won
        cfg = configs.apply(cfg, {"epochs": str(args.epochs)}, source="--epochs")
    return cfg, label


def _run_name(text: str) -> str:
    """A run's or a search's --name: it names its folder under the storage and is looked up
    in MLflow by tag, so one folder name (no '/', not '.' or '..') without quotes or
    control characters."""
    if text in ("", ".", "..") or any(c in "/\\'\"" or ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a run name: one folder name, without '/', '\\', quotes "
                                         "or control characters")
    return text


def _port(text: str) -> int:
    """A TCP port to listen on: 1-65535 (0 would be a port the OS picks, unknown to the links)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _data_dir(pipe, args) -> tuple[Path, bool]:
    """(folder, is_sample). With no --data: the default folder, else generated sample data."""
    if args.data is not None:
        return args.data, False
    default = pipe.default_data_dir()
    if default.is_dir() and any(default.iterdir()):
        return default, False
    sample = Path("data") / "samples" / pipe.dataset
    say(_sample_note(pipe, sample))
    if not (sample / ".complete").exists():
        info = pipe.sample_data(sample)
        (sample / ".complete").write_text(json.dumps(info))
        say("generated " + ", ".join(f"{v} {k}" for k, v in info.items() if isinstance(v, int)) + f" in {sample}/")
    return sample, True


def _sample_note(pipe, sample: Path) -> str:
    return f"no {pipe.dataset} data in {pipe.default_data_dir()}/: using generated sample data in {sample}/"


def cmd_list(args) -> dict:
    rows = []
    for name in registry.names():
        e = registry.entry(name)
        configs = list(registry.pipeline_class(name).configs)
        rows.append({"name": name, "lesson": e.lesson, "dataset": e.dataset, "metric": e.metric, "configs": configs})
        say(f"{name:16s} lesson {e.lesson:2d}  data {e.dataset:12s} metric {e.metric} ({e.mode})")
    from .core import flows

    for name in flows.names():
        f = flows.get(name)
        always = [s.name for s in f.stages if not s.when]
        optional = {w: [s.name for s in f.stages if s.when == w] for w in dict.fromkeys(s.when for s in f.stages if s.when)}
        say(f"{name:16s} lesson {f.lesson:2d}  flow: {' -> '.join(always)}"
            + "".join(f" (with --set {w}=true: + {' -> '.join(names)})" for w, names in optional.items()))
    return {"pipelines": rows, "flows": {n: [s.name for s in flows.get(n).stages] for n in flows.names()}}


def cmd_sample_data(args) -> dict:
    name = args.name
    if name not in registry.names():  # a data set's name: the first pipeline that reads it
        wanted, known = {name}, None
        with contextlib.suppress(KeyError):  # or `fastray download`'s name for it (bedroom: lsun's)
            known = download.resolve(name)
            wanted |= {known.name, *known.aliases}
        name = next((n for n in registry.names() if registry.entry(n).dataset in wanted), None)
        if name is None:
            datasets = ", ".join(sorted({registry.entry(n).dataset for n in registry.names()}))
            if known:  # wikitext-103: downloaded for pretraining, read by no pipeline's sample
                raise KeyError(f"{known.name} has no sample data (fastray download fetches it); data sets with samples: {datasets}")
            raise KeyError(f"unknown data set or pipeline {args.name!r}; data sets: {datasets}")
    pipe = registry.get(name)
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    out = args.out.resolve()  # the folder checked is the one written (and cleaned): "a/../b" is b
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    if out.is_dir() and any(out.iterdir()):  # its files would mix with the sample's (and be read with them)
        raise ValueError(f"--out {args.out}: not empty; sample data goes to a new or empty folder")
    made = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the top folder made here
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {args.out}: cannot make this folder ({(e.strerror or str(e)).lower()})") from None
    t0 = time.perf_counter()
    try:
        info = pipe.sample_data(out, args.size)
    except BaseException:  # a part of a sample is no sample: the folder goes back to what it was
        import shutil

        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:  # it was empty (checked above)
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise
    return {"dataset": pipe.dataset, **info, "seconds": round(time.perf_counter() - t0, 2)}


def cmd_preprocess(args) -> dict:
    from preprocessing.cache import Cache

    storage = Storage.resolve(args.storage)
    cache = Cache(storage.cache_dir(args.cache_dir))
    # the same request as last time, nothing it read changed: its entry, without importing the
    # lesson (and torch); on a cluster the full path checks that the nodes see the folders
    request = {"pipeline": args.name, "data": args.data and str(args.data.absolute()), "cwd": os.getcwd(),
               "config": args.config, "set": args.set, "on_bad": args.on_bad_input, "cache": str(cache.root)}
    t0 = time.perf_counter()
    manifest, said = (None, []) if os.environ.get("RAY_ADDRESS") else cache.recall(request) or (None, [])
    hit = manifest is not None
    for line in said:  # what the full path told the user about the data it chose
        say(line)
    if manifest is None:
        pipe = registry.get(args.name)
        data, is_sample = _data_dir(pipe, args)
        cfg, _ = _config(pipe, args, "sample" if is_sample else "default")
        t0 = time.perf_counter()
        log = cache.root / "logs" / f"preprocess-{args.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with logs.internals_to(log, mlflow=False):
            # a cold build on a cluster reads and writes from many nodes: check that they see the folders
            check_cluster(storage, cache, None, data=data)
            manifest, hit = pipe.prepare(cfg, data, cache, args.on_bad_input)
        if "nothing" in manifest:  # no cache entry of its own (the ensembles)
            raise ValueError(f"{args.name} has nothing to preprocess: {manifest['nothing']}")
        cache.remember(request, _read_by_preprocess(pipe, args, data), manifest,
                       said=[_sample_note(pipe, data)] if is_sample else [])
    seconds = time.perf_counter() - t0
    say(f"cache {'hit' if hit else 'miss'}: {manifest['key']} ({seconds:.2f}s)")
    return {
        "cache": "hit" if hit else "miss", "key": manifest["key"], "rows": manifest["rows"],
        "skipped": manifest.get("skipped", {}), "path": str(cache.path(manifest["name"], manifest["key"])),
        "seconds": round(seconds, 3),
    }


def _read_by_preprocess(pipe, args, data: Path) -> list[Path]:
    """What decides a preprocess's entry besides the request itself: the data folder (and,
    with no --data, the default one, whose filling changes the choice), files the config
    names, and fastray's own code."""
    named = [args.config or ""] + [s.partition("=")[2] for s in args.set]
    root = Path(__file__).resolve().parent.parent
    return ([data] + ([pipe.default_data_dir()] if args.data is None else [])
            + [Path(v) for v in named if v and os.path.exists(v)]
            + [root / "pipelines", root / "preprocessing", root / "models"])


def cmd_run(args) -> dict:
    from preprocessing.cache import Cache

    from .core.engine import fit

    pipe = registry.get(args.name)
    given = [o for o, v in (("--num-workers", args.num_workers != 1), ("--use-gpu", args.use_gpu)) if v]
    if hasattr(pipe, "run") and given:  # a pipeline that trains no model runs its own way, on no training workers
        raise ValueError(f"{' and '.join(given)}: {args.name} has no training workers to give them to; leave "
                         f"{'it' if len(given) == 1 else 'them'} out")
    storage = Storage.resolve(args.storage)
    checkpoints = storage.checkpoints()
    cache = Cache(storage.cache_dir(args.cache_dir))
    with _placement(args.placement):  # a bad $FASTRAY_PLACEMENT fails before any work
        data, is_sample = _data_dir(pipe, args)
        cfg, label = _config(pipe, args, "sample" if is_sample else "default")
        if is_sample and args.config is None:
            say("using the 'sample' config")
        name = args.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{args.name}"  # the UI cuts names: time first
        with logs.internals_to(_log_file(checkpoints, name)), tracking.artifact_storage(storage.artifacts()):
            check_cluster(storage, cache, args.tracking_uri, data=data)
            return fit(
                args.name, cfg, data_dir=data, cache=cache, name=name,
                num_workers=args.num_workers, use_gpu=args.use_gpu, tracking_uri=args.tracking_uri,
                storage=checkpoints, on_bad=args.on_bad_input, config_label=label, sample=is_sample,
            )


def _log_file(checkpoints: str, name: str) -> Path:
    """The run folder's log of Ray's and MLflow's own lines (beside a URI storage: ./runs/NAME)."""
    return (Path("runs") if is_uri(checkpoints) else Path(checkpoints)) / name / "fastray.log"


def cmd_tune(args) -> dict:
    from preprocessing.cache import Cache, digest

    from .core.tuning import tune

    pipe = registry.get(args.name)
    storage = Storage.resolve(args.storage)
    checkpoints = storage.checkpoints()
    cache = Cache(storage.cache_dir(args.cache_dir))
    data, is_sample = _data_dir(pipe, args)
    cfg, label = _config(pipe, args, "sample" if is_sample else "default")
    check_cluster(storage, cache, args.tracking_uri, data=data)
    search = {k: getattr(args, k) for k in ("num_samples", "max_concurrent", "workers_per_trial",
                                            "gpus_per_worker", "search", "time_budget", "seed")}
    name = args.run_name or f"{args.name}-tune-{digest([configs.to_dict(cfg), search, str(data)])[:8]}"
    with _placement(args.placement), tracking.artifact_storage(storage.artifacts()), \
            logs.internals_to(_log_file(checkpoints, name)):
        return tune(
            args.name, cfg, data_dir=data, cache=cache, name=name, config_label=label,
            num_samples=args.num_samples, max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial,
            gpus_per_worker=args.gpus_per_worker, search=args.search, time_budget_s=args.time_budget, seed=args.seed,
            tracking_uri=args.tracking_uri, storage=checkpoints, on_bad=args.on_bad_input,
            fixed=tuple(configs.parse_sets(args.set)),
            run_flags=" ".join(f"{flag} {shlex.quote(str(v))}" for flag, v in (
                ("--data", args.data), ("--cache-dir", args.cache_dir), ("--storage", args.storage),
                ("--tracking-uri", args.tracking_uri)) if v is not None),
        )


def cmd_flow(args) -> dict:
    from preprocessing.cache import Cache

    from .core import flows

    flow = flows.get(args.name)
    storage = Storage.resolve(args.storage)
    checkpoints = storage.checkpoints()
    cache = Cache(storage.cache_dir(args.cache_dir))
    found: dict[str, tuple[Path, bool]] = {}

    def data_for(pipe) -> tuple[Path, bool]:  # a stage's data, as `fastray run` finds it; once a data set
        if pipe.dataset not in found:
            found[pipe.dataset] = _data_dir(pipe, args)
        return found[pipe.dataset]

    with logs.internals_to(_log_file(checkpoints, f"flow-{flow.name}")), tracking.artifact_storage(storage.artifacts()):
        check_cluster(storage, cache, args.tracking_uri, data=args.data)
        return flows.run(flow.name, config=args.config, sets=args.set, data_for=data_for, cache=cache,
                         uri=args.tracking_uri, storage=args.storage, cache_dir=args.cache_dir,
                         on_bad=args.on_bad_input, dry_run=args.dry_run, start=args.start, until=args.until,
                         workers=args.num_workers, use_gpu=args.use_gpu, placement=args.placement)


def cmd_download(args) -> dict:
    if args.name in pretrained.WEIGHTS:  # one weights file for offline nodes: --set pretrained=DIR/FILE
        return pretrained.cmd_download(args)
    return download.cmd_download(args, pipelines={n: registry.entry(n).dataset for n in registry.names()})


def cmd_ui(args) -> dict:
    """The MLflow UI on the store the runs went to, on 127.0.0.1, one worker; until Ctrl-C.
    The server's own lines go to a log file; its links are printed once it answers."""
    import socket
    import subprocess
    import tempfile

    uri = tracking.resolve_uri(args.tracking_uri)
    if tracking.is_server(uri):  # the server is the UI already
        url = f"{uri.rstrip('/')}/#/experiments?{tracking.MODEL_TRAINING_VIEW}"
        say(f"the runs are on the tracking server {uri}: open {url}")
        return {"url": url}
    with socket.socket() as s:  # taken: say so now, not after the server's start-up and traceback
        try:
            s.bind(("127.0.0.1", args.port))
        except OSError:
            raise ValueError(f"port {args.port} on 127.0.0.1 is taken (another `fastray ui` or MLflow server?); "
                             "choose another with --port") from None
    base = f"http://127.0.0.1:{args.port}"
    url = f"{base}/#/experiments?{tracking.MODEL_TRAINING_VIEW}"
    log = Path(tempfile.gettempdir()) / f"fastray-ui-{args.port}-{os.getpid()}.log"
    # each pipeline's runs table with its headline metric shown, best first (an older store gets the
    # view now); MLflow's own lines (a new store's "Creating initial MLflow database tables") to the log
    with logs.internals_to(log):
        links = [f"  {exp.name}: {base}/#/experiments/{tracking.experiment_id(uri, exp.name)}/runs?"
                 f"{tracking.MODEL_TRAINING_VIEW}&viewStateShareKey={tracking.VIEW_KEY}"
                 for exp in tracking._client(uri).search_experiments() if exp.name != "Default"]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    # MLflow's GenAI job runner (eight huey processes) serves nothing in the model-training view
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    # the server (and its uvicorn) in a process group of its own, stopped whole however this
    # command ends: Ctrl-C, or a kill (SIGTERM) that once left it holding the port
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    server = None
    try:
        with open(log, "a") as out:
            server = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT)
        while server.poll() is None:  # until it answers (a few seconds), or ends
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", args.port)) == 0:
                    say(f"MLflow UI for {uri}: {url} (Ctrl-C stops it; the server's log: {log})")
                    for line in links:
                        say(line)
                    break
            time.sleep(0.2)
        code = server.wait()  # it ended by itself: an error, whatever its exit code
    except KeyboardInterrupt:
        code = None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:  # its group: uvicorn too, even when the server itself has ended
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    if code is not None:
        last = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-1:] or ["(no output)"]
        raise ValueError(f"mlflow server ended with exit code {code}: {last[0].strip()} (its log: {log})")
    return {"url": url}


def cmd_translate(args) -> dict:
    from .lessons.translate import cmd_translate as translate  # the one lesson with a command of its own

    return translate(args)


COMMANDS = {"list": cmd_list, "sample-data": cmd_sample_data, "download": cmd_download, "preprocess": cmd_preprocess,
            "run": cmd_run, "flow": cmd_flow, "tune": cmd_tune, "translate": cmd_translate, "ui": cmd_ui}


def _message(e: BaseException) -> str:
    """An error as its one line: a KeyError's text unquoted; an OSError about a path (not
    one of ours, which say more) as `PATH: what is wrong`."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror.lower()}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup()
    if getattr(args, "verbose", False):
        os.environ["FASTRAY_VERBOSE"] = "1"
    try:
        emit(COMMANDS[args.command](args))
        return 0
    except (DataError, configs.ConfigError, KeyError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError) as e:
        msg = _message(e)
        say(f"fastray: error: {msg}")
        emit({"error": msg})  # scripts read the last stdout line: JSON on failure too
        return EXIT_ERROR
    except KeyboardInterrupt:
        say("fastray: interrupted")
        emit({"error": "interrupted"})
        return 130


def cli() -> None:
    """The `fastray` command (and `python -m pipelines`): main(), then the exit once the
    atexit handlers ran (Ray's shutdown, which stops a Ray this command started, MLflow's and
    logging's flushes). The interpreter's own teardown after them (torch's, Ray's core
    worker's) kept nothing and took 1.7 s of a short run (benchmarks/run_timeline.py)."""
    import atexit

    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors (2) and --help (0)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    cli()
