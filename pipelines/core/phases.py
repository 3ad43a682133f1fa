"""Training phases (fast.ai 2018, lesson 13): LR/momentum schedules, optimizers, LR finder.

A schedule is a pure function of progress pos in [0, 1] (as in fastai's schedule.py).
A TrainingPhase is a stretch of training with one optimizer, one LR curve and one momentum
curve; a Schedule lays phases end to end over global optimizer steps.
"""
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import torch

from . import plots

DECAYS = ("constant", "linear", "cosine", "exponential", "polynomial")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
_END = object()  # sentinel for an exhausted batch iterator
_EPS = 1e-9  # tolerance for float epoch/step boundaries (sums of fractional epochs drift by ulps)


# ----------------------------------------------------------------------------- schedules

def sched_constant(start: float, end: float, pos: float) -> float:
    return start

def sched_linear(start: float, end: float, pos: float) -> float:
    return start + pos * (end - start)

def sched_cosine(start: float, end: float, pos: float) -> float:
    # half cosine: flat at both ends, start at pos=0, end at pos=1
    return start + (1 - math.cos(math.pi * pos)) * (end - start) / 2

def sched_exponential(start: float, end: float, pos: float) -> float:
    if start <= 0 or end <= 0:
        raise ValueError(f"exponential decay needs start > 0 and end > 0, got start={start}, end={end}")
    return start * (end / start) ** pos

def sched_polynomial(start: float, end: float, pos: float, power: float = 2.0) -> float:
    return end + (start - end) * (1 - pos) ** power

_SCHEDS: dict[str, Callable[[float, float, float], float]] = {
    "constant": sched_constant, "linear": sched_linear, "cosine": sched_cosine,
    "exponential": sched_exponential, "polynomial": sched_polynomial,
}

def combine_scheds(pcts: list[float], scheds: list[Callable[[float], float]]) -> Callable[[float], float]:
    """Glue schedules: scheds[i] runs over the fraction pcts[i] of the progress (pcts sum to 1)."""
    if len(pcts) != len(scheds) or not pcts:
        raise ValueError(f"pcts and scheds must be non-empty and of equal length, got {len(pcts)} and {len(scheds)}")
    if any(p <= 0 for p in pcts) or abs(math.fsum(pcts) - 1) > 1e-6:
        raise ValueError(f"pcts must be positive and sum to 1, got {pcts}")
    bounds = [math.fsum(pcts[:i]) for i in range(len(pcts) + 1)]  # [0, p0, p0+p1, ..., 1]

    def _inner(pos: float) -> float:
        i = 0
        while i < len(scheds) - 1 and pos >= bounds[i + 1]:
            i += 1
        return scheds[i](min(max((pos - bounds[i]) / (bounds[i + 1] - bounds[i]), 0.0), 1.0))
    return _inner


# ----------------------------------------------------------------------------- phases

def _pair(x: float | tuple[float, float]) -> tuple[float, float]:
    return (float(x[0]), float(x[1])) if isinstance(x, tuple) else (float(x), float(x))

