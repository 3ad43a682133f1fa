"""What a Ray Train worker or a Tune trial pays to get its pipeline from the registry.

A worker process already has torch and Ray Train imported; what it adds is
`registry.get(name)`. This times that in fresh processes (torch and ray.train imported
first, outside the timing), for this checkout and for an older revision checked out into
a temporary git worktree (default: the last commit before the lazy registry, whose
`get` imported every lesson), alternating the two so the machine's drift hits both.

    python benchmarks/registry_import.py [--before REV] [--repeats N] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "85f3559"  # flat pipelines/: registry.get imported all eight lesson modules

PROBE = """
import sys, time
import torch, ray.train  # a worker has these already
t = time.perf_counter()
{imp}
registry.get("cifar10-darknet")
dt = time.perf_counter() - t
lessons = sorted(m for m in sys.modules if m.startswith("pipelines.") and m.count(".") >= 1
                 and not m.startswith(("pipelines.core", "pipelines.registry", "pipelines.engine", "pipelines.config",
                                       "pipelines.phases", "pipelines.tracking", "pipelines.steps")))
print(dt, len(lessons), "torchvision" in sys.modules)
"""


def probe(cwd: Path, imp: str) -> tuple[float, int, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(imp=imp)], cwd=cwd, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]), out[2] == "True"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", default=BEFORE)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "registry_import.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        old = Path(d) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.before], cwd=ROOT, check=True)
        try:
            runs = {"before": [], "after": []}
            for _ in range(args.repeats):
                runs["before"].append(probe(old, "from pipelines import registry"))
                runs["after"].append(probe(ROOT, "from pipelines.core import registry"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    result = {
        "before_rev": args.before,
        **{f"{k}_seconds_median": round(statistics.median(t for t, _, _ in v), 3) for k, v in runs.items()},
        **{f"{k}_modules": v[0][1] for k, v in runs.items()},
        **{f"{k}_imports_torchvision": v[0][2] for k, v in runs.items()},
        "repeats": args.repeats,
    }
    result["ratio_before_over_after"] = round(result["before_seconds_median"] / result["after_seconds_median"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
