"""The contract between the engine and a lesson pipeline.

A lesson file gives a `Config` (a frozen dataclass extending `TrainConfig`) and a
`Pipeline` subclass; `core.registry` names it as "module:Class". The engine calls:

    on the driver:  sample_data, preprocess (cached), datasets, steps_per_epoch, init_source
    on a worker:    build_model, init_model, param_groups, phases, optimizers,
                    batches, to_device, train_step, evaluate, on_epoch_end

The hooks that run on workers get a `RunContext`: the run's state (epoch, step,
progress, phase, rank, device, the preprocessing manifest). One Pipeline instance serves
one run in one process, so an instance may keep per-run state; nothing lives on classes.

The engine owns the optimisation: `train_step` returns its losses with an un-detached
"loss", and the engine runs zero_grad, backward (outside autocast, through a GradScaler
for fp16), gradient accumulation, clipping and the optimizer step. A pipeline with several
optimizers (the GANs) sets `manual_optimization = True` and calls `ctx.backward(loss)` and
`ctx.step(name)` itself, as Lightning's manual optimisation does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """What the engine reads from every pipeline's Config (which extends it)."""

    bs: int = 64               # examples per optimizer step over all workers (each gets bs // workers)
    epochs: int = 1            # epochs the whole run trains, every stage together
    seed: int = 0              # model init, shuffling, augmentation
    bf16: bool = True          # autocast the forward and the loss to bfloat16 on a GPU
    fp16: bool = False         # float16 autocast with a GradScaler on a GPU instead (wins over bf16)
    clip: float = 0.0          # max global gradient norm per optimizer step (0: no clipping)
    accum: int = 1             # batches whose gradients add up to one optimizer step
    max_failures: int = 1      # Ray Train restarts of the worker group after a failure
    compile: bool = False      # torch.compile the model in each worker (its first steps compile: minutes)

    def __post_init__(self):
        if self.bs < 1 or self.epochs < 1 or self.accum < 1 or self.clip < 0 or self.max_failures < 0:
            raise ValueError(f"need bs >= 1, epochs >= 1, accum >= 1, clip >= 0 and max_failures >= 0 (bs={self.bs}, "
                             f"epochs={self.epochs}, accum={self.accum}, clip={self.clip}, "
                             f"max_failures={self.max_failures})")


@dataclass
class RunContext:
    """A worker's view of its run, handed to the hooks; the engine keeps it current."""

    cfg: Any
    manifest: dict                    # what preprocess() returned: cache key, rows, paths, classes ...
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = ""                    # the run's name
    tracking_uri: str = ""
    steps_per_epoch: int = 1          # batches each worker takes per training epoch
    total_epochs: int = 1
    epoch: int = 0                    # the epoch being trained or evaluated (0-based)
    global_step: int = 0              # batches trained so far in the run (the schedule's unit)
    phase: Any = None                 # the TrainingPhase of `step`, and its index
    phase_index: int = 0
    out_dir: Path | None = None       # where on_epoch_end writes its files (rank 0)
    valid_batch: Any = None           # the first validation batch of the epoch, as to_device made it
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    scaler: Any = None                # torch.amp.GradScaler under fp16
    _calls: dict[str, int] = field(default_factory=dict)  # step() calls per optimizer (accumulation)

    @property
    def bs(self) -> int:
        """This worker's batch size."""
        return self.cfg.bs // self.world

    @property
    def progress(self) -> float:
        """Fraction of the run's training batches done, in [0, 1]."""
        return min(1.0, self.global_step / max(1, self.total_epochs * self.steps_per_epoch))

    @property
    def is_last_epoch(self) -> bool:
        return self.epoch == self.total_epochs - 1

    # ---- the optimisation (the engine's own, and manual_optimization pipelines')
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of loss / cfg.accum (the gradients of `accum` batches add up to their
        mean), outside autocast, scaled under fp16."""
        loss = loss / self.cfg.accum
        with torch.autocast(self.device.type, enabled=False):
            (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, name: str) -> None:
        """Every cfg.accum-th call for the optimizer `name`: clip (cfg.clip), step, zero its
        gradients; the calls between only let the gradients add up."""
        self._calls[name] = self._calls.get(name, 0) + 1
        if self._calls[name] % self.cfg.accum == 0:
            step_optimizer(self.optimizers[name], self.cfg.clip, self.scaler)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def step_optimizer(opt: torch.optim.Optimizer, clip: float, scaler: Any = None) -> None:
    """Unscale (fp16), clip the global gradient norm, step, zero the gradients."""
    if scaler is not None:
        scaler.unscale_(opt)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def autocast(device: torch.device, cfg: Any) -> contextlib.AbstractContextManager:
    """The forward's precision: bf16 or fp16 autocast on a GPU, nothing on a CPU."""
    if device.type != "cuda" or not (cfg.bf16 or cfg.fp16):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if cfg.fp16 else torch.bfloat16)


