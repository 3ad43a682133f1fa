"""GANs (lesson 12): the DCGAN/WGAN and CycleGAN models, the WGAN's n-critic schedule, the
GAN readers, and both pipelines: the learning checks on the sample data (a trained
generator passes, an untrained one fails; both data-parallel on two workers) and, in
process on random images, a resume that restores both optimizers and goes on."""
import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from models.cyclegan import CycleGAN, CycleGANConfig, ImagePool, ResnetBlock, lsgan_loss
from models.dcgan import DCGANConfig, WGAN
from pipelines.core import registry
from pipelines.core.contract import RunContext
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.sessions import LocalSession
from pipelines.lessons import gans
from preprocessing import DataError, gan_data
from preprocessing.cache import Cache
from preprocessing.samples import horse2zebra as h2z_sample, lsun


def run_cli(capsys, *argv):
    from pipelines.__main__ import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


# ---------------------------------------------------------------- models


def test_dcgan_at_the_lesson_size_and_small():
    m = WGAN(DCGANConfig())  # lesson 12: 64 px, noise 100, one extra layer, width 64
    x = m("sample", z=m.noise(2))
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1
    assert m.critic(x).shape == (2,) and m.generator.features[0].conv.in_channels == 100
    assert len(m.critic.extra) == 1 and len(m.critic.pyramid) == 3  # 32 -> 16 -> 8 -> 4
    small = WGAN(DCGANConfig(size=16, nz=8, ngf=4, ndf=4, n_extra=0))
    assert small("sample", z=small.noise(3)).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="power of two"):
        DCGANConfig(size=48)


def test_wgan_critic_schedule_clipping_and_losses():
    m = WGAN(DCGANConfig(size=16, nz=8, ngf=4, ndf=4, n_extra=0))
    iters = []
    for g in (0, 24, 25, 26, 499, 500, 501, 1000):
        m.gen_steps.fill_(g)
        iters.append(m.critic_iters(5, 100, 25, 500))
    assert iters == [100, 100, 5, 5, 5, 100, 5, 100]  # lesson 12's schedule
    # the pipeline's schedule is a function of the run's step count: 25 runs of 100 critic
    # steps, then 5 a generator step, and 100 again before the 501st generator step
    lesson = gans.WGANConfig()
    assert [gans.wgan_gen_steps(s, lesson) for s in (0, 99, 100, 2499, 2500, 2505, 4875, 4974, 4975)] == \
        [0, 0, 1, 24, 25, 26, 500, 500, 501]
    for cfg in (lesson, gans.WGAN_CONFIGS["tiny"], dataclasses.replace(lesson, warmup_gen_steps=0, boost_every=7)):
        g = run = 0
        for s in range(1, 5001):  # the model's counters, stepped as the old train_step did
            run += 1
            m.gen_steps.fill_(g)
            if run >= m.critic_iters(cfg.n_critic, cfg.warmup_critic, cfg.warmup_gen_steps, cfg.boost_every):
                g, run = g + 1, 0
            assert gans.wgan_gen_steps(s, cfg) == g, (cfg, s)
    m.clip_critic(0.01)
    assert max(p.abs().max().item() for p in m.critic.parameters()) <= 0.01
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    loss, d_real, d_fake = m("critic", real=real, z=m.noise(4))
    assert torch.allclose(loss, d_real - d_fake) and loss.requires_grad
    loss.backward()
    assert all(p.grad is None for p in m.generator.parameters())  # the critic step leaves G alone
    # weight_clip is the critic's weight clamp; clip (TrainConfig) the gradient norm, off
    assert (lesson.weight_clip, lesson.clip) == (0.01, 0.0)
    with pytest.raises(ValueError, match="weight_clip > 0"):
        gans.WGANConfig(weight_clip=0)


