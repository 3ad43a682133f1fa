"""The command line as users and scripts see it: exit codes, one-line errors, the JSON line."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.__main__ import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def test_list(capsys):
    code, obj, _ = run_cli(capsys, "list")
    assert code == 0 and "cifar10-darknet" in [p["name"] for p in obj["pipelines"]]


def test_sample_data_by_dataset_or_pipeline_name(capsys, tmp_path):
    code, obj, _ = run_cli(capsys, "sample-data", "cifar10", "--out", str(tmp_path / "a"), "--size", "100")
    assert code == 0 and obj["train"] + obj["test"] == 100
    assert (tmp_path / "a" / "train" / "cat").is_dir()
    code, obj, _ = run_cli(capsys, "sample-data", "cifar10-darknet", "--out", str(tmp_path / "b"), "--size", "50")
    assert code == 0 and obj["dataset"] == "cifar10"
    # `fastray download`'s names for the same data (bedroom is lsun's, imagenette the images')
    code, obj, _ = run_cli(capsys, "sample-data", "bedroom", "--out", str(tmp_path / "c"), "--size", "4")
    assert code == 0 and obj["dataset"] == "lsun"


def test_sample_data_into_an_unmakeable_folder_is_one_line(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("a file")
    code, _, err = run_cli(capsys, "sample-data", "imdb", "--out", str(tmp_path / "a.txt" / "x"), "--size", "10")
    assert code == 1 and f"fastray: error: --out {tmp_path / 'a.txt' / 'x'}: cannot make this folder (not a directory)" in err
    code, _, err = run_cli(capsys, "download", "cifar10", "--out", str(tmp_path / "a.txt"), "--url", str(tmp_path / "a.txt"))
    assert code == 1 and f"fastray: error: --out {tmp_path / 'a.txt'}: not a folder" in err
    # refused after the folder was made: the folder goes again, "a/../b" being b
    code, _, err = run_cli(capsys, "sample-data", "cifar10", "--out", str(tmp_path / "a" / ".." / "b"), "--size", "3")
    assert code == 1 and "size must be >= 4" in err and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # ... and "nothere/../keep" is keep, whose files are refused as a non-empty folder, not cleaned away
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    code, _, err = run_cli(capsys, "sample-data", "imdb", "--out", str(tmp_path / "nothere" / ".." / "keep"), "--size", "1")
    assert code == 1 and "not empty" in err and (tmp_path / "keep" / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, msg", [
    (["run", "nope"], "unknown pipeline 'nope'; known: carvana-unet, cifar10-darknet, "),
    (["preprocess", "cifar10-darknet", "--data", "/no/such/folder"], "/no/such/folder: no such folder"),
    (["run", "cifar10-darknet", "--data", "{empty}"], "no CIFAR-10 here"),
    (["run", "cifar10-darknet", "--data", "{data}", "--set", "lr=fast"], "--set lr=fast: expected float"),
    (["run", "cifar10-darknet", "--data", "{data}", "--set", "nope=1"], "unknown key(s) nope; valid keys: groups"),
    (["run", "cifar10-darknet", "--data", "{data}", "--config", "{badjson}"], "not valid JSON"),
    (["sample-data", "imagenet22k", "--out", "x"], "unknown data set or pipeline 'imagenet22k'"),
    (["sample-data", "wt103", "--out", "x"], "wikitext-103 has no sample data (fastray download fetches it)"),
    (["sample-data", "cifar10", "--out", "{afile}"], "a.txt: not a folder"),
    (["sample-data", "cifar10", "--out", "{data}"], "not empty; sample data goes to a new or empty folder"),
    # a split left empty is data no pipeline reads: refused, as the other data sets' were
    (["sample-data", "cifar10", "--out", "{empty}/s", "--size", "3"], "size must be >= 4 (a training and a test image), got 3"),
    (["sample-data", "imdb", "--out", "{empty}/s", "--size", "1"], "size must be >= 2 (a training and a test review), got 1"),
    (["sample-data", "jigsaw-toxic", "--out", "{empty}/s", "--size", "2"],
     "size must be >= 3 (a comment in train.csv and one in test.csv), got 2"),
    (["preprocess", "imdb-ensemble", "--data", "{empty}", "--config", "tiny"], "imdb-ensemble has nothing to preprocess: it reads what"),
    (["run", "style-transfer", "--data", "{empty}", "--num-workers", "2"],
     "--num-workers: style-transfer has no training workers to give them to; leave it out"),
    # the option that said it is named
    (["run", "cifar10-darknet", "--data", "{data}", "--config", "{lrjson}"], "lr.json: lr=x: expected float"),
    (["run", "cifar10-darknet", "--data", "{data}", "--epochs", "0"], "--epochs: need bs >= 1, epochs >= 1"),
    # what this machine's Ray cannot hold waits forever: refused before any work (tune and flow hung)
    (["tune", "cifar10-darknet", "--data", "{data}", "--config", "tiny", "--gpus-per-worker", "64"],
     "--gpus-per-worker 64 with 1 worker(s), but this machine has "),
    (["tune", "cifar10-darknet", "--data", "{data}", "--config", "tiny", "--workers-per-trial", "99"],
     "--workers-per-trial 99: this machine's Ray has "),
    (["tune", "cifar10-darknet", "--data", "{data}", "--config", "tiny", "--time-budget", "-5"],
     "--time-budget must be > 0 seconds, got -5"),
    (["flow", "ulmfit", "--config", "tiny", "--num-workers", "99"], "--num-workers 99: this machine's Ray has "),
    pytest.param(["flow", "ulmfit", "--config", "tiny", "--use-gpu"], "--use-gpu with 1 worker(s), but this machine has 0",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU here")),
    pytest.param(["run", "cifar10-darknet", "--data", "{empty}", "--use-gpu"],  # before the data is read
                 "--use-gpu with 1 worker(s), but this machine has 0", marks=pytest.mark.skipif(
                     torch.cuda.is_available(), reason="a GPU here")),
])
def test_bad_input_is_one_line_and_exit_1(argv, msg, capsys, tmp_path, cifar_small, workdir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "a.txt").write_text("a file")
    (tmp_path / "lr.json").write_text('{"base": "tiny", "lr": "x"}')
    argv = [a.format(empty=tmp_path / "empty", data=cifar_small, badjson=tmp_path / "bad.json", afile=tmp_path / "a.txt",
                     lrjson=tmp_path / "lr.json") for a in argv]
    code, _, err = run_cli(capsys, *argv)
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and msg in lines[0], err
    assert "Traceback" not in err
    assert not any((tmp_path / "empty").iterdir())  # a refused command wrote nothing there


def test_a_ray_address_where_nothing_listens_is_one_line_within_seconds(cifar_small, workdir):
    """ray.init on such an address retried for over ten minutes, then printed a traceback."""
    with socket.socket() as s:  # a port just freed: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    out = subprocess.run([sys.executable, "-m", "pipelines", "run", "cifar10-darknet", "--data", str(cifar_small),
                          "--config", "tiny"], env=env, capture_output=True, text=True, cwd=workdir, timeout=120)
    lines = [l for l in out.stderr.splitlines() if l.startswith("fastray: error:")]
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    assert f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there" in lines[0] and "Traceback" not in out.stderr


def test_ui_serves_the_store_and_a_kill_stops_its_server(tmp_path, capsys):
    """`fastray ui` runs MLflow's server until it is stopped; killed (SIGTERM) rather than
    Ctrl-C'd, it used to leave the server holding the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "ui", "--port", str(port), "--tracking-uri",
                             f"sqlite:///{tmp_path / 'mlruns.db'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def answers() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        # what the user sees once the server answers: its links (and none of the server's own lines)
        shown, deadline = [], time.time() + 120
        while not any(l.startswith("MLflow UI for ") for l in shown):
            assert proc.poll() is None and time.time() < deadline, "".join(shown) + (proc.stdout.read() if proc.poll() else "")
            if select.select([proc.stdout], [], [], 1.0)[0]:
                shown.append(proc.stdout.readline())
        assert answers()
        assert shown[-1].startswith(f"MLflow UI for sqlite:///{tmp_path / 'mlruns.db'}: http://127.0.0.1:{port}/#/"), shown
        # a port that is none: argparse's usage error (exit 2), not an OverflowError's traceback
        with pytest.raises(SystemExit) as usage:
            main(["ui", "--port", "99999"])
        assert usage.value.code == 2 and "'99999' is not a port (1-65535)" in capsys.readouterr().err
        # a second UI on the same port: one line at once, not the server's start-up and traceback
        assert main(["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"]) == 1
        assert f"fastray: error: port {port} on 127.0.0.1 is taken" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.time() + 15
        while answers() and time.time() < deadline:
            time.sleep(0.5)
        assert not answers()  # the server went with it
        shown = "".join(shown) + proc.stdout.read()  # the server's own lines are in its log
        assert "Uvicorn" not in shown and "Registry store" not in shown and "INFO" not in shown, shown
    finally:
        if proc.poll() is None:
            proc.kill()


