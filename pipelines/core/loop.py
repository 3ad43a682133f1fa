"""The one training loop. Every run goes through it: a Ray Train worker, a Tune trial, a test.

    run_loop(spec, session): build ─ resume ─ for each epoch: phase ─ batches ─ train_step
        ─ backward / accumulate / clip / step ─ evaluate ─ report + checkpoint ─ on_epoch_end

The loop owns the optimisation (nanoGPT's train.py): autocast wraps the pipeline's forward
and loss only; backward runs outside it, through a GradScaler under fp16; `accum` batches
add their gradients up to one optimizer step; `clip` bounds the global gradient norm.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from . import logs, registry, tracking
from .batching import batch_len
from .contract import RunContext, autocast, step_optimizer, unwrap
from .phases import Schedule, make_optimizer, same_optimizer, set_frozen, set_hyper

logger = logging.getLogger("fastray")


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs, sent once to every worker."""

    pipeline: str
    cfg: Any
    name: str
    num_workers: int
    cpus_per_worker: int
    use_gpu: bool
    steps_per_epoch: int
    tracking_uri: str
    run_id: str           # the MLflow run rank 0 logs to ("" under Tune: the driver logs)
    run_dir: str          # storage_path/name: Ray Train's checkpoints of this run
    manifest: dict = field(default_factory=dict)  # preprocess()'s manifest
    log_queue: Any = None  # the driver's Ray queue for fastray's lines (logs.Relay), or None
    # seconds between samples of MLflow's system metrics (the driver's $FASTRAY_SYSTEM_METRICS_S)
    system_metrics_s: float = field(default_factory=lambda: float(os.environ.get("FASTRAY_SYSTEM_METRICS_S", "10")))


class NonFiniteLoss(FloatingPointError):
    """The training loss became nan or inf: the run stops (a diverged run is no result)."""