@dataclass(frozen=True)
class TrainingPhase:
    epochs: float                                   # length in epochs (may be fractional, > 0)
    lr: float | tuple[float, float]                 # constant LR, or (start, end) annealed by lr_decay
    lr_decay: str = "constant"                      # one of DECAYS
    momentum: float | tuple[float, float] | None = None  # SGD/RMSprop momentum or Adam beta1; None = optimizer's own
    momentum_decay: str = "constant"
    opt: str = "sgd"                                # one of OPTIMIZERS
    opt_kwargs: tuple[tuple[str, Any], ...] = ()    # e.g. (("weight_decay", 1e-4),); a dict is accepted
    lr_mults: tuple[float, ...] | None = None       # discriminative LRs, one per parameter group
    frozen: tuple[int, ...] = ()                    # parameter groups that do not train in this phase
    data: Any = None                                # dataset for this phase (e.g. image size); None = default
    span: tuple[float, float] = (0.0, 1.0)          # part of the decay curves this phase covers (see with_data)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # the dataclass is frozen
        # normalize containers to tuples so phases stay hashable and comparable
        for name in ("lr", "momentum", "span", "frozen"):
            if isinstance(getattr(self, name), list):
                set_(name, tuple(getattr(self, name)))
        if isinstance(self.opt_kwargs, dict):
            set_("opt_kwargs", tuple(sorted(self.opt_kwargs.items())))
        if self.lr_mults is not None:
            set_("lr_mults", tuple(self.lr_mults))

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainingPhase.{name} must be {what}, got {getattr(self, name)!r}")
        is_pair = lambda x: not isinstance(x, tuple) or len(x) == 2
        need(isinstance(self.epochs, (int, float)) and 0 < self.epochs < math.inf, "epochs", "a finite number > 0")
        for name, allowed in (("lr_decay", DECAYS), ("momentum_decay", DECAYS), ("opt", OPTIMIZERS)):
            need(getattr(self, name) in allowed, name, f"one of {allowed}")
        need(is_pair(self.lr) and all(0 <= v < math.inf for v in _pair(self.lr)), "lr",
             "a number >= 0 or a (start, end) pair of them")
        need(self.lr_decay != "exponential" or min(_pair(self.lr)) > 0, "lr", "> 0 with lr_decay='exponential'")
        if self.momentum is not None:
            need(is_pair(self.momentum) and all(0 <= m < 1 for m in _pair(self.momentum)), "momentum",
                 "None, a number in [0, 1) or a (start, end) pair of them")
            need(self.momentum_decay != "exponential" or min(_pair(self.momentum)) > 0, "momentum",
                 "> 0 with momentum_decay='exponential'")
        need(all(isinstance(kv, tuple) and len(kv) == 2 and kv[0] not in ("lr", "params") for kv in self.opt_kwargs),
             "opt_kwargs", "a dict or ((name, value), ...) without 'lr' or 'params' (use the lr field)")
        need(self.lr_mults is None or (len(self.lr_mults) > 0 and min(self.lr_mults) >= 0), "lr_mults",
             "None or a non-empty tuple of numbers >= 0")
        n_groups = math.inf if self.lr_mults is None else len(self.lr_mults)
        need(all(isinstance(i, int) and 0 <= i < n_groups for i in self.frozen), "frozen",
             "a tuple of parameter group indexes (>= 0, < len(lr_mults))")
        need(len(self.span) == 2 and 0 <= self.span[0] < self.span[1] <= 1, "span", "(a, b) with 0 <= a < b <= 1")

    def _curve(self, value: float | tuple[float, float], decay: str, pos: float) -> float:
        if not -_EPS <= pos <= 1 + _EPS:
            raise ValueError(f"pos must be in [0, 1], got {pos}")
        start, end = _pair(value)
        pos = min(max(pos, 0.0), 1.0)
        p = self.span[0] * (1 - pos) + self.span[1] * pos  # pos in the phase -> pos on the curve
        return _SCHEDS[decay](start, end, p)

    def lr_at(self, pos: float) -> float:
        return self._curve(self.lr, self.lr_decay, pos)

    def mom_at(self, pos: float) -> float | None:
        return None if self.momentum is None else self._curve(self.momentum, self.momentum_decay, pos)


