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
import importlib.util
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
from .loop import RunSpec, run_loop, train_loop_per_worker, worker_config
from .sessions import TuneSession
from .storage import Storage, is_uri, join_storage

logger = logging.getLogger("fastray")

from ray.tune import Callback  # noqa: E402  (tuning is imported only by `fastray tune`)


def _trial(params: dict, *, pipeline: str, cfg: Any, manifest: dict, datasets: dict, steps_per_epoch: int,
           workers: int, cpus_per_worker: float, use_gpu: bool, storage: str, placement: str = "PACK",
           tracking_uri: str = "") -> None:
    """One trial: the base config with the sampled values, trained by the engine's loop. The
    search's tracking URI reaches the pipeline (init_model fetches an encoder given as an MLflow
    run id from it); a trial has no MLflow run of its own (the Trials callback logs it)."""
    from ray import tune

    logs.setup()
    cfg = dataclasses.replace(cfg, **params)
    trial = tune.get_context().get_trial_id()
    threads = max(1, round(cpus_per_worker))
    spec = RunSpec(pipeline, cfg, trial, workers, threads, use_gpu, steps_per_epoch,
                   tracking_uri=tracking_uri, run_id="", run_dir="", manifest=manifest)
    if workers == 1:
        run_loop(spec, TuneSession(datasets, use_gpu, seed=cfg.seed))
        return
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config(spec),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker,
                                                                     "GPU": 1 if use_gpu else 0},
                                               placement_strategy=placement),
        run_config=ray.train.RunConfig(name=trial, storage_path=storage, callbacks=[TuneReportCallback()]),
        datasets=datasets,
    ).fit()  # a diverged loss fails the trainer, and so the trial (its workers re-raise NonFiniteLoss)


def short(v: Any) -> str:
    """A searched value as people compare it: 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_name(trial_id: str, config: dict, stopped_at: int | None = None) -> str:
    """`t03 lr=0.175 p=0.32`: the trial's number first (names stay distinct where the UI cuts
    them), then its searched values; an ASHA-stopped trial ends with `[stopped@E]`."""
    tail = trial_id.rsplit("_", 1)[-1]  # a random search's ids end in a counter; a TPE search's are hex
    name = (f"t{int(tail):02d} " if tail.isdigit() else f"t-{tail[:6]} ") + " ".join(f"{k}={short(v)}" for k, v in config.items())
    return name + (f" [stopped@{stopped_at}]" if stopped_at is not None else "")


def describe_space(space: dict) -> dict[str, str]:
    """Each searched key's domain in words: `loguniform(0.1, 0.8)`, `choice([1.0, 3.0])`."""
    from ray.tune.search import sample

    out = {}
    for k, d in space.items():
        if isinstance(d, sample.Categorical):
            out[k] = f"choice({list(d.categories)})"
        elif isinstance(d, (sample.Float, sample.Integer)):
            kind = type(d.get_sampler()).__name__.lower().lstrip("_")  # loguniform, uniform, normal ...
            out[k] = f"{'randint' if isinstance(d, sample.Integer) and kind == 'uniform' else kind}" \
                     f"({short(d.lower)}, {short(d.upper)})"
        else:
            out[k] = str(d)
    return out


