"""Ray Tune over a pipeline's search_space(), running the engine's own training loop.

    tune() ─ preprocess (cached) ─ MLflow parent run ─ Tuner(ASHA) ─ trial ─ run_loop()
                                        ▲ one child run per trial, written by the driver

A one-worker trial runs the engine's loop in the trial itself and reports with
ray.tune.report; a trial of several workers fits a nested TorchTrainer whose reports reach
Tune through TuneReportCallback (DESIGN.md: a trial that nests a one-worker TorchTrainer
under ASHA hung on Ray 2.60, and Train's local mode fails inside Tune). Only the Tune
driver writes MLflow (a callback), so a SQLite store has one writer however many trials run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import logs, registry, tracking
from .config import to_dict
from .engine import plan
from .loop import RunSpec, run_loop, train_loop_per_worker
from .sessions import TuneSession
from .storage import Storage, is_uri, join_storage

logger = logging.getLogger("fastray")

from ray.tune import Callback  # noqa: E402  (tuning is imported only by `fastray tune`)


def _trial(params: dict, *, pipeline: str, cfg: Any, manifest: dict, datasets: dict, steps_per_epoch: int,
           workers: int, cpus_per_worker: float, use_gpu: bool, storage: str, placement: str = "PACK") -> None:
    """One trial: the base config with the sampled values, trained by the engine's loop."""
    from ray import tune

    logs.setup()
    cfg = dataclasses.replace(cfg, **params)
    trial = tune.get_context().get_trial_id()
    threads = max(1, round(cpus_per_worker))
    spec = RunSpec(pipeline, cfg, trial, workers, threads, use_gpu, steps_per_epoch,
                   tracking_uri="", run_id="", run_dir="", manifest=manifest)
    if workers == 1:
        run_loop(spec, TuneSession(datasets, use_gpu))
        return
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker,
                                                                     "GPU": 1 if use_gpu else 0},
                                               placement_strategy=placement),
        run_config=ray.train.RunConfig(name=trial, storage_path=storage, callbacks=[TuneReportCallback()]),
        datasets=datasets,
    ).fit()  # a diverged loss fails the trainer, and so the trial (its workers re-raise NonFiniteLoss)