def run_loop(spec: RunSpec, session: Any, pipe: Any = None) -> None:
    """Train `spec.pipeline` through its phases on this worker's shard (`pipe`: an instance
    to use instead of a new one from the registry). Torch runs on the CPUs the worker holds,
    for the loop only (a test that runs it in-process gets its thread count back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, spec.cpus_per_worker))
    try:
        # rank 0's machine's CPU, memory (and GPU) use in the run, by MLflow's own monitor
        monitor = tracking.system_metrics(spec.tracking_uri, spec.run_id, spec.system_metrics_s) \
            if session.rank == 0 and spec.run_id else None
        try:
            _run_loop(spec, session, pipe or registry.get(spec.pipeline))
        finally:
            if monitor is not None:
                monitor.finish()
    finally:
        torch.set_num_threads(threads)


def _run_loop(spec: RunSpec, session: Any, pipe: Any) -> None:
    cfg = spec.cfg
    rank0 = session.rank == 0
    device = session.device()
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # fixed image sizes per phase: let cuDNN pick its kernels
    torch.manual_seed(cfg.seed)  # same init everywhere; DDP broadcasts rank 0's anyway

    phases = pipe.phases(cfg)
    sched = Schedule(phases, spec.steps_per_epoch)
    ctx = RunContext(cfg=cfg, manifest=spec.manifest, rank=session.rank, world=session.world, device=device,
                     name=spec.name, tracking_uri=spec.tracking_uri, steps_per_epoch=spec.steps_per_epoch,
                     total_epochs=sched.total_epochs)
    if ctx.bs < 1:
        raise ValueError(f"batch size {cfg.bs} is smaller than the {session.world} workers")
    model = pipe.build_model(cfg)
    pipe.init_model(model, ctx)
    groups = pipe.param_groups(model)
    manual = pipe.manual_optimization
    owned = pipe.optimizers(model, cfg) if manual else None
    if manual and not owned:
        raise ValueError(f"{spec.pipeline}: manual_optimization needs optimizers() to return them")
    for o in (owned or {}).values():
        for g in o.param_groups:
            g.setdefault("base_lr", g["lr"])
    ctx.scaler = torch.amp.GradScaler("cuda") if cuda and cfg.fp16 else None

    # rank 0 logs to MLflow; under Tune the driver does (spec.run_id is empty)
    run_log = tracking.RunLogger(spec.tracking_uri, spec.run_id) if rank0 and spec.run_id else None
    # epochs MLflow already holds (a resumed run): each step keeps one value
    logged = {s for s, _ in run_log.history(pipe.metric)} if run_log and pipe.metric else set()
    start_epoch, state = 0, session.checkpoint(spec.run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        for k, o in (owned or {}).items():
            o.load_state_dict(state["opts"][k])
        if ctx.scaler is not None and "scaler" in state:
            ctx.scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        if rank0:
            logger.info(f"[{spec.name}] resuming from the checkpoint of epoch {start_epoch}")
        if run_log:
            run_log.tags({"fastray.resumed_from_epoch": start_epoch})
            # the checkpoint carries its epoch's metrics: log them if MLflow missed them
            if start_epoch not in logged:
                run_log.metrics(state["metrics"], step=start_epoch)
            again = sorted(s for s in logged if s > start_epoch)
            if again:  # their checkpoints were lost: MLflow keeps the first values, the retrained ones are not added
                logger.warning(f"[{spec.name}] warning: MLflow holds epoch(s) {again} from the attempt whose "
                               "checkpoints did not load; they are trained again, and MLflow keeps their first values")
                run_log.tags({"fastray.retrained_epochs": ",".join(map(str, again))})

    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:  # in place (nn.Module.compile): the state dict keeps its keys, so checkpoints load either way
        model.compile()
    model = session.prepare_model(model, pipe.ddp_kwargs)
    # DDP registers the parameters that require grad when it wraps: re-wrap when the frozen set changes
    wrapped_frozen: tuple[int, ...] = ()
    reset = getattr(unwrap(model), "reset", None)  # RNNs: forget the hidden state
    accum, spe = cfg.accum, spec.steps_per_epoch

    opt, opt_phase, metrics = owned, -1, state["metrics"] if state else {}
    ctx.optimizers = owned or {}
    example: dict[str, Any] = {}
    # the epoch line names the epoch's data set only where the phases change it (progressive resizing)
    several_sets = len({p.data or "train" for p in sched.phases}) > 1
    for epoch in range(start_epoch, sched.total_epochs):
        data = sched.phase_for_epoch(epoch).data or "train"
        ctx.epoch = epoch
        model.train()
        t0, seen, sums = time.perf_counter(), 0, defaultdict(float)
        ctx.global_step = step = epoch * spe
        bad_step = torch.full((), -1, device=device)  # the first step whose loss is not finite, on the device
        tick = t0
        if reset:
            reset()
        for i, batch in enumerate(pipe.batches(session.shard(data), ctx, train=True)):
            p_idx, lr_now, mom = sched.at(step)
            ctx.phase, ctx.phase_index = phases[p_idx], p_idx
            if i % accum == 0:  # the first batch of an optimizer step: set its hyperparameters
                if owned:  # the pipeline's optimizers: the schedule is a factor on their own LRs
                    for o in owned.values():
                        for g in o.param_groups:
                            g["lr"] = g["base_lr"] * lr_now
                    opt_phase = p_idx
                elif opt is None or not same_optimizer(phases[p_idx], phases[opt_phase]):
                    opt = make_optimizer(phases[p_idx], groups)
                    if state is not None and state.get("opt_phase") is not None and same_optimizer(
                        phases[p_idx], phases[state["opt_phase"]]
                    ):
                        opt.load_state_dict(state["opt"])  # resume momentum buffers too
                    state = None if state is None else {**state, "opt_phase": None}
                    opt_phase = p_idx
                elif p_idx != opt_phase:  # same optimizer, maybe a new frozen set
                    set_frozen(groups, phases[p_idx].frozen)
                    opt_phase = p_idx
                if session.world > 1 and phases[p_idx].frozen != wrapped_frozen:
                    model = session.prepare_model(unwrap(model), pipe.ddp_kwargs)
                    wrapped_frozen = phases[p_idx].frozen
                if not owned:
                    set_hyper(opt, sched.lrs_for_groups(step, len(groups)), mom)
                    ctx.optimizers = {"opt": opt}
            x = pipe.to_device(batch, ctx, train=True)
            with autocast(device, cfg):
                losses = pipe.train_step(model, x, ctx)
            if not manual:
                steps_now = (i + 1) % accum == 0 or i + 1 == spe
                # DDP: all-reduce the gradients once per optimizer step, not once per batch
                sync = contextlib.nullcontext() if steps_now or not hasattr(model, "no_sync") else model.no_sync()
                with sync:
                    ctx.backward(losses["loss"])  # (divided by accum there)
                if steps_now:
                    step_optimizer(opt, cfg.clip, ctx.scaler)
            for k, v in losses.items():
                sums[k] += v.detach().float()  # summed on the device: no sync each step
            finite = torch.stack([v.detach().float() for v in losses.values()]).isfinite().all()
            bad_step = torch.where(finite | (bad_step >= 0), bad_step, step + 1)
            seen += batch_len(batch)
            ctx.global_step = step = step + 1
            if rank0 and time.perf_counter() - tick > 0.5:  # the driver's progress bar, twice a second
                tick = time.perf_counter()
                logs.progress(name=spec.name, epoch=epoch + 1, epochs=sched.total_epochs, batch=i + 1, batches=spe,
                              seen=seen * session.world, seconds=tick - t0,
                              loss=(sums["loss"] / (i + 1)).item() if "loss" in sums else None)
        steps = max(1, step - epoch * spe)
        train_seconds = time.perf_counter() - t0
        if int(bad_step) >= 0:  # one sync an epoch; every rank sees it (DDP spreads nan to all)
            msg = (f"the training loss is not finite from step {int(bad_step)} (epoch {epoch + 1}): the run "
                   f"diverged; lower the LR (--set lr=...) or clip gradients (--set clip=1.0)")
            if run_log:  # the driver reads it there (Ray Train keeps no report without its metric)
                run_log.tags({"fastray.failure": msg})
            raise NonFiniteLoss(msg)

        model.eval()
        if reset:
            reset()
        ctx.valid_batch = None
        # the last epoch's first forward pass on rank 0: the logged MLflow model's signature
        hook = unwrap(model).register_forward_hook(_capture(example)) if run_log and ctx.is_last_epoch else None
        with torch.no_grad(), autocast(device, cfg):
            valid = (pipe.to_device(b, ctx, train=False) for b in pipe.batches(session.shard("valid"), ctx, train=False))
            local = pipe.evaluate(model, _keep_first(valid, ctx), ctx)
        if hook is not None:
            hook.remove()
        results = pipe.combine(session.gather(local))
        metrics = {
            **{f"train_{k}": (v / steps).item() for k, v in sums.items()},
            **{(k if k == pipe.metric or k.startswith("valid_") else f"valid_{k}"): v for k, v in results.items()},
            **_lr_metrics(ctx.optimizers),
            **({"frozen_groups": len(phases[opt_phase].frozen)} if len(groups) > 1 and not owned else {}),
            "examples_per_s": seen * session.world / train_seconds,
            "epoch_seconds": time.perf_counter() - t0,
        }
        ckpt = {
            "pipeline": spec.pipeline, "model": unwrap(model).state_dict(), "epoch": epoch + 1, "metrics": metrics,
            **({"opts": {k: o.state_dict() for k, o in owned.items()}} if owned else
               {"opt": opt.state_dict(), "opt_phase": opt_phase}),
            **({"scaler": ctx.scaler.state_dict()} if ctx.scaler is not None else {}),
        } if rank0 else None
        session.report({**metrics, "epoch": epoch + 1}, ckpt)
        if run_log and epoch + 1 not in logged:
            run_log.metrics(metrics, step=epoch + 1)  # after the checkpoint is safe: never twice
        if rank0:
            shown = [k for k in metrics if k.startswith("train_")] + [k for k in ("valid_loss", pipe.metric, "sched_lr") if k in metrics]
            logger.info(
                f"[{spec.name}] epoch {epoch + 1}/{sched.total_epochs} "
                + " ".join(f"{k}={metrics[k]:.4g}" for k in dict.fromkeys(shown))
                + f" {metrics['epoch_seconds']:.1f}s ({metrics['examples_per_s']:.0f} ex/s{f', data {data}' if several_sets else ''})"
            )
            with tempfile.TemporaryDirectory() as d:
                ctx.out_dir = Path(d)
                for folder, files in pipe.on_epoch_end(unwrap(model), ctx).items():
                    for f in files:
                        if run_log:
                            run_log.artifact(f, folder)
                ctx.out_dir = None

    if start_epoch >= sched.total_epochs:  # rerun of a finished run: nothing left to train
        session.report({**metrics, "epoch": start_epoch}, None)
        return
    if run_log:
        with tempfile.TemporaryDirectory() as d:
            torch.save(unwrap(model).state_dict(), Path(d) / "model.pt")
            run_log.artifact(Path(d) / "model.pt", "model")
        try:
            tracking.log_model(run_log, unwrap(model), example, spec.pipeline)
        except Exception as e:  # the trained run stands: its state dict is logged above
            logger.warning(f"warning: the model was not logged as an MLflow model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); model/model.pt holds its weights")


def _capture(example: dict) -> Any:
    """A forward hook that keeps the first call's first tensor argument and its tensor
    outputs (two rows each, on the CPU) in `example`."""

    def hook(module, args, output) -> None:
        if example:
            return
        x = next((a for a in args if torch.is_tensor(a)), None)
        outs = output.items() if isinstance(output, dict) else enumerate(output if isinstance(output, (tuple, list))
                                                                           else (output,))
        tensors = {f"output{k}" if isinstance(k, int) else str(k): v for k, v in outs if torch.is_tensor(v)}
        if x is None or not tensors:
            return
        row = lambda t: t[:2].detach().cpu().float() if t.is_floating_point() else t[:2].detach().cpu()  # noqa: E731
        example["input"] = row(x)
        example["output"] = {k: row(v) for k, v in tensors.items()}

    return hook


def _lr_metrics(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
    """The LR the schedule set last, as "sched_lr" (not "lr": that is the config's peak LR,
    and the key a search varies): the last group's; every group's when there are several
    (discriminative LRs), or each optimizer's as sched_lr_<name> when the pipeline owns several."""
    if not optimizers:
        return {}
    if len(optimizers) > 1 or "opt" not in optimizers:
        return {"sched_lr": next(iter(optimizers.values())).param_groups[-1]["lr"],
                **{f"sched_lr_{k}": o.param_groups[-1]["lr"] for k, o in optimizers.items()}}
    groups = optimizers["opt"].param_groups
    return {"sched_lr": groups[-1]["lr"],
            **({f"sched_lr_group{i}": g["lr"] for i, g in enumerate(groups)} if len(groups) > 1 else {})}


def _keep_first(batches: Iterable, ctx: RunContext) -> Iterator:
    """The batches, the first kept as ctx.valid_batch (for on_epoch_end's pictures)."""
    for i, b in enumerate(batches):
        if i == 0:
            ctx.valid_batch = b
        yield b


def worker_config(spec: RunSpec) -> dict:
    """train_loop_per_worker's config: the spec in Ray's object store, by reference. Ray
    Train's controller unpickles the config it is given; a RunSpec there imports this module,
    the pipeline's and torch into that process (2-3 CPU seconds of every run's start on 2 cores)."""
    import ray

    return {"spec": ray.put(spec)}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on each worker (config: worker_config's)."""
    import ray

    from .sessions import RayTrainSession

    spec = ray.get(config["spec"])
    logs.setup(queue=spec.log_queue)
    try:
        run_loop(spec, RayTrainSession(seed=spec.cfg.seed))
    except NonFiniteLoss:
        if not spec.run_id:  # a Tune trial's trainer: the trial fails
            raise
        # `fastray run`: the MLflow run's fastray.failure tag tells the driver; Ray Train must not retry it
