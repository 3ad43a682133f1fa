"""What a cache hit costs as a whole command: `fastray preprocess NAME`, as a user types it
(no --data: the generated sample data), timed from the shell's side, the interpreter's
start and its imports included.

Per pipeline: one cold run (sample data generated, preprocessed: a miss), then alternately
a hit that finds its receipt (preprocessing/cache.py: no lesson module, no torch) and a hit
with the receipts removed first (the full path: the lesson module and torch imported, the
key computed); the medians of each. The target (issue 19): under 1.5 s on an idle machine.

    python benchmarks/cache_hit.py [--pipelines imdb-lm,cifar10-darknet] [--repeats 5]

With $RAY_ADDRESS set, the cold builds join that Ray (where starting one is slow) and the
hits run without it, as on one machine.
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
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(cmd: list[str], cwd: Path, cluster: bool = False) -> tuple[float, dict]:
    """(wall seconds, the last stdout line as JSON) of one command; `cluster`: it may join the
    Ray that $RAY_ADDRESS names (a cold build), else it runs as on one machine."""
    env = dict(os.environ)
    if not cluster:
        env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipelines", default="imdb-lm,cifar10-darknet")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=1000, help="sample items to generate first (a hit reads none)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cache_hit.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fastray-hit-"))
    fastray = [sys.executable, "-m", "pipelines"]
    env_root = Path(__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(env_root), os.environ.get("PYTHONPATH")]))
    results = {"loadavg_start": loadavg(), "pipelines": {}}
    from pipelines.core import registry

    for name in args.pipelines.split(","):
        # the sample the command would generate, made smaller: where a command with no --data finds it
        sample = work / "data" / "samples" / registry.entry(name).dataset
        if not (sample / ".complete").exists():
            _, info = timed(fastray + ["sample-data", name, "--out", str(sample), "--size", str(args.size)], work)
            (sample / ".complete").write_text(json.dumps(info))
        cold, first = timed(fastray + ["preprocess", name], work, cluster=True)
        receipt, full = [], []
        for _ in range(args.repeats):
            wall, res = timed(fastray + ["preprocess", name], work)
            assert res["cache"] == "hit", res
            receipt.append(wall)
            shutil.rmtree(work / "cache" / ".receipts", ignore_errors=True)
            wall, res = timed(fastray + ["preprocess", name], work)  # the full path (it writes the receipt again)
            assert res["cache"] == "hit", res
            full.append(wall)
        results["pipelines"][name] = {
            "cold_seconds": round(cold, 2), "rows": first["rows"], "key": first["key"],
            "hit_seconds": round(statistics.median(receipt), 3),
            "hit_full_path_seconds": round(statistics.median(full), 3),
            "hit_all": [round(x, 3) for x in receipt], "hit_full_path_all": [round(x, 3) for x in full],
        }
        print(f"{name}: hit {statistics.median(receipt):.2f} s, full path {statistics.median(full):.2f} s "
              f"(cold {cold:.1f} s), load {loadavg()}", file=sys.stderr)
        results["loadavg_end"] = loadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each pipeline
    print(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
