"""What running inside fastray costs: each pipeline trained by a bare PyTorch loop over
batches held in memory, and by the engine under Ray Train fed by Ray Data.

Both run the same model, data, batch size, precision, device, schedule and number of
steps: the bare loop takes the batches the pipeline's own batches() makes from the cached
parquet (collected once, before timing), and runs to_device (the augmentation by batch),
train_step, backward and the optimizer step of the same phases; the engine runs
`fastray run`'s fit() with one worker holding every CPU (and the GPU). Steady state: the
examples over the seconds of the epochs after the first (warm-up: Ray Data's start,
cuDNN's and torch.compile's first calls). A shared machine drifts, so the bare loop runs
before and after the engine: a round's ratio = engine / the bare loops on either side.
--repeats N runs N rounds (bare, engine, bare, engine, ..., bare) and reports the median
round's ratio and every round's; on a noisy machine one round is not a figure. With
--ray-idle (CPU) the bare loop runs a third time beside a started but idle local Ray:
ray_idle_ratio is what Ray's own processes (raylet, GCS, dashboard, log monitor, idle
workers) cost a loop that never calls them, a floor under the engine's ratio on 2 cores.

    python benchmarks/overhead.py --pipeline all                   # CPU: sample configs on sample data
    python benchmarks/overhead.py --pipeline all --scale 0.2 --epochs 4 --repeats 3   # CPU, about 30 min
    python benchmarks/overhead.py --pipeline cifar10-darknet --set compile=true
    python benchmarks/overhead.py --pipeline all --device cuda     # default configs' models and batch sizes
    python benchmarks/overhead.py --pipeline all --smoke           # tiny configs, seconds each (tests)
    python benchmarks/overhead.py --pipeline imdb-lm --ray-idle    # also the bare loop beside an idle Ray
    python benchmarks/overhead.py --rescore benchmarks/results/overhead_*.json  # their ratios from their epochs
    python benchmarks/overhead.py --summary benchmarks/results/overhead_full/*.json  # every round, and the median

Data: each pipeline's generated sample data in its real format, preprocessed by its own
preprocess() into the cache (with the default configs: resized and tokenized to the
default's shapes; the text samples' vocabularies stay smaller than the real data's).
One JSON per pipeline in benchmarks/results/ (or --out): overhead_<pipeline>_<device>.json.
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from pipelines.core import config as configs
from pipelines.core import logs, registry
from pipelines.core.batching import batch_len
from pipelines.core.contract import RunContext, autocast, step_optimizer
from pipelines.core.phases import Schedule, make_optimizer, same_optimizer, set_frozen, set_hyper
from preprocessing.cache import Cache
from preprocessing.runtime import LOG_FILE_ENV, cluster_cpus, init_ray

RESULTS = Path(__file__).resolve().parent / "results"
# a benchmark downloads nothing: ImageNet weights would change no step's cost
OFFLINE = {"pretrained": "none", "vgg_weights": "none", "allow_random_vgg": "true"}


def pipeline_config(pipe: Any, label: str, epochs: int, sets: dict[str, str]) -> Any:
    """The named config with `epochs` epochs, weights that need no download, and --set."""
    cfg, _ = configs.load(pipe.configs, label)
    fields = {f.name for f in dataclasses.fields(cfg)}
    offline = {k: v for k, v in OFFLINE.items() if k in fields and getattr(cfg, k) not in ("", False)}
    return configs.apply(cfg, {**offline, "epochs": str(epochs), **sets})


def collect(pipe: Any, cfg: Any, datasets: dict, manifest: dict, sched: Schedule, device: torch.device) -> dict:
    """One epoch of each training data set the schedule uses, as the pipeline's batches()
    makes them on the device, kept in memory (the bare loop's input)."""
    ctx = RunContext(cfg=cfg, manifest=manifest, device=device, steps_per_epoch=sched.steps_per_epoch,
                     total_epochs=sched.total_epochs)
    out = {}
    for phase in sched.phases:
        data = phase.data or "train"
        if data not in out:
            it = iter(pipe.batches(datasets[data], ctx, train=True))
            out[data] = [next(it) for _ in range(sched.steps_per_epoch)]
    return out


def bare_loop(pipe: Any, cfg: Any, batches: dict, manifest: dict, sched: Schedule, device: torch.device,
              threads: int) -> list[float]:
    """Examples/s of each epoch of a plain loop: the pipeline's to_device and train_step, then
    backward and the step of each phase's optimizer, and nothing else."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    phases, spe = sched.phases, sched.steps_per_epoch
    ctx = RunContext(cfg=cfg, manifest=manifest, device=device, steps_per_epoch=spe, total_epochs=sched.total_epochs)
    model = pipe.build_model(cfg)
    pipe.init_model(model, ctx)
    groups = pipe.param_groups(model)
    owned = pipe.optimizers(model, cfg) if pipe.manual_optimization else None
    for o in (owned or {}).values():
        for g in o.param_groups:
            g.setdefault("base_lr", g["lr"])
    ctx.optimizers = owned or {}
    ctx.scaler = torch.amp.GradScaler("cuda") if cuda and cfg.fp16 else None
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    reset = getattr(model, "reset", None)
    opt, opt_phase, rates, step = None, -1, [], 0
    for epoch in range(sched.total_epochs):
        ctx.epoch = epoch
        model.train()
        if reset:
            reset()
        if cuda:
            torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        for batch in batches[sched.phase_for_epoch(epoch).data or "train"]:
            p_idx, lr, mom = sched.at(step)
            ctx.phase, ctx.phase_index, ctx.global_step = phases[p_idx], p_idx, step
            if owned:
                for o in owned.values():
                    for g in o.param_groups:
                        g["lr"] = g["base_lr"] * lr
            else:
                if opt is None or not same_optimizer(phases[p_idx], phases[opt_phase]):
                    opt = make_optimizer(phases[p_idx], groups)
                elif p_idx != opt_phase:
                    set_frozen(groups, phases[p_idx].frozen)
                opt_phase = p_idx
                set_hyper(opt, sched.lrs_for_groups(step, len(groups)), mom)
                ctx.optimizers = {"opt": opt}
            x = pipe.to_device(batch, ctx, train=True)
            with autocast(device, cfg):
                losses = pipe.train_step(model, x, ctx)
            if not owned:
                ctx.backward(losses["loss"])
                step_optimizer(opt, cfg.clip, ctx.scaler)
            seen += batch_len(batch)
            step += 1
        for v in list(losses.values())[:1]:  # wait for the last step (a GAN's losses have other names)
            v.item()
        if cuda:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def steady(rates: list[float]) -> float:
    """Examples/s over the epochs after the first (the first alone if there is only one):
    their examples over their seconds. Every epoch has the same examples, so that is the
    harmonic mean of their rates. (A mean of the rates weighs an epoch of small images or a
    frozen body, fast and short, as much as a slow one: with progressive resizing or
    gradual unfreezing it follows the cheap epochs, and their noise.)"""
    return together([rates[1:] or rates])


def together(runs: list[list[float]]) -> float:
    """Examples/s of several runs of the same work taken as one: the harmonic mean of the
    rates (each run's, or each epoch's)."""
    rates = [r for run in runs for r in run]
    return len(rates) / sum(1 / r for r in rates)


def round_ratios(engines: list[list[float]], bares: list[list[float]]) -> list[float]:
    """Each round's ratio: the engine's steady state over that of the bare loops that ran
    just before and just after it, taken together (bares holds one more run than engines)."""
    if len(bares) != len(engines) + 1:
        raise ValueError(f"{len(engines)} engine run(s) need {len(engines) + 1} bare runs around them, got {len(bares)}")
    return [steady(e) / together([[steady(b0)], [steady(b1)]]) for e, b0, b1 in zip(engines, bares, bares[1:])]


def score(bares: list[list[float]], engines: list[list[float]]) -> dict:
    """The figures of a measurement from each run's per-epoch examples/s."""
    ratios = round_ratios(engines, bares)
    return {
        "ratio": round(statistics.median(ratios), 3),  # the median round's
        "ratios": [round(x, 3) for x in ratios],  # each round's: engine / the bare loops beside it
        "bare_examples_per_s": round(together([[steady(b)] for b in bares]), 1),  # every bare run's steady state
        "engine_examples_per_s": round(together([[steady(e)] for e in engines]), 1),
        # the bare loop's steady state, slowest run over fastest: how far the machine moved meanwhile
        "bare_spread": round(min(map(steady, bares)) / max(map(steady, bares)), 3),
        "steady_state": "examples over seconds of epochs 2+",
    }


def figures(out: dict) -> dict:
    """`out` (a result) with every figure computed from the per-epoch rates it holds, as
    they are written: a result's figures can always be made again from its own file."""
    pe = out.get("per_epoch") or {}
    if "bare_before" in pe:  # the older files: one round, its runs by name
        bares, engines = [pe["bare_before"], pe.get("bare_after")], [pe["engine"]]
    else:
        bares, engines = pe.get("bare"), pe.get("engine")
    if not bares or not engines or not all(bares):
        raise ValueError("no per_epoch rates to score")
    out.update(score(bares, engines))
    if "per_epoch_bare_ray_idle" in out:  # --ray-idle, --decompose: each step over the bare loop beside idle Ray
        idle = steady(out["per_epoch_bare_ray_idle"])
        out["bare_ray_idle_examples_per_s"] = round(idle, 1)
        out["ray_idle_ratio"] = round(idle / out["bare_examples_per_s"], 3)
        for key in ("loop_in_process", "bare_in_ray_train"):
            if f"per_epoch_{key}" in out:
                out[f"{key}_examples_per_s"] = round(steady(out[f"per_epoch_{key}"]), 1)
                out[f"{key}_ratio"] = round(steady(out[f"per_epoch_{key}"]) / idle, 3)
    return out


def rescore(path: Path) -> dict:
    """A result file's figures computed again from its per-epoch rates (after a change of
    the steady-state statistic) and written back; the result."""
    try:
        out = figures(_load(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _load(path: Path) -> dict:
    """A result file's JSON object; ValueError naming the file if it holds none."""
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: not a result of overhead.py")
    return out


def summary(paths: list[Path]) -> list[dict]:
    """Per pipeline, the rounds of every result file given (a file's rounds in its order,
    the files in the order given) and their median: the figure once a pipeline has been
    measured more than once."""
    rounds: dict[str, list[float]] = {}
    for path in paths:
        out = _load(path)
        if "pipeline" not in out:
            raise ValueError(f"{path}: not a result of overhead.py (no pipeline)")
        if out.get("ratios"):
            rounds.setdefault(out["pipeline"], []).extend(out["ratios"])
    return [{"pipeline": k, "median": round(statistics.median(v), 3), "rounds": v, "n": len(v)}
            for k, v in sorted(rounds.items())]


@dataclasses.dataclass
class Prepared:
    """A pipeline made ready to time: its config, cached data and the bare loop's batches."""

    pipe: Any
    cfg: Any
    label: str
    data_dir: Path
    cache: Cache
    manifest: dict
    sched: Schedule
    batches: dict
    cpus: int
    sample_data: dict


def prepare(name: str, args: argparse.Namespace, work: Path) -> Prepared:
    """Sample data (--size items, or --scale of the sample's own size), preprocessed into the
    cache; one epoch of each training data set collected for the bare loop. Ray stays up."""
    from pipelines.core.engine import plan
    from preprocessing.samples import GENERATORS

    pipe = registry.get(name)
    label = args.config or ("tiny" if args.smoke else "default" if args.device == "cuda" else "sample")
    cfg = pipeline_config(pipe, label, args.epochs, configs.parse_sets(args.set))
    data_dir = work / "data" / name
    size = args.size or max(1, round(GENERATORS[pipe.dataset][2] * args.scale))
    info = pipe.sample_data(data_dir, size)
    cache = Cache(work / "cache")
    init_ray()
    manifest, _ = pipe.preprocess(cfg, data_dir, cache, "skip")
    datasets = {k: ds.materialize() for k, ds in pipe.datasets(cfg, cache, manifest).items()}
    sched = plan(pipe, cfg, pipe.steps_per_epoch(cfg, manifest, 1))
    batches = collect(pipe, cfg, datasets, manifest, sched, torch.device(args.device))
    return Prepared(pipe, cfg, label, data_dir, cache, manifest, sched, batches, cluster_cpus(), info)


def engine(name: str, cfg: Any, data_dir: Path, cache: Cache, cuda: bool, label: str = "") -> tuple[list[float], dict]:
    """(examples/s of each epoch, fit()'s result) of `fastray run`'s engine, one worker;
    `label` names the config in the run's header and MLflow."""
    from pipelines.core.engine import fit
    from pipelines.core.tracking import RunLogger, resolve_uri

    t0 = time.perf_counter()
    res = fit(name, cfg, data_dir=data_dir, cache=cache, name=f"overhead-{name}-{time.time_ns()}", num_workers=1,
              use_gpu=cuda, config_label=label)
    hist = RunLogger(resolve_uri(), res["run_id"])
    res["wall_seconds"] = time.perf_counter() - t0
    res["epoch_seconds"] = [v for _, v in sorted(hist.history("epoch_seconds"))]
    return [v for _, v in sorted(hist.history("examples_per_s"))], res


def measure(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Sample data, preprocess, collect; then --repeats rounds of the engine, each between
    two runs of the bare loop (bare, engine, bare, engine, ..., bare): a round's ratio is its
    engine over the mean of the bare loops on either side, and the figure is the median
    round (a shared machine's speed moves by tens of percent within minutes; one round
    cannot tell a 10 % overhead from that)."""
    import ray

    cuda = args.device == "cuda"
    device = torch.device(args.device)
    p = prepare(name, args, work)
    pipe, cfg, sched, cpus = p.pipe, p.cfg, p.sched, p.cpus
    alone = not (cuda or args.smoke)
    if alone:  # on the CPU the bare loop gets the machine to itself (a GPU's loop does not feel Ray's idle processes)
        ray.shutdown()

    def timed(what: str, i: int, n: int, run: Any) -> list[float]:
        """One run, said before (what and which) and after (its steady examples/s)."""
        print(f"{name}: {what} {i} of {n} ...", file=sys.stderr, flush=True)
        rates = run()
        print(f"{name}: {what} {i} of {n}: {steady(rates):.1f} ex/s", file=sys.stderr, flush=True)
        return rates

    def bare_run(i: int) -> list[float]:
        return timed("bare loop", i, args.repeats + 1,
                     lambda: bare_loop(pipe, cfg, p.batches, p.manifest, sched, device, cpus))

    res: dict = {}  # fit()'s result, the last round's

    def engine_run() -> list[float]:
        rates, out = engine(name, cfg, p.data_dir, p.cache, cuda, p.label)
        res.update(out)
        return rates

    bares, engines = [bare_run(1)], []
    for r in range(args.repeats):
        engines.append(timed("engine", r + 1, args.repeats, engine_run))
        if alone:
            ray.shutdown()
        bares.append(bare_run(r + 2))
    idle = {}
    if (args.ray_idle or args.decompose) and alone:  # the same bare loop beside a started, idle local Ray
        print(f"{name}: the bare loop beside an idle Ray ...", file=sys.stderr, flush=True)
        init_ray()
        time.sleep(2)  # its processes started
        idle = {"per_epoch_bare_ray_idle": _r(bare_loop(pipe, cfg, p.batches, p.manifest, sched, device, cpus))}
        if args.decompose:
            idle.update(decompose(name, p, work))
        ray.shutdown()
    return figures({
        "pipeline": name,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{cpus}",
        "config": p.label, "overrides": args.set, "bs": cfg.bs, "bf16": cfg.bf16 and cuda, "fp16": cfg.fp16 and cuda,
        "compile": cfg.compile, "threads": cpus, "epochs": sched.total_epochs,
        "steps_per_epoch": sched.steps_per_epoch, "sample_data": p.sample_data, "repeats": args.repeats,
        "per_epoch": {"bare": [_r(b) for b in bares], "engine": [_r(e) for e in engines]},
        # Ray's fixed start-up and the epochs' evaluations: fit() minus the training epochs' own time (last round)
        "engine_fit_seconds": res["fit_seconds"], "engine_epoch_seconds": _r(res["epoch_seconds"], 2),
        "engine_wall_seconds": round(res["wall_seconds"], 1),
        "loadavg": _loadavg(),
        **idle,
    })


def decompose(name: str, p: Prepared, work: Path) -> dict:
    """Between the bare loop beside an idle Ray and the engine under Ray Train, two steps
    (CPU, Ray up): the engine's own loop (run_loop, in this process, on a LocalSession of the
    same data sets: its batches(), metrics, progress and evaluation; no Ray Train, no MLflow),
    and the bare loop run as the training function of a one-worker Ray Train run (Ray
    Train's controller and worker around a loop that is not ours). Their per-epoch rates:
    figures() sets each over the bare loop beside the same idle Ray."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.core.batching import KeptShard
    from pipelines.core.loop import RunSpec, run_loop
    from pipelines.core.sessions import LocalSession

    spec = RunSpec(name, p.cfg, f"decompose-{name}", 1, p.cpus, False, p.sched.steps_per_epoch, "", "", "",
                   manifest=p.manifest)
    session = LocalSession({k: KeptShard(ds) for k, ds in p.pipe.datasets(p.cfg, p.cache, p.manifest).items()})
    print(f"{name}: the engine's loop in this process ...", file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    try:
        run_loop(spec, session, p.pipe)
    finally:
        torch.set_num_threads(threads)
    loop = [r["examples_per_s"] for r in session.reports]

    out = work / f"decompose-{name}.json"  # the worker's figures (same machine)
    args = dict(pipe=p.pipe, cfg=p.cfg, batches=p.batches, manifest=p.manifest, sched=p.sched, cpus=p.cpus)

    def in_worker(config: dict) -> None:  # this file's bare_loop, loaded in the worker (a script is no module there)
        import importlib.util

        import ray

        spec = importlib.util.spec_from_file_location("fastray_overhead", config["script"])
        script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        a = ray.get(config["args"])
        rates = script.bare_loop(a["pipe"], a["cfg"], a["batches"], a["manifest"], a["sched"], torch.device("cpu"),
                                 a["cpus"])
        Path(config["out"]).write_text(json.dumps(rates))

    import ray

    print(f"{name}: the bare loop inside a Ray Train worker ...", file=sys.stderr, flush=True)
    TorchTrainer(in_worker, train_loop_config={"args": ray.put(args), "out": str(out), "script": __file__},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": p.cpus}),
                 run_config=RunConfig(storage_path=str(work / "runs"), name=f"decompose-{name}-{time.time_ns()}")).fit()
    in_train = json.loads(out.read_text())
    return {"per_epoch_loop_in_process": _r(loop), "per_epoch_bare_in_ray_train": _r(in_train)}


def _r(xs: list[float], nd: int = 1) -> list[float]:
    return [round(x, nd) for x in xs]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


# the figures printed as one JSON line per pipeline
SHOWN = ("pipeline", "ratio", "bare_examples_per_s", "engine_examples_per_s", "ratios", "bare_spread", "ray_idle_ratio",
         "loop_in_process_ratio", "bare_in_ray_train_ratio", "loadavg", "error")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", help="a pipeline's name, or all")
    ap.add_argument("--rescore", nargs="+", type=Path, metavar="JSON",
                    help="compute these result files' figures again from their per-epoch rates, and rewrite them")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="JSON",
                    help="every round of these result files, by pipeline, and the median of them all")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--config", default=None, help="default: sample on cpu, default on cuda, tiny with --smoke")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--epochs", type=int, default=3, help="the first is warm-up (default 3)")
    ap.add_argument("--size", type=int, default=None, help="sample data items (default: --scale of the sample's own)")
    ap.add_argument("--scale", type=float, default=1.0, help="sample data: this fraction of its own size (default 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the engine, each between two bare loops; the ratio is the median round's "
                         "(default 1: bare, engine, bare)")
    ap.add_argument("--smoke", action="store_true", help="tiny configs and data: that it runs, not a figure")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--ray-idle", action="store_true",
                    help="CPU: also time the bare loop beside an idle local Ray (ray_idle_ratio: what Ray's "
                         "own processes cost a loop that does not use them)")
    ap.add_argument("--decompose", action="store_true",
                    help="CPU: --ray-idle, and two steps between it and the engine: the engine's loop in this "
                         "process (loop_in_process_ratio) and the bare loop inside a Ray Train worker "
                         "(bare_in_ray_train_ratio), each over the bare loop beside the idle Ray")
    args = ap.parse_args(argv)
    if args.rescore or args.summary:  # work on result files: no Ray, no training
        try:
            for path in args.rescore or []:
                out = rescore(path)
                print(json.dumps({"file": str(path), **{k: out.get(k) for k in SHOWN if k in out}}), flush=True)
            for row in summary(args.summary or []):
                print(json.dumps(row), flush=True)
        except (OSError, ValueError, KeyError) as e:
            print(f"overhead.py: error: {e}", file=sys.stderr)
            return 1
        return 0
    if not args.pipeline:
        ap.error("--pipeline NAME|all is needed (or --rescore, --summary)")
    if args.repeats < 1 or args.epochs < 1:
        ap.error("--repeats and --epochs must be at least 1")
    logs.setup()  # the engine's lines (one an epoch) on stderr
    if args.smoke:
        args.size = args.size or 300
        args.epochs = min(args.epochs, 2)
    # a pipeline with its own run() trains no model through the engine (style-transfer: LBFGS on pixels)
    names = ([n for n in registry.names() if not hasattr(registry.pipeline_class(n), "run")]
             if args.pipeline == "all" else [args.pipeline])
    for n in names:
        registry.entry(n)  # an unknown name fails before any work
    work = Path(tempfile.mkdtemp(prefix="fastray-overhead-"))
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # runs/, cache/ and mlruns.db of this benchmark stay out of the repository
    os.environ.setdefault(LOG_FILE_ENV, str(work / "internals.log"))  # Ray's and MLflow's own lines
    print(f"working in {work}", file=sys.stderr)
    failed = []
    for k, n in enumerate(names, 1):
        print(f"[{k}/{len(names)}] {n}: sample data, preprocess, then the bare loop and the engine in turn "
              f"({2 * args.repeats + 1} runs of {args.epochs} epochs)", file=sys.stderr, flush=True)
        try:
            out = measure(n, args, work)
        except Exception as e:  # one pipeline's failure is reported, the others still run
            traceback.print_exc()
            failed.append(n)
            out = {"pipeline": n, "ratio": None, "error": f"{type(e).__name__}: {e}", "loadavg": _loadavg()}
        # a run with extra measurements keeps the plain run's JSON (the README's table)
        suffix = "_smoke" if args.smoke else "_decompose" if args.decompose else "_ray_idle" if args.ray_idle else ""
        path = args.out / f"overhead_{n}_{args.device}{suffix}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"{n}: wrote {path}", file=sys.stderr, flush=True)
        print(json.dumps({k: out.get(k) for k in SHOWN if k in out}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
