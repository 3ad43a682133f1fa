"""The engine's checkpoints: loaded without pickled code, and refused when they do not fit."""
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines.core.storage import CHECKPOINT_FILE, EPOCH_FILE, check_resumable, load_state


def _save(folder: Path, state: dict, epoch: int) -> None:
    folder.mkdir(parents=True)
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / EPOCH_FILE).write_text(str(epoch))


@pytest.mark.parametrize("nodes,workers,each", [
    ([2, 1], 1, 2),        # the two-node test's cluster: 3 CPUs, but no node has 3 for one worker
    ([2, 1], 2, 1), ([2, 1], 3, 1), ([2], 1, 2), ([4], 2, 2),
    ([0, 8, 8, 8, 8], 3, 8),  # a head without CPUs and four workers of 8
    ([16, 4], 2, 8), ([16, 4], 1, 16), ([0], 1, 1),  # two of 8 on the big node
])
def test_each_worker_gets_cpus_that_fit_on_one_node(monkeypatch, nodes, workers, each):
    import ray

    from preprocessing.runtime import worker_cpus

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": float(c)}} for c in nodes]
                        + [{"Alive": False, "Resources": {"CPU": 64.0}}])
    assert worker_cpus(workers) == each


def test_checkpoint_of_another_pipeline_or_shape_is_refused(tmp_path):
    model = nn.Linear(4, 2)
    run = tmp_path / "runs" / "r"
    _save(run / "checkpoint_a", {"pipeline": "imdb-lm", "model": model.state_dict(), "epoch": 1}, 1)
    with pytest.raises(ValueError, match="from pipeline 'imdb-lm', not 'cifar10-darknet'"):
        check_resumable("cifar10-darknet", model, run, "r")
    assert check_resumable("imdb-lm", model, run, "r") == 1  # the same pipeline and shapes: fine; its epoch

    # the newest epoch decides: a wider layer no longer fits
    _save(run / "checkpoint_b", {"pipeline": "imdb-lm", "model": nn.Linear(4, 3).state_dict(), "epoch": 2}, 2)
    with pytest.raises(ValueError, match=r"does not fit this config .*weight \(3, 4\) in the checkpoint, \(2, 4\) now"):
        check_resumable("imdb-lm", model, run, "r")
    assert check_resumable("imdb-lm", model, tmp_path / "runs" / "none", "none") is None  # no run yet
    # a damaged newest checkpoint: the one before it is where a resume starts (and what a
    # finished rerun's check reads), not the epoch its folder claims
    (run / "checkpoint_b" / CHECKPOINT_FILE).write_bytes(b"truncated")
    assert check_resumable("imdb-lm", model, run, "r") == 1


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    torch.save({"model": {}, "x": _Evil()}, folder / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_state(folder)


# ------------------------------------------------------------------ guards before and during a run

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.__main__ import main  # noqa: E402
from pipelines.core.storage import LOCK_FILE, run_lock  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def test_a_run_name_is_held_by_one_process_and_released_on_exit(tmp_path):
    run_dir = str(tmp_path / "runs" / "r")
    with run_lock(run_dir, "r"):
        with pytest.raises(ValueError, match=r"run 'r' is being trained by process \d+ on .* since"):
            with run_lock(run_dir, "r"):
                pass
    assert not Path(run_dir).exists()  # it made nothing but the lock: no folder is left behind
    with run_lock(run_dir, "r"):  # released: taken again
        (Path(run_dir) / "checkpoint_000000").mkdir()
    assert (Path(run_dir) / "checkpoint_000000").is_dir()  # a run that made something keeps its folder
    # a process killed while holding it leaves a file but no lock
    code = f"from pipelines.core.storage import run_lock\nimport os\nwith run_lock({run_dir!r}, 'r'): os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -9
    assert (Path(run_dir) / LOCK_FILE).exists()
    with run_lock(run_dir, "r"):
        pass


def test_a_second_start_of_a_running_name_is_refused(cifar_small, workdir, ray_session, capsys):
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(ROOT)}
    argv = ["run", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny", "--epochs", "1", "--name", "twice"]
    first = subprocess.Popen([sys.executable, "-m", "pipelines", *argv], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = workdir / "runs" / "twice" / LOCK_FILE
    while not (lock.exists() and lock.read_text()) and first.poll() is None:  # the first holds the name
        time.sleep(0.2)
    code, obj, err = _cli(capsys, *argv)
    log = first.communicate(timeout=600)[0]
    assert first.returncode == 0, log[-3000:]
    assert code == 1 and f"is being trained by process {first.pid}" in obj["error"], err
    runs = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}").search_runs(
        [MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}").get_experiment_by_name("cifar10-darknet").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len([p for p in (workdir / "runs" / "twice").glob("checkpoint_*") if p.is_dir()]) <= 2  # Ray keeps 2


def test_a_diverged_run_fails_with_its_step_and_strict_json(cifar_small, workdir, ray_session, capsys):
    code, obj, err = _cli(capsys, "run", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny",
                          "--set", "lr=1000", "--epochs", "1", "--name", "nan")
    assert code == 1 and "training loss is not finite from step" in obj["error"] and "(epoch 1)" in obj["error"], err
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("cifar10-darknet").experiment_id])[0]
    assert run.info.status == "FAILED" and "not finite" in run.data.tags["fastray.failure"]


def test_impossible_requests_fail_at_once(cifar_small, workdir, ray_session, capsys):
    base = ["run", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny"]
    code, obj, _ = _cli(capsys, *base, "--num-workers", "8")
    assert code == 1 and "--num-workers 8: this machine's Ray has 2 CPU(s)" in obj["error"]
    t0 = time.monotonic()
    code, obj, _ = _cli(capsys, *base, "--tracking-uri", "http://127.0.0.1:9")
    assert code == 1 and "the MLflow tracking server http://127.0.0.1:9 does not answer" in obj["error"]
    assert time.monotonic() - t0 < 60  # bounded: no retry loop
    assert not (workdir / "cache").exists()  # refused before any preprocessing


def test_tune_never_crowns_a_diverged_trial(cifar_small, workdir, ray_session, capsys):
    code, obj, err = _cli(capsys, "tune", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny",
                          "--epochs", "1", "--num-samples", "2", "--max-concurrent", "1", "--set", "lr=1000")
    assert "lr=1000.0 fixed by --set: not searched" in err
    assert code == 1 and "all 2 trials failed (2 errors)" in obj["error"], err
