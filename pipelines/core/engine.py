"""The engine's driver: one run of a pipeline on Ray Train, recorded in MLflow.

    fit() ─ preprocess (cache) ─ Ray Datasets ─ MLflow run ─ TorchTrainer.fit()
                                                                │ each worker
                                                core.loop.run_loop (the one training loop)

Resume: rerunning with the same name finds Ray Train's checkpoint of the last finished
epoch and continues from the next one, in the same MLflow run.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from . import logs, registry, tracking
from .config import to_dict
from .loop import RunSpec, train_loop_per_worker, worker_config
from .phases import Schedule
from .storage import Storage, check_resumable, join_storage, run_lock

logger = logging.getLogger("fastray")


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
    sample: bool = False,
) -> dict:
    """Preprocess (cached), train with Ray Train, record in MLflow; the summary dict.
    `sample`: the data was generated sample data (said in the header and in MLflow)."""
    t_start = time.perf_counter()
    pipe = registry.get(pipeline)
    if hasattr(pipe, "run"):  # a pipeline that trains no model runs its own way
        return pipe.run(cfg, data_dir=data_dir, cache=cache, name=name, num_workers=num_workers, use_gpu=use_gpu,
                        tracking_uri=tracking_uri, storage=storage, on_bad=on_bad, config_label=config_label)
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    tracking.require_reachable(tracking.resolve_uri(tracking_uri))
    # a run folder that cannot be resumed is refused before any work, and before MLflow
    # records a run that would stay RUNNING
    storage_path = storage or Storage.resolve(None).checkpoints()
    run_dir = join_storage(storage_path, name)
    with run_lock(run_dir, name):  # one process per run name
        return _fit(pipe, cfg, data_dir=data_dir, cache=cache, name=name, num_workers=num_workers, use_gpu=use_gpu,
                    tracking_uri=tracking_uri, storage_path=storage_path, run_dir=run_dir, on_bad=on_bad,
                    config_label=config_label, sample=sample, t_start=t_start)


def _trainer(num_workers: int, use_gpu: bool) -> Any:
    """Ray Train's trainer class for the run. Several workers: a TorchTrainer, whose backend
    joins them in a torch process group (NCCL on GPUs, else gloo). One worker has no group
    to join: the plain data-parallel trainer, whose controller need not import torch (the
    torch backend's module does: 2-3 CPU seconds of a one-worker run's start on 2 cores)."""
    import functools

    if num_workers == 1:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer
    from ray.train.torch import TorchConfig, TorchTrainer

    return functools.partial(TorchTrainer, torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"))


def _fit(pipe: Any, cfg: Any, *, data_dir: Path, cache: Any, name: str, num_workers: int, use_gpu: bool,
         tracking_uri: str | None, storage_path: str, run_dir: str, on_bad: str, config_label: str,
         sample: bool, t_start: float) -> dict:
    import ray.train

    from preprocessing.runtime import check_local_room, cluster_gpus, init_ray, worker_cpus

    pipeline = pipe.name
    check_local_room(num_workers, 1.0 if use_gpu else 0.0)
    torch.manual_seed(cfg.seed)
    trained = check_resumable(pipeline, pipe.build_model(cfg), run_dir, name)
    done = _finished(pipe, cfg, tracking.resolve_uri(tracking_uri), name, trained, t_start) \
        if trained is not None and trained >= cfg.epochs else None
    if done is not None:
        return done
    manifest, hit = pipe.prepare(cfg, data_dir, cache, on_bad)
    init_ray()
    if use_gpu and cluster_gpus() < num_workers:  # a cluster (check_local_room refused it on a machine)
        logger.info(f"[{name}] the cluster has {cluster_gpus()} GPU(s) now for {num_workers} GPU worker(s): "
            "waiting for the autoscaler to add GPU nodes")
    # each worker holds an equal share of the CPUs that fits on one node, and runs torch on that many threads
    cpus_per_worker = worker_cpus(num_workers)
    datasets = {k: ds.materialize() for k, ds in pipe.datasets(cfg, cache, manifest).items()}
    rows = pipe.train_rows(manifest)
    steps_per_epoch = pipe.steps_per_epoch(cfg, manifest, num_workers)
    if steps_per_epoch < 1:
        raise ValueError(f"{rows} training rows make no batch of {cfg.bs}: lower bs")
    sched = plan(pipe, cfg, steps_per_epoch)

    uri = tracking.resolve_uri(tracking_uri)
    init_tags = pipe.init_source(cfg, manifest, uri)
    run_id, resumed = tracking.start_run(
        uri, pipeline, name, params={"config": to_dict(cfg)} | {"num_workers": num_workers},
        tags={
            "fastray.pipeline": pipeline, "fastray.config": config_label, "fastray.cache_key": manifest["key"],
            "fastray.git_commit": tracking.git_commit(), "fastray.world_size": num_workers,
            "fastray.metric": pipe.metric, "fastray.higher_is_better": pipe.mode == "max",
            **tracking.source_tags(f"fastray run {pipeline}"),
            "fastray.device": "cuda" if use_gpu else "cpu", "fastray.generated_sample": sample,
            **init_tags,
        },
    )
    run_log = tracking.RunLogger(uri, run_id)
    with run_log.ends_if_stopped():  # Ctrl-C: KILLED, its last checkpoint resumes it; an error: FAILED
        about = (f"**{pipeline}**, config `{config_label or '?'}`, data `{data_dir}`"
                 f"{' (generated sample data)' if sample else ''}: {sched.total_epochs} epoch(s) of {steps_per_epoch} "
                 f"batch(es) of {cfg.bs}, {num_workers} worker(s), {'GPU' if use_gpu else 'CPU'}.")
        if not resumed:
            _log_plan(run_log, sched, cfg)
            run_log.tags({"mlflow.note.content": about})
            tracking.log_dataset(run_log, pipe.dataset or pipeline, str(data_dir), manifest, sample)
        else:
            run_log.delete_tag("fastray.failure")  # an earlier attempt's
        logger.info(f"[{name}] {pipeline}, config {config_label or '?'}, data {data_dir}"
                    f"{' (generated sample data)' if sample else ''}: {sched.total_epochs} epoch(s) of {steps_per_epoch} "
                    f"batch(es) of {cfg.bs}, {num_workers} worker(s) x {cpus_per_worker} CPU{' + 1 GPU' if use_gpu else ''}; "
                    f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}")

        relay = logs.Relay()  # the workers' lines and progress, printed here
        spec = RunSpec(pipeline, cfg, name, num_workers, cpus_per_worker, use_gpu, steps_per_epoch, uri, run_id,
                       run_dir=run_dir, manifest=manifest, log_queue=relay.queue)
        trainer = _trainer(num_workers, use_gpu)(
            train_loop_per_worker,
            train_loop_config=worker_config(spec),
            scaling_config=ray.train.ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker},
                placement_strategy=os.environ.get("FASTRAY_PLACEMENT", "PACK"),  # SPREAD: one worker a node where it can
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=storage_path,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            ),
            datasets=datasets,
            # one worker reads each data set in its own process; a streaming split (several workers)
            # costs a coordinator actor per data set, a process that imports Ray Data on every run
            dataset_config=ray.train.DataConfig(datasets_to_split="all" if num_workers > 1 else []),
        )
        t_fit = time.perf_counter()
        try:
            result = _in_thread(trainer.fit)
        finally:
            relay.close()
        fit_seconds = time.perf_counter() - t_fit
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        failure = run_log.tag("fastray.failure")  # rank 0 stopped the run (a diverged loss)
        if failure:
            raise ValueError(failure)
        with tempfile.TemporaryDirectory() as d:
            # where the data (a resize) or the frozen groups change; an epoch's metrics are logged at
            # its end (step e), so a stage starting at epoch b is drawn between steps b and b + 1
            ph, bounds, kinds = sched.phases, [], set()
            for i in range(1, len(ph)):
                changed = {"resize": ph[i].data != ph[i - 1].data, "unfreeze": ph[i].frozen != ph[i - 1].frozen}
                if any(changed.values()):
                    bounds.append(sched.epoch_bounds[i] + 0.5)
                    kinds |= {k for k, v in changed.items() if v}
            title = f"{name}: {pipeline}, config {config_label or '?'}" + (" (generated sample data)" if sample else "")
            if tracking.plot_curves(run_log, Path(d) / "curves.png", title, bounds,
                                    f"new stage ({', '.join(sorted(kinds))})"):
                run_log.artifact(Path(d) / "curves.png", "plots")
        total = time.perf_counter() - t_start
        best = _best(run_log, pipe)
        run_log.metrics({"total_seconds": total, **({f"best_{pipe.metric}": best[1]} if best else {})}, step=sched.total_epochs)
        checkpoint = result.checkpoint.path if result.checkpoint else None
        final = metrics.get(pipe.metric)
        if final is not None:
            run_log.tags({"mlflow.note.content": about + f"\n\nResult: {pipe.metric} {final:.4g}"
                          + (f" (best {best[1]:.4g} at epoch {best[0]})" if best else "") + f", in {logs.duration(total)}."})
        run_log.finish()  # (not the KILLED or FAILED that ends_if_stopped gives a run stopped before here)
    logger.info(f"[{name}] done in {logs.duration(total)}: {pipe.metric} {final:.4g}"
                + (f" (best {best[1]:.4g} at epoch {best[0]})" if best else "")
                + f"; checkpoint {checkpoint}; model in the run's artifacts (model/model.pt)\n"
                + f"[{name}] see it in the MLflow UI: {tracking.shown(uri, tracking.run_url(uri, run_id))}"
                if final is not None else f"[{name}] done in {logs.duration(total)}")
    return {
        "run_id": run_id,
        "experiment": pipeline,
        "name": name,
        "metrics": metrics,
        "world_size": num_workers,
        "cache": "hit" if hit else "miss",
        "resumed": resumed,
        "checkpoint": checkpoint,
        "fit_seconds": round(fit_seconds, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def _finished(pipe: Any, cfg: Any, uri: str, name: str, epochs: int, t_start: float) -> dict | None:
    """The summary of the run of this name, if its MLflow run is FINISHED (its newest
    checkpoint that loads holds `epochs`, cfg.epochs or more), else None. Nothing is left to
    train: the rerun says so and touches nothing (resuming would start Ray Train to train no
    epoch, then log its seconds as the run's total_seconds and rewrite its end time and
    description). A larger --epochs resumes it as before."""
    client = tracking._client(uri)
    exp = client.get_experiment_by_name(pipe.name)
    run_id = tracking.find_run(uri, exp.experiment_id, name) if exp else None
    run = client.get_run(run_id) if run_id else None
    if run is None or run.info.status != "FINISHED":
        return None
    metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")} | {"epoch": epochs}
    final = metrics.get(pipe.metric)
    result = f": {pipe.metric} {final:.4g}" if final is not None else ""
    logger.info(f"[{name}] finished already, {epochs} epoch(s){result}; nothing to train (another --name "
                f"trains a new run, a larger --epochs continues this one)\n"
                f"[{name}] see it in the MLflow UI: {tracking.shown(uri, tracking.run_url(uri, run_id))}")
    return {
        "run_id": run_id, "experiment": pipe.name, "name": name, "metrics": metrics,
        "world_size": int(run.data.tags.get("fastray.world_size", 1)), "cache": None, "resumed": False,
        "finished_already": True,
        "fit_seconds": 0.0, "seconds": round(time.perf_counter() - t_start, 2),
    }


def _best(run_log: tracking.RunLogger, pipe: Any) -> tuple[int, float] | None:
    """(epoch, value) of the best headline metric in the run's history."""
    history = [(s, v) for s, v in run_log.history(pipe.metric) if v == v] if pipe.metric else []
    if not history:
        return None
    return (max if pipe.mode == "max" else min)(history, key=lambda sv: sv[1])


def _in_thread(fn: Any) -> Any:
    """fn() in a worker thread while the main thread waits, so that Ctrl-C raises
    KeyboardInterrupt here (Ray Train's fit() in the main thread installs a SIGINT handler
    that exits 1 without a word when the terminal's SIGINT has also reached Ray's processes)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="fastray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def plan(pipe: Any, cfg: Any, steps_per_epoch: int) -> Schedule:
    """The run's schedule; its length must be cfg.epochs, so --epochs means one thing everywhere."""
    sched = Schedule(pipe.phases(cfg), steps_per_epoch)
    if sched.total_epochs != cfg.epochs:
        raise ValueError(f"{pipe.name}: its phases last {sched.total_epochs} epochs but its config says "
                         f"epochs={cfg.epochs}")
    return sched


def _log_plan(run_log: tracking.RunLogger, sched: Schedule, cfg: Any) -> None:
    """The config and the LR/momentum schedule, before any training."""
    from .phases import plot_schedule

    run_log.json(to_dict(cfg), "config.json")
    with tempfile.TemporaryDirectory() as d:
        run_log.artifact(plot_schedule(sched, str(Path(d) / "schedule.png")), "plots")
