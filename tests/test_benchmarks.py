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


def test_overhead_rounds_pair_each_engine_run_with_the_bare_runs_beside_it():
    """overhead.py --repeats: round k's ratio is engine run k over the mean of bare runs k and
    k + 1 (the machine drifts between them), each run's warm-up epoch left out."""
    script = _script("overhead")
    bares = [[1.0, 100.0, 100.0], [5.0, 200.0, 200.0], [9.0, 100.0, 300.0]]  # steady: 100, 200, 200
    engines = [[2.0, 150.0, 150.0], [3.0, 100.0, 300.0]]  # steady: 150, 200
    assert script.round_ratios(engines, bares) == [1.0, 1.0]
    assert script.round_ratios([[1.0, 80.0]], [[1.0, 100.0], [1.0, 60.0]]) == [1.0]
    try:
        script.round_ratios(engines, bares[:2])
    except ValueError as e:
        assert "3 bare runs" in str(e)
    else:
        raise AssertionError("two engine runs with two bare runs must be refused")


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