class Schedule:
    """Phases laid end to end over global optimizer steps."""

    def __init__(self, phases: list[TrainingPhase], steps_per_epoch: int):
        if not phases:
            raise ValueError("Schedule needs at least one TrainingPhase")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be an int > 0, got {steps_per_epoch!r}")
        self.phases = list(phases)
        self.steps_per_epoch = steps_per_epoch
        # epoch_bounds[i] = epoch at which phase i starts; the last entry is the end of training.
        self.epoch_bounds = [math.fsum(p.epochs for p in phases[:i]) for i in range(len(phases) + 1)]
        # Boundaries stay fractional in steps: rounding them would change the curves when a
        # phase is split (with_data), so a phase's pos is measured in continuous steps.
        self.step_bounds = [e * steps_per_epoch for e in self.epoch_bounds]
        self.total_steps = round(self.epoch_bounds[-1] * steps_per_epoch)
        self.total_epochs = math.ceil(self.epoch_bounds[-1] - _EPS)

    def _find(self, x: float, bounds: list[float]) -> int:
        i = 0  # few phases: a linear scan reads better than bisect
        while i < len(self.phases) - 1 and x >= bounds[i + 1] - _EPS:
            i += 1
        return i

    def at(self, step: int) -> tuple[int, float, float | None]:
        """(phase index, lr, momentum) for global step `step` (0-based); past the end clamps to the end."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        i = self._find(step, self.step_bounds)
        lo, hi = self.step_bounds[i], self.step_bounds[i + 1]
        pos = min(max((step - lo) / (hi - lo), 0.0), 1.0)
        phase = self.phases[i]
        return i, phase.lr_at(pos), phase.mom_at(pos)

    def phase_for_epoch(self, epoch: int) -> TrainingPhase:
        """The phase in which epoch `epoch` starts (the engine switches data only at epoch boundaries)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self.phases[self._find(epoch, self.epoch_bounds)]

    def lrs_for_groups(self, step: int, n_groups: int) -> list[float]:
        i, lr, _ = self.at(step)
        mults = self.phases[i].lr_mults or (1.0,) * n_groups
        if len(mults) != n_groups:
            raise ValueError(f"lr_mults of phase {i} has {len(mults)} entries but there are {n_groups} parameter groups")
        return [lr * m for m in mults]


# ----------------------------------------------------------------------------- optimizers

def set_frozen(param_groups: list[list[torch.nn.Parameter]], frozen: tuple[int, ...]) -> None:
    """requires_grad=False for the frozen groups and True for the others."""
    if any(i >= len(param_groups) for i in frozen):
        raise ValueError(f"frozen={frozen} has an index >= the number of parameter groups ({len(param_groups)})")
    for i, group in enumerate(param_groups):
        for p in group:
            p.requires_grad_(i not in frozen)