def test_cyclegan_shapes_losses_and_pool():
    m = CycleGAN(CycleGANConfig(ngf=8, ndf=8, n_blocks=2, d_layers=3, pool_size=3))
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake_b, fake_a = m("translate", real_a=a, real_b=b)
    assert fake_b.shape == a.shape and fake_a.abs().max() <= 1
    assert m.d_a(a).shape == (2, 1, 2, 2)  # 32 px / 8 = 4, then two 4x4 stride-1 convs
    loss, parts, fa, fb = m("gen", real_a=a, real_b=b)
    assert set(parts) == {"gen_adv", "cycle", "identity"} and not fa.requires_grad
    expected = parts["gen_adv"] + 10 * parts["cycle"] + 0.5 * 10 * parts["identity"]
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    lesson = CycleGAN(CycleGANConfig(ngf=2, ndf=2))  # the authors' 9 blocks and 70x70 PatchGAN, narrow
    assert sum(isinstance(x, ResnetBlock) for x in lesson.g_ab.modules()) == 9
    assert sum(isinstance(x, nn.Conv2d) and x.stride == (2, 2) for x in lesson.d_a.modules()) == 3
    assert lsgan_loss(torch.ones(3), True) == 0 and lsgan_loss(torch.zeros(3), False) == 0
    assert lsgan_loss(torch.zeros(3), True) == 1
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as they are
    later = [pool.query(torch.full((1, 1, 1, 1), 10.0 + i)).item() for i in range(40)]
    assert len(pool.images) == 3 and any(v < 10 for v in later) and any(v >= 10 for v in later)
    with pytest.raises(ValueError, match="does not fit"):
        gans.CycleGANPipelineConfig(size=16, d_layers=3)


# ---------------------------------------------------------------- readers


def test_readers_of_an_image_folder_and_the_cyclegan_layout(tmp_path):
    lsun.rooms(tmp_path / "lsun", size=40, px=16)
    assert len(list((tmp_path / "lsun" / "bedroom").glob("*/*/*.jpg"))) == 40  # LSUN's nesting
    src = gan_data.find_image_folder(tmp_path / "lsun", valid_frac=0.25)
    train, valid = src.splits["train"], src.splits["valid"]
    assert len(train) + len(valid) == 40 and not set(train) & set(valid) and 4 <= len(valid) <= 16
    assert gan_data.find_image_folder(tmp_path / "lsun", valid_frac=0.25).splits == src.splits  # stable
    assert len(gan_data.find_image_folder(tmp_path / "lsun", valid_frac=0.25, valid_max=2).splits["valid"]) == 2

    info = h2z_sample.horse2zebra(tmp_path / "h2z", size=20, px=16)
    assert (info["trainA"], info["trainB"], info["testA"], info["testB"]) == (8, 8, 2, 2)
    for p in sorted((tmp_path / "h2z" / "trainB").glob("*.jpg"))[:3]:
        p.unlink()
    src = gan_data.find_unpaired(tmp_path)  # one folder above, as horse2zebra.zip extracts
    pairs = src.splits["train"]
    assert len(pairs) == 8 and src.folders == {"trainA": 8, "trainB": 5, "testA": 2, "testB": 2}
    assert sorted(a for a, _ in pairs) == sorted((tmp_path / "h2z" / "trainA").glob("*.jpg"))
    assert {b for _, b in pairs} == set((tmp_path / "h2z" / "trainB").glob("*.jpg"))

    shutil.rmtree(tmp_path / "h2z" / "testB")
    with pytest.raises(DataError, match="testB: missing"):
        gan_data.find_unpaired(tmp_path / "h2z")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CycleGAN data here"):
        gan_data.find_unpaired(tmp_path / "empty")
    with pytest.raises(DataError, match="no JPEG, PNG or WebP images"):
        gan_data.find_image_folder(tmp_path / "empty")


# ---------------------------------------------------------------- pipelines end to end


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gans") / "lsun"
    lsun.rooms(out, size=2000, seed=1)
    return out


