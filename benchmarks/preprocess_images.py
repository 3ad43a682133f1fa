"""Cold image preprocessing against its limit: a plain one-process loop that decodes the
same PNGs (and resizes them to the same sizes), times the cores Ray may use.

DESIGN.md's target: a cold preprocess reaches at least 0.5 of (plain loop x cores) on a data
set of CIFAR-10's size, Ray's start-up reported apart; a warm one starts no Ray. A second
cold build (into another cache, same process) shows what the first paid for Ray Data's
start in this job.

The machine drifts: the plain loop runs before and after each round (bare, round, bare, ...),
each round on a fresh Ray set against the two plain loops beside it, and the figure is the
median round's (--repeats, default 3; every round's in the JSON).

Wall-clock ratios need an idle machine. CPU time does not, so both sides are also counted
in CPU seconds (this process, and Ray's processes under it: raylet, GCS, workers), by
process role: the plain loop's CPU over the cold build's is the share of the build's CPU
that is decoding and resizing; the rest is parquet writing, Ray Data and Ray's own
processes, and the two builds' roles side by side say what the first paid to start Ray Data.

    python benchmarks/preprocess_images.py [--images 60000] [--repeats 3]
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from preprocessing.cache import Cache
from preprocessing.images import decode_image, find_cifar10, preprocess_images, resize_all
from preprocessing.runtime import cluster_cpus, init_ray
from preprocessing.samples import cifar10 as cifar10_samples


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """{pid: (role, user + system CPU seconds)} of this process and every process under it
    (Ray's), the role from its command line: the driver (this script), Ray Data's actors,
    the task workers, and Ray's own daemons."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t, cmd = proc.cpu_times(), " ".join(proc.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        role = ("driver" if proc.pid == me.pid else
                "ray_data_actors" if "_StatsActor" in cmd or "_AutoscalingCoordinatorActor" in cmd else
                "task_workers" if "ray::IDLE" in cmd or "ray::Map" in cmd else
                "ray_daemons")  # raylet, GCS, dashboard and its agents, log monitor, plasma
        out[proc.pid] = (role, t.user + t.system)
    return out


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two cpu_by_process() snapshots, by role (a process that
    started meanwhile counts whole)."""
    roles: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return {k: round(v, 2) for k, v in sorted(roles.items())}


def plain_loop(files: list[Path], sizes: tuple[int, ...]) -> tuple[float, float]:
    """(images/s, CPU seconds) of one process decoding and resizing every file."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in files:
        resize_all(decode_image(p), sizes)
    return len(files) / (time.perf_counter() - t0), time.process_time() - c0


def cold_round(source, sizes: tuple[int, ...], work: Path, n: int) -> dict:
    """On a fresh local Ray (its start timed apart): a cold build, a warm hit, and a second
    cold build into another cache in the same job; wall seconds and CPU seconds by role."""
    import ray

    t0 = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - t0
    cores = cluster_cpus()
    time.sleep(2)  # Ray's processes settle after start-up
    out: dict = {"cores": cores, "ray_start_seconds": round(ray_start, 2)}
    for what in ("cold", "warm", "second_cold"):
        cache = Cache(work / f"cache{n}" / ("second" if what == "second_cold" else "first"))
        t0, c0 = time.perf_counter(), cpu_by_process()
        _, hit = preprocess_images(find_cifar10(work / "cifar10") if what == "warm" else source, sizes, cache, "cifar10")
        out[f"{what}_seconds"] = round(time.perf_counter() - t0, 3)
        if what != "warm":
            out[f"{what}_cpu_by_role"] = cpu_delta(c0, cpu_by_process())
        assert hit == (what == "warm")
    ray.shutdown()
    shutil.rmtree(work / f"cache{n}", ignore_errors=True)  # two CIFAR-sized entries a round
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60000, help="CIFAR-10's size by default")
    ap.add_argument("--sizes", default="24,32")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, each on a fresh Ray between two plain loops")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "preprocess_images.json")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = tuple(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="fastray-prep-"))
    try:
        measure(args, sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, sizes: tuple[int, ...], work: Path) -> None:
    print(f"generating {args.images} sample PNGs in {work}", file=sys.stderr)
    cifar10_samples.cifar10(work / "cifar10", size=args.images)
    source = find_cifar10(work / "cifar10")
    files = [p for items in source.splits.values() for p, _ in items]
    n = len(files)

    # plain, round 1, plain, round 2, ..., plain: the machine drifts, so each round's cold
    # build is set against the plain loops just before and after it taken together
    plains = [plain_loop(files, sizes)]
    rounds = []
    for r in range(args.repeats):
        print(f"round {r + 1} of {args.repeats} ...", file=sys.stderr, flush=True)
        rounds.append(cold_round(source, sizes, work, r))
        plains.append(plain_loop(files, sizes))
    for r, (a, b) in zip(rounds, zip(plains, plains[1:])):
        plain = 2 / (1 / a[0] + 1 / b[0])  # the two plain runs' images over their seconds
        r["plain_img_per_s"] = round(plain, 1)
        r["plain_cpu_seconds"] = round((a[1] + b[1]) / 2, 2)
        for what in ("cold", "second_cold"):
            r[f"{what}_vs_plain_x_cores"] = round(n / r[f"{what}_seconds"] / (plain * r["cores"]), 3)
    mid = sorted(rounds, key=lambda r: r["cold_vs_plain_x_cores"])[(len(rounds) - 1) // 2]  # the median round
    cold_cpu, again_cpu = mid["cold_cpu_by_role"], mid["second_cold_cpu_by_role"]
    plain_cpu = mid["plain_cpu_seconds"]  # the round's own plain loops'
    out = {
        "images": n, "sizes": list(sizes), "cores": mid["cores"], "repeats": args.repeats,
        # the median round's figures; every round's in "rounds"
        "cold_vs_plain_x_cores": mid["cold_vs_plain_x_cores"],
        "cold_vs_plain_x_cores_rounds": [r["cold_vs_plain_x_cores"] for r in rounds],
        "plain_loop_img_per_s": mid["plain_img_per_s"],
        "plain_loop_img_per_s_runs": [round(p, 1) for p, _ in plains],
        "cold_img_per_s": round(n / mid["cold_seconds"], 1),
        "cold_seconds": round(mid["cold_seconds"], 2), "warm_seconds": round(mid["warm_seconds"], 3),
        "warm_speedup": round(mid["cold_seconds"] / mid["warm_seconds"], 1),
        # a second cold build in the same job: what the first paid for Ray Data's start in this
        # job (its workers' imports, its actors) is the difference
        "second_cold_seconds": round(mid["second_cold_seconds"], 2),
        "second_cold_vs_plain_x_cores": mid["second_cold_vs_plain_x_cores"],
        "ray_start_seconds_apart": mid["ray_start_seconds"],
        "cpu_seconds": {"plain_loop": round(plain_cpu, 2), "cold_build": round(sum(cold_cpu.values()), 2),
                        "second_cold_build": round(sum(again_cpu.values()), 2)},
        # each build's CPU seconds by process: the first's excess over the second is what
        # starting Ray Data in this job cost (its two actors' processes, the task workers'
        # first imports of Ray Data, pyarrow and the decoder)
        "cold_cpu_by_role": cold_cpu, "second_cold_cpu_by_role": again_cpu,
        # the share of the cold build's CPU that is the plain loop's work (decode, resize)
        "cold_cpu_efficiency": round(plain_cpu / sum(cold_cpu.values()), 3),
        "rounds": rounds,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    text = json.dumps(out, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
