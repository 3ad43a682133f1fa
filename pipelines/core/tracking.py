"""MLflow: where runs go, one experiment per pipeline, one run per training run.

The driver creates the run (params, tags, config, schedule plot) before training, rank 0
logs per-epoch metrics and the final model during it, and the driver adds the curves after
it: one writer at a time for a SQLite store.

Artifacts of a new experiment go to the shared storage's mlartifacts/ while a run has
one (`artifact_storage`), else beside a SQLite store's file; an MLflow server (http://)
keeps them where its --artifacts-destination says.
"""
from __future__ import annotations

import contextlib
import math
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("fastray")

DEFAULT_URI = "sqlite:///mlruns.db"


def resolve_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlruns.db; a relative
    SQLite or file path is made absolute, since Ray workers run in other folders."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    elif "://" not in uri:
        uri = Path(uri).absolute().as_uri()
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


_storage_artifacts: str | None = None  # set by artifact_storage() for the driver's run


@contextlib.contextmanager
def artifact_storage(location: str | None):
    """Within it, new experiments keep their artifacts at `location` (a folder's URI or an
    s3:// / gs:// URI on the run's --storage)."""
    global _storage_artifacts
    before, _storage_artifacts = _storage_artifacts, location
    try:
        yield
    finally:
        _storage_artifacts = before


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def run_url(uri: str, run_id: str) -> str:
    """Where a person sees the run: its page on the tracking server, or `fastray ui` for a
    local store (which serves it on 127.0.0.1:5000)."""
    exp = _client(uri).get_run(run_id).info.experiment_id
    return _ui(uri, f"/#/experiments/{exp}/runs/{run_id}?{MODEL_TRAINING_VIEW}")


def _ui(uri: str, page: str) -> str:
    """A page of the tracking server's UI; for a local store, of the one `fastray ui` serves."""
    if is_server(uri):
        return uri.rstrip("/") + page
    return f"http://127.0.0.1:5000{page}"


def shown(uri: str, url: str) -> str:
    """A UI URL as a line for a person: for a local store, with how to start its UI."""
    return url if is_server(uri) else f"{url} (start it with `fastray ui`)"


def compare_url(uri: str, run_ids: list[str]) -> str:
    """MLflow's compare view of these runs (one experiment's): their params and metrics side
    by side, a link to each metric's histories, and scatter / parallel-coordinates plots."""
    import urllib.parse

    if not run_ids:
        return ""
    exp = _client(uri).get_run(run_ids[0]).info.experiment_id
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids, separators=(",", ":")),
                                    "experiments": json.dumps([exp])})
    return _ui(uri, f"/#/compare-runs?{query}&{MODEL_TRAINING_VIEW}")


def require_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer /health within `timeout` seconds is a one-line
    error before any work (MLflow's own client would retry for minutes, silently)."""
    if not is_server(uri):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
            why = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        why = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        why = str(getattr(e, "reason", e))
    raise ValueError(f"the MLflow tracking server {uri} does not answer ({why}); start it (`mlflow server`), "
                     "or give another --tracking-uri")


def require_runs(uri: str) -> None:
    """For a command that reads runs recorded earlier (translate, the ensembles): a SQLite
    store that does not exist is a one-line error; MLflow would create an empty one, say so
    in its log lines, and then find no run in it."""
    require_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"{uri}: no MLflow store there; give the --tracking-uri (or run from the folder) "
                                "where the runs were recorded")


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: a server decides itself (its
    --artifacts-destination, proxied to every client); otherwise the --storage's
    mlartifacts/ if the run has one, else beside a SQLite store's database file."""
    if is_server(uri):
        return None
    if _storage_artifacts:
        return _storage_artifacts
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


# MLflow 3's UI opens on its GenAI traces page unless the URL (or the browser's last choice)
# says "workflowType=machine_learning": the model-training view of runs and metrics. The
# experiment's kind tag says the same to the parts of the UI that read it.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


# MLflow's UI loads a runs-table view (columns, sort) from the experiment tag
# `mlflow.sharedViewState.<key>` when the URL says `viewStateShareKey=<key>` (its "share view"):
# fastray's view shows and sorts by the pipeline's headline metric, which the default hides
VIEW_KEY = "fastray"


def table_view(metric: str, higher_is_better: bool) -> dict[str, str]:
    """The experiment tag of fastray's runs-table view for a pipeline's headline metric."""
    cols = [f"metrics.`{metric}`", "metrics.`valid_loss`", "attributes.`Models`"]  # narrow: seen on a laptop
    state = {"orderByKey": f"metrics.`{metric}`", "orderByAsc": not higher_is_better, "selectedColumns": cols}
    return {f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(state)}


def _experiment_tags(name: str) -> dict[str, str]:
    from . import registry

    if name not in registry.names():
        return dict(EXPERIMENT_KIND)
    e = registry.entry(name)
    return {**EXPERIMENT_KIND, **(table_view(e.metric, e.mode == "max") if e.metric else {})}