@pytest.fixture(scope="module")
def horse2zebra(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gans") / "horse2zebra"
    h2z_sample.horse2zebra(out, size=1000, seed=1)
    return out


def _untrained(pipe, cfg, data: Path, cache: Cache, bs: int = 100) -> dict:
    """evaluate() of a freshly initialised model on the held-out split of the run's cache
    (a hit: no Ray)."""
    manifest, hit = pipe.preprocess(cfg, data, cache)
    assert hit
    ctx = RunContext(cfg=cfg, manifest=manifest)
    arrays = gan_data.read_arrays(cache, manifest, "valid", pipe.columns)
    n = len(arrays[pipe.columns[0]])
    batches = [pipe.to_device({k: torch.as_tensor(v[i : i + bs]) for k, v in arrays.items()}, ctx, False)
               for i in range(0, n, bs)]
    torch.manual_seed(cfg.seed)
    model = pipe.build_model(cfg).eval()
    with torch.no_grad():
        return pipe.evaluate(model, batches, ctx)


def _artifacts(workdir: Path, run_id: str, folder: str) -> list[str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    return sorted(f.path for f in client.list_artifacts(run_id, folder))


def test_wgan_sample_passes_the_learning_check(capsys, rooms, workdir, ray_session):
    code, obj, err = run_cli(capsys, "run", "wgan", "--data", str(rooms), "--config", "sample", "--name", "ws",
                             "--num-workers", "2")
    assert code == 0, err[-3000:]
    assert obj["world_size"] == 2  # data-parallel: generator and critic both all-reduced
    pipe = registry.get("wgan")
    cfg = pipe.configs["sample"]
    trained = obj["metrics"]
    assert {"train_wasserstein", "train_critic_loss", "train_gen_loss", "sched_lr_gen", "sched_lr_critic",
            "valid_hist_tv"} <= set(trained)
    untrained = _untrained(pipe, cfg, rooms, Cache(workdir / "cache"))
    print(f"\nWGAN sample: trained fd={trained['fd']:.4f} hist_tv={trained['valid_hist_tv']:.3f} "
          f"mean_gap={trained['valid_mean_gap']:.3f}; untrained fd={untrained['fd']:.4f} "
          f"hist_tv={untrained['hist_tv']:.3f} mean_gap={untrained['mean_gap']:.3f}")
    assert gans.wgan_passes(trained), trained
    assert not gans.wgan_passes(untrained), untrained
    # a grid of the fixed noise's images each epoch, and the final one over real images
    assert len(_artifacts(workdir, obj["run_id"], "samples")) == cfg.epochs
    assert _artifacts(workdir, obj["run_id"], "predictions") == ["predictions/generated_vs_real.png"]


def test_cyclegan_sample_passes_the_learning_check(capsys, horse2zebra, workdir, ray_session):
    code, obj, err = run_cli(capsys, "run", "cyclegan", "--data", str(horse2zebra), "--config", "sample",
                             "--name", "cs", "--num-workers", "2")
    assert code == 0, err[-3000:]
    assert obj["world_size"] == 2
    pipe = registry.get("cyclegan")
    cfg = pipe.configs["sample"]
    trained = obj["metrics"]
    assert {"train_gen_loss", "train_cycle", "train_identity", "train_disc_loss", "sched_lr_gen", "sched_lr_disc"} <= set(trained)
    assert trained["sched_lr_gen"] < 0.2 * cfg.lr  # the linear decay to 0 ran
    untrained = _untrained(pipe, cfg, horse2zebra, Cache(workdir / "cache"))
    print(f"\nCycleGAN sample: trained domain_acc={trained['domain_acc']:.3f} "
          f"(A->B {trained['valid_a_to_b']:.3f}, B->A {trained['valid_b_to_a']:.3f}) "
          f"cycle_l1={trained['valid_cycle_l1']:.4f}; untrained domain_acc={untrained['domain_acc']:.3f} "
          f"(A->B {untrained['a_to_b']:.3f}, B->A {untrained['b_to_a']:.3f}) cycle_l1={untrained['cycle_l1']:.4f}; "
          f"judge on the real test images {trained['valid_judge_real_acc']:.3f}")
    assert trained["valid_judge_real_acc"] >= 0.95  # the judge tells the real domains apart
    assert gans.cyclegan_passes(trained), trained
    assert not gans.cyclegan_passes(untrained), untrained
    assert len(_artifacts(workdir, obj["run_id"], "samples")) == cfg.epochs
    assert _artifacts(workdir, obj["run_id"], "predictions") == ["predictions/a_to_b_to_a.png"]


class ArrayShard:
    """Rows in memory, with the one method core.batching.device_batches calls (no Ray)."""

    def __init__(self, **cols: torch.Tensor):
        self.cols = cols

    def iter_torch_batches(self, batch_size: int, device, **_):
        n = len(next(iter(self.cols.values())))
        for i in range(0, n, batch_size):
            yield {k: v[i : i + batch_size].to(device) for k, v in self.cols.items()}


def _random_shards(name: str, cfg, train_rows: int, valid_rows: int) -> dict:
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, cfg.size, cfg.size, 3), dtype=torch.uint8, generator=g)
    if name == "wgan":
        return {"train": ArrayShard(img=img(train_rows)), "valid": ArrayShard(img=img(valid_rows))}
    return {split: ArrayShard(a=img(n), b=img(n)) for split, n in (("train", train_rows), ("valid", valid_rows))}


