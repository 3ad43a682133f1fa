"""Flows: a lesson's stages as one command, each stage cached, resumable, one MLflow parent.

A flow is a small DAG of stages declared here, like the pipelines in registry.py (by name,
no lesson imported until a stage runs). A stage is a pipeline run with its config and
overrides, fed by upstream stages' runs (`encoder <- lm`: the upstream's MLflow run id goes
into the field `encoder`).

    identity(stage) = digest(pipeline, resolved config (fed fields left out),
                             data cache key, {field: identity(upstream)})

A FINISHED run tagged with a stage's identity is reused, not rerun; a stage that runs is
named `FLOW-STAGE-IDENTITY[:10]`, so a killed one resumes from its checkpoint by its name.
Each stage that runs is a `fastray run` process of its own joined to one Ray (the flow's, or
the cluster's under `ray job submit`); stages whose upstreams are done run side by side
while the nodes hold all their workers (`fits`), else one after another. The flow's process
only plans, preprocesses (so the identities know the data's cache key), launches and records: one MLflow parent run in the
experiment `flow-NAME`, the stages' runs its children (each in its pipeline's experiment),
a drawing of the DAG, and the last stage's metric as the flow's.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as configs
from . import logs, registry, tracking

logger = logging.getLogger("fastray")
say = logger.info


@dataclass(frozen=True)
class Stage:
    name: str
    pipeline: str
    inputs: dict[str, str] = field(default_factory=dict)  # config field <- upstream stage (its run id)
    sets: dict[str, str] = field(default_factory=dict)    # the stage's own fixed overrides
    when: str = ""                                         # a flow option that must be true


@dataclass(frozen=True)
class Flow:
    name: str
    lesson: int
    about: str
    stages: tuple[Stage, ...]                       # in an order where upstreams come first
    options: dict[str, bool] = field(default_factory=dict)

    def active(self, options: dict[str, bool]) -> list[Stage]:
        return [s for s in self.stages if not s.when or options[s.when]]


def _ulmfit(name: str, about: str, lm: str, clas: str, ensemble: str) -> Flow:
    """Lesson 10's chain: lm -> clas (on its encoder); the `backwards` option adds the backward
    LM and classifier and the ensemble of both classifiers."""
    bwd = {"backwards": "true"}
    return Flow(name, 10, about, (
        Stage("lm", lm),
        Stage("clas", clas, inputs={"encoder": "lm"}),
        Stage("lm_bwd", lm, sets=bwd, when="backwards"),
        Stage("clas_bwd", clas, inputs={"encoder": "lm_bwd"}, sets=bwd, when="backwards"),
        Stage("ensemble", ensemble, inputs={"forward": "clas", "backward": "clas_bwd"}, when="backwards"),
    ), options={"backwards": False})


FLOWS: dict[str, Flow] = {
    "ulmfit": _ulmfit(
        "ulmfit",
        "lesson 10's ULMFiT: fine-tune the language model on the task's reviews, then the classifier "
        "on its encoder; --set backwards=true adds the backward LM and classifier and their ensemble. "
        "A WikiText-103 LM enters as --set lm.pretrained=FILE_OR_RUN_ID.",
        "imdb-lm", "imdb-clas", "imdb-ensemble"),
    "text-ulmfit": _ulmfit(
        "text-ulmfit",
        "ULMFiT on a user's table (CSV, TSV or parquet; one label or many, as Kaggle's toxic comments): "
        "the language model fine-tuned on its text, then text-clas on its encoder; --set backwards=true adds "
        "the backward LM and classifier and their ensemble (its own submission.csv).",
        "text-lm", "text-clas", "text-ensemble"),
}


def names() -> list[str]:
    return sorted(FLOWS)


def get(name: str) -> Flow:
    if name not in FLOWS:
        raise KeyError(f"unknown flow {name!r}; known: {', '.join(names())}")
    return FLOWS[name]


# ------------------------------------------------------------------ the plan


@dataclass
class Planned:
    stage: Stage
    pipe: Any
    cfg: Any
    label: str
    data_dir: Path           # the stage's data, as the flow's process found it
    data: Path | None        # what its process is given: None when it finds it itself (the generated sample)
    sets: dict[str, str]     # the --set overrides the stage's process gets (fed fields added at launch)
    key: str | None          # the data's cache key (None: not preprocessed yet, in a dry run)
    identity: str | None = None
    run_name: str = ""
    status: str = "run"      # reuse | run | resume | skip | done | failed | not run
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)


class _Unbuilt(Exception):
    """A dry run met a cache entry that is not built yet."""


class _ProbeCache:
    """A cache that answers hits and refuses to build: a dry run does no preprocessing."""

    def __init__(self, cache: Any):
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def build(self, name: str, key: str, make: Callable) -> tuple[dict, bool]:
        manifest = self._cache.lookup(name, key)
        if manifest is None:
            raise _Unbuilt(key)
        return manifest, True


def split_sets(flow: Flow, items: list[str]) -> tuple[dict[str, bool], dict[str, dict[str, str]]]:
    """--set values: flow options (`backwards=true`), one stage's field (`clas.lr=0.01`) or
    every stage's that has the field (`seed=1`)."""
    options = dict(flow.options)
    per_stage: dict[str, dict[str, str]] = {s.name: {} for s in flow.stages}
    plain: dict[str, str] = {}
    for key, value in configs.parse_sets(items).items():
        if key in options:
            if value.lower() not in ("true", "false", "1", "0"):
                raise configs.ConfigError(f"--set {key}={value}: the flow option {key} is true or false")
            options[key] = value.lower() in ("true", "1")
        elif "." in key:
            stage, _, fld = key.partition(".")
            if stage not in per_stage:
                raise configs.ConfigError(f"--set {key}: {flow.name} has no stage {stage!r}; "
                                          f"its stages: {', '.join(s.name for s in flow.stages)}")
            per_stage[stage][fld] = value
        else:
            plain[key] = value
    active = flow.active(options)
    for key, value in plain.items():  # a field some stage's config has
        takers = [s for s in active if key in configs.fields(type(registry.pipeline_class(s.pipeline).configs["default"]))]
        if not takers:
            raise configs.ConfigError(f"--set {key}: no stage of {flow.name} has a field {key!r} "
                                      f"(a stage's: STAGE.{key}=...; options: {', '.join(options) or 'none'})")
        for s in takers:
            per_stage[s.name].setdefault(key, value)
    return options, per_stage