def experiment_id(uri: str, name: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        want = _artifact_root(uri)
        if want and _storage_artifacts and not exp.artifact_location.startswith(want):
            logger.warning(f"warning: experiment {name!r} keeps the artifact location it was created with, "
                           f"{exp.artifact_location}, not {want}")
        for k, v in _experiment_tags(name).items():  # made by an older fastray
            if exp.tags.get(k) is None:
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri), tags=_experiment_tags(name))
    except Exception:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    """The checkout's commit; a submitted job's working dir has no .git (Ray leaves it out),
    so there the commit its submitter passed in FASTRAY_GIT_COMMIT."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or os.environ.get("FASTRAY_GIT_COMMIT") or "unknown"


RUN_TAGS_ENV = "FASTRAY_RUN_TAGS"  # JSON: tags a caller (a flow's stage) asks this process's run to carry


def env_tags() -> dict[str, str]:
    """The tags of $FASTRAY_RUN_TAGS: a flow names the stage, its identity and its parent run."""
    text = os.environ.get(RUN_TAGS_ENV)
    return {k: str(v) for k, v in json.loads(text).items()} if text else {}


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own source fields: what ran (`fastray run NAME`), from which commit, by whom;
    a `ray job submit` job is a JOB."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = "unknown"
    return {"mlflow.source.name": command, "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") else "LOCAL",
            "mlflow.source.git.commit": git_commit(), "mlflow.user": user}


def log_dataset(run_log: "RunLogger", name: str, data_dir: str, manifest: dict, sample: bool) -> None:
    """The data a run trained on as an MLflow dataset input: its name, folder, rows per
    split, preprocessing cache key, and whether it was generated sample data."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"rows": manifest.get("rows", {}), "cache_key": manifest["key"], "generated_sample": sample}
    ds = Dataset(name=name, digest=str(manifest["key"])[:36], source_type="local",
                 source=json.dumps({"uri": str(data_dir)}), profile=json.dumps(profile))
    run_log.client.log_inputs(run_log.run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", "training")])])


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def find_run(uri: str, exp_id: str, name: str) -> str | None:
    """The run a training run of this --name logged to before, if any."""
    runs = _client(uri).search_runs(
        [exp_id], filter_string=f"tags.`fastray.name` = '{name}'", max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def run_by_id_or_name(uri: str, ref: str, pipeline: str) -> Any:
    """The MLflow run whose id is `ref`, or the newest `pipeline` run whose --name is `ref`;
    ValueError when neither is in the store."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    with contextlib.suppress(MlflowException):  # no such run id (or no run id at all)
        return client.get_run(ref)
    experiments = [e.experiment_id for e in client.search_experiments()]
    # no run name has a quote or a backslash (--name refuses them), and MLflow's filter would choke on them
    if experiments and "'" not in ref and "\\" not in ref:
        runs = client.search_runs(
            experiments, filter_string=f"tags.`fastray.name` = '{ref}' and tags.`fastray.pipeline` = '{pipeline}'",
            max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0]
    raise ValueError(f"no MLflow run {ref!r} in {uri} (neither a run id nor the --name of any {pipeline} run)")


def start_run(uri: str, experiment: str, name: str, params: dict, tags: dict) -> tuple[str, bool]:
    """(run_id, resumed): reopen the run of an earlier attempt with this name, or create one."""
    client = _client(uri)
    exp_id = experiment_id(uri, experiment)
    run_id = find_run(uri, exp_id, name)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        if env_tags():  # a flow's stage resumed: its identity, and the parent run now
            RunLogger(uri, run_id).tags(env_tags())
        return run_id, True
    tags = {"fastray.name": name, **{k: str(v) for k, v in tags.items()}, **env_tags()}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    RunLogger(uri, run.info.run_id).params(params)
    return run.info.run_id, False


class RunLogger:
    """What rank 0 and the driver log to one run."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=ms)

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(values).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def tags(self, values: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def json(self, obj: Any, name: str, folder: str | None = None) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(obj, indent=1, default=str))
            self.artifact(p, folder)

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def metric_keys(self) -> list[str]:
        return sorted(self.client.get_run(self.run_id).data.metrics)

    def delete_tag(self, key: str) -> None:
        if self.tag(key) is not None:
            self.client.delete_tag(self.run_id, key)

    def tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    @contextlib.contextmanager
    def ends_if_stopped(self) -> Any:
        """Whatever stops the work inside ends the run, never left RUNNING: Ctrl-C as KILLED
        (a run's last checkpoint resumes it), an error as FAILED."""
        try:
            yield
        except KeyboardInterrupt:
            self.finish("KILLED")
            raise
        except BaseException:
            self.finish("FAILED")
            raise


def system_metrics(uri: str, run_id: str, interval: float = 10.0) -> Any:
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU where pynvml
    finds one) logging this machine's use to the run every `interval` seconds; None where
    psutil is missing. Its finish() stops it."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1, tracking_uri=uri)
    monitor.start()
    return monitor


def log_model(run_log: RunLogger, model: Any, example: dict, name: str) -> None:
    """The trained model as an MLflow model of the run (its model tab, the logged-models
    search, the registry), with the signature of the inputs and outputs its last
    evaluation saw; the `models` package travels with it, so the pickle loads anywhere. It is
    named after the pipeline: a logged model named "model" would shadow the run's model/
    folder of artifacts (the state dict) in MLflow's artifact listing."""
    import mlflow
    import mlflow.pytorch
    import torch

    import models

    from mlflow.models import infer_signature

    run = run_log.client.get_run(run_log.run_id)
    if run.outputs and run.outputs.model_outputs:  # logged by an earlier attempt of this run
        return
    signature = None
    if example:
        signature = infer_signature(example["input"].numpy(), {k: v.numpy() for k, v in example["output"].items()})
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(run_log.uri)
    mlflow.set_experiment(experiment_id=run.info.experiment_id)  # the run's: else the Default experiment's
    try:
        mlflow.pytorch.log_model(
            model, name=name, run_id=run_log.run_id, signature=signature, serialization_format="pickle",
            code_paths=[str(Path(models.__file__).parent)], pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        mlflow.set_tracking_uri(before)


def scale_groups(curves: dict[str, list[float]], spread: float = 30.0, unit: bool = True) -> list[list[str]]:
    """The curves in groups to share a y axis, so that a curve in the hundredths is not drawn
    flat beside one in the tens (super-res's MSE beside its PSNR in dB): with `unit`, first
    every curve within [0, 1] (accuracies, AUCs, F1s, thresholds, MSEs of pixels in [0, 1]);
    then the others by magnitude (max |value|), each group's within `spread` of each other,
    largest first. A curve with no finite value goes with the first group; the given order
    is kept within a group."""
    finite = {k: [v for v in vs if math.isfinite(v)] for k, vs in curves.items()}
    empty = [k for k in curves if not finite[k]]
    units = [k for k in curves if unit and finite[k] and all(0.0 <= v <= 1.0 for v in finite[k])]
    size = {k: max(map(abs, finite[k])) for k in curves if finite[k] and k not in units}
    groups: list[list[str]] = [units] if units else []
    top = None
    for k in sorted(size, key=lambda k: -size[k]):
        if top is None or size[k] * spread < top:
            groups.append([])
            top = size[k]
        groups[-1].append(k)
    if empty:
        groups = [groups[0] + empty, *groups[1:]] if groups else [empty]
    order = list(curves)
    return [sorted(g, key=order.index) for g in groups]


def plot_curves(logger: RunLogger, path: Path, title: str = "", phase_epochs: list[float] = (),
                stage: str = "new stage") -> Path | None:
    """Every per-epoch metric against epoch: the losses, then the rest, each in panels of
    curves on the same scale (scale_groups; losses by magnitude only, so that a train loss
    above 1 and a validation loss below it share their panel); the phases' boundaries (a
    resize, an unfreeze) as dotted lines at `phase_epochs`, `stage` in the legend."""
    from matplotlib.ticker import MaxNLocator

    from . import plots

    keys = [k for k in logger.metric_keys() if not k.startswith(("system/", "best_", "sched_", "momentum", "examples_per_s", "epoch_seconds"))
            and k not in ("frozen_groups", "total_seconds")]  # (states, not curves)
    if not keys:
        return None
    history = {k: sorted(logger.history(k)) for k in keys}
    steps = sorted({s for h in history.values() for s, _ in h})
    losses = [k for k in keys if "loss" in k or k.startswith("train_")]
    panels = [("loss", g) for g in scale_groups({k: [v for _, v in history[k]] for k in losses}, unit=False)]
    panels += [("metric", g) for g in scale_groups({k: [v for _, v in history[k]] for k in keys if k not in losses})]
    # each panel's legend beside it (a multi-label classifier has twenty curves), as tall as it needs
    heights = [max(3.2, 0.2 * (len(g) + 1) + 0.6) for _, g in panels]
    fig = plots.figure((9.5, sum(heights)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (kind, group) in zip(axes[:, 0], panels):
        for k in group:
            ax.plot([s for s, _ in history[k]], [v for _, v in history[k]], marker="o", ms=3, label=k)
        for i, e in enumerate(phase_epochs):
            ax.axvline(e, color="gray", ls=":", lw=1, label=stage if i == 0 else None)
        if len(steps) == 1:  # one epoch: its tick alone, not fractions around it
            ax.set_xticks(steps)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return plots.save(fig, path, title=title)