def make_optimizer(phase: TrainingPhase, param_groups: list[list[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    n = len(param_groups)
    if n == 0:
        raise ValueError("make_optimizer needs at least one parameter group")
    if phase.lr_mults is not None and len(phase.lr_mults) != n:
        raise ValueError(f"lr_mults has {len(phase.lr_mults)} entries but there are {n} parameter groups")
    set_frozen(param_groups, phase.frozen)
    # Frozen groups are still handed over (they get no grads so are skipped) so that the
    # optimizer's state_dict keeps the same shape across phases.
    lr0, mults = phase.lr_at(0.0), phase.lr_mults or (1.0,) * n
    groups = [{"params": list(g), "lr": lr0 * m} for g, m in zip(param_groups, mults)]
    kwargs, mom = dict(phase.opt_kwargs), phase.mom_at(0.0)
    if phase.opt in ("adam", "adamw"):
        if mom is not None:
            kwargs["betas"] = (mom, tuple(kwargs.get("betas", (0.9, 0.999)))[1])
        cls = torch.optim.Adam if phase.opt == "adam" else torch.optim.AdamW
    else:
        if mom is not None:
            kwargs["momentum"] = mom
        cls = torch.optim.SGD if phase.opt == "sgd" else torch.optim.RMSprop
    return cls(groups, lr=lr0, **kwargs)

def set_hyper(opt: torch.optim.Optimizer, lrs: list[float], momentum: float | None) -> None:
    """Set each group's lr; momentum goes to 'momentum' (SGD/RMSprop) or betas[0] (Adam/AdamW)."""
    if len(lrs) != len(opt.param_groups):
        raise ValueError(f"got {len(lrs)} lrs for {len(opt.param_groups)} parameter groups")
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = momentum
            if isinstance(opt, torch.optim.RMSprop) and momentum > 0:
                # RMSprop allocates momentum_buffer only if momentum > 0 at a param's first
                # step; add it when momentum is switched on later, or step() raises KeyError.
                for p in group["params"]:
                    state = opt.state.get(p)
                    if state and "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
        else:
            raise ValueError(f"{type(opt).__name__} has neither 'momentum' nor 'betas' to set")

def same_optimizer(a: TrainingPhase, b: TrainingPhase) -> bool:
    """Same optimizer type and kwargs: the engine keeps optimizer state across such phases
    (it must still call set_frozen if `frozen` changes)."""
    return a.opt == b.opt and a.opt_kwargs == b.opt_kwargs


# ----------------------------------------------------------------------------- phase builders

def one_cycle(epochs: float, lr: float, div: float = 10, pct: float = 0.1,
              moms: tuple[float, float] = (0.95, 0.85), opt: str = "sgd", opt_kwargs: Any = (),
              lr_mults: tuple[float, ...] | None = None, data: Any = None) -> list[TrainingPhase]:
    """fastai 0.7's use_clr_beta: LR lr/div -> lr -> lr/div (momentum the mirror image), then
    the last `pct` of the epochs anneals LR lr/div -> lr/(div*100) at momentum moms[0]."""
    if not 0 <= pct < 1:
        raise ValueError(f"pct must be in [0, 1), got {pct}")
    if div <= 0:
        raise ValueError(f"div must be > 0, got {div}")
    kw = dict(opt=opt, opt_kwargs=opt_kwargs, lr_mults=lr_mults, data=data)
    half = epochs * (1 - pct) / 2
    phases = [
        TrainingPhase(half, (lr / div, lr), "linear", (moms[0], moms[1]), "linear", **kw),
        TrainingPhase(half, (lr, lr / div), "linear", (moms[1], moms[0]), "linear", **kw),
    ]
    if pct > 0:
        phases.append(TrainingPhase(epochs * pct, (lr / div, lr / (div * 100)), "linear", moms[0], **kw))
    return phases

def sgdr(n_cycles: int, cycle_len: float, lr: float, cycle_mult: float = 1,
         min_lr: float | None = None, **kw: Any) -> list[TrainingPhase]:
    """SGD with warm restarts: n_cycles cosine decays lr -> min_lr, cycle i lasting cycle_len * cycle_mult**i."""
    if not isinstance(n_cycles, int) or n_cycles < 1:
        raise ValueError(f"n_cycles must be an int >= 1, got {n_cycles!r}")
    if cycle_mult <= 0:
        raise ValueError(f"cycle_mult must be > 0, got {cycle_mult}")
    min_lr = lr / 100 if min_lr is None else min_lr
    return [TrainingPhase(cycle_len * cycle_mult ** i, (lr, min_lr), "cosine", **kw) for i in range(n_cycles)]

def cosine(epochs: float, lr: float, min_lr: float | None = None, **kw: Any) -> list[TrainingPhase]:
    return sgdr(1, epochs, lr, min_lr=min_lr, **kw)

def discriminative(n_groups: int, factor: float = 10.0) -> tuple[float, ...]:
    """(1/factor**(n-1), ..., 1/factor, 1): e.g. lesson 8's lr/100, lr/10, lr for 3 groups."""
    if n_groups < 1 or factor <= 0:
        raise ValueError(f"need n_groups >= 1 and factor > 0, got n_groups={n_groups}, factor={factor}")
    return tuple(1 / factor ** (n_groups - 1 - i) for i in range(n_groups))

def with_data(phases: list[TrainingPhase], sizes: list[tuple[float, Any]]) -> list[TrainingPhase]:
    """Progressive resizing: sizes = [(from_epoch, data), ...]. Phases crossing a from_epoch are
    split in two whose spans cover the same curve, so Schedule.at is unchanged."""
    starts = [e for e, _ in sizes]
    if not sizes or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"sizes must be [(from_epoch, data), ...] strictly increasing from 0, got {starts}")
    total = math.fsum(p.epochs for p in phases)
    if starts[-1] >= total - _EPS:
        raise ValueError(f"sizes has from_epoch={starts[-1]} but the phases only last {total} epochs")
    data_at = lambda epoch: [d for e, d in sizes if e <= epoch + _EPS][-1]
    lerp = lambda a, b, f: a * (1 - f) + b * f  # exact at f=0 and f=1
    out, c0 = [], 0.0
    for p in phases:
        c1 = c0 + p.epochs
        inner = [e for e in starts if c0 + _EPS < e < c1 - _EPS]  # boundaries strictly inside p
        edges = [c0] + inner + [c1]
        fracs = [0.0] + [(e - c0) / p.epochs for e in inner] + [1.0]
        for k in range(len(edges) - 1):
            # piece k covers the same fraction of p's span as of p's epochs
            span = (lerp(*p.span, fracs[k]), lerp(*p.span, fracs[k + 1]))
            out.append(replace(p, epochs=edges[k + 1] - edges[k], span=span, data=data_at(edges[k])))
        c0 = c1
    return out

def with_frozen(phases: list[TrainingPhase], frozen: tuple[int, ...]) -> list[TrainingPhase]:
    return [replace(p, frozen=tuple(frozen)) for p in phases]


# ----------------------------------------------------------------------------- recipes
# fastai's training recipes as named functions of the run's total epochs: a recipe's stages
# add up to `epochs`, so `--epochs N` trains N epochs whatever the pipeline.

def fine_tune(epochs: int, frozen_epochs: int, lr: float, frozen: tuple[int, ...],
              unfrozen_lr: float | None = None, **cycle: Any) -> list[TrainingPhase]:
    """fastai's fine_tune: a 1cycle of `frozen_epochs` with the groups `frozen` frozen (the
    new head trains alone), then a 1cycle of everything for the rest of `epochs`, at
    `unfrozen_lr` (default lr). With epochs <= frozen_epochs only the frozen stage runs."""
    if epochs < 1 or frozen_epochs < 0:
        raise ValueError(f"need epochs >= 1 and frozen_epochs >= 0, got epochs={epochs}, frozen_epochs={frozen_epochs}")
    first = min(frozen_epochs, epochs)
    head = with_frozen(one_cycle(first, lr, **cycle), frozen) if first else []
    rest = epochs - first
    return head + (one_cycle(rest, unfrozen_lr or lr, **cycle) if rest else [])


def gradual_unfreeze(epochs: int, stage_epochs: tuple[int, ...], n_groups: int, lr: float,
                     **cycle: Any) -> list[TrainingPhase]:
    """ULMFiT's gradual unfreezing: a 1cycle per stage, stage k training the last k + 1
    parameter groups for stage_epochs[k] epochs; a last stage trains every group for the
    rest of `epochs` (stages past `epochs` are cut)."""
    if epochs < 1 or any(e < 1 for e in stage_epochs):
        raise ValueError(f"need epochs >= 1 and stage_epochs >= 1 each, got epochs={epochs}, stage_epochs={stage_epochs}")
    out, left = [], epochs
    for k, e in enumerate(stage_epochs):
        e = min(e, left)
        if not e:
            break
        out += with_frozen(one_cycle(e, lr, **cycle), tuple(range(max(0, n_groups - k - 1))))
        left -= e
    return out + (one_cycle(left, lr, **cycle) if left else [])


# ----------------------------------------------------------------------------- LR finder

def lr_find(model: torch.nn.Module, batches: Iterable, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
            param_groups: list[list[torch.nn.Parameter]] | None = None, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_steps: int = 100, opt: str = "sgd", momentum: float = 0.9,
            smooth: float = 0.98, diverge: float = 4.0) -> dict:
    """Exponential LR sweep (one step per batch); returns {"lrs", "losses" (smoothed), "suggestion"}.
    The model's weights, requires_grad flags and train/eval mode are restored afterwards."""
    if not 0 < start_lr < end_lr or num_steps < 2 or not 0 <= smooth < 1:
        raise ValueError(f"need 0 < start_lr < end_lr, num_steps >= 2, 0 <= smooth < 1; got "
                         f"start_lr={start_lr}, end_lr={end_lr}, num_steps={num_steps}, smooth={smooth}")
    param_groups = param_groups or [[p for p in model.parameters() if p.requires_grad]]
    if not any(param_groups):
        raise ValueError("lr_find found no parameters to train (all have requires_grad=False)")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}  # deep copy
    saved_flags = [[p.requires_grad for p in g] for g in param_groups]
    was_training = model.training
    optimizer = make_optimizer(TrainingPhase(1, start_lr, momentum=momentum, opt=opt), param_groups)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    it = iter(batches)
    try:
        model.train()
        for i in range(num_steps):
            try:
                batch = next(it)
            except StopIteration:  # cycle re-iterable batches; a spent generator just ends the sweep
                it = iter(batches)
                batch = next(it, _END)
                if batch is _END:
                    break
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            set_hyper(optimizer, [lr] * len(param_groups), momentum)
            optimizer.zero_grad()
            loss = loss_fn(model, batch)
            raw = loss.item()
            if not math.isfinite(raw):
                break
            loss.backward()
            optimizer.step()
            avg = smooth * avg + (1 - smooth) * raw
            smoothed = avg / (1 - smooth ** (i + 1))  # bias correction: avg starts at 0
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge * best:
                break
    finally:
        model.load_state_dict(saved)
        for g, flags in zip(param_groups, saved_flags):
            for p, f in zip(g, flags):
                p.requires_grad_(f)
        model.train(was_training)
    if not lrs:
        raise ValueError("lr_find got no batches (or the first loss was not finite)")
    return {"lrs": lrs, "losses": losses, "suggestion": _suggest(lrs, losses)}

def _suggest(lrs: list[float], losses: list[float]) -> float:
    """LR in the middle of the steepest descent of loss vs log(lr), found before the minimum;
    a tenth of the min-loss LR when there are too few points for that."""
    n, i_min = len(losses), min(range(len(losses)), key=losses.__getitem__)
    skip = n // 10       # the first bias-corrected averages are nearly raw losses: noisy
    w = max(1, n // 10)  # slope over w steps, not 1, so batch-to-batch noise averages out
    starts = range(skip, i_min - w + 1)
    if n < 5 or not starts:
        return lrs[i_min] / 10
    slope = lambda i: (losses[i + w] - losses[i]) / (math.log(lrs[i + w]) - math.log(lrs[i]))
    i = min(starts, key=slope)
    return lrs[i + w // 2]


# ----------------------------------------------------------------------------- plots

def _figure(nrows: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    fig = plots.figure(figsize)
    return fig, fig.subplots(nrows, 1, sharex=True)

def plot_lr_find(result: dict, path: str) -> str:
    lrs, losses, sugg = result["lrs"], result["losses"], result["suggestion"]
    fig, ax = _figure(1, (6, 4))
    ax.plot(lrs, losses)
    j = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(sugg)))  # nearest point
    ax.plot([sugg], [losses[j]], "ro", label=f"suggestion {sugg:.2e}")
    ax.set(xscale="log", xlabel="learning rate (log)", ylabel="smoothed loss", title="LR finder")
    ax.legend()
    return str(plots.save(fig, path))

def plot_schedule(schedule: Schedule, path: str) -> str:
    steps = list(range(schedule.total_steps + 1))
    values = [schedule.at(s) for s in steps]
    fig, (ax_lr, ax_mom) = _figure(2, (7, 5))
    ax_lr.plot(steps, [lr for _, lr, _ in values])
    ax_mom.plot(steps, [math.nan if m is None else m for _, _, m in values])  # None (optimizer's own): not drawn
    ax_lr.set_ylabel("learning rate")
    ax_mom.set(ylabel="momentum / beta1", xlabel="step")
    for ax in (ax_lr, ax_mom):
        for b in schedule.step_bounds[1:-1]:  # phase boundaries
            ax.axvline(b, color="gray", alpha=0.3, lw=0.8)
    spe = schedule.steps_per_epoch
    ax_lr.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe)).set_xlabel("epoch")
    return str(plots.save(fig, path, title="the schedule: LR and momentum per step (gray: phase boundaries)"))