class Trials(Callback):
    """A Tune callback, in the driver: one MLflow child run per trial under the search's
    parent, opened when the trial starts and closed when it ends (so its times are the
    trial's), and a line on the terminal for each start, epoch and end (Tune's own tables
    are off: they said the same in 200 lines)."""

    def __init__(self, uri: str, experiment: str, parent_id: str, base: dict, max_epochs: int, metric: str,
                 search: str):
        self.uri, self.experiment, self.parent_id = uri, experiment, parent_id
        self.base, self.max_epochs, self.metric, self.search = base, max_epochs, metric, search
        self.runs: dict[str, str] = {}   # trial id -> MLflow run id
        self._names: dict[str, str] = {}  # trial id -> MLflow run name

    def names(self) -> dict[str, str]:
        return dict(self._names)

    def find(self, trial_id: str) -> str | None:
        """The MLflow run of a trial, made by this search or by an earlier attempt of it (a
        resumed search; a rerun of a finished one, whose trials send no events at all)."""
        if trial_id and trial_id not in self.runs:
            client = tracking._client(self.uri)
            exp_id = tracking.experiment_id(self.uri, self.experiment)
            found = client.search_runs([exp_id], filter_string=f"tags.`fastray.trial_id` = '{trial_id}' and "
                                       f"tags.`mlflow.parentRunId` = '{self.parent_id}'", max_results=1)
            if found:
                self.runs[trial_id] = found[0].info.run_id
                self._names[trial_id] = found[0].info.run_name
        return self.runs.get(trial_id)

    def _run(self, trial) -> tracking.RunLogger:
        if trial.trial_id not in self.runs:
            client = tracking._client(self.uri)
            if self.find(trial.trial_id):  # a resumed search: keep writing to the trial's run
                client.update_run(self.runs[trial.trial_id], status="RUNNING")
            else:
                self._names[trial.trial_id] = trial_name(trial.trial_id, trial.config)
                run = client.create_run(tracking.experiment_id(self.uri, self.experiment),
                                        run_name=self._names[trial.trial_id],
                                        tags={"mlflow.parentRunId": self.parent_id, "fastray.trial_id": trial.trial_id})
                logger = tracking.RunLogger(self.uri, run.info.run_id)
                logger.params({"config": {**self.base, **trial.config}, "hp": {k: short(v) for k, v in trial.config.items()}})
                self.runs[trial.trial_id] = run.info.run_id
        return tracking.RunLogger(self.uri, self.runs[trial.trial_id])

    def _say(self, trial, what: str) -> None:
        logger.info(f"[{self.search}] {self._names.get(trial.trial_id, trial.trial_id).split(' [')[0]}: {what}")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run(trial)
        self._say(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        metrics = {k: v for k, v in result.items() if k == self.metric or
                   k.startswith(("train_", "valid_", "sched_")) or k in ("examples_per_s", "epoch_seconds")}
        self._run(trial).metrics(metrics, step=int(result["epoch"]))
        shown = [k for k in metrics if k.startswith("train_")] + [k for k in ("valid_loss", self.metric) if k in metrics]
        self._say(trial, f"epoch {int(result['epoch'])}/{self.max_epochs} "
                  + " ".join(f"{k}={metrics[k]:.4g}" for k in dict.fromkeys(shown)))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        logger = self._run(trial)
        stopped = epochs < self.max_epochs
        logger.tags({"fastray.asha_stopped": stopped, "fastray.epochs_trained": epochs})
        if stopped:
            logger.tags({"fastray.stop_reason": f"ASHA stopped it after epoch {epochs} of {self.max_epochs}: "
                         f"its {self.metric} was not in the best half of the trials at that epoch"})
            self._names[trial.trial_id] = trial_name(trial.trial_id, trial.config, epochs)
            logger.client.update_run(logger.run_id, name=self._names[trial.trial_id])
        value = (trial.last_result or {}).get(self.metric)
        self._say(trial, (f"stopped by ASHA after epoch {epochs}/{self.max_epochs}" if stopped else
                          f"finished {epochs} epochs") + (f", {self.metric}={value:.4g}" if value is not None else ""))
        logger.finish("FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        logger = self._run(trial)
        why = _last_line(trial.error_file) or "the trial failed"
        logger.tags({"fastray.failure": why})
        self._say(trial, f"failed: {why}")
        logger.finish("FAILED")


def _last_line(path: str | None) -> str:
    """The last line of a trial's error file (the exception), or ""."""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()] if path else []
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


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
    run_flags: str = "",
) -> dict:
    """Search the pipeline's space with ASHA (less the keys in `fixed`, which --set gave); the summary dict (best config, best metrics).
    `run_flags`: what a `fastray run` of the best config needs besides it (the search's --data, stores)."""
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    from preprocessing.runtime import check_local_room, cluster_cpus, cluster_gpus, init_ray, worker_cpus

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
    if search not in ("random", "tpe"):
        raise ValueError(f"--search {search}: expected random or tpe")
    if search == "tpe" and importlib.util.find_spec("optuna") is None:
        raise ValueError("--search tpe needs optuna: pip install optuna")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {time_budget_s:g}")
    check_local_room(workers_per_trial, gpus_per_worker, workers_flag="--workers-per-trial",
                     gpu_flag=f"--gpus-per-worker {gpus_per_worker:g}")
    tracking.require_reachable(tracking.resolve_uri(tracking_uri))
    manifest, hit = pipe.prepare(cfg, data_dir, cache, on_bad)
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
        cpus_per_worker: float = worker_cpus(concurrent)  # each trial's worker on one node
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
    init_tags = pipe.init_source(cfg, manifest, uri)  # weights checked here, before any trial starts
    storage_path = storage or Storage.resolve(None).checkpoints()
    search_args = {"num_samples": num_samples, "max_concurrent": concurrent, "workers_per_trial": workers_per_trial,
                   "search": search, "seed": seed, "time_budget_s": time_budget_s,
                   "scheduler": f"ASHA(epochs, max_t={max_epochs}, grace_period=1, reduction_factor=2)",
                   "space": describe_space(space)}
    # the parent describes the search: the searched keys' base values, which no trial used, stay out
    fixed_cfg = {k: v for k, v in to_dict(cfg).items() if k not in space}
    parent_id, resumed = tracking.start_run(
        uri, pipeline, name, params={"config": fixed_cfg, "search": search_args},
        tags={"fastray.pipeline": pipeline, "fastray.kind": "tune", "fastray.config": config_label,
              "fastray.cache_key": manifest["key"], "fastray.git_commit": tracking.git_commit(), **init_tags},
    )
    parent = tracking.RunLogger(uri, parent_id)
    logger.info(f"[{name}] MLflow parent run {parent_id} ({'resumed' if resumed else 'new'}) in {uri}; "
        f"{concurrent} concurrent trial(s) x {workers_per_trial} worker(s) x {cpus_per_worker:.2f} CPU")

    with parent.ends_if_stopped():
        trainable = rt.with_resources(
            rt.with_parameters(_trial, pipeline=pipeline, cfg=cfg, manifest=manifest, datasets=datasets, steps_per_epoch=steps_per_epoch,
                               workers=workers_per_trial, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu,
                               storage=join_storage(join_storage(storage_path, name), "trainers"),
                               placement=os.environ.get("FASTRAY_PLACEMENT", "PACK"), tracking_uri=uri),
            resources,
        )
        callback = Trials(uri, pipeline, parent_id, to_dict(cfg), max_epochs, pipe.metric, name)
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
                    metric=pipe.metric, mode=pipe.mode, scheduler=scheduler, search_alg=_search_alg(search, seed, concurrent),
                    num_samples=num_samples, time_budget_s=time_budget_s,
                    # the random search limits itself (Tune would say it ignores max_concurrent_trials)
                    max_concurrent_trials=None if search == "random" else concurrent,
                ),
                run_config=rt.RunConfig(name=name, storage_path=storage_path, callbacks=[callback],
                                         verbose=2 if logs.verbose() else 0),
            )
        with _tune_output() as out, contextlib.redirect_stdout(out):  # stdout keeps the JSON line
            results = tuner.fit()

    # a trial that failed (a diverged loss, a crash) is never the best, whatever it reported before
    ok = [r for r in results if r.error is None and math.isfinite((r.metrics or {}).get(pipe.metric, math.nan))]
    if not ok:
        first = next((str(r.error).strip().splitlines()[-1] for r in results if r.error is not None), "no metric")
        parent.tags({"fastray.failure": f"all {len(results)} trials failed"})
        parent.finish("FAILED")
        raise ValueError(f"all {len(results)} trials failed ({len(results.errors)} errors); the first: {first}")
    # the best final metric; of equal ones, the trial that trained longest
    sign = 1 if pipe.mode == "max" else -1
    best = max(ok, key=lambda r: (sign * r.metrics[pipe.metric], r.metrics.get("epoch", 0)))
    best_cfg = dataclasses.replace(cfg, **best.config)
    best_json = {"base": config_label if config_label in pipe.configs else "default", **to_dict(best_cfg)}
    best_path = None  # on object storage, best.json is the parent run's MLflow artifact only
    if not is_uri(exp_path):
        best_path = Path(exp_path) / "best.json"
        best_path.write_text(json.dumps(best_json, indent=1))
    frame = results.get_dataframe()
    best_metrics = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float)) and (
        k == pipe.metric or k.startswith(("train_", "valid_")) or k == "epoch")}
    for r in results:  # trials of an earlier attempt that this one did not run (all, when it had finished)
        callback.find((r.metrics or {}).get("trial_id", ""))
    best_run = callback.runs.get(best.metrics.get("trial_id", ""), "")
    best_name = callback.names().get(best.metrics.get("trial_id", ""), "")
    # by trial id: the same link each time (a restored search lists its results in another
    # order); a random search's ids end in its trials' counter
    children = [callback.runs[t] for t in sorted(callback.runs)]
    compare = tracking.compare_url(uri, children)
    parent.json(best_json, "best.json")
    parent.params({"best": {k: short(v) for k, v in best.config.items()}})
    parent.metrics({f"best_{k}": v for k, v in best_metrics.items() if k != "epoch"}, step=0)
    parent.tags({"fastray.best_trial": best.metrics.get("trial_id", ""), "fastray.best_run_id": best_run,
                 "fastray.best_run_name": best_name, "mlflow.note.content": _description(
                     pipeline, len(frame), pipe.metric, best.metrics[pipe.metric], best_name, best_run, compare,
                     search_args, uri)})
    with tempfile.TemporaryDirectory() as d:
        for png in _plot_trials(results, pipe.metric, pipe.mode, max_epochs, callback.names(), Path(d),
                                {k for k, d in search_args["space"].items() if d.startswith("log")}):
            parent.artifact(png, "plots")
    parent.finish()
    logger.info(_table(results, pipe.metric, pipe.mode, max_epochs, callback.names()))
    logger.info(f"[{name}] best trial: {best_name} ({pipe.metric}={best.metrics[pipe.metric]:.4g})")
    logger.info(f"[{name}] compare the {len(children)} trials: {tracking.shown(uri, compare)}")
    if best_path is not None:  # its metric may differ a little: a run's torch uses all the worker's CPUs
        path = best_path.resolve()
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        logger.info(f"[{name}] train the best config: fastray run {pipeline} --config {shown}"
                    + (f" {run_flags}" if run_flags else ""))
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
        "best_run_id": best_run,
        "compare_url": compare,
        "parent_url": tracking.run_url(uri, parent_id),
        "resumed": resumed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


