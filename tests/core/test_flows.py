"""`fastray flow`: a lesson's stages as one command, each stage reused when nothing it
depends on changed, resumed after a kill, recorded under one MLflow parent run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.core import config as configs
from pipelines.core import flows, registry
from preprocessing.samples import imdb as imdb_samples

ROOT = Path(__file__).resolve().parents[2]


def test_sets_reach_one_stage_every_stage_or_the_flow():
    flow = flows.get("ulmfit")
    options, per = flows.split_sets(flow, ["clas.lr=0.01", "seed=3", "backwards=true"])
    assert options == {"backwards": True}
    assert per["clas"] == {"lr": "0.01", "seed": "3"} and per["lm"] == {"seed": "3"}
    assert per["lm_bwd"] == {"seed": "3"} and per["clas_bwd"] == {"seed": "3"}
    _, per = flows.split_sets(flow, ["seed=3"])
    assert "seed" not in per["lm_bwd"]  # an inactive stage takes nothing
    with pytest.raises(configs.ConfigError, match="no stage 'clsa'"):
        flows.split_sets(flow, ["clsa.lr=0.01"])
    with pytest.raises(configs.ConfigError, match="no stage of ulmfit has a field 'nope'"):
        flows.split_sets(flow, ["nope=1"])
    with pytest.raises(configs.ConfigError, match="true or false"):
        flows.split_sets(flow, ["backwards=maybe"])
    with pytest.raises(KeyError, match="unknown flow"):
        flows.get("ulmfitt")


@pytest.mark.parametrize("sets,msg", [(["clas.encoder=x"], "the flow feeds it from the stage lm"),
                                      (["clas.lr=-1"], "stage clas: need lr > 0")])
def test_a_fed_field_or_a_bad_value_fails_before_any_work(sets, msg, tmp_path):
    """Every stage's config is resolved before the first preprocessing or run."""
    with pytest.raises(configs.ConfigError, match=msg):
        flows.plan(flows.get("ulmfit"), config="tiny", sets=sets, data_for=lambda pipe: (tmp_path, False),
                   cache=None, on_bad="skip", dry_run=True)


def test_every_declared_stage_names_a_pipeline_and_feeds_from_an_earlier_stage():
    from pipelines.core import registry

    for flow in flows.FLOWS.values():
        seen: set[str] = set()
        for stage in flow.stages:
            registry.entry(stage.pipeline)
            assert set(stage.inputs.values()) <= seen, (flow.name, stage.name)
            assert not stage.when or stage.when in flow.options
            seen.add(stage.name)


def _fastray(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], env=env, capture_output=True, text=True,
                          cwd=workdir, timeout=900)


def _runs(workdir: Path) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    return {e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()}


