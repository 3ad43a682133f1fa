"""The engine: a Ray Train driver and the one training loop every pipeline runs.

    fit() ─ preprocess (cache) ─ Ray Datasets ─ MLflow run ─ TorchTrainer.fit()
                                                                │ each worker
    run_loop(): shard ─ phases/schedule ─ train_step ─ evaluate ─ report + checkpoint

The loop takes a Session (Ray Train's here) so another runner (a Tune trial) can drive
the same code. Resume: rerunning with the same name finds Ray Train's checkpoint of the
last finished epoch and continues from the next one, in the same MLflow run.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from . import registry, tracking
from .config import to_dict
from .phases import Schedule, make_optimizer, same_optimizer, set_frozen, set_hyper

CHECKPOINT_FILE = "state.pt"
EPOCH_FILE = "epoch.txt"
FETCH_ROWS = 4096  # rows per Ray Data batch; the loop slices them into training batches


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs, sent once to every worker."""

    pipeline: str
    cfg: Any
    name: str
    num_workers: int
    cpus_per_worker: int
    use_gpu: bool
    steps_per_epoch: int
    tracking_uri: str
    run_id: str
    run_dir: str  # storage_path/name: Ray Train's checkpoints of this run


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the session


class LocalSession:
    """The loop's view of one process with no Ray Train: rank 0 of 1 on the CPU, the given
    datasets as shards, `state` as the checkpoint to resume; reports and the newest state
    are kept. Runs a pipeline's hooks without start-up (tests, experiments)."""

    rank, world = 0, 1

    def __init__(self, shards: dict, state: dict | None = None):
        self.shards, self.state, self.reports = shards, state, []

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None = None) -> torch.nn.Module:
        return model

    def shard(self, name: str):
        return self.shards[name]

    def checkpoint(self, run_dir: str) -> dict | None:
        return self.state

    def report(self, metrics: dict, state: dict | None) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.state = state

    def gather(self, obj: Any) -> list:
        return [obj]


class RayTrainSession:
    """The loop's view of Ray Train: rank, device, data shards, report, checkpoint."""

    def __init__(self):
        import ray.train

        self.ctx = ray.train.get_context()
        self.rank, self.world = self.ctx.get_world_rank(), self.ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None = None) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)

    def shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def checkpoint(self, run_dir: str) -> dict | None:
        """The state of the latest epoch whose checkpoint reached storage.

        Ray Train restores the last checkpoint its controller registered; one uploaded
        just before a crash may be missing from that record although rank 0 already logged
        its epoch to MLflow. So also look at the run's folder and take the newest epoch
        that loads: no epoch is trained, and logged, twice."""
        import ray.train

        dirs = [Path(p) for p in Path(run_dir).glob("checkpoint_*")] if run_dir and not is_uri(run_dir) else []
        registered = ray.train.get_checkpoint()
        ckpt_ctx = registered.as_directory() if registered else contextlib.nullcontext(None)
        with ckpt_ctx as d:
            if d:
                dirs.append(Path(d))
            for folder in sorted(dirs, key=_checkpoint_epoch, reverse=True):
                try:
                    return load_state(folder)
                except Exception:  # a half-copied checkpoint: try the one before
                    continue
        return None

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / CHECKPOINT_FILE)
            (Path(d) / EPOCH_FILE).write_text(str(state["epoch"]))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


# ------------------------------------------------------------------ the loop


def load_state(folder: Path) -> dict:
    """A checkpoint's state: tensors and plain containers only (weights_only: no pickled code)."""
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def is_uri(location: str) -> bool:
    """An object-store URI (s3://, gs:// ...) that Ray Train takes as it is; file:// is a path."""
    return "://" in location and not location.startswith("file://")


def storage_root(storage: str | None) -> str:
    """Ray Train's storage_path: --storage's runs folder, $FASTRAY_STORAGE, or ./runs; an
    object-store URI (s3://, gs://) as it is, a path made absolute."""
    where = storage or os.environ.get("FASTRAY_STORAGE") or "runs"
    return where.rstrip("/") if is_uri(where) else str(Path(where.removeprefix("file://")).absolute())


def join_storage(root: str, name: str) -> str:
    return f"{root}/{name}" if is_uri(root) else str(Path(root) / name)