def plan(flow: Flow, *, config: str | None, sets: list[str], data_for: Callable[[Any], tuple[Path | None, bool]],
         cache: Any, on_bad: str, dry_run: bool) -> list[Planned]:
    """Every active stage resolved: its config, data cache key and identity. A dry run
    preprocesses nothing (a stage whose data is not in the cache has no identity yet)."""
    from preprocessing.cache import digest

    options, per_stage = split_sets(flow, sets)
    planned: list[Planned] = []
    for stage in flow.active(options):  # every config first: a bad --set fails before any work
        pipe = registry.get(stage.pipeline)
        data, is_sample = data_for(pipe)
        sets_ = {**stage.sets, **per_stage[stage.name]}
        fed = [k for k in sets_ if k in stage.inputs]
        if fed:
            raise configs.ConfigError(f"--set {stage.name}.{fed[0]}: the flow feeds it from the stage "
                                      f"{stage.inputs[fed[0]]}")
        cfg, label = configs.load(pipe.configs, config or ("sample" if is_sample else "default"))
        cfg = configs.apply(cfg, sets_, source=f"stage {stage.name}")
        planned.append(Planned(stage, pipe, cfg, label, data, data if not is_sample else None, sets_, None))
    if not dry_run:
        from preprocessing.runtime import init_ray

        init_ray()  # preprocessing (a cache miss) reads with Ray Data
    out: dict[str, Planned] = {}
    for p in planned:
        try:
            manifest, _ = p.pipe.prepare(p.cfg, p.data_dir, _ProbeCache(cache) if dry_run else cache, on_bad)
            p.key = manifest["key"]
        except _Unbuilt:
            p.key = None
        ups = [out[u] for u in p.stage.inputs.values()]
        if p.key is not None and all(u.identity for u in ups):
            own = {k: v for k, v in configs.to_dict(p.cfg).items() if k not in p.stage.inputs}
            p.identity = digest([p.stage.pipeline, own, p.key, {f: out[u].identity for f, u in p.stage.inputs.items()}])
            p.run_name = f"{flow.name}-{p.stage.name}-{p.identity[:10]}"
        out[p.stage.name] = p
    return planned


