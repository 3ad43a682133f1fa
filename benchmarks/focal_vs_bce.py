"""Lesson 9's claim: focal loss beats plain binary cross entropy. pascal-ssd's `sample` config
trained with focal loss and with BCE (`--set focal=false`), the same seeds, epochs and
everything else, each a `fastray run` in a fresh process; the two losses alternate seed by
seed so the machine's drift hits both. mAP@0.5 is VOC07's 11-point form on the 300
validation images (all-point beside it).

    python benchmarks/focal_vs_bce.py                        # 3 seeds x 2 losses, the sample config's epochs
    python benchmarks/focal_vs_bce.py --epochs 2 --set box_weight=0.15 --out /tmp/x.json   # a short probe

The JSON is rewritten after each run ("complete": false until the last); --resume keeps the
runs of an interrupted invocation with the same settings and trains only the missing ones.
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSSES = {"focal": "focal=true", "bce": "focal=false"}
RECORDED = ("box_weight", "gamma", "alpha", "prior", "match_iou", "epochs", "frozen_epochs", "bs", "lr", "unfrozen_lr")


def fastray(*argv: str, log: Path) -> dict | None:
    """One CLI call in a fresh process; its last stdout line (JSON), or None when it failed
    (stderr is in `log`)."""
    with open(log, "w") as err:
        out = subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=err, text=True)
    if out.returncode != 0:
        print(f"fastray {' '.join(argv)} failed ({out.returncode}); see {log}", file=sys.stderr, flush=True)
        return None
    return json.loads([l for l in out.stdout.splitlines() if l.strip()][-1])


def summary(args, fields: dict, runs: list[dict], resumed: int) -> dict:
    result = {"pipeline": "pascal-ssd", "config": "sample", "overrides": args.sets, **fields,
              "validation_images": 300, "complete": len(runs) == len(args.seeds) * len(args.losses),
              "runs_kept_by_resume": resumed, "runs": runs}
    for loss in args.losses:
        maps = [r["mAP"] for r in runs if r["loss"] == loss]
        if maps:
            result[f"{loss}_mAP_mean"] = round(statistics.mean(maps), 4)
            result[f"{loss}_mAP_std"] = round(statistics.stdev(maps), 4) if len(maps) > 1 else None
            result[f"{loss}_mAP_all_mean"] = round(statistics.mean(r["mAP_all"] for r in runs if r["loss"] == loss), 4)
    if "focal_mAP_mean" in result and "bce_mAP_mean" in result:
        result["focal_minus_bce"] = round(result["focal_mAP_mean"] - result["bce_mAP_mean"], 4)
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True).stdout.strip()
    return result


def config_fields(sets: list[str]) -> dict:
    """The sample config's loss fields after the --set overrides, as the runs resolve them."""
    from pipelines.lessons.pascal import SSD_CONFIGS

    cfg = SSD_CONFIGS["sample"]
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    over = {}
    for s in sets:
        k, v = s.split("=", 1)
        over[k] = type(getattr(cfg, k))(json.loads(v)) if k in fields else v
    cfg = dataclasses.replace(cfg, **over)
    return {k: getattr(cfg, k) for k in RECORDED}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="every run's epochs (default: the sample config's)")
    p.add_argument("--losses", nargs="+", choices=sorted(LOSSES), default=["focal", "bce"])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (both losses)")
    p.add_argument("--data", type=Path, default=None, help="pascal sample data (default: generated in --work)")
    p.add_argument("--work", type=Path, default=None, help="runs, cache and MLflow store (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "focal_vs_bce.json")
    p.add_argument("--resume", action="store_true", help="keep --out's runs when its settings are these")
    args = p.parse_args()
    fields = config_fields(args.sets + ([f"epochs={args.epochs}"] if args.epochs else []))
    done = []
    if args.resume and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("overrides") != args.sets or any(old.get(k) != v for k, v in fields.items()):
            raise SystemExit(f"--resume: {args.out} was made with other settings")
        done = [r for r in old["runs"] if r["seed"] in args.seeds and r["loss"] in args.losses]

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = args.data
        if data is None and (work / "data" / "VOCdevkit").is_dir():
            data = work / "data"  # generated by an earlier invocation in this --work (the generator is seeded)
        if data is None:
            data = work / "data"
            if fastray("sample-data", "pascal-ssd", "--out", str(data), log=work / "sample-data.log") is None:
                raise SystemExit(1)
        runs = list(done)
        for seed in args.seeds:
            for loss in args.losses:
                if any(r["seed"] == seed and r["loss"] == loss for r in done):
                    continue
                name = f"{loss}-s{seed}-{time.strftime('%H%M%S')}"
                argv = ["run", "pascal-ssd", "--data", str(data), "--config", "sample", "--set", f"seed={seed}",
                        "--set", LOSSES[loss], *(x for s in args.sets for x in ("--set", s)),
                        *(["--epochs", str(args.epochs)] if args.epochs else []),
                        "--storage", str(work), "--tracking-uri", f"sqlite:///{work / 'mlruns.db'}"]
                # a run that crashes is tried once more, under a new name (a name that exists resumes)
                for attempt in (1, 2):
                    t = time.perf_counter()
                    info = fastray(*argv, "--name", f"{name}-{attempt}", log=work / f"{name}-{attempt}.log")
                    if info is not None:
                        break
                if info is None:
                    raise SystemExit(f"{name} failed twice: see {work}")
                m = info["metrics"]
                runs.append({"seed": seed, "loss": loss, "epochs": int(m["epoch"]), "mAP": round(m["mAP"], 4),
                             "mAP_all": round(m["valid_mAP_all"], 4), "seconds": round(time.perf_counter() - t, 1),
                             "fit_seconds": info.get("fit_seconds"), "attempt": attempt})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(summary(args, fields, runs, len(done)), indent=1) + "\n")  # so far

    print(json.dumps(summary(args, fields, runs, len(done))))


if __name__ == "__main__":
    main()
