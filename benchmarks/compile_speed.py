"""Does `--set compile=true` (torch.compile of the model in the engine) pay on this device?

Per pipeline, on the batches overhead.py collects (the same model, data, batch size and
schedule): the bare loop eager, compiled, and eager again (the machine drifts), --epochs
each; steady state is overhead.py's (the examples over the seconds of the epochs after the
first, whose time holds the compilation, given apart). Then the engine itself with
compile=true (one `fastray run` worker), to show the option goes through Ray Train and what
it reaches there.

    python benchmarks/compile_speed.py [--pipelines cifar10-darknet,imdb-lm] [--device cpu]
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
import tempfile
from pathlib import Path

import torch

from benchmarks.overhead import RESULTS, _loadavg, _r, bare_loop, engine, prepare, steady, together
from pipelines.core import logs
from preprocessing.runtime import LOG_FILE_ENV


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipelines", default="cifar10-darknet,imdb-lm")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--scale", type=float, default=0.5, help="sample data: this fraction of its own size")
    ap.add_argument("--epochs", type=int, default=3, help="each run's; the first is warm-up (default 3)")
    ap.add_argument("--no-engine", action="store_true", help="the bare loops only")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_speed.json")
    args = ap.parse_args()
    args.config, args.set, args.size, args.smoke = None, [], None, False
    logs.setup()
    out_path = args.out.absolute()
    work = Path(tempfile.mkdtemp(prefix="fastray-compile-"))
    os.chdir(work)
    os.environ.setdefault(LOG_FILE_ENV, str(work / "internals.log"))
    device = torch.device(args.device)
    results = {}
    for name in args.pipelines.split(","):
        p = prepare(name, args, work)
        compiled = dataclasses.replace(p.cfg, compile=True)
        run = lambda cfg: bare_loop(p.pipe, cfg, p.batches, p.manifest, p.sched, device, p.cpus)  # noqa: E731
        eager_before, comp, eager_after = run(p.cfg), run(compiled), run(p.cfg)
        eager = together([[steady(eager_before)], [steady(eager_after)]])
        r = {
            "pipeline": name, "device": args.device, "config": p.label, "bs": p.cfg.bs, "threads": p.cpus,
            "steps_per_epoch": p.sched.steps_per_epoch,
            "eager_examples_per_s": round(eager, 1), "compiled_examples_per_s": round(steady(comp), 1),
            "compiled_vs_eager": round(steady(comp) / eager, 3),
            # the last epoch alone: the model compiled for every shape it meets (progressive
            # resizing recompiles at each new size, inside the steady epochs)
            "last_epoch_compiled_vs_eager": round(comp[-1] / together([[eager_before[-1]], [eager_after[-1]]]), 3),
            # the first epoch's extra time: compiling (and recompiling for each new shape)
            "first_epoch_seconds": {"eager": round(p.sched.steps_per_epoch * p.cfg.bs / eager_before[0], 1),
                                    "compiled": round(p.sched.steps_per_epoch * p.cfg.bs / comp[0], 1)},
            "per_epoch": {"eager_before": _r(eager_before), "compiled": _r(comp), "eager_after": _r(eager_after)},
        }
        if not args.no_engine:
            rates, res = engine(name, compiled, p.data_dir, p.cache, args.device == "cuda", f"{p.label}, compile=true")
            r["engine_compiled_examples_per_s"] = round(steady(rates), 1)
            r["engine_compiled_per_epoch"] = _r(rates)
            r["engine_compiled_vs_bare_eager"] = round(steady(rates) / eager, 3)
        r["loadavg"] = _loadavg()
        results[name] = r
        print(json.dumps({k: r.get(k) for k in ("pipeline", "compiled_vs_eager", "last_epoch_compiled_vs_eager",
                                                 "eager_examples_per_s",
                                                 "compiled_examples_per_s", "engine_compiled_examples_per_s",
                                                 "loadavg")}), flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")  # after each pipeline
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