def _finished(uri: str, experiment: str, identity: str) -> Any:
    """The newest FINISHED run tagged with this stage identity, or None."""
    client = tracking._client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`fastray.stage_id` = '{identity}' and attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def _started(uri: str, experiment: str, run_name: str) -> bool:
    exp = tracking._client(uri).get_experiment_by_name(experiment)
    return exp is not None and tracking.find_run(uri, exp.experiment_id, run_name) is not None


def mark(flow: Flow, stages: list[Planned], uri: str, start: str | None, until: str | None) -> None:
    """Each stage's status: reuse (a finished run of its identity), resume (a started run of
    its name), run, or skip (outside --from/--until)."""
    order = [p.stage.name for p in stages]
    for opt, name in (("--from", start), ("--until", until)):
        if name is not None and name not in order:
            raise KeyError(f"{opt} {name}: not a stage of this {flow.name} flow; its stages: {', '.join(order)}")
    lo = order.index(start) if start else 0
    hi = order.index(until) if until else len(order) - 1
    by_name = {p.stage.name: p for p in stages}
    for i, p in enumerate(stages):
        done = _finished(uri, p.stage.pipeline, p.identity) if p.identity else None
        if done is not None:
            p.status, p.run_id = "reuse", done.info.run_id
            p.metrics = {k: v for k, v in done.data.metrics.items() if not k.startswith("system/")}
        elif i > hi:
            p.status = "skip"
        elif i < lo:
            raise ValueError(f"--from {start}: the stage {p.stage.name} before it has no finished run "
                             f"{'of this identity' if p.identity else '(its data is not preprocessed)'}: run it first")
        else:
            p.status = "resume" if p.run_name and _started(uri, p.stage.pipeline, p.run_name) else "run"
        if p.status == "skip":
            continue
        for up in p.stage.inputs.values():
            if by_name[up].status == "skip":
                raise ValueError(f"--until {until}: {p.stage.name} needs {up}, which would not run")


def describe(flow: Flow, stages: list[Planned]) -> list[str]:
    lines = []
    for p in stages:
        fed = ", ".join(f"{f} <- {u}" for f, u in p.stage.inputs.items())
        what = {"reuse": f"reused (run {p.run_id})", "resume": f"resumes {p.run_name}", "run": f"runs as {p.run_name}",
                "skip": "skipped (--until)", "done": f"done (run {p.run_id})", "failed": "FAILED",
                "not run": "not run"}[p.status]
        if p.status in ("run", "resume") and not p.identity:
            what = "runs (its data is not preprocessed yet)"
        lines.append(f"  {p.stage.name:9s} {p.stage.pipeline:13s} {what}" + (f"; {fed}" if fed else ""))
    return lines


# ------------------------------------------------------------------ running


