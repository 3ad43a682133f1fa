"""Where a short run's fixed cost goes (issue 19): the phases of `fastray run` from the
process's start to its exit, read off the time each of its log lines arrives.

Starts a local Ray (as the test suite shares one), generates a small CIFAR-10 sample, warms
the preprocessing cache, then runs `fastray run cifar10-darknet --config tiny -v` --repeat
times, each a new process joining that Ray, and times, per run:

    start -> header       imports, config, cache check, the MLflow run made
    header -> controller  Ray Train's controller actor up (its first line)
    controller -> workers its worker group started (a new process: torch, the pipeline, gloo)
    workers -> epoch 1    the worker's set-up and the first epoch
    epoch 1 -> last epoch the other epochs
    last epoch -> done    the model logged to MLflow, the controller seeing the end
    done -> exit          the driver's shutdown

and, from a sample of every process under this script every 0.2 s, the CPU seconds each
process spent during the run, by role (the driver, Ray Train's actors, the training
worker, Ray's daemons): the work a run costs the machine, where the phases give its wait.

Writes benchmarks/results/run_timeline.json (every run's phases and CPU seconds, and the
median of each) and prints one JSON line of the medians.

With --baseline REV it compares instead: this script of REV (a git worktree) and of this
tree, each in a process of its own with its own code and Ray, alternately for --rounds
rounds; it writes both sides' medians of every round and the ratios of their medians
(this tree over REV) to benchmarks/results/run_timeline_ab.json.

    python benchmarks/run_timeline.py [--repeat N] [--images N]
    python benchmarks/run_timeline.py --baseline REV [--rounds 2] [--repeat N]
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "run_timeline.json"
# (phase name, the first line that ends it)
MARKS = [("start -> header", re.compile(r"^\[\w+\] cifar10-darknet, config")),
         ("header -> controller", re.compile(r"TrainController pid=")),
         ("controller -> workers", re.compile(r"Started training worker group")),
         ("workers -> epoch 1", re.compile(r"^\[\w+\] epoch 1/")),
         ("epoch 1 -> last epoch", re.compile(r"^\[\w+\] epoch (\d+)/\1 ")),
         ("last epoch -> done", re.compile(r"^\[\w+\] done in ")),
         ("done -> exit", None)]


def processes() -> dict[int, tuple[str, float]]:
    """{pid: (command line, user + system CPU seconds)} of every process under this one: the
    local Ray it started (daemons, workers, actors) and the run."""
    import psutil

    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            t, cmd = proc.cpu_times(), " ".join(proc.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        if cmd:  # a process that has exited and not been reaped has none
            out[proc.pid] = (cmd, t.user + t.system)
    return out


def cpu_by_role(before: dict, seen: dict, driver: int) -> dict[str, float]:
    """CPU seconds each role spent between `before` (a processes() snapshot) and the last
    sample of each pid in `seen`: a process that started meanwhile counts whole, one that
    ended counts up to its last sample (at most 0.2 s short). An idle worker that became an
    actor is named after the actor."""
    from benchmarks.ray_wakeups import role

    out: dict[str, float] = {}
    for pid, (cmd, cpu) in seen.items():
        name = "driver (fastray run)" if pid == driver else role(cmd)
        out[name] = out.get(name, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def timed_lines(argv: list[str], env: dict, cwd: Path) -> tuple[list[tuple[float, str]], float, int, dict]:
    """Run argv; (seconds since its start at which each stderr line arrived, line), the
    seconds to its exit, its exit code, and the CPU seconds by role (cpu_by_role)."""
    before = processes()
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         bufsize=1)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.perf_counter() - t0, l.rstrip()) for l in p.stderr))
    reader.start()
    seen = dict(before)
    while p.poll() is None:
        seen.update(processes())
        time.sleep(0.2)
    code = p.wait()
    end = time.perf_counter() - t0
    reader.join()
    return lines, end, code, cpu_by_role(before, seen, p.pid)


def phases(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Each phase's seconds: the time between the lines that open and close it."""
    out, last = {}, 0.0
    for name, mark in MARKS:
        t = end if mark is None else next((t for t, l in lines if mark.search(l)), None)
        if t is None:
            raise SystemExit(f"no line for the end of '{name}' in the run's output:\n"
                             + "\n".join(l for _, l in lines[-20:]))
        out[name] = round(t - last, 2)
        last = t
    out["whole"] = round(end, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs timed (each a new process)")
    ap.add_argument("--images", type=int, default=300, help="CIFAR-10 sample images")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--baseline", metavar="REV", help="compare with this git revision, alternately")
    ap.add_argument("--rounds", type=int, default=2, help="with --baseline: rounds of (REV, this tree)")
    args = ap.parse_args(argv)
    if args.baseline:
        return compare(args.baseline, args.rounds, args.repeat, args.images,
                       args.out if args.out != OUT else OUT.with_name("run_timeline_ab.json"))
    import ray

    from preprocessing.runtime import init_ray
    from preprocessing.samples import cifar10

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastray-timeline-") as d:
        work = Path(d)
        cifar10.cifar10(work / "cifar10", size=args.images, seed=0)
        os.environ.pop("RAY_ADDRESS", None)
        init_ray(num_cpus=2)
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
               "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pipelines"]
        data = ["--data", str(work / "cifar10"), "--config", "tiny"]
        subprocess.run([*cmd, "preprocess", "cifar10-darknet", *data], env=env, cwd=work, check=True,
                       capture_output=True)  # a warm cache: no run below preprocesses
        runs, cpus = [], []
        for i in range(args.repeat):
            lines, end, code, cpu = timed_lines([*cmd, "run", "cifar10-darknet", *data, "--name", f"t{i}", "-v"],
                                                env, work)
            if code != 0:
                raise SystemExit(f"run {i} exited {code}:\n" + "\n".join(l for _, l in lines[-20:]))
            runs.append(phases(lines, end))
            cpus.append(cpu)
            print(f"  run {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v}" for k, v in runs[-1].items())
                  + f"; CPU seconds {sum(cpu.values()):.1f}: " + ", ".join(f"{k} {v}" for k, v in cpu.items()),
                  file=sys.stderr, flush=True)
        ray.shutdown()
    median = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    roles = sorted({k for c in cpus for k in c}, key=lambda k: -statistics.median(c.get(k, 0.0) for c in cpus))
    cpu_median = {k: round(statistics.median(c.get(k, 0.0) for c in cpus), 2) for k in roles}
    cpu_median = {k: v for k, v in cpu_median.items() if v >= 0.05}
    res = {"command": "fastray run cifar10-darknet --config tiny -v (joining a running local Ray, warm cache)",
           "images": args.images, "median_seconds": median, "runs": runs,
           "median_cpu_seconds": {"all": round(statistics.median(sum(c.values()) for c in cpus), 2), **cpu_median},
           "cpu_seconds": cpus,
           "seconds": round(time.perf_counter() - t_all, 1), "load_average": os.getloadavg(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"median_seconds": median, "median_cpu_seconds": res["median_cpu_seconds"],
                      "seconds": res["seconds"]}))
    return res