def check_resumable(pipeline: str, model: torch.nn.Module, run_dir: str | Path, name: str) -> None:
    """Refuse, before any training, a run folder whose checkpoint another pipeline or an
    incompatible config (other shapes) wrote: resuming from it would fail on every worker.
    (On object storage Ray Train's own restore is the only check.)"""
    if not run_dir or is_uri(str(run_dir)):
        return
    folders = sorted(Path(run_dir).glob("checkpoint_*"), key=_checkpoint_epoch, reverse=True)
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
        return
    if folders:
        log(f"[{name}] warning: none of the {len(folders)} checkpoint(s) in {run_dir} loads (damaged?): "
            "this run starts from epoch 0")


def _checkpoint_epoch(folder: Path) -> int:
    try:
        return int((folder / EPOCH_FILE).read_text())
    except (OSError, ValueError):
        return -1


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def run_loop(spec: RunSpec, session: Any) -> None:
    """Train `spec.pipeline` through its phases on this worker's shard."""
    torch.set_num_threads(max(1, spec.cpus_per_worker))  # a worker owns the CPUs it holds
    pipe, cfg = registry.get(spec.pipeline), spec.cfg
    rank0 = session.rank == 0
    device = session.device()
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # fixed image sizes per phase: let cuDNN pick its kernels
    torch.manual_seed(getattr(cfg, "seed", 0))  # same init everywhere; DDP broadcasts rank 0's anyway

    model = pipe.build_model(cfg)
    pipe.init_model(model, cfg, spec.tracking_uri)
    groups = pipe.param_groups(model)
    phases = pipe.phases(cfg)
    owned = pipe.optimizers(model, cfg)  # several optimizers (GANs), or None: one from the phases
    for o in (owned or {}).values():
        for g in o.param_groups:
            g.setdefault("base_lr", g["lr"])
    sched = Schedule(phases, spec.steps_per_epoch)
    bs = cfg.bs // session.world
    if bs < 1:
        raise ValueError(f"batch size {cfg.bs} is smaller than the {session.world} workers")

    # rank 0 logs to MLflow; under Tune the driver does (spec.run_id is empty)
    logger = tracking.RunLogger(spec.tracking_uri, spec.run_id) if rank0 and spec.run_id else None
    start_epoch, state = 0, session.checkpoint(spec.run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        for k, o in (owned or {}).items():
            o.load_state_dict(state["opts"][k])
        start_epoch = state["epoch"]
        if rank0:
            log(f"[{spec.name}] resuming from the checkpoint of epoch {start_epoch}")
        if logger:
            logger.tags({"fastray.resumed_from_epoch": start_epoch})
            # the checkpoint carries its epoch's metrics: log them if MLflow missed them
            logged = [s for s, _ in logger.history(pipe.metric)] if pipe.metric else []
            if start_epoch not in logged:
                logger.metrics(state["metrics"], step=start_epoch)

    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model = session.prepare_model(model, pipe.ddp_kwargs)
    # DDP registers the parameters that require grad when it wraps: re-wrap when the frozen set changes
    wrapped_frozen: tuple[int, ...] = ()
    reset = getattr(_unwrap(model), "reset", None)  # RNNs: forget the hidden state
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and getattr(cfg, "bf16", True)
        else contextlib.nullcontext
    )

    opt, opt_phase, metrics = None, -1, state["metrics"] if state else {}
    for epoch in range(start_epoch, sched.total_epochs):
        phase = sched.phase_for_epoch(epoch)
        data = phase.data or "train"
        model.train()
        t0, seen, sums = time.perf_counter(), 0, defaultdict(float)
        step = epoch * spec.steps_per_epoch
        if reset:
            reset()
        for batch in pipe.batches(cfg, session.shard(data), bs, device, True, steps=spec.steps_per_epoch, epoch=epoch):
            p_idx, lr_now, mom = sched.at(step)
            if owned:  # the pipeline's optimizers: the schedule is a factor on their own LRs
                for o in owned.values():
                    for g in o.param_groups:
                        g["lr"] = g["base_lr"] * lr_now
                opt, opt_phase = owned, p_idx
            elif opt is None or not same_optimizer(phases[p_idx], phases[opt_phase]):
                opt = make_optimizer(phases[p_idx], groups)
                if state is not None and state.get("opt_phase") is not None and same_optimizer(
                    phases[p_idx], phases[state["opt_phase"]]
                ):
                    opt.load_state_dict(state["opt"])  # resume momentum buffers too
                state = None if state is None else {**state, "opt_phase": None}
                opt_phase = p_idx
            elif p_idx != opt_phase:  # same optimizer, maybe a new frozen set
                set_frozen(groups, phases[p_idx].frozen)
                opt_phase = p_idx
            if session.world > 1 and phases[p_idx].frozen != wrapped_frozen:
                model = session.prepare_model(_unwrap(model), pipe.ddp_kwargs)
                wrapped_frozen = phases[p_idx].frozen
            if not owned:
                set_hyper(opt, sched.lrs_for_groups(step, len(groups)), mom)
            x = pipe.to_device(cfg, batch, train=True)
            with autocast():
                losses = pipe.train_step(model, x, opt, cfg)
            for k, v in losses.items():
                sums[k] += v.detach().float()  # summed on the device: no sync each step
            seen += _batch_len(batch)
            step += 1
        steps = max(1, step - epoch * spec.steps_per_epoch)
        train_seconds = time.perf_counter() - t0

        model.eval()
        if reset:
            reset()
        first: list = []
        with torch.no_grad(), autocast():
            local = pipe.evaluate(model, _stash_first(
                (pipe.to_device(cfg, b, train=False) for b in pipe.batches(cfg, session.shard("valid"), bs, device, False, epoch=epoch)),
                first), cfg)
        results = pipe.combine(session.gather(local))
        metrics = {
            **{f"train_{k}": (v / steps).item() for k, v in sums.items()},
            **{(k if k == pipe.metric else f"valid_{k}" if not k.startswith("valid_") else k): v for k, v in results.items()},
            **_lr_metrics(opt),
            **({"frozen_groups": len(phases[opt_phase].frozen)} if len(groups) > 1 else {}),
            "images_per_s": seen * session.world / train_seconds,
            "epoch_seconds": time.perf_counter() - t0,
        }
        ckpt = {
            "pipeline": spec.pipeline, "model": _unwrap(model).state_dict(), "epoch": epoch + 1, "metrics": metrics,
            **({"opts": {k: o.state_dict() for k, o in owned.items()}} if owned else
               {"opt": opt.state_dict(), "opt_phase": opt_phase}),
        } if rank0 else None
        session.report({**metrics, "epoch": epoch + 1}, ckpt)
        if logger:
            logger.metrics(metrics, step=epoch + 1)  # after the checkpoint is safe: never twice
        if rank0:
            shown = {k: metrics[k] for k in metrics if k.startswith("train_") or k == pipe.metric}
            log(
                f"[{spec.name}] epoch {epoch + 1}/{sched.total_epochs} data={data} "
                + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                + f" {metrics['images_per_s']:.0f} img/s {metrics['epoch_seconds']:.1f}s"
            )

    if start_epoch >= sched.total_epochs:  # rerun of a finished run: nothing left to train
        session.report({**metrics, "epoch": start_epoch}, None)
        return
    if logger:
        with tempfile.TemporaryDirectory() as d:
            torch.save(_unwrap(model).state_dict(), Path(d) / "model.pt")
            logger.artifact(Path(d) / "model.pt", "model")
            if first:
                for f in pipe.artifacts(_unwrap(model), first[0], cfg, Path(d)):
                    logger.artifact(f, "predictions")
            for folder, files in pipe.final_artifacts(_unwrap(model), cfg, Path(d)).items():
                for f in files:
                    logger.artifact(f, folder)