def test_ulmfit_flow_resumes_a_killed_stage_then_reuses_every_finished_one(tmp_path, workdir, ray_session):
    data = tmp_path / "aclImdb"
    imdb_samples.imdb(data, size=600, seed=1)
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    flow = ["flow", "ulmfit", "--data", str(data), "--config", "tiny", "--set", "clas.epochs=4"]

    # 1. SIGKILL the flow's process while its second stage (the classifier) trains: the
    # stage's process goes with it
    log = open(workdir / "killed.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", *flow], env=env, stdout=subprocess.DEVNULL,
                            stderr=log, cwd=workdir)
    deadline = time.time() + 600
    while time.time() < deadline and "] epoch 2/4" not in (workdir / "killed.log").read_text():
        assert proc.poll() is None, (workdir / "killed.log").read_text()[-3000:]
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(2)
    stage_procs = subprocess.run(["pgrep", "-f", "pipelines run imdb-clas"], capture_output=True, text=True).stdout
    assert not stage_procs.strip(), "a stage outlived its flow"

    # 2. the same command: the LM reused, the classifier resumed from its checkpoint; one
    # parent run (the killed flow's, reopened) holds both
    resumed = _fastray(workdir, env, *flow)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lm        imdb-lm       reused" in resumed.stderr, resumed.stderr[-3000:]
    assert "clas      imdb-clas     resumes" in resumed.stderr
    assert "resuming from the checkpoint of epoch" in resumed.stderr
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert [s["status"] for s in out["stages"].values()] == ["reuse", "done"]
    assert out["url"].startswith("http://127.0.0.1:5000/#/experiments/") and " " not in out["url"]  # a URL only
    lm_id = out["stages"]["lm"]["run_id"]
    runs = _runs(workdir)
    assert len(runs["imdb-lm"]) == 1 and len(runs["imdb-clas"]) == 1  # the LM trained once, one classifier run
    parent, clas = runs["flow-ulmfit"], runs["imdb-clas"][0]
    assert [p.info.run_id for p in parent] == [out["parent_run_id"]] and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["accuracy"] == pytest.approx(out["stages"]["clas"]["metrics"]["accuracy"])
    assert parent[0].data.tags["stage.lm.run_id"] == lm_id
    assert clas.data.tags["mlflow.parentRunId"] == out["parent_run_id"]
    assert clas.data.params["config.encoder"] == lm_id  # fed by the LM stage
    assert clas.data.tags["fastray.stage_id"] == out["stages"]["clas"]["identity"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    assert "plots/flow.png" in {f.path for f in client.list_artifacts(out["parent_run_id"], "plots")}

    # what each stage trained: the LM from random init, its encoder an artifact; the
    # classifier from that encoder with gradual unfreezing and discriminative LRs
    killed = (workdir / "killed.log").read_text()
    assert "random init" in killed and f"encoder loaded from the imdb-lm run {lm_id}" in killed
    lm = runs["imdb-lm"][0].data.metrics
    assert 1 < lm["perplexity"] < 300 and 0 < lm["valid_accuracy"] <= 1  # vocab 300: random is ~300
    assert lm["train_loss"] > lm["train_ce"] > 0  # optimised: CE + AR + TAR
    assert "encoder/encoder.pt" in {a.path for a in client.list_artifacts(lm_id, "encoder")}
    assert clas.data.tags["fastray.init"] == f"encoder:run:{lm_id}"

    def by_step(key: str) -> dict:  # a resumed epoch may log its step again: the last value counts
        hist = sorted(client.get_metric_history(clas.info.run_id, key), key=lambda m: m.timestamp)
        return {m.step: m.value for m in hist}

    n = registry.get("imdb-clas").configs["tiny"].n_layers + 2  # embedding, LSTMs, head
    frozen = by_step("frozen_groups")
    assert [frozen[k] for k in sorted(frozen)] == [n - 1, n - 2, 0, 0]  # all but the head, the last two, none
    lrs = [by_step(f"sched_lr_group{i}") for i in range(n)]
    assert len(lrs[0]) == 4 and all(lrs[i + 1][k] / lrs[i][k] == pytest.approx(2.6) for i in range(n - 1) for k in lrs[0])

    # 3. again: nothing trained, no MLflow run made
    again = _fastray(workdir, env, *flow)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every stage was reused" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["reused"] is True
    assert json.loads(again.stdout.strip().splitlines()[-1])["name"] == out["name"]  # the same flow, by name
    assert {k: len(v) for k, v in _runs(workdir).items()} == {k: len(v) for k, v in runs.items()}

    # 4. only the classifier's LR changed: the plan reuses the LM and runs the classifier
    plan = _fastray(workdir, env, *flow, "--set", "clas.lr=0.02", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    stages = json.loads(plan.stdout.strip().splitlines()[-1])["stages"]
    assert (stages["lm"]["status"], stages["lm"]["run_id"], stages["clas"]["status"]) == ("reuse", lm_id, "run")


def test_how_the_stages_train_goes_to_each_stage_run(tmp_path):
    """--num-workers, --use-gpu and --placement reach every stage's `fastray run`; a bad
    --num-workers fails before any work."""
    assert flows.train_args(2, True, "spread") == ["--num-workers", "2", "--use-gpu", "--placement", "spread"]
    assert flows.train_args(1, False, None) == []
    with pytest.raises(ValueError, match="--num-workers must be >= 1"):
        flows.run("ulmfit", config="tiny", sets=[], data_for=lambda pipe: (tmp_path, False), cache=None,
                  uri=f"sqlite:///{tmp_path / 'mlruns.db'}", storage=None, cache_dir=None, workers=0)
    assert not (tmp_path / "mlruns.db").exists()


def test_stages_run_side_by_side_only_where_the_nodes_hold_their_workers():
    one = [(2.0, 0.0)]                       # a stage of one worker of 2 CPUs
    assert flows.fits([one], [(2.0, 0.0)])
    assert not flows.fits([one, one], [(2.0, 0.0)])            # one machine of 2 CPUs: one at a time
    assert flows.fits([one, one], [(2.0, 0.0), (2.0, 0.0)])    # two nodes: the forward and backward LMs at once
    assert not flows.fits([one, one], [(2.0, 0.0), (1.0, 0.0)])  # the two-node test's 2 + 1 CPUs
    gpu = [(4.0, 1.0)] * 2                   # two workers of 4 CPUs and a GPU
    assert flows.fits([gpu, gpu], [(8.0, 2.0), (8.0, 2.0)])
    assert not flows.fits([gpu, gpu], [(16.0, 2.0), (16.0, 0.0)])


def test_a_dry_run_before_preprocessing_names_no_flow_run(tmp_path, workdir, capsys):
    """Before the data is preprocessed no stage's identity is known, so neither is the name
    the flow's run will have: a dry run says null rather than a name the run would not take."""
    from pipelines.__main__ import main

    imdb_samples.imdb(tmp_path / "imdb", size=60, seed=1)
    assert main(["flow", "ulmfit", "--data", str(tmp_path / "imdb"), "--config", "tiny", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dry_run"] is True and out["name"] is None
    assert {s["status"] for s in out["stages"].values()} == {"run"} and not (workdir / "cache").exists()