class MlflowTrials(Callback):
    """A Tune callback, in the driver: one child run per trial under the search's parent."""

    def __init__(self, uri: str, experiment: str, parent_id: str, base: dict, max_epochs: int, metric: str):
        self.uri, self.experiment, self.parent_id = uri, experiment, parent_id
        self.base, self.max_epochs, self.metric = base, max_epochs, metric
        self.runs: dict[str, str] = {}

    def _run(self, trial) -> tracking.RunLogger:
        if trial.trial_id not in self.runs:
            client = tracking._client(self.uri)
            exp_id = tracking.experiment_id(self.uri, self.experiment)
            found = client.search_runs([exp_id], filter_string=f"tags.`fastray.trial_id` = '{trial.trial_id}' and "
                                       f"tags.`mlflow.parentRunId` = '{self.parent_id}'", max_results=1)
            if found:  # a resumed search: keep writing to the trial's run
                self.runs[trial.trial_id] = found[0].info.run_id
            else:
                run = client.create_run(exp_id, run_name=f"trial-{trial.trial_id}", tags={
                    "mlflow.parentRunId": self.parent_id, "fastray.trial_id": trial.trial_id})
                logger = tracking.RunLogger(self.uri, run.info.run_id)
                logger.params({"config": {**self.base, **trial.config}})
                logger.tags({f"tuned.{k}": v for k, v in trial.config.items()})
                self.runs[trial.trial_id] = run.info.run_id
        return tracking.RunLogger(self.uri, self.runs[trial.trial_id])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        metrics = {k: v for k, v in result.items()
                   if k == self.metric or k in ("lr", "images_per_s", "epoch_seconds") or k.startswith(("train_", "valid_"))}
        self._run(trial).metrics(metrics, step=int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        logger = self._run(trial)
        logger.tags({"fastray.asha_stopped": epochs < self.max_epochs, "fastray.epochs_trained": epochs})
        logger.finish("FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._run(trial).finish("FAILED")


def tune(
    pipeline: str,
    cfg: Any,
    *,
    data_dir: Path,
    cache: Any,
    name: str,
    config_label: str,
    num_samples: int = 8,
    max_concurrent: int | None = None,
    workers_per_trial: int = 1,
    gpus_per_worker: float = 0,
    search: str = "random",
    time_budget_s: float | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    storage: str | None = None,
    on_bad: str = "skip",
    fixed: tuple[str, ...] = (),
) -> dict:
    """Search the pipeline's space with ASHA (less the keys in `fixed`, which --set gave); the summary dict (best config, best metrics)."""
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    from preprocessing.runtime import cluster_cpus, cluster_gpus, init_ray

    t0 = time.perf_counter()
    pipe = registry.get(pipeline)
    space = pipe.search_space(cfg)
    if not space:
        raise ValueError(f"pipeline {pipeline!r} declares no search space")
    pinned = sorted(set(space) & set(fixed))
    space = {k: v for k, v in space.items() if k not in fixed}  # --set on a searched key narrows the search
    if not space:
        raise ValueError(f"--set fixes every searched key ({', '.join(pinned)}): nothing left to search")
    if pinned:
        logger.info(f"[{name}] {', '.join(f'{k}={getattr(cfg, k)}' for k in pinned)} fixed by --set: not searched")
    if num_samples < 1 or workers_per_trial < 1:
        raise ValueError("--num-samples and --workers-per-trial must be >= 1")
    tracking.require_reachable(tracking.resolve_uri(tracking_uri))
    manifest, hit = pipe.preprocess(cfg, data_dir, cache, on_bad)
    init_ray()
    cpus, gpus = cluster_cpus(), cluster_gpus()
    use_gpu = gpus_per_worker > 0
    # size the trials from the cluster: concurrent trials x workers never exceed its CPUs/GPUs
    fit_cpu = max(1, cpus // workers_per_trial)
    fit_gpu = int(gpus // (workers_per_trial * gpus_per_worker)) if use_gpu else fit_cpu
    limit = max(1, min(fit_cpu, fit_gpu, num_samples))
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    concurrent = min(max_concurrent or limit, limit)
    if workers_per_trial == 1:  # the trial is the worker
        cpus_per_worker: float = max(1, cpus // concurrent)
        resources = {"CPU": cpus_per_worker, "GPU": gpus_per_worker}
    else:  # the trial only drives a TorchTrainer: a sliver of a CPU; its workers share the rest
        driver_cpu = 0.01
        # (a little slack: bundles of exactly the free CPUs were never placed on Ray 2.60)
        cpus_per_worker = max(0.5, 0.9 * (cpus - driver_cpu * concurrent) / (concurrent * workers_per_trial))
        resources = {"CPU": driver_cpu}

    datasets = {k: ds.materialize() for k, ds in pipe.datasets(cfg, cache, manifest).items()}
    steps_per_epoch = pipe.steps_per_epoch(cfg, manifest, workers_per_trial)
    max_epochs = plan(pipe, cfg, steps_per_epoch).total_epochs  # ASHA's max_t

    uri = tracking.resolve_uri(tracking_uri)
    storage_path = storage or Storage.resolve(None).checkpoints()
    search_args = {"num_samples": num_samples, "max_concurrent": concurrent, "workers_per_trial": workers_per_trial,
                   "search": search, "seed": seed, "time_budget_s": time_budget_s}
    parent_id, resumed = tracking.start_run(
        uri, pipeline, name, params={"config": to_dict(cfg), "search": search_args},
        tags={"fastray.pipeline": pipeline, "fastray.kind": "tune", "fastray.config": config_label,
              "fastray.cache_key": manifest["key"], "fastray.git_commit": tracking.git_commit()},
    )
    parent = tracking.RunLogger(uri, parent_id)
    logger.info(f"[{name}] MLflow parent run {parent_id} ({'resumed' if resumed else 'new'}) in {uri}; "
        f"{concurrent} concurrent trial(s) x {workers_per_trial} worker(s) x {cpus_per_worker:.2f} CPU")

    trainable = rt.with_resources(
        rt.with_parameters(_trial, pipeline=pipeline, cfg=cfg, manifest=manifest, datasets=datasets, steps_per_epoch=steps_per_epoch,
                           workers=workers_per_trial, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu,
                           storage=join_storage(join_storage(storage_path, name), "trainers"),
                           placement=os.environ.get("FASTRAY_PLACEMENT", "PACK")),
        resources,
    )
    callback = MlflowTrials(uri, pipeline, parent_id, to_dict(cfg), max_epochs, pipe.metric)
    exp_path = join_storage(storage_path, name)
    # save the search's state at least every second (Tune's "auto" may wait minutes), so a
    # killed search loses no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if rt.Tuner.can_restore(exp_path):
        logger.info(f"[{name}] resuming the search in {exp_path}: finished trials are kept")
        tuner = rt.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=1, reduction_factor=2)
        tuner = rt.Tuner(
            trainable,
            param_space=space,
            tune_config=rt.TuneConfig(
                metric=pipe.metric, mode=pipe.mode, scheduler=scheduler, search_alg=_search_alg(search, seed),
                num_samples=num_samples, max_concurrent_trials=concurrent, time_budget_s=time_budget_s,
            ),
            run_config=rt.RunConfig(name=name, storage_path=storage_path, callbacks=[callback], verbose=1),
        )
    with contextlib.redirect_stdout(sys.stderr):  # Tune's tables are progress: stdout keeps the JSON
        results = tuner.fit()

    # a trial that failed (a diverged loss, a crash) is never the best, whatever it reported before
    ok = [r for r in results if r.error is None and math.isfinite((r.metrics or {}).get(pipe.metric, math.nan))]
    if not ok:
        first = next((str(r.error).strip().splitlines()[-1] for r in results if r.error is not None), "no metric")
        parent.tags({"fastray.failure": f"all {len(results)} trials failed"})
        parent.finish("FAILED")
        raise ValueError(f"all {len(results)} trials failed ({len(results.errors)} errors); the first: {first}")
    best = (max if pipe.mode == "max" else min)(ok, key=lambda r: r.metrics[pipe.metric])
    best_cfg = dataclasses.replace(cfg, **best.config)
    best_json = {"base": config_label if config_label in pipe.configs else "default", **to_dict(best_cfg)}
    best_path = None  # on object storage, best.json is the parent run's MLflow artifact only
    if not is_uri(exp_path):
        best_path = Path(exp_path) / "best.json"
        best_path.write_text(json.dumps(best_json, indent=1))
    frame = results.get_dataframe()
    best_metrics = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float)) and (
        k == pipe.metric or k.startswith(("train_", "valid_")) or k == "epoch")}
    parent.json(best_json, "best.json")
    parent.metrics({f"best_{pipe.metric}": best.metrics[pipe.metric]}, step=0)
    parent.tags({"fastray.best_trial": best.path.rsplit("/", 1)[-1]})
    with tempfile.TemporaryDirectory() as d:
        parent.artifact(_plot_trials(results, pipe.metric, Path(d) / "trials.png"), "plots")
    parent.finish()
    n_stopped = sum(int(r.metrics.get("epoch", 0)) < max_epochs for r in results if r.metrics)
    return {
        "parent_run_id": parent_id,
        "experiment": pipeline,
        "name": name,
        "trials": len(frame),
        "stopped_early": n_stopped,
        "errors": len(results.errors),
        "best_config": best.config,
        "best_metrics": best_metrics,
        "best_config_path": str(best_path) if best_path else None,
        "resumed": resumed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _search_alg(search: str, seed: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if search == "random":
        return BasicVariantGenerator(random_state=seed)
    if search == "tpe":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("--search tpe needs optuna: pip install optuna") from None
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    raise ValueError(f"--search {search}: expected random or tpe")


def _plot_trials(results, metric: str, path: Path) -> Path:
    """Every trial's metric against epoch: ASHA's early stops show as short lines."""
    from . import plots

    fig = plots.figure((7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        df = r.metrics_dataframe
        if df is None or metric not in df or df.empty:
            continue
        label = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.config.items())
        ax.plot(df["epoch"], df[metric], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return plots.save(fig, path)