def test_preprocess_twice_hits_the_cache(capsys, cifar_small, workdir, ray_session):
    code, first, _ = run_cli(capsys, "preprocess", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny")
    code2, second, _ = run_cli(capsys, "preprocess", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny")
    assert (code, code2) == (0, 0)
    assert (first["cache"], second["cache"]) == ("miss", "hit") and first["key"] == second["key"]
    assert second["rows"] == {"train": 1000, "valid": 200}
    assert second["seconds"] < first["seconds"] / 10
    code3, third, _ = run_cli(capsys, "preprocess", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny",
                              "--set", "small_size=20")
    assert third["cache"] == "miss" and third["key"] != first["key"]


def _mlflow(workdir):
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")


def test_run_tiny_end_to_end_records_mlflow_and_prints_only_its_own_lines(cifar_small, workdir, ray_session, capsys):
    """As a job log shows it (stderr not a terminal): a header, one line an epoch, the summary;
    Ray's, Ray Data's, Ray Train's and MLflow's own lines in the run folder's log; -v shows them."""
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    argv = [sys.executable, "-m", "pipelines", "run", "cifar10-darknet", "--data", str(cifar_small),
            "--config", "tiny", "--name", "e2e"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = proc.stderr.strip().splitlines()
    # a cold cache: two lines from preprocessing (both splits decoded in one go), before the run's own five
    progress = [l for l in lines if l.startswith("preprocess: ")]
    assert progress == [] or (len(progress) == 2 and "image(s) of 2 split(s) (train, valid) in " in progress[0]
                              and " row(s) in " in progress[1]), proc.stderr[-3000:]
    lines = [l for l in lines if l not in progress]
    assert len(lines) == 5 and all(l.startswith("[e2e] ") for l in lines), proc.stderr[-3000:]
    assert "cifar10-darknet, config tiny" in lines[0] and "MLflow run" in lines[0]
    assert lines[1].startswith("[e2e] epoch 1/2 train_loss=") and "valid_loss=" in lines[1] and "lr=" in lines[1]
    assert lines[3].startswith("[e2e] done in ") and "accuracy" in lines[3] and "http://127.0.0.1:5000/#/" in lines[4]
    assert (workdir / "runs" / "e2e" / "fastray.log").stat().st_size > 0
    assert {"run_id", "experiment", "metrics", "seconds"} <= set(obj)
    assert 0.0 <= obj["metrics"]["accuracy"] <= 1.0 and obj["metrics"]["epoch"] == 2
    client = _mlflow(workdir)
    run = client.get_run(obj["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["config.nf"] == "8" and run.data.tags["fastray.world_size"] == "1"
    assert run.data.tags["fastray.pipeline"] == "cifar10-darknet" and run.data.tags["fastray.cache_key"]
    assert run.data.metrics["best_accuracy"] == max(m.value for m in client.get_metric_history(obj["run_id"], "accuracy"))
    steps = [m.step for m in client.get_metric_history(obj["run_id"], "accuracy")]
    assert steps == [1, 2]
    files = {f.path for d in ("", "plots", "model", "predictions") for f in client.list_artifacts(obj["run_id"], d or None)}
    assert {"config.json", "plots/schedule.png", "plots/curves.png", "model/model.pt",
            "predictions/predictions.png"} <= files

    # the same command again: the run finished every epoch, so nothing trains and its record
    # stays as it was (it used to start Ray Train, train no epoch, and log that as its total_seconds)
    before = client.get_run(obj["run_id"])
    capsys.readouterr()
    assert main(argv[3:]) == 0  # in this process: the same command line, without an interpreter's start
    out, err = capsys.readouterr()
    said = err.strip().splitlines()
    assert said[0].startswith("[e2e] finished already, 2 epoch(s): accuracy ") and "nothing to train" in said[0], said
    assert len(said) == 2 and "http://127.0.0.1:5000/#/" in said[1], said
    same = json.loads(out.strip().splitlines()[-1])
    assert same["finished_already"] is True and same["run_id"] == obj["run_id"]
    assert same["metrics"]["accuracy"] == obj["metrics"]["accuracy"]
    after = client.get_run(obj["run_id"])
    assert (after.info.end_time, after.data.metrics, after.data.tags) == (before.info.end_time, before.data.metrics,
                                                                         before.data.tags)

    # -v and a larger --epochs: the run continues from its last checkpoint, Ray's own lines shown
    verbose = subprocess.run(argv + ["--epochs", "3", "-v"], env=env, capture_output=True, text=True, cwd=workdir,
                             timeout=600)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(not l.startswith("[e2e] ") for l in verbose.stderr.splitlines()), verbose.stderr[-3000:]
    assert "resuming from the checkpoint of epoch 2" in verbose.stderr, verbose.stderr[-3000:]
    longer = json.loads(verbose.stdout.strip().splitlines()[-1])
    assert longer["run_id"] == obj["run_id"] and longer["metrics"]["epoch"] == 3
    assert [m.step for m in client.get_metric_history(obj["run_id"], "accuracy")] == [1, 2, 3]


def test_interrupted_run_is_killed_and_resumes_from_its_last_checkpoint(cifar_small, workdir, ray_session):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it): "fastray:
    interrupted", exit 130, the MLflow run KILLED; the same --name resumes at the epoch after
    the last checkpoint. (A SIGKILLed worker is tests/test_reliability.py's.)"""
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pipelines", "run", "cifar10-darknet", "--data", str(cifar_small),
            "--config", "tiny", "--epochs", "6", "--name", "killme"]
    log = open(workdir / "first.log", "w+")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=workdir,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and "epoch 2/6" not in (workdir / "first.log").read_text():
        assert proc.poll() is None, (workdir / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=120) == 130, (workdir / "first.log").read_text()[-3000:]
    assert "fastray: interrupted" in (workdir / "first.log").read_text()
    killed = _mlflow(workdir).search_runs([_mlflow(workdir).get_experiment_by_name("cifar10-darknet").experiment_id])
    assert [r.info.status for r in killed] == ["KILLED"]

    second = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    m = [l for l in second.stderr.splitlines() if "resuming from the checkpoint of epoch" in l]
    assert m, second.stderr[-3000:]
    resumed_at = int(m[0].rsplit(" ", 1)[1])
    assert 2 <= resumed_at < 6  # epoch 2 was logged before the kill, so it was saved
    obj = json.loads(second.stdout.strip().splitlines()[-1])
    assert obj["resumed"] is True and obj["metrics"]["epoch"] == 6
    client = _mlflow(workdir)
    run = client.get_run(obj["run_id"])
    assert run.data.tags["fastray.resumed_from_epoch"] == str(resumed_at)
    steps = sorted(m.step for m in client.get_metric_history(obj["run_id"], "accuracy"))
    assert steps == [1, 2, 3, 4, 5, 6]  # no epoch lost, none counted twice
