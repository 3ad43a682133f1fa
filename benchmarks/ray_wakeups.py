"""How often Ray's processes wake up, and what that does to a training step on few cores.

Every Ray process (raylet, GCS, the dashboard's modules, and each worker or actor, idle or
not) wakes up many times a second on timers of its own. On a 2-core machine each wake-up
preempts one of the step's two OpenMP threads, and the other waits for it at the next
barrier. This script counts it:

1. a bare training loop (cifar10-darknet's model at its sample config, random 32 px
   batches of 64, SGD) alone: examples/s and the involuntary context switches a second of
   its threads (times the kernel took a CPU from them);
2. a local Ray started as fastray starts it (preprocessing.runtime.init_ray), idle: the
   voluntary context switches a second (wake-ups) of each Ray process; then the same loop
   beside it; then the loop alone again (the machine drifts);
3. with --run: `fastray run cifar10-darknet --config sample` on generated data, and the
   wake-ups of every Ray process during its training (the worker, Ray Train's, Ray Data's
   and fastray's actors), sampled after its first epochs; over the same seconds, the
   worker's busiest threads (its training thread and OpenMP's): CPU cores used, wake-ups
   and involuntary context switches a second.

    python benchmarks/ray_wakeups.py [--run] [--seconds 10]

One JSON: benchmarks/results/ray_wakeups.json (or --out).
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import json
import subprocess
import tempfile
import time
from pathlib import Path

import psutil


def switches_of(status: str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of one thread, from its status file."""
    vol = invol = 0
    for line in open(status):
        if line.startswith("voluntary_ctxt_switches"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches"):
            invol = int(line.split()[1])
    return vol, invol


def switches(pid: int | str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all threads of a process so far."""
    vol = invol = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            v, i = switches_of(status)
        except OSError:  # the thread ended meanwhile
            continue
        vol, invol = vol + v, invol + i
    return vol, invol


def role(cmd: str) -> str:
    """A Ray process's name: its actor or worker title, or the daemon's program."""
    if cmd.startswith("ray::") or cmd.startswith("ray-dashboard-"):
        return cmd.split()[0].split("(")[0]
    for name in ("raylet", "gcs_server", "dashboard.py", "log_monitor.py", "monitor.py", "runtime_env", "agent"):
        if name in cmd:
            return name
    return cmd.split()[0].rsplit("/", 1)[-1]


def thread_stats(pid: int) -> dict[str, tuple[str, float, int, int]]:
    """{thread id: (name, CPU seconds, voluntary, involuntary context switches)} of a process."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            stat = open(f"{task}/stat").read()
            fields = stat[stat.rindex(")") + 2:].split()  # after the name, which may hold spaces
            vol, invol = switches_of(f"{task}/status")
            out[task.rsplit("/", 1)[1]] = (stat[stat.index("(") + 1:stat.rindex(")")],
                                           (int(fields[11]) + int(fields[12])) / hz, vol, invol)
        except (OSError, ValueError):  # the thread ended meanwhile
            pass
    return out


def busiest_threads(before: dict, after: dict, seconds: float, n: int = 4) -> list[dict]:
    """The n threads that used the most CPU between two thread_stats() snapshots."""
    rows = [{"thread": after[t][0], "tid": int(t), "cores": round((after[t][1] - before[t][1]) / seconds, 3),
             "wakeups_per_s": round((after[t][2] - before[t][2]) / seconds),
             "involuntary_switches_per_s": round((after[t][3] - before[t][3]) / seconds)}
            for t in after if t in before]
    return sorted(rows, key=lambda r: -r["cores"])[:n]


def ray_processes() -> dict[int, str]:
    """{pid: role} of this machine's Ray processes."""
    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(("ray::", "ray-dashboard-")) or "site-packages/ray/" in cmd:
            out[p.pid] = role(cmd)
    return out


def wakeups(seconds: float) -> dict[str, float]:
    """Wake-ups a second (voluntary context switches) of each Ray process over `seconds`,
    summed by role, highest first, with their total."""
    procs = ray_processes()
    before = {pid: switches(pid)[0] for pid in procs}
    time.sleep(seconds)
    by_role: dict[str, float] = {}
    for pid, name in procs.items():
        if psutil.pid_exists(pid):
            by_role[name] = by_role.get(name, 0.0) + (switches(pid)[0] - before[pid]) / seconds
    out = {k: round(v) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}
    return {"total": sum(out.values()), **out}


def loop(steps: int = 60) -> dict[str, float]:
    """The bare loop in this process: examples/s, and its threads' involuntary context
    switches and CPU cores used, a second."""
    import torch
    import torch.nn.functional as F

    from pipelines.core import config as configs
    from pipelines.core import registry

    pipe = registry.get("cifar10-darknet")
    cfg, _ = configs.load(pipe.configs, "sample")
    torch.set_num_threads(psutil.cpu_count())
    torch.manual_seed(0)
    model = pipe.build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def run(n: int) -> None:
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        loss.item()

    run(5)  # warm-up
    (_, i0), c0, t0 = switches("self"), time.process_time(), time.perf_counter()
    run(steps)
    dt = time.perf_counter() - t0
    (_, i1), c1 = switches("self"), time.process_time()
    return {"examples_per_s": round(steps * 64 / dt, 1), "involuntary_switches_per_s": round((i1 - i0) / dt),
            "cores_used": round((c1 - c0) / dt, 2)}


def during_run(seconds: float, work: Path) -> dict:
    """`fastray run cifar10-darknet --config sample` on generated data; the wake-ups of the
    Ray processes once its worker has trained for a while, and over the same seconds its
    worker's busiest threads."""
    env = {**os.environ, "PYTHONPATH": sys.path[0]}
    py = [sys.executable, "-m", "pipelines"]
    subprocess.run([*py, "sample-data", "cifar10", "--out", str(work / "cifar10")], cwd=work, env=env, check=True,
                   capture_output=True)
    print(f"fastray run cifar10-darknet --config sample (its log: {work / 'run.log'}); counting {seconds:g} s "
          "once its worker has trained for 30 s ...", file=sys.stderr, flush=True)
    log = open(work / "run.log", "w")
    proc = subprocess.Popen([*py, "run", "cifar10-darknet", "--data", str(work / "cifar10"), "--config", "sample",
                             "--epochs", "6"], cwd=work, env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 600
        while not any(r == "ray::RayTrainWorker" for r in ray_processes().values()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"fastray run ended before its worker started: see {work / 'run.log'}")
            time.sleep(0.5)
        time.sleep(30)  # past Ray Data's first read and the first epoch
        worker = next(pid for pid, r in ray_processes().items() if r == "ray::RayTrainWorker")
        before, t0 = thread_stats(worker), time.perf_counter()
        out = {"wakeups_per_s": wakeups(seconds)}
        out["worker_threads"] = busiest_threads(before, thread_stats(worker), time.perf_counter() - t0)
        print("counted; waiting for the run's last epochs ...", file=sys.stderr, flush=True)
    finally:
        proc.wait()
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each wake-up count lasts")
    ap.add_argument("--run", action="store_true", help="also count them during a fastray run")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ray_wakeups.json")
    args = ap.parse_args()
    import ray

    from preprocessing.runtime import LOG_FILE_ENV, init_ray

    work = Path(tempfile.mkdtemp(prefix="fastray-wakeups-"))
    os.environ.setdefault(LOG_FILE_ENV, str(work / "internals.log"))
    alone = loop()
    print("loop alone:", alone, file=sys.stderr)
    init_ray()
    time.sleep(5)  # its processes started
    idle = wakeups(args.seconds)
    print("idle Ray, wake-ups a second:", idle, file=sys.stderr)
    beside = loop()
    print("loop beside the idle Ray:", beside, file=sys.stderr)
    ray.shutdown()
    time.sleep(2)
    again = loop()
    print("loop alone again:", again, file=sys.stderr)
    out = {
        "cores": psutil.cpu_count(),
        "loop_alone": alone, "loop_beside_idle_ray": beside, "loop_alone_again": again,
        # the loop beside Ray over the mean of the loop alone before and after
        "beside_ray_ratio": round(beside["examples_per_s"] / ((alone["examples_per_s"] + again["examples_per_s"]) / 2), 3),
        "idle_ray_wakeups_per_s": idle,
    }
    if args.run:
        run = during_run(args.seconds, work)
        out["fastray_run_wakeups_per_s"] = run["wakeups_per_s"]
        # its training thread and OpenMP's: how often something else took their CPU
        out["fastray_run_worker_threads"] = run["worker_threads"]
        print("during fastray run, wake-ups a second:", run["wakeups_per_s"], file=sys.stderr)
        print("its worker's busiest threads:", run["worker_threads"], file=sys.stderr)
    out["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = json.dumps(out, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