def _lr_metrics(opt: Any) -> dict[str, float]:
    """The last group's LR as "lr", and every group's when there are several (discriminative
    LRs), or each owned optimizer's as lr_<name>."""
    if isinstance(opt, dict):
        return {"lr": next(iter(opt.values())).param_groups[-1]["lr"],
                **{f"lr_{k}": o.param_groups[-1]["lr"] for k, o in opt.items()}}
    groups = opt.param_groups
    return {"lr": groups[-1]["lr"], **({f"lr_group{i}": g["lr"] for i, g in enumerate(groups)} if len(groups) > 1 else {})}


def _batches(shard, bs: int, device: torch.device, train: bool) -> Iterator[dict]:
    """Batches of `bs` rows on the device. Ray Data hands over chunks of many batches at a
    time: its per-batch work (a background thread that holds the GIL) cost a 2-core worker
    30% of its steps at bs=64; slicing a chunk on the device costs nothing."""
    chunk = bs * max(1, FETCH_ROWS // bs)
    it = shard.iter_torch_batches(
        batch_size=chunk,
        device=device,
        drop_last=False,
        local_shuffle_buffer_size=max(2 * chunk, 4096) if train else None,
        prefetch_batches=2,
    )
    for big in it:
        n = len(next(iter(big.values())))
        for i in range(0, n - bs + 1 if train else n, bs):  # train: full batches only
            yield {k: v[i : i + bs] for k, v in big.items()}


def _batch_len(batch: Any) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(first)


def _stash_first(it: Iterator, into: list) -> Iterator:
    for i, b in enumerate(it):
        if i == 0:
            into.append(b)
        yield b


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on each worker."""
    run_loop(config["spec"], RayTrainSession())


# ------------------------------------------------------------------ the driver


def fit(
    pipeline: str,
    cfg: Any,
    *,
    data_dir: Path,
    cache: Any,
    name: str,
    num_workers: int = 1,
    use_gpu: bool = False,
    tracking_uri: str | None = None,
    storage: str | None = None,
    on_bad: str = "skip",
    config_label: str = "",
) -> dict:
    """Preprocess (cached), train with Ray Train, record in MLflow; the summary dict."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from preprocessing.runtime import cluster_cpus, cluster_gpus, init_ray

    t_start = time.perf_counter()
    pipe = registry.get(pipeline)
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    # a run folder that cannot be resumed is refused before any work, and before MLflow
    # records a run that would stay RUNNING
    storage_path = storage_root(storage)
    run_dir = join_storage(storage_path, name)
    torch.manual_seed(getattr(cfg, "seed", 0))
    check_resumable(pipeline, pipe.build_model(cfg), run_dir, name)
    manifest, hit = pipe.preprocess(cfg, data_dir, cache, on_bad)
    init_ray()
    if use_gpu and cluster_gpus() < num_workers:
        if not os.environ.get("RAY_ADDRESS"):  # a local Ray gets no more GPUs
            raise ValueError(f"--use-gpu with {num_workers} worker(s), but this machine has {cluster_gpus()} GPU(s)")
        log(f"[{name}] the cluster has {cluster_gpus()} GPU(s) now for {num_workers} GPU worker(s): "
            "waiting for the autoscaler to add GPU nodes")
    # each worker holds an equal share of the CPUs and runs torch on that many threads
    cpus_per_worker = max(1, cluster_cpus() // num_workers)
    datasets = {k: ds.materialize() for k, ds in pipe.datasets(cfg, cache, manifest).items()}
    rows = pipe.train_rows(manifest)
    steps_per_epoch = pipe.steps_per_epoch(cfg, manifest, num_workers)
    if steps_per_epoch < 1:
        raise ValueError(f"{rows} training rows make no batch of {cfg.bs}: lower bs")

    uri = tracking.resolve_uri(tracking_uri)
    init_tags = pipe.init_source(cfg, manifest, uri)
    run_id, resumed = tracking.start_run(
        uri, pipeline, name, params={"config": to_dict(cfg)} | {"num_workers": num_workers},
        tags={
            "fastray.pipeline": pipeline, "fastray.config": config_label, "fastray.cache_key": manifest["key"],
            "fastray.git_commit": tracking.git_commit(), "fastray.world_size": num_workers,
            "fastray.device": "cuda" if use_gpu else "cpu", "fastray.ray_address": ray.get_runtime_context().gcs_address,
            **init_tags,
        },
    )
    logger = tracking.RunLogger(uri, run_id)
    if not resumed:
        _log_plan(logger, pipe, cfg, steps_per_epoch)
    log(f"[{name}] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}")

    spec = RunSpec(pipeline, cfg, name, num_workers, cpus_per_worker, use_gpu, steps_per_epoch, uri, run_id,
                   run_dir=run_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker},
            placement_strategy=os.environ.get("FASTRAY_PLACEMENT", "PACK"),  # SPREAD: one worker a node where it can
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=getattr(cfg, "max_failures", 1)),
        ),
        datasets=datasets,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    t_fit = time.perf_counter()
    try:
        result = trainer.fit()
    except BaseException:
        logger.finish("FAILED")
        raise
    fit_seconds = time.perf_counter() - t_fit
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as d:
        if tracking.plot_curves(logger, Path(d) / "curves.png"):
            logger.artifact(Path(d) / "curves.png", "plots")
    logger.finish()
    return {
        "run_id": run_id,
        "experiment": pipeline,
        "name": name,
        "metrics": metrics,
        "world_size": num_workers,
        "cache": "hit" if hit else "miss",
        "resumed": resumed,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "fit_seconds": round(fit_seconds, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def _log_plan(logger: tracking.RunLogger, pipe: Any, cfg: Any, steps_per_epoch: int) -> None:
    """The config and the LR/momentum schedule, before any training."""
    from .phases import plot_schedule

    logger.json(to_dict(cfg), "config.json")
    with tempfile.TemporaryDirectory() as d:
        sched = Schedule(pipe.phases(cfg), steps_per_epoch)
        logger.artifact(plot_schedule(sched, str(Path(d) / "schedule.png")), "plots")
