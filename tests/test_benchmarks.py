"""Issue 19's claims that a test can hold without timing anything: the prepared GPU check
runs end to end (its --smoke pass on the CPU takes every step the GPU machine will: lesson
12's run whole, overhead.py, one JSON of both), and a cache hit imports what it uses only.
No figure is asserted: timings belong to the machine that measured them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """benchmarks/<name>.py as a module (the folder is no package, and its tokenize.py must
    not shadow the standard library's on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fastray_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_runs_every_step_and_writes_one_json(ray_session, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "RAY_ADDRESS": ray_session}  # join the session's Ray
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1800)  # about a minute idle; a loaded 2-core machine takes ten
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    run = result["lesson12_default_run"]
    assert run["exit_code"] == 0 and run["error"] is None, out.stderr[-3000:]
    assert 0 <= run["metrics"]["accuracy"] <= 1 and run["wall_seconds"] > 0
    darknet = result["overhead"]["cifar10-darknet"]
    assert darknet["error"] is None and darknet["ratio"] > 0, darknet
    assert (tmp_path / "overhead" / "overhead_cifar10-darknet_cpu_smoke.json").exists()


def test_a_cache_hit_imports_neither_the_lesson_nor_torch(ray_session, tmp_path, monkeypatch, capsys):
    """What benchmarks/cache_hit.py times: the second `fastray preprocess` of a request finds
    its receipt and answers from the entry's manifest, without the lesson module and torch
    (1.8 s of imports that a hit never uses)."""
    from pipelines.__main__ import main
    from preprocessing.samples import cifar10 as cifar10_samples

    cifar10_samples.cifar10(tmp_path / "cifar10", size=120, seed=2)
    monkeypatch.chdir(tmp_path)
    argv = ["preprocess", "cifar10-darknet", "--data", str(tmp_path / "cifar10"), "--config", "tiny"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    code = ("import sys, json; from pipelines.__main__ import main; main(sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in ('torch', 'ray', 'mlflow', 'pipelines.lessons.cifar10_darknet') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    *_, result, imported = out.stdout.strip().splitlines()
    assert json.loads(result)["cache"] == "hit" and json.loads(result)["key"] == first["key"]
    assert json.loads(imported) == []


def test_overhead_steady_state_is_examples_over_seconds():
    """Epochs of equal examples at 100 and 300 ex/s take 1/100 + 1/300 s an example between
    them: 150 ex/s together, not the 200 a mean of the rates says. (With progressive resizing
    or gradual unfreezing the epochs differ that much.) The warm-up epoch is left out."""
    script = _script("overhead")
    assert script.steady([1.0, 100.0, 300.0]) == pytest.approx(150.0)
    assert script.steady([7.0]) == 7.0  # one epoch: itself
    assert script.together([[100.0], [300.0], [150.0]]) == pytest.approx(150.0)


def test_overhead_rounds_pair_each_engine_run_with_the_bare_runs_beside_it():
    """overhead.py --repeats: round k's ratio is engine run k over bare runs k and k + 1
    taken together (the machine drifts between them), each run's warm-up epoch left out."""
    script = _script("overhead")
    bares = [[1.0, 100.0, 100.0], [5.0, 300.0, 300.0], [9.0, 100.0, 300.0]]  # steady: 100, 300, 150
    engines = [[2.0, 150.0, 150.0], [3.0, 200.0, 200.0]]  # steady: 150, 200
    assert script.round_ratios(engines, bares) == [pytest.approx(1.0), pytest.approx(1.0)]  # over 150, then 200
    assert script.round_ratios([[1.0, 75.0]], [[1.0, 100.0], [1.0, 60.0]]) == [pytest.approx(1.0)]
    try:
        script.round_ratios(engines, bares[:2])
    except ValueError as e:
        assert "3 bare runs" in str(e)
    else:
        raise AssertionError("two engine runs with two bare runs must be refused")


def test_overhead_rescore_rewrites_a_result_from_its_epochs(tmp_path, capsys):
    """overhead.py --rescore FILE: the figures of a committed result computed again from the
    per-epoch rates it holds, the rates themselves untouched; a file without them is refused
    in one line, and left as it was."""
    script = _script("overhead")
    per_epoch = {"bare": [[1.0, 100.0, 300.0], [1.0, 150.0, 150.0]], "engine": [[1.0, 120.0, 120.0]]}
    path = tmp_path / "overhead_x_cpu.json"
    path.write_text(json.dumps({"pipeline": "x", "ratio": 0.6, "per_epoch": per_epoch,
                                "per_epoch_bare_ray_idle": [1.0, 75.0, 75.0]}))
    assert script.main(["--rescore", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["ratio"] == 0.8 and out["ratios"] == [0.8] and out["bare_examples_per_s"] == 150.0  # 120 / 150
    assert out["ray_idle_ratio"] == 0.5 and out["per_epoch"] == per_epoch
    bad = tmp_path / "failed.json"
    bad.write_text(json.dumps({"pipeline": "y", "ratio": None}))
    capsys.readouterr()
    assert script.main(["--rescore", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == f"overhead.py: error: {bad}: no per_epoch rates to score\n", err
    assert json.loads(bad.read_text()) == {"pipeline": "y", "ratio": None}


def test_overhead_summary_pools_every_round_of_a_pipeline(tmp_path, capsys):
    """overhead.py --summary FILES: each pipeline's rounds from every file (a failed
    pipeline's file has none) and the median of them all."""
    script = _script("overhead")
    for name, out in {"a": {"pipeline": "p", "ratios": [0.8]}, "b": {"pipeline": "p", "ratios": [0.9, 1.0, 0.7]},
                      "c": {"pipeline": "q", "ratios": [0.5]}, "d": {"pipeline": "q", "ratio": None}}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(out))
    capsys.readouterr()
    assert script.main(["--summary", *(str(tmp_path / f"{n}.json") for n in "abcd")]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rows == [{"pipeline": "p", "median": 0.85, "rounds": [0.8, 0.9, 1.0, 0.7], "n": 4},
                    {"pipeline": "q", "median": 0.5, "rounds": [0.5], "n": 1}]


def test_ray_wakeups_names_the_thread_that_used_the_cpu():
    """ray_wakeups.py --run says which of the worker's threads used the CPU and how often
    something else took it from them: a thread that spins comes first, and one that sleeps
    used less."""
    import threading
    import time

    ray_wakeups = _script("ray_wakeups")
    tids, stop = {}, threading.Event()

    def spin() -> None:
        tids["spin"] = threading.get_native_id()
        while not stop.is_set():
            pass

    def sleep() -> None:
        tids["sleep"] = threading.get_native_id()
        stop.wait()

    threads = [threading.Thread(target=spin), threading.Thread(target=sleep)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.05)  # both running
        before, t0 = ray_wakeups.thread_stats(os.getpid()), time.perf_counter()
        time.sleep(0.5)
        rows = ray_wakeups.busiest_threads(before, ray_wakeups.thread_stats(os.getpid()), time.perf_counter() - t0,
                                           n=50)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert all(set(r) == {"thread", "tid", "cores", "wakeups_per_s", "involuntary_switches_per_s"} for r in rows)
    assert rows[0]["tid"] == tids["spin"] and rows[0]["cores"] > 0, rows
    sleeper = [r for r in rows if r["tid"] == tids["sleep"]]
    assert sleeper and sleeper[0]["cores"] < rows[0]["cores"], rows


def test_run_timeline_baseline_refuses_a_revision_that_is_not_one(tmp_path):
    timeline = _script("run_timeline")
    with pytest.raises(SystemExit, match="--baseline no-such-rev: not a revision of"):
        timeline.main(["--baseline", "no-such-rev", "--out", str(tmp_path / "ab.json")])
    assert not (tmp_path / "ab.json").exists()