@contextlib.contextmanager
def _tune_output():
    """Where Tune's own printed boxes go: the run folder's log file (the terminal gets the
    trials' lines), or the terminal's stderr with -v."""
    from preprocessing.runtime import LOG_FILE_ENV

    path = os.environ.get(LOG_FILE_ENV)
    if logs.verbose() or not path:
        yield sys.stderr
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        yield f


def _search_alg(search: str, seed: int, concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if search == "random":
        return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)
    import optuna  # "tpe": tune() checked that it is installed
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))


def _table(results, metric: str, mode: str, max_epochs: int, names: dict[str, str]) -> str:
    """The trials, best first: name, final metric, epochs trained, how each ended."""
    rows = []
    for r in results:
        m = r.metrics or {}
        name = names.get(str(m.get("trial_id", "")), str(m.get("trial_id", "?"))).split(" [")[0]
        value = m.get(metric)
        ok = r.error is None and value is not None and math.isfinite(value)
        epochs = int(m.get("epoch", 0))
        end = "failed" if r.error is not None else "stopped (ASHA)" if epochs < max_epochs else "finished"
        rows.append((ok, value if ok else math.nan, name, epochs, end))
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda row: (not row[0], sign * row[1] if row[0] else 0, -row[3]))
    width = max(len(row[2]) for row in rows)
    lines = [f"  {'trial':<{width}}  {metric:>10}  epochs  end"]
    lines += [f"  {n:<{width}}  {v:>10.4g}  {e:>6}  {end}" for _, v, n, e, end in rows]
    return "trials, best first:\n" + "\n".join(lines)