def _assert_same(a, b, where: str):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _run(pipe, cfg, session, steps_per_epoch: int) -> None:
    spec = RunSpec(pipe.name, cfg, "here", 1, 1, False, steps_per_epoch, "", "", "", manifest={})
    threads = torch.get_num_threads()
    try:
        run_loop(spec, session, pipe)
    finally:
        torch.set_num_threads(threads)  # the loop sets this process's, as a worker's


@pytest.mark.parametrize("name", ["wgan", "cyclegan"])
def test_a_resumed_run_restores_both_optimizers_and_goes_on(name):
    """In process, on random images: one epoch, then a two-epoch run from its checkpoint.
    The optimizers' states the loop restores are the saved ones, tensor for tensor; the
    run goes on from the checkpoint's step (the WGAN's n-critic schedule with it); every
    train_step leaves no gradient behind (each optimizer's loss leaves the other's
    parameters alone); each epoch draws its grid of samples, the last the predictions."""
    opt_names = {"wgan": ("critic", "gen"), "cyclegan": ("gen", "disc")}[name]
    cfg = dataclasses.replace(registry.get(name).configs["tiny"], bs=8, epochs=1)
    spe = 8 if name == "wgan" else 2  # WGAN tiny: generator steps after critic steps 4, 8, 10, 12 ...
    shards = _random_shards(name, cfg, train_rows=spe * cfg.bs, valid_rows=8)
    first = LocalSession(shards)
    _run(registry.get(name), cfg, first, spe)
    saved = first.state
    assert saved["epoch"] == 1 and set(saved["opts"]) == set(opt_names)
    assert all(saved["opts"][k]["state"] for k in opt_names)  # both stepped in the first epoch

    pipe, seen, clean, own, drawn = registry.get(name), {}, [], [], []
    train_step, on_epoch_end = pipe.train_step, pipe.on_epoch_end

    def spy_step(model, batch, ctx):
        if not seen:
            seen["opts"] = {k: copy.deepcopy(o.state_dict()) for k, o in ctx.optimizers.items()}
            seen["model"] = {k: v.clone() for k, v in model.state_dict().items()}
            seen["step"] = ctx.global_step
            backward = ctx.backward

            def watched(loss):  # each backward fills the gradients of one optimizer's parameters only
                backward(loss)
                filled = {p for p in model.parameters() if p.grad is not None}
                own.append([k for k, o in ctx.optimizers.items()
                            if filled <= {p for g in o.param_groups for p in g["params"]}])

            ctx.backward = watched
        out = train_step(model, batch, ctx)
        clean.append(all(p.grad is None for p in model.parameters()))
        return out

    def spy_end(model, ctx):
        out = on_epoch_end(model, ctx)
        drawn.append({k: [p.name for p in v if p.is_file()] for k, v in out.items()})
        return out

    pipe.train_step, pipe.on_epoch_end = spy_step, spy_end
    # a copy: the optimizers take the saved "step" tensors as they are and count them on
    second = LocalSession(shards, state=copy.deepcopy(saved))
    _run(pipe, dataclasses.replace(cfg, epochs=2), second, spe)
    for k in opt_names:
        _assert_same(seen["opts"][k]["state"], saved["opts"][k]["state"], f"{k}.state")
        for g_seen, g_saved in zip(seen["opts"][k]["param_groups"], saved["opts"][k]["param_groups"]):
            assert {**g_seen, "lr": None} == {**g_saved, "lr": None}  # the LR is the schedule's now
    _assert_same(seen["model"], saved["model"], "model")
    assert seen["step"] == spe and [r["epoch"] for r in second.reports] == [2]
    assert clean == [True] * spe and len(own) >= spe + 1 and all(len(k) == 1 for k in own), own
    steps = lambda state, k: max(v["step"].item() for v in state["opts"][k]["state"].values())
    expected = ({"critic": 2 * spe, "gen": gans.wgan_gen_steps(2 * spe, cfg)} if name == "wgan"
                else {"gen": 2 * spe, "disc": 2 * spe})
    assert {k: steps(second.state, k) for k in opt_names} == expected  # counted on from the saved states
    if name == "wgan":
        assert (steps(saved, "gen"), expected["gen"]) == (2, 6)
    predictions = {"wgan": "generated_vs_real.png", "cyclegan": "a_to_b_to_a.png"}[name]
    assert drawn == [{"samples": ["epoch_002.png"], "predictions": [predictions]}]
