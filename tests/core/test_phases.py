"""Tests for pipelines/core/phases.py: fast, CPU only, no Ray."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.core.phases import (
    DECAYS, Schedule, TrainingPhase, combine_scheds, cosine, discriminative, fine_tune, gradual_unfreeze, lr_find,
    make_optimizer, one_cycle, plot_lr_find, plot_schedule, same_optimizer, sched_constant, sched_cosine,
    sched_exponential, sched_linear, sched_polynomial, set_hyper, sgdr, with_data, with_frozen,
)

approx = pytest.approx


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("fn, start, end, expected", [
    (sched_constant, 2.0, 5.0, (2.0, 2.0, 2.0)),
    (sched_linear, 1.0, 3.0, (1.0, 2.0, 3.0)),
    (sched_cosine, 2.0, 0.0, (2.0, 1.0, 0.0)),
    (sched_exponential, 1.0, 100.0, (1.0, 10.0, 100.0)),
    (sched_polynomial, 1.0, 0.0, (1.0, 0.25, 0.0)),  # (1 - 0.5)**2
])
def test_scheds_hand_values(fn, start, end, expected):
    assert [fn(start, end, pos) for pos in (0.0, 0.5, 1.0)] == approx(list(expected))

def test_sched_details():
    assert sched_cosine(2.0, 0.0, 0.25) == approx(1 + math.cos(math.pi / 4))  # flat start of the half cosine
    assert sched_polynomial(1.0, 0.0, 0.5, power=1.0) == approx(0.5)
    with pytest.raises(ValueError, match="exponential"):
        sched_exponential(0.0, 1.0, 0.5)

def test_combine_scheds():
    f = combine_scheds([0.3, 0.7], [lambda p: sched_linear(0.1, 1.0, p), lambda p: sched_cosine(1.0, 0.0, p)])
    assert [f(x) for x in (0.0, 0.15, 0.3, 0.65, 1.0)] == approx([0.1, 0.55, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="sum to 1"):
        combine_scheds([0.3, 0.3], [sched_constant, sched_constant])


# ----------------------------------------------------------------------------- phases and schedules

def test_phase_curves_and_constant_tuple_uses_start():
    assert TrainingPhase(1, (0.5, 0.1)).lr_at(0.7) == 0.5
    ph = TrainingPhase(1, (1.0, 0.01), "exponential", momentum=(0.8, 0.9), momentum_decay="linear")
    assert ph.lr_at(0.5) == approx(0.1) and ph.mom_at(0.5) == approx(0.85)
    assert TrainingPhase(1, 0.1).mom_at(0.3) is None
    half = TrainingPhase(1, (1.0, 0.0), "linear", span=(0.5, 1.0))  # second half of the curve
    assert [half.lr_at(0), half.lr_at(1)] == approx([0.5, 0.0])

def test_opt_kwargs_dict_is_converted_and_hashable():
    a = TrainingPhase(1, 0.1, opt="adamw", opt_kwargs={"weight_decay": 0.01, "eps": 1e-6})
    b = TrainingPhase(2, 0.3, opt="adamw", opt_kwargs=(("eps", 1e-6), ("weight_decay", 0.01)))
    assert a.opt_kwargs == (("eps", 1e-6), ("weight_decay", 0.01))
    assert hash(a) != 0 and same_optimizer(a, b)
    assert not same_optimizer(a, TrainingPhase(1, 0.1, opt="adam", opt_kwargs=a.opt_kwargs))

def test_one_cycle():
    phases = one_cycle(10, 1.0, div=10, pct=0.1, moms=(0.95, 0.85))
    sched = Schedule(phases, steps_per_epoch=10)
    assert sum(p.epochs for p in phases) == approx(10)
    assert sched.total_steps == 100 and sched.total_epochs == 10
    lrs = [sched.at(s)[1] for s in range(sched.total_steps)]
    assert max(range(100), key=lrs.__getitem__) == 45  # peak after (1 - pct) / 2 of 100 steps
    assert lrs[45] == approx(1.0) and lrs[0] == approx(0.1)
    assert sched.at(sched.total_steps)[1] == approx(1.0 / 1000)  # end: lr / (div * 100)
    assert sched.at(10_000)[1] == approx(1.0 / 1000)             # clamps past the end
    for s in range(90):  # momentum mirrors the LR during the cycle: high LR <-> low momentum
        _, lr, mom = sched.at(s)
        assert (lr - 0.1) / 0.9 == approx((0.95 - mom) / 0.1)
    assert all(sched.at(s)[2] == approx(0.95) for s in range(90, 101))

def _stages(phases):
    """(epochs, frozen) per run of phases with the same frozen set."""
    out = []
    for p in phases:
        if out and out[-1][1] == p.frozen:
            out[-1] = (out[-1][0] + p.epochs, p.frozen)
        else:
            out.append((p.epochs, p.frozen))
    return [(approx(e), f) for e, f in out]


def test_fine_tune_stages_add_up_to_epochs():
    assert _stages(fine_tune(13, 1, 1e-2, (0, 1), unfrozen_lr=2e-3)) == [(1, (0, 1)), (12, ())]
    assert _stages(fine_tune(1, 3, 1e-2, (0, 1))) == [(1, (0, 1))]  # a short run: the frozen stage, cut
    assert _stages(fine_tune(5, 0, 1e-2, (0, 1))) == [(5, ())]
    unfrozen = fine_tune(4, 1, 1e-2, (0,), unfrozen_lr=2e-3)[-3:]  # the second 1cycle peaks at unfrozen_lr
    assert max(p.lr_at(1.0) for p in unfrozen) == approx(2e-3)
    with pytest.raises(ValueError, match="epochs >= 1"):
        fine_tune(0, 1, 1e-2, (0,))


def test_gradual_unfreeze_stages():
    # ULMFiT: the last group, then the last two, then all of the 4 groups
    assert _stages(gradual_unfreeze(10, (1, 1), 4, 1e-2)) == [(1, (0, 1, 2)), (1, (0, 1)), (8, ())]
    assert _stages(gradual_unfreeze(1, (1, 1), 4, 1e-2)) == [(1, (0, 1, 2))]
    assert _stages(gradual_unfreeze(2, (1, 1), 4, 1e-2)) == [(1, (0, 1, 2)), (1, (0, 1))]
    assert sum(p.epochs for p in gradual_unfreeze(7, (2, 3), 3, 1e-2)) == approx(7)


def test_sgdr_cycle_lengths():
    phases = sgdr(3, 1, 0.1, cycle_mult=2)
    assert [p.epochs for p in phases] == [1, 2, 4]
    sched = Schedule(phases, steps_per_epoch=8)
    assert sched.total_steps == 56 and sched.total_epochs == 7
    assert [sched.at(s)[1] for s in (0, 8, 24)] == approx([0.1] * 3)  # restarts
    assert sched.at(16)[1] == approx((0.1 + 0.001) / 2)               # middle of cycle 2, min_lr = lr / 100
    assert [p.lr for p in cosine(3, 0.2, min_lr=0.0)] == [(0.2, 0.0)]

@pytest.mark.parametrize("phases", [
    one_cycle(5, 0.5, pct=0.1, moms=(0.95, 0.85)),  # boundaries at 2.25 and 4.5 epochs: fractional steps
    sgdr(3, 1.5, 0.1, cycle_mult=2, momentum=(0.9, 0.8), momentum_decay="cosine"),
])
def test_with_data_keeps_schedule(phases):
    sizes = [(0, 24), (2, 32), (4, 64)]
    split = with_data(phases, sizes)
    assert len(split) > len(phases)
    a, b = Schedule(phases, 7), Schedule(split, 7)
    assert a.total_steps == b.total_steps and a.total_epochs == b.total_epochs
    for s in range(a.total_steps + 3):
        (_, lr_a, mom_a), (_, lr_b, mom_b) = a.at(s), b.at(s)
        assert lr_b == approx(lr_a, rel=1e-9, abs=1e-12) and mom_b == approx(mom_a, rel=1e-9)
    expected = [24 if e < 2 else 32 if e < 4 else 64 for e in range(b.total_epochs)]
    assert [b.phase_for_epoch(e).data for e in range(b.total_epochs)] == expected
    twice = with_data(split, [(0, 16), (1, 24)])  # splitting an already split phase is exact too
    c = Schedule(twice, 7)
    assert all(c.at(s)[1] == approx(a.at(s)[1], rel=1e-9, abs=1e-12) for s in range(a.total_steps + 1))

def test_with_data_validation():
    with pytest.raises(ValueError, match="from 0"):
        with_data(one_cycle(4, 0.1), [(1, 32)])
    with pytest.raises(ValueError, match="only last"):
        with_data(one_cycle(4, 0.1), [(0, 24), (4, 32)])

def test_phase_for_epoch_is_phase_where_epoch_starts():
    sched = Schedule([TrainingPhase(1.5, 0.1, data="a"), TrainingPhase(1.5, 0.1, data="b")], 4)
    assert [sched.phase_for_epoch(e).data for e in (0, 1, 2, 5)] == ["a", "a", "b", "b"]

def test_discriminative_and_lrs_for_groups():
    assert discriminative(3) == approx((0.01, 0.1, 1.0))
    assert discriminative(1) == (1.0,)
    assert discriminative(2, factor=3) == approx((1 / 3, 1.0))
    sched = Schedule([TrainingPhase(1, 0.5, lr_mults=discriminative(3))], 10)
    assert sched.lrs_for_groups(3, 3) == approx([0.005, 0.05, 0.5])
    assert Schedule([TrainingPhase(1, 0.5)], 10).lrs_for_groups(0, 2) == [0.5, 0.5]
    with pytest.raises(ValueError, match="lr_mults"):
        sched.lrs_for_groups(0, 2)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, field", [
    (dict(epochs=1, lr=0.1, lr_decay="cos"), "lr_decay"),
    (dict(epochs=1, lr=0.1, momentum=0.9, momentum_decay="step"), "momentum_decay"),
    (dict(epochs=0, lr=0.1), "epochs"),
    (dict(epochs=-1, lr=0.1), "epochs"),
    (dict(epochs=1, lr=-0.1), "lr"),
    (dict(epochs=1, lr=(0.1, 0.0), lr_decay="exponential"), "lr"),
    (dict(epochs=1, lr=0.1, opt="lamb"), "opt"),
    (dict(epochs=1, lr=0.1, momentum=1.5), "momentum"),
    (dict(epochs=1, lr=0.1, opt_kwargs={"lr": 0.3}), "opt_kwargs"),
    (dict(epochs=1, lr=0.1, lr_mults=(1.0, 1.0), frozen=(2,)), "frozen"),
    (dict(epochs=1, lr=0.1, span=(0.5, 0.5)), "span"),
])
def test_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TrainingPhase\.{field}"):
        TrainingPhase(**kwargs)

def test_validation_lists_allowed_values():
    with pytest.raises(ValueError, match="cosine"):
        TrainingPhase(1, 0.1, lr_decay="cos")
    assert "polynomial" in DECAYS


# ----------------------------------------------------------------------------- optimizers

def _groups() -> tuple[torch.nn.Module, list[list[torch.nn.Parameter]]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    return model, [list(layer.parameters()) for layer in model]

@pytest.mark.parametrize("name, cls, key", [
    ("sgd", torch.optim.SGD, "momentum"), ("rmsprop", torch.optim.RMSprop, "momentum"),
    ("adam", torch.optim.Adam, "betas"), ("adamw", torch.optim.AdamW, "betas"),
])
def test_make_optimizer_and_set_hyper(name, cls, key):
    model, groups = _groups()
    phase = TrainingPhase(1, (0.1, 0.01), "linear", momentum=0.9, opt=name, opt_kwargs={"weight_decay": 1e-4},
                          lr_mults=discriminative(3), frozen=(0,))
    opt = make_optimizer(phase, groups)
    assert isinstance(opt, cls) and len(opt.param_groups) == 3
    assert [g["lr"] for g in opt.param_groups] == approx([0.001, 0.01, 0.1])
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    get_mom = (lambda g: g["betas"][0]) if key == "betas" else (lambda g: g["momentum"])
    assert all(get_mom(g) == approx(0.9) for g in opt.param_groups)
    assert [p.requires_grad for g in groups for p in g] == [False] * 2 + [True] * 4

    set_hyper(opt, [0.3, 0.2, 0.1], 0.8)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.2, 0.1]
    assert all(get_mom(g) == 0.8 for g in opt.param_groups)
    if key == "betas":
        assert all(g["betas"][1] == 0.999 for g in opt.param_groups)  # beta2 untouched
    set_hyper(opt, [0.3, 0.2, 0.1], None)  # None leaves momentum alone
    assert all(get_mom(g) == 0.8 for g in opt.param_groups)

    frozen_before = [p.detach().clone() for p in groups[0]]
    model(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, groups[0]))  # frozen group did not move

    # unfreezing in a later phase flips requires_grad back
    make_optimizer(with_frozen([phase], ())[0], groups)
    assert all(p.requires_grad for g in groups for p in g)

def test_rmsprop_momentum_switched_on_later():
    model, groups = _groups()
    opt = make_optimizer(TrainingPhase(1, 0.01, opt="rmsprop"), groups)  # momentum None -> torch default 0
    for mom in (None, 0.9):
        set_hyper(opt, [0.01] * 3, mom)
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()  # would raise KeyError('momentum_buffer') without set_hyper's fix

def test_make_optimizer_checks_groups():
    _, groups = _groups()
    with pytest.raises(ValueError, match="lr_mults"):
        make_optimizer(TrainingPhase(1, 0.1, lr_mults=(1.0, 1.0)), groups)
    with pytest.raises(ValueError, match="set_hyper|lrs"):
        set_hyper(make_optimizer(TrainingPhase(1, 0.1), groups), [0.1], None)


# ----------------------------------------------------------------------------- lr finder and plots

def _regression() -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3 + 0.05 * torch.randn(256, 1)
    return torch.nn.Linear(3, 1), [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]

def _mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])

def test_lr_find_on_linear_regression():
    model, batches = _regression()  # 8 batches, cycled over 100 steps
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    res = lr_find(model, batches, _mse)
    assert set(res) == {"lrs", "losses", "suggestion"}
    assert 1e-4 < res["suggestion"] < 1
    assert len(res["lrs"]) == len(res["losses"]) < 100  # diverged before end_lr=10
    assert res["losses"][-1] > 4 * min(res["losses"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())

def test_lr_find_fallback_with_few_points():
    model, batches = _regression()
    res = lr_find(model, iter(batches[:3]), _mse, num_steps=50)  # a generator: not cycled
    assert len(res["lrs"]) == 3
    i_min = min(range(3), key=res["losses"].__getitem__)
    assert res["suggestion"] == approx(res["lrs"][i_min] / 10)

def test_plots_write_png(tmp_path):
    model, batches = _regression()
    for path in (plot_lr_find(lr_find(model, batches, _mse), str(tmp_path / "lr.png")),
                 plot_schedule(Schedule(with_data(one_cycle(3, 0.1), [(0, 24), (1, 32)]), 20), str(tmp_path / "s.png")),
                 plot_schedule(Schedule(sgdr(2, 1, 0.1), 20), str(tmp_path / "no_mom.png"))):
        data = open(path, "rb").read()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