def _description(pipeline: str, n: int, metric: str, value: float, best_name: str, best_run: str, compare: str,
                 search: dict, uri: str) -> str:
    """The parent run's description (MLflow shows it as Markdown on the run's page)."""
    space = ", ".join(f"`{k}` {d}" for k, d in search["space"].items())
    best = f"[{best_name}]({tracking.run_url(uri, best_run)})" if best_run else "(not recorded)"
    return (f"A search of {pipeline}: {n} trials ({search['search']} search over {space}; "
            f"{search['scheduler']}).\n\nBest trial: {best}, {metric} {value:.4g}.\n\n"
            f"[Compare the trials]({compare}): its metrics table links each metric's histories; "
            "its Scatter Plot tab puts a searched value (params `hp.*`) against the metric.")


def _plot_trials(results, metric: str, mode: str, max_epochs: int, names: dict[str, str], folder: Path,
                 log_keys: set[str] = frozenset()) -> list[Path]:
    """trials.png: every trial's metric against epoch, the best drawn thick, ASHA-stopped ones
    ending in an x; values.png: each searched value against the trial's final metric."""
    from matplotlib.ticker import MaxNLocator

    from . import plots

    rows = []  # (name, config, epochs, values, final)
    for r in results:
        df = r.metrics_dataframe
        if df is None or metric not in df or df.empty:
            continue
        df = df.dropna(subset=[metric])
        tid = str(r.metrics.get("trial_id", ""))
        rows.append((names.get(tid, tid), r.config, list(df["epoch"]), list(df[metric]), float(df[metric].iloc[-1])))
    if not rows:
        return []
    pick = max if mode == "max" else min
    best = pick(rows, key=lambda row: row[4])
    rows.sort(key=lambda row: row[4], reverse=mode == "max")  # the legend reads best first

    fig = plots.figure((9, 5))
    ax = fig.add_subplot(1, 1, 1)
    for name, _, epochs, values, final in rows:
        is_best = name == best[0]
        stopped = epochs[-1] < max_epochs
        (line,) = ax.plot(epochs, values, marker="o", ms=4, lw=3 if is_best else 1.2, alpha=1 if is_best else 0.75,
                          zorder=3 if is_best else 2,
                          label=f"{name.split(' [')[0]}: {final:.4g}" + (" (best)" if is_best else "")
                          + (f" (stopped@{epochs[-1]})" if stopped else ""))
        if stopped:
            ax.plot(epochs[-1:], values[-1:], marker="x", ms=10, mew=2, color=line.get_color(), zorder=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.8, max_epochs + 0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title=f"trial: final {metric}",
              title_fontsize=8)
    out = [plots.save(fig, folder / "trials.png", title=f"{len(rows)} trials, {metric} per epoch "
                      f"(x: stopped early by ASHA; thick: best)")]

    keys = list(best[1])
    fig = plots.figure((4 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        xs = [row[1][key] for row in rows]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        for (name, cfg, epochs, _, final), x in zip(rows, xs):
            full = epochs[-1] >= max_epochs
            ax.scatter([x if numeric else str(x)], [final], s=60 if name == best[0] else 30,
                       marker="o" if full else "x", color="C3" if name == best[0] else "C0", zorder=3)
        if numeric and key in log_keys:  # searched on a log scale: shown on one
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    out.append(plots.save(fig, folder / "values.png", title=f"each searched value against the trial's final {metric} "
                          "(red: best; x: stopped early)"))
    return out
