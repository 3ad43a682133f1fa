"""Lesson 10's forward, backward and ensemble accuracies in one run of the flow (issue 18).

Runs, as a user types it, in a fresh folder (its own cache, runs and mlruns.db):

    fastray flow ulmfit --set backwards=true

that is the `sample` configs on the generated IMDb sample (2,500 training and 2,500 test
reviews, 5,000 unlabelled): the forward LM, the classifier on its encoder, the backward LM,
the backward classifier, and imdb-ensemble averaging the two classifiers' probabilities on
the test reviews. Writes benchmarks/results/ulmfit_flow_backwards.json and prints one JSON
line; `passed` means the ensemble's accuracy >= each classifier's alone.

    python benchmarks/ulmfit_flow.py [--work DIR] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ulmfit_flow_backwards.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="the folder the flow runs in (default: a new temp one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more --set for the flow")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fastray-ulmfit-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["flow", "ulmfit", "--set", "backwards=true", *sum((["--set", s] for s in args.set), [])]
    print(f"in {work}: fastray {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(work / "flow.log", "w") as log:
        p = subprocess.run([sys.executable, "-m", "pipelines", *cmd], cwd=work, env=env, stdout=subprocess.PIPE,
                           stderr=log, text=True)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the flow failed (exit {p.returncode}); see {work / 'flow.log'}")
    flow = json.loads(lines[-1])
    st = flow["stages"]
    ens = st["ensemble"]["metrics"]
    res = {
        "command": "fastray " + " ".join(cmd), "data": "the generated IMDb sample (fastray sample-data imdb)",
        "forward_accuracy": st["clas"]["metrics"]["accuracy"], "backward_accuracy": st["clas_bwd"]["metrics"]["accuracy"],
        "ensemble_accuracy": ens["accuracy"],
        "ensemble_forward_accuracy": ens.get("forward_accuracy"), "ensemble_backward_accuracy": ens.get("backward_accuracy"),
        "lm_perplexity": st["lm"]["metrics"].get("perplexity"), "lm_bwd_perplexity": st["lm_bwd"]["metrics"].get("perplexity"),
        "stages": {k: {"status": v["status"], "run_id": v["run_id"]} for k, v in st.items()},
        "parent_run_id": flow.get("parent_run_id"), "flow_seconds": flow.get("seconds"),
    }
    res["passed"] = res["ensemble_accuracy"] >= max(res["forward_accuracy"], res["backward_accuracy"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["load_average"] = os.getloadavg()
    res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