class Pipeline:
    """What a lesson pipeline gives the engine. Subclass, fill in, name it in core.registry."""

    name: str = ""               # set by the registry
    dataset: str = ""            # the data set `sample-data` / `download` make for it
    Config: type = TrainConfig   # frozen dataclass extending TrainConfig, one comment per field
    configs: dict[str, Any] = {}  # "tiny", "sample", "default"
    metric: str = ""             # the headline metric, as evaluate() names it
    mode: str = "max"            # whether a larger metric is better
    manual_optimization: bool = False  # train_step calls ctx.backward / ctx.step itself
    # DDP options: a model whose train_step runs several forward calls, each using only part
    # of the model (a generator step, a critic step), needs find_unused_parameters=True.
    ddp_kwargs: dict[str, Any] = {}

    # ---- data, on the driver
    def default_data_dir(self) -> Path:
        return Path("data") / self.dataset

    def sample_data(self, out: Path, size: int | None = None) -> dict:
        """Generated sample data of the pipeline's data set, in its real layout."""
        from preprocessing import samples

        return samples.generate(self.dataset, out, size)

    def preprocess(self, cfg: Any, data_dir: Path, cache: Any, on_bad: str = "skip") -> tuple[dict, bool]:
        """Build (or find) the cached, preprocessed data: (manifest, hit). A hit starts no Ray."""
        raise NotImplementedError

    def prepare(self, cfg: Any, data_dir: Path, cache: Any, on_bad: str = "skip") -> tuple[dict, bool]:
        """preprocess() under the bad-input policy, as every command calls it: under "fail", an
        entry that a "skip" build made leaving inputs out is refused (the cache key does not
        hold the policy: one build serves both)."""
        from preprocessing.chunked import refuse_skips

        manifest, hit = self.preprocess(cfg, data_dir, cache, on_bad)
        refuse_skips(manifest, on_bad)
        return manifest, hit

    def datasets(self, cfg: Any, cache: Any, manifest: dict) -> dict[str, Any]:
        """The cached data as Ray Datasets, keyed by the names phases use (+ "valid")."""
        raise NotImplementedError

    def train_rows(self, manifest: dict) -> int:
        return int(manifest["rows"]["train"])

    def steps_per_epoch(self, cfg: Any, manifest: dict, world: int) -> int:
        """Batches each worker takes per epoch (the Schedule's unit). Every worker must take
        exactly this many (DDP deadlocks on unequal counts): batches() sees to it."""
        if cfg.bs < world:
            raise ValueError(f"batch size {cfg.bs} is smaller than the {world} workers; raise bs (--set bs=...) "
                             "or use fewer workers")
        return (self.train_rows(manifest) // world) // (cfg.bs // world)

    def init_source(self, cfg: Any, manifest: dict, tracking_uri: str) -> dict[str, str]:
        """Before training: check where initial weights come from (a clear error if they
        cannot be used) and say so; tags for the MLflow run."""
        return {}

    # ---- model, on each worker
    def build_model(self, cfg: Any) -> nn.Module:
        raise NotImplementedError

    def init_model(self, model: nn.Module, ctx: RunContext) -> None:
        """After build_model: load initial weights (pretrained, transferred)."""

    def param_groups(self, model: nn.Module) -> list[list[nn.Parameter]]:
        """Groups for discriminative LRs and freezing; one group by default."""
        return [list(model.parameters())]

    def phases(self, cfg: Any) -> list:
        """The TrainingPhases of the run, cfg.epochs epochs in all (core.phases' recipes)."""
        raise NotImplementedError

    def optimizers(self, model: nn.Module, cfg: Any) -> dict[str, torch.optim.Optimizer] | None:
        """Manual optimisation only: the optimizers by name, built on the unwrapped model.
        The phases' LR curve is a factor on each param group's own LR (phases use lr=1.0)."""
        return None

    # ---- steps, on each worker
    def batches(self, shard: Any, ctx: RunContext, train: bool) -> Iterable[Any]:
        """This worker's batches of `shard` on ctx.device, fed to to_device(). Training
        yields exactly ctx.steps_per_epoch batches."""
        from .batching import device_batches

        return device_batches(shard, ctx.bs, ctx.device, train=train)

    def to_device(self, batch: Any, ctx: RunContext, train: bool) -> Any:
        """A batch from batches() -> the model's input: augmentation by batch goes here."""
        return batch

    def train_step(self, model: nn.Module, batch: Any, ctx: RunContext) -> dict[str, torch.Tensor]:
        """The forward and the losses; "loss" (not detached) is what the engine optimises."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable[Any], ctx: RunContext) -> dict[str, float]:
        """The metrics on this worker's shard, with "n" (examples seen) for combine()."""
        raise NotImplementedError

    def combine(self, results: list[dict[str, float]]) -> dict[str, float]:
        """Merge the workers' evaluate() results: an n-weighted mean by default."""
        n = sum(r["n"] for r in results)
        keys = [k for k in results[0] if k != "n"]
        return {k: sum(r[k] * r["n"] for r in results) / max(n, 1) for k in keys}

    def on_epoch_end(self, model: nn.Module, ctx: RunContext) -> dict[str, list[Path]]:
        """Files for MLflow after each epoch's evaluation, by artifact folder, written under
        ctx.out_dir (rank 0). By default predictions() on the last epoch."""
        if ctx.is_last_epoch and ctx.valid_batch is not None:
            return {"predictions": self.predictions(model, ctx.valid_batch, ctx)}
        return {}

    def predictions(self, model: nn.Module, batch: Any, ctx: RunContext) -> list[Path]:
        """Pictures of the model's output on one validation batch (boxes, translations ...)."""
        return []

    def search_space(self, cfg: Any) -> dict[str, Any]:
        """What Tune varies around `cfg`: Config field -> a ray.tune domain."""
        return {}

    # A pipeline that trains no model (style-transfer) defines
    #     run(self, cfg, **fit_options) -> dict
    # and the engine hands it the whole run.