def compare(rev: str, rounds: int, repeat: int, images: int, out: Path) -> dict:
    """This script at `rev` and in this tree, alternately: each side's medians per round, and
    the ratio (this tree / rev) of the median over rounds of each phase and CPU figure."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    commit = git("rev-parse", "--short", rev).stdout.strip()
    if not commit:
        raise SystemExit(f"--baseline {rev}: not a revision of {ROOT}")
    sides: dict[str, list[dict]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="fastray-ab-") as d:
        tree = Path(d) / "baseline"
        if git("worktree", "add", "--detach", str(tree), commit).returncode != 0:
            raise SystemExit(f"--baseline {rev}: git worktree add failed")
        try:
            for r in range(rounds):
                for side, root in (("baseline", tree), ("this", ROOT)):
                    res = Path(d) / f"{side}_{r}.json"
                    done = subprocess.run([sys.executable, str(root / "benchmarks" / "run_timeline.py"), "--repeat",
                                           str(repeat), "--images", str(images), "--out", str(res)],
                                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                                          text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{side} ({root}) failed:\n{done.stderr[-2000:]}")
                    data = json.loads(res.read_text())
                    sides[side].append({"seconds": data["median_seconds"], "cpu_seconds": data["median_cpu_seconds"],
                                        "commit": data["commit"]})
                    print(f"  round {r + 1}/{rounds} {side} {data['commit']}: whole {data['median_seconds']['whole']} s, "
                          f"CPU {data['median_cpu_seconds']['all']} s", file=sys.stderr, flush=True)
        finally:
            git("worktree", "remove", "--force", str(tree))

    def med(side: str, kind: str, key: str) -> float:
        return statistics.median(x[kind].get(key, 0.0) for x in sides[side])

    ratios = {f"{kind}:{k}": round(med("this", kind, k) / med("baseline", kind, k), 3)
              for kind in ("seconds", "cpu_seconds") for k in sides["baseline"][0][kind]
              if med("baseline", kind, k) > 0 and k in sides["this"][0][kind]}
    res = {"command": f"python benchmarks/run_timeline.py --baseline {rev} --rounds {rounds} --repeat {repeat}",
           "baseline": commit, "this": sides["this"][0]["commit"], "rounds": sides,
           "ratio_this_over_baseline": ratios, "load_average": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in ratios.items() if k in ("seconds:whole", "cpu_seconds:all",
                                                               "cpu_seconds:ray::TrainController")}))
    return res


if __name__ == "__main__":
    main()