def _die_with_parent() -> None:
    """In a stage's process: SIGKILL when the flow's process dies (a killed flow leaves no stage running)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launch(p: Planned, stages: dict[str, Planned], *, flow: str, parent_id: str, uri: str, storage: str | None,
            cache_dir: Path | None, on_bad: str, how: list[str], env: dict, count: str) -> subprocess.Popen:
    sets = dict(p.sets)
    for fld, up in p.stage.inputs.items():
        sets[fld] = stages[up].run_id
    argv = [sys.executable, "-m", "pipelines", "run", p.stage.pipeline, "--config", p.label, "--name", p.run_name,
            "--tracking-uri", uri, "--on-bad-input", on_bad]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    if p.data is not None:
        argv += ["--data", str(p.data)]
    if storage:
        argv += ["--storage", storage]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    if logs.verbose():
        argv.append("-v")
    argv += how  # how each stage trains (--num-workers, --use-gpu, --placement): not part of its identity
    tags = {"fastray.stage_id": p.identity, "fastray.flow": flow, "fastray.stage": p.stage.name,
            "mlflow.parentRunId": parent_id}
    say(f"[{flow}] stage {count} {p.stage.name}: fastray run {p.stage.pipeline} --config {p.label} --name {p.run_name}"
        + "".join(f" --set {k}={v}" for k, v in sets.items()) + "".join(f" {a}" for a in how))
    # its stdout (the result's JSON line; worker prints under -v) to a file: a pipe left unread
    # while other stages run would fill and stop the stage
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(argv, env={**env, tracking.RUN_TAGS_ENV: json.dumps(tags)}, stdout=out, text=True,
                            preexec_fn=_die_with_parent)
    proc.out = out  # type: ignore[attr-defined]
    return proc


def train_args(workers: int, use_gpu: bool, placement: str | None) -> list[str]:
    """`fastray flow`'s options of how a stage trains, as each stage's `fastray run` takes them."""
    if workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {workers}")
    return ((["--num-workers", str(workers)] if workers != 1 else []) + (["--use-gpu"] if use_gpu else [])
            + (["--placement", placement] if placement else []))


def fits(demands: list[list[tuple[float, float]]], nodes: list[tuple[float, float]]) -> bool:
    """Whether every stage's workers ((CPUs, GPUs) each) fit on the nodes' (CPUs, GPUs) at once,
    a worker on one node: first fit, the largest workers first."""
    free = [list(n) for n in nodes]
    for cpu, gpu in sorted((w for d in demands for w in d), reverse=True):
        node = next((f for f in free if f[0] >= cpu and f[1] >= gpu), None)
        if node is None:
            return False
        node[0] -= cpu
        node[1] -= gpu
    return True


def execute(flow: Flow, stages: list[Planned], *, parent_id: str, uri: str, storage: str | None,
            cache_dir: Path | None, on_bad: str, workers: int = 1, use_gpu: bool = False,
            placement: str | None = None) -> None:
    """Launch each stage whose upstreams are done, beside the running ones while the
    cluster's nodes hold all their workers (the forward and backward LMs at once on a
    cluster of two nodes; one at a time on one machine); wait for them."""
    import ray

    from preprocessing.runtime import init_ray, worker_cpus

    init_ray()
    # under `ray job submit` a stage's process inherits the job's config from the environment
    # (RAY_JOB_CONFIG_JSON_ENV_VAR) and joins the job's cluster
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    nodes = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    # what each stage's `fastray run` asks for: `workers` workers of worker_cpus() CPUs (+1 GPU)
    demand = [(float(worker_cpus(workers)), 1.0 if use_gpu else 0.0)] * workers
    how = train_args(workers, use_gpu, placement)
    by_name = {p.stage.name: p for p in stages}
    pending = [p for p in stages if p.status in ("run", "resume")]
    total, launched = len(pending), 0
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    try:
        while pending or running:
            for p in list(pending):  # in the declared order: upstreams first
                ready = all(by_name[u].status in ("reuse", "done") for u in p.stage.inputs.values())
                room = not running or fits([demand] * (len(running) + 1), nodes)
                if ready and room and not failed:
                    launched += 1
                    running[p.stage.name] = _launch(
                        p, by_name, flow=flow.name, parent_id=parent_id, uri=uri, storage=storage, cache_dir=cache_dir,
                        on_bad=on_bad, how=how, env=env, count=f"{launched}/{total}")
                    pending.remove(p)
            if not running:
                break  # what is pending waits on a stage that failed
            time.sleep(0.2)
            for name, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                p = by_name[name]
                proc.out.seek(0)
                result = _last_json(proc.out.read().strip().splitlines())
                proc.out.close()
                if proc.returncode != 0 or "run_id" not in result:
                    p.status = "failed"
                    failed.append(f"stage {name} failed (exit {proc.returncode}): "
                                  f"{result.get('error', 'see its lines above')}")
                else:
                    p.status, p.run_id, p.metrics = "done", result["run_id"], result.get("metrics", {})
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the stages too: each stops KILLED
        for proc in running.values():
            proc.wait()
        for name in running:
            by_name[name].status = "not run"
        raise
    finally:
        for p in pending:
            p.status = "not run"
    if failed:
        raise ValueError("; ".join(failed))


def _last_json(lines: list[str]) -> dict:
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return {}


# ------------------------------------------------------------------ the parent run and its record


COLOURS = {"reuse": "#d9ead3", "done": "#93c47d", "failed": "#e06666", "skip": "#eeeeee", "not run": "#ffffff",
           "run": "#ffffff", "resume": "#ffffff"}


def draw(flow: Flow, stages: list[Planned], path: Path) -> Path:
    """The DAG: a box per stage (its pipeline, status and metric), an arrow per fed field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level: dict[str, int] = {}
    for p in stages:
        level[p.stage.name] = 1 + max((level[u] for u in p.stage.inputs.values()), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for p in stages:
        lv = level[p.stage.name]
        pos[p.stage.name] = (lv * 3.2, -rows.get(lv, 0) * 1.6)
        rows[lv] = rows.get(lv, 0) + 1
    width, height = 3.2 * (max(level.values()) + 1), 1.6 * max(rows.values())
    fig, ax = plt.subplots(figsize=(max(4.0, width * 1.2), max(2.0, height * 1.2)))
    for p in stages:
        x, y = pos[p.stage.name]
        metric = p.pipe.metric
        value = p.metrics.get(metric)
        text = f"{p.stage.name}\n{p.stage.pipeline}\n{p.status}" + (f"\n{metric} {value:.4g}" if value is not None else "")
        ax.text(x, y, text, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.5", facecolor=COLOURS[p.status], edgecolor="#444444"))
        for fld, up in p.stage.inputs.items():
            ux, uy = pos[up]
            ax.annotate("", xy=(x - 1.0, y), xytext=(ux + 1.0, uy), arrowprops=dict(arrowstyle="->", color="#444444"))
            ax.text((x + ux) / 2, (y + uy) / 2 + 0.15, fld, ha="center", fontsize=8, color="#444444")
    ax.set_xlim(-1.6, width - 1.6)
    ax.set_ylim(-height + 0.6, 0.9)
    ax.axis("off")
    ax.set_title(f"flow {flow.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def record(run_log: tracking.RunLogger, flow: Flow, stages: list[Planned], uri: str) -> dict:
    """The parent's tags, metrics, description and drawing; the flow's result (its last
    stage's headline metric)."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    table = ["| stage | pipeline | status | run | metric |", "|---|---|---|---|---|"]
    for p in stages:
        tags[f"stage.{p.stage.name}.status"] = p.status
        value = p.metrics.get(p.pipe.metric)
        if p.run_id:
            tags[f"stage.{p.stage.name}.run_id"] = p.run_id
        if value is not None:
            metrics[f"{p.stage.name}.{p.pipe.metric}"] = value
        link = f"[{p.run_id[:8]}]({tracking.run_url(uri, p.run_id)})" if p.run_id else ""
        table.append(f"| {p.stage.name} | {p.stage.pipeline} | {p.status} | {link} | "
                     + (f"{p.pipe.metric} {value:.4g}" if value is not None else "") + " |")
    final = _final(stages)
    run_log.metrics({**metrics, **final}, step=0)
    tags["mlflow.note.content"] = f"**flow {flow.name}**: {flow.about}\n\n" + "\n".join(table)
    run_log.tags(tags)
    with tempfile.TemporaryDirectory() as d:
        run_log.artifact(draw(flow, stages, Path(d) / "flow.png"), "plots")
        (Path(d) / "stages.json").write_text(json.dumps(summary(stages), indent=1))
        run_log.artifact(Path(d) / "stages.json")
    return final


def summary(stages: list[Planned]) -> dict:
    return {p.stage.name: {"pipeline": p.stage.pipeline, "status": p.status, "run_id": p.run_id,
                           "identity": p.identity, "metrics": p.metrics} for p in stages}


def run(name: str, *, config: str | None, sets: list[str], data_for: Callable[[Any], tuple[Path | None, bool]],
        cache: Any, uri: str | None, storage: str | None, cache_dir: Path | None, on_bad: str = "skip",
        dry_run: bool = False, start: str | None = None, until: str | None = None, workers: int = 1,
        use_gpu: bool = False, placement: str | None = None) -> dict:
    """`fastray flow NAME`: plan, reuse what is finished, run the rest, record one parent run."""
    from preprocessing.cache import digest
    from preprocessing.runtime import check_local_room

    t0 = time.perf_counter()
    flow = get(name)
    train_args(workers, use_gpu, placement)  # a bad --num-workers fails before any work
    # the stages join this flow's Ray as a cluster's: what this machine cannot hold is refused here
    check_local_room(workers, 1.0 if use_gpu else 0.0)
    uri = tracking.resolve_uri(uri)
    tracking.require_reachable(uri)
    stages = plan(flow, config=config, sets=sets, data_for=data_for, cache=cache, on_bad=on_bad, dry_run=dry_run)
    mark(flow, stages, uri, start, until)
    flow_id = digest([flow.name, [(p.stage.name, p.identity, p.status == "skip") for p in stages]])
    parent_name = f"{flow.name}-{flow_id[:8]}"
    say(f"[{flow.name}] plan ({len(stages)} stage(s)):")
    for line in describe(flow, stages):
        say(line)
    todo = [p for p in stages if p.status in ("run", "resume")]
    # a dry run before the data is preprocessed cannot know every stage's identity, so neither
    # the name the flow's run will have
    known = all(p.identity for p in stages)
    result = {"flow": flow.name, "name": parent_name if known else None, "stages": summary(stages)}
    if dry_run:
        return {**result, "dry_run": True}
    experiment = f"flow-{flow.name}"
    exp_id = tracking.experiment_id(uri, experiment)
    earlier = tracking.find_run(uri, exp_id, parent_name)
    if not todo:
        say(f"[{flow.name}] every stage was reused: nothing to train"
            + (f"; the flow's run: {tracking.shown(uri, tracking.run_url(uri, earlier))}" if earlier else ""))
        if earlier is not None and tracking._client(uri).get_run(earlier).info.status == "FINISHED":
            return {**result, "parent_run_id": earlier, "reused": True, "metrics": _final(stages),
                    "seconds": round(time.perf_counter() - t0, 2)}
    parent_id, _ = tracking.start_run(uri, experiment, parent_name, params={"flow": flow.name, "config": config or "",
                                                                            "set": json.dumps(sets)},
                                      tags={"fastray.flow": flow.name, "fastray.flow_id": flow_id,
                                            **tracking.source_tags(f"fastray flow {flow.name}")})
    run_log = tracking.RunLogger(uri, parent_id)
    url = tracking.run_url(uri, parent_id)
    say(f"[{flow.name}] MLflow parent run {parent_id}: {tracking.shown(uri, url)}")
    status = "FINISHED"
    try:
        execute(flow, stages, parent_id=parent_id, uri=uri, storage=storage, cache_dir=cache_dir, on_bad=on_bad,
                workers=workers, use_gpu=use_gpu, placement=placement)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        final = record(run_log, flow, stages, uri)
        run_log.finish(status)
        say(f"[{flow.name}] {status.lower()} in {logs.duration(time.perf_counter() - t0)}"
            + "".join(f"; {k} {v:.4g}" for k, v in final.items()))
        for line in describe(flow, stages):
            say(line)
        say(f"[{flow.name}] the flow's run, its stages and plots/flow.png: {tracking.shown(uri, url)}")
    return {**result, "stages": summary(stages), "parent_run_id": parent_id, "reused": False, "metrics": final,
            "url": url, "seconds": round(time.perf_counter() - t0, 2)}


def _final(stages: list[Planned]) -> dict:
    """The flow's result: its last stage's headline metric (the last that was not skipped)."""
    last = [p for p in stages if p.status != "skip"][-1]
    return {k: v for k, v in last.metrics.items() if k == last.pipe.metric}
