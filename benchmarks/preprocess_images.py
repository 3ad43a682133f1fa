"""Cold image preprocessing against its limit: a plain one-process loop that decodes the
same PNGs (and resizes them to the same sizes), times the cores Ray may use.

DESIGN.md's target: a cold preprocess reaches at least 0.5 of (plain loop x cores) on a data
set of CIFAR-10's size, Ray's start-up reported apart; a warm one starts no Ray. A second
cold build (into another cache, same process) shows what the first paid for Ray Data's
start in this job.

Wall-clock ratios need an idle machine. CPU time does not, so both sides are also counted
in CPU seconds (this process, and Ray's processes under it: raylet, GCS, workers), by
process role: the plain loop's CPU over the cold build's is the share of the build's CPU
that is decoding and resizing; the rest is parquet writing, Ray Data and Ray's own
processes, and the two builds' roles side by side say what the first paid to start Ray Data.

    python benchmarks/preprocess_images.py [--images 60000]
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60000, help="CIFAR-10's size by default")
    ap.add_argument("--sizes", default="24,32")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "preprocess_images.json")
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="fastray-prep-"))
    print(f"generating {args.images} sample PNGs in {work}", file=sys.stderr)
    cifar10_samples.cifar10(work / "cifar10", size=args.images)
    source = find_cifar10(work / "cifar10")
    files = [p for items in source.splits.values() for p, _ in items]

    t0, c0 = time.perf_counter(), time.process_time()  # (a) the plain loop: decode + resize every file, one process
    for p in files:
        resize_all(decode_image(p), sizes)
    plain = len(files) / (time.perf_counter() - t0)
    plain_cpu = time.process_time() - c0

    t0 = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - t0
    cores = cluster_cpus()
    cache = Cache(work / "cache")
    time.sleep(2)  # Ray's processes settle after start-up
    t0, c0 = time.perf_counter(), cpu_by_process()  # (b) cold: Ray already up
    manifest, hit = preprocess_images(source, sizes, cache, "cifar10")
    cold_s = time.perf_counter() - t0
    cold_cpu = cpu_delta(c0, cpu_by_process())
    assert not hit
    t0 = time.perf_counter()  # (c) warm
    _, hit = preprocess_images(find_cifar10(work / "cifar10"), sizes, cache, "cifar10")
    warm_s = time.perf_counter() - t0
    assert hit
    t0, c0 = time.perf_counter(), cpu_by_process()  # (d) cold again, into another cache: this job's Ray Data has started
    _, hit = preprocess_images(source, sizes, Cache(work / "cache2"), "cifar10")
    again_s = time.perf_counter() - t0
    again_cpu = cpu_delta(c0, cpu_by_process())
    assert not hit
    cold = len(files) / cold_s
    out = {
        "images": len(files), "sizes": list(sizes), "cores": cores,
        "plain_loop_img_per_s": round(plain, 1),
        "cold_img_per_s": round(cold, 1),
        "cold_vs_plain_x_cores": round(cold / (plain * cores), 3),
        "cold_seconds": round(cold_s, 2), "warm_seconds": round(warm_s, 3),
        "warm_speedup": round(cold_s / warm_s, 1),
        # a second cold build in the same job: what the first paid for Ray Data's start in this
        # job (its workers' imports, its actors) is the difference
        "second_cold_seconds": round(again_s, 2),
        "second_cold_vs_plain_x_cores": round(len(files) / again_s / (plain * cores), 3),
        "ray_start_seconds_apart": round(ray_start, 2),
        "cpu_seconds": {"plain_loop": round(plain_cpu, 2), "cold_build": round(sum(cold_cpu.values()), 2),
                        "second_cold_build": round(sum(again_cpu.values()), 2)},
        # each build's CPU seconds by process: the first's excess over the second is what
        # starting Ray Data in this job cost (its two actors' processes, the task workers'
        # first imports of Ray Data, pyarrow and the decoder)
        "cold_cpu_by_role": cold_cpu, "second_cold_cpu_by_role": again_cpu,
        # the share of the cold build's CPU that is the plain loop's work (decode, resize)
        "cold_cpu_efficiency": round(plain_cpu / sum(cold_cpu.values()), 3),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    text = json.dumps(out, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
