"""`fastray tune`: ASHA over the search space, one MLflow parent with a child per trial,
best config out, and resume after a kill."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from pipelines.__main__ import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (SQLite backend, proxied artifacts)."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d}/server.db",
         "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(d / "server.log", "w"), start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # GenAI jobs: eight idle processes
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a loaded machine starts it in minutes, an idle one in seconds
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (d / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start: " + (d / "server.log").read_text()[-2000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: its workers were slow to stop
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _last_json(out: str) -> dict:
    return json.loads([l for l in out.splitlines() if l.strip()][-1])


def test_search_against_an_mlflow_server(capsys, cifar_small, workdir, ray_session, mlflow_server):
    argv = ["tune", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny", "--epochs", "4",
            "--num-samples", "6", "--max-concurrent", "2", "--tracking-uri", mlflow_server]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    obj = _last_json(out)
    assert obj["trials"] == 6 and obj["errors"] == 0, err[-4000:]
    assert obj["stopped_early"] >= 1, "ASHA stopped no trial"
    assert set(obj["best_config"]) == {"p", "lr", "div", "pct"}

    # the children, through MLflow's REST API, ordered by the metric
    api = f"{mlflow_server}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "cifar10-darknet"}).json()
    found = requests.post(f"{api}/runs/search", json={
        "experiment_ids": [exp["experiment"]["experiment_id"]],
        "filter": f"tags.`mlflow.parentRunId` = '{obj['parent_run_id']}'",
        "order_by": ["metrics.accuracy DESC"], "max_results": 100,
    }).json()["runs"]
    assert len(found) == 6
    accs = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "accuracy") for r in found]
    assert accs == sorted(accs, reverse=True)
    assert accs[0] == pytest.approx(obj["best_metrics"]["accuracy"])
    stopped = []
    for r in found:
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert {"config.p", "config.lr", "config.div", "config.pct", "config.nf"} <= set(params)
        hist = requests.get(f"{api}/metrics/get-history",
                            params={"run_id": r["info"]["run_id"], "metric_key": "accuracy"}).json()["metrics"]
        assert sorted(m["step"] for m in hist) == list(range(1, int(tags["fastray.epochs_trained"]) + 1))
        stopped.append(tags["fastray.asha_stopped"] == "True")
    assert sum(stopped) == obj["stopped_early"]

    # the search as the MLflow UI shows it: names told apart where the UI cuts them, short
    # hp.* params equal to the config, a stopped trial's times its own, a parent that is no trial
    names = [r["info"]["run_name"] for r in found]
    assert len({n[:12] for n in names}) == 6, names
    for r in found:
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert {k[3:] for k in params if k.startswith("hp.")} == {"p", "lr", "div", "pct"}
        for key in ("p", "lr", "div", "pct"):
            assert float(params[f"hp.{key}"]) == pytest.approx(float(params[f"config.{key}"]), rel=1e-2)
            assert f"{key}={params[f'hp.{key}']}" in r["info"]["run_name"]
        if tags["fastray.asha_stopped"] == "True":
            assert r["info"]["run_name"].endswith(f"[stopped@{tags['fastray.epochs_trained']}]")
            seconds = sum(m["value"] for m in requests.get(f"{api}/metrics/get-history", params={
                "run_id": r["info"]["run_id"], "metric_key": "epoch_seconds"}).json()["metrics"])
            assert (int(r["info"]["end_time"]) - int(r["info"]["start_time"])) / 1000 >= seconds
    parent = requests.get(f"{api}/runs/get", params={"run_id": obj["parent_run_id"]}).json()["run"]
    pparams = {p["key"]: p["value"] for p in parent["data"]["params"]}
    ptags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert not {"config.p", "config.lr", "config.div", "config.pct"} & set(pparams)  # no base value of a searched key
    assert "config.nf" in pparams and pparams["search.space.lr"].startswith("loguniform(")
    # the best run is one of those at the top of MLflow's order (trials may tie on the metric)
    top = {r["info"]["run_id"] for r, acc in zip(found, accs) if acc == accs[0]}
    assert ptags["fastray.best_run_id"] == obj["best_run_id"] and obj["best_run_id"] in top
    best_name = next(n for r, n in zip(found, names) if r["info"]["run_id"] == obj["best_run_id"])
    assert ptags["fastray.best_run_name"] == best_name and best_name in ptags["mlflow.note.content"]
    assert {m["key"] for m in parent["data"]["metrics"]} >= {"best_accuracy", "best_valid_loss"}
    assert "accuracy" not in {m["key"] for m in parent["data"]["metrics"]}
    assert obj["compare_url"].startswith(f"{mlflow_server}/#/compare-runs?runs=")
    assert all(r["info"]["run_id"] in obj["compare_url"] for r in found)

    # the best config runs as it is
    os.environ["FASTRAY_SYSTEM_METRICS_S"] = "1"  # a sample a second: the run is short
    try:
        code = main(["run", "cifar10-darknet", "--data", str(cifar_small), "--config", obj["best_config_path"],
                     "--tracking-uri", mlflow_server, "--name", "best"])
    finally:
        del os.environ["FASTRAY_SYSTEM_METRICS_S"]
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    run_id = _last_json(out)["run_id"]
    run = requests.get(f"{api}/runs/get", params={"run_id": run_id}).json()["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    best = json.load(open(obj["best_config_path"]))
    for key in ("p", "lr", "div", "pct", "epochs", "nf"):
        assert params[f"config.{key}"] == str(best[key])

    # MLflow's own fields of a run, as its REST API gives them
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["run_name"] == "best"
    note = tags["mlflow.note.content"]
    assert note.startswith("**cifar10-darknet**, config `") and "Result: accuracy " in note
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.source.name"] == "fastray run cifar10-darknet"
    assert tags["fastray.metric"] == "accuracy" and tags["fastray.higher_is_better"] == "True"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert "best_accuracy" in metrics and "system/cpu_utilization_percentage" in metrics, metrics
    (ds,) = run["inputs"]["dataset_inputs"]
    profile = json.loads(ds["dataset"]["profile"])
    assert ds["dataset"]["name"] == "cifar10" and profile["rows"]["train"] > 0 and profile["generated_sample"] is False
    models = requests.post(f"{api}/logged-models/search", json={
        "experiment_ids": [exp["experiment"]["experiment_id"]]}).json()["models"]
    ours = [m for m in models if m["info"]["source_run_id"] == run_id]
    assert len(ours) == 1 and ours[0]["info"]["name"] == "cifar10-darknet", models


def test_killed_search_resumes_without_rerunning_finished_trials(cifar_small, workdir, ray_session):
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pipelines", "tune", "cifar10-darknet", "--data", str(cifar_small),
            "--config", "tiny", "--epochs", "2", "--num-samples", "3", "--max-concurrent", "1"]
    log = workdir / "first.log"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=workdir,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and ": finished 2 epochs" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    # "[search] t00 p=... lr=...: finished 2 epochs, accuracy=0.1": the trial's number
    first_done = [l.split()[1] for l in log.read_text().splitlines() if ": finished 2 epochs" in l][0]
    time.sleep(3)  # the search saves its state every second
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    second = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the search" in second.stderr
    assert f"] {first_done} " not in second.stderr.split("trials, best first:")[0]  # finished: not rerun
    obj = _last_json(second.stdout)
    assert obj["trials"] == 3 and obj["errors"] == 0
    # the same command once more, the search finished: its summary and records as they were
    third = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir, timeout=400)
    assert third.returncode == 0, third.stderr[-3000:]
    again = _last_json(third.stdout)
    assert again["best_run_id"] == obj["best_run_id"] != "" and again["compare_url"] == obj["compare_url"] != ""
    assert "compare the 3 trials: " in third.stderr and re.search(r"best trial: t\d\d ", third.stderr), third.stderr[-2000:]
    [rerun] = re.findall(r"train the best config: fastray run cifar10-darknet --config (\S+)", third.stderr)
    assert json.loads((workdir / rerun).read_text())["p"] == again["best_config"]["p"]  # the command as printed


def test_text_search_varies_drop_mult(capsys, tmp_path, workdir, ray_session):
    """The classifier's space holds AWD-LSTM's drop_mult and the groups' LR ratio; its epochs
    come from its stages; every trial starts from an encoder given as an LM's MLflow run id."""
    from preprocessing.samples import imdb as imdb_samples

    imdb_samples.imdb(tmp_path / "imdb", size=300, seed=3)
    assert main(["run", "imdb-lm", "--data", str(tmp_path / "imdb"), "--config", "tiny"]) == 0
    lm = _last_json(capsys.readouterr()[0])["run_id"]
    code = main(["tune", "imdb-clas", "--data", str(tmp_path / "imdb"), "--config", "tiny", "--set", f"encoder={lm}",
                 "--num-samples", "2", "--max-concurrent", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    obj = _last_json(out)
    assert obj["trials"] == 2 and obj["errors"] == 0
    assert 0.2 <= obj["best_config"]["drop_mult"] <= 1.0 and 1.0 <= obj["best_config"]["lr_factor"] <= 2.6
