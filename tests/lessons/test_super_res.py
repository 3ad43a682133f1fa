"""super-res (lesson 14): ICNR and the SRResNet, the image-folder reader and its cached
pairs, the stages of any --epochs, and the tiny config in one process on its cached data
(random VGG features): each epoch's stage from its context."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from models.srresnet import PixelShuffleUp, SRResNet, SRResNetConfig
from pipelines.__main__ import main
from pipelines.core import logs, registry
from pipelines.core.contract import RunContext
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.sessions import LocalSession
from pipelines.lessons.super_res import CONFIGS, Config
from preprocessing import DataError, imagery
from preprocessing.samples import images as image_samples
from preprocessing.cache import Cache


def test_icnr_pixel_shuffle_is_checkerboard_free_on_a_constant_input():
    torch.manual_seed(0)
    x = torch.full((1, 8, 6, 6), 0.7)
    out = PixelShuffleUp(8, scale=2, icnr=True)(x)  # (1, 8, 12, 12)
    # every 2x2 block holds one value: the four sub-grids are the same image
    subs = [out[..., i::2, j::2] for i in range(2) for j in range(2)]
    assert all(torch.allclose(subs[0], s) for s in subs[1:])
    # away from the zero-padded border, a constant input gives a constant output
    inner = out[..., 2:-2, 2:-2]
    assert torch.allclose(inner, inner[..., :1, :1].expand_as(inner))
    # without ICNR the sub-pixels differ: the checkerboard ICNR removes
    plain = PixelShuffleUp(8, scale=2, icnr=False)(x)[..., 2:-2, 2:-2]
    assert (plain[..., 0::2, 0::2] - plain[..., 0::2, 1::2]).abs().max() > 1e-3


def test_srresnet_x2_x4_shapes_and_loss_falls():
    torch.manual_seed(0)
    m = SRResNet(SRResNetConfig(nf=8, n_res=1))
    x = torch.rand(2, 3, 8, 8)
    assert m(x, 2).shape == (2, 3, 16, 16) and m(x, 4).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="power of 2"):
        m(x, 3)
    hr = torch.rand(2, 3, 32, 32)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(m(x, 4), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    skip = SRResNet(SRResNetConfig(nf=8, n_res=1, bicubic_skip=True))  # starts exactly at bicubic
    bic = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(skip(x, 4), bic, atol=1e-6)


def test_stages_add_up_to_epochs_the_last_taking_the_rest():
    default = CONFIGS["default"]
    assert default.stage_plan() == [("x2:mse", 2), ("x2:feature", 2), ("x4:feature", 2)]
    # sample: as before the port (stage_epochs 2, 1, 5)
    assert CONFIGS["sample"].stage_plan() == [("x2:mse", 2), ("x2:feature", 1), ("x4:feature", 5)]
    plan = lambda cfg, n: dataclasses.replace(cfg, epochs=n).stage_plan()
    assert plan(default, 9) == [("x2:mse", 2), ("x2:feature", 2), ("x4:feature", 5)]  # the last takes the rest
    # a short run gives up the earliest stages' epochs first; the last stage always trains
    assert plan(default, 4) == [("x2:mse", 1), ("x2:feature", 2), ("x4:feature", 1)]
    assert plan(default, 2) == [("x2:feature", 1), ("x4:feature", 1)]
    assert plan(default, 1) == [("x4:feature", 1)]
    pipe = registry.get("super-res")
    for n in range(1, 9):
        cfg = dataclasses.replace(default, epochs=n)
        phases = pipe.phases(cfg)
        assert round(sum(p.epochs for p in phases)) == n
        assert [cfg.stage_at(e) for e in range(n)][-1] == (4, "feature")
    assert [CONFIGS["tiny"].stage_at(e) for e in range(2)] == [(2, "mse"), (4, "feature")]
    with pytest.raises(ValueError, match="each stage but the last"):
        Config(stages=("x2:mse", "x4:feature"), stage_epochs=(1, 1))


# ---------------------------------------------------------------- readers


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "photos"
    image_samples.natural_images(out, size=50, seed=3, px=48)
    return out


def test_folder_tree_reader(tmp_path, photos_dir):
    tree = tmp_path / "tree"
    for i, rel in enumerate(["a/x.jpg", "a/b/y.png", "c/z.JPEG", "w.png", ".hidden/v.png", "notes.txt"]):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (tree / rel).write_text("not an image")
        else:
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tree / rel)
    src = imagery.find_image_folder(tree, valid_frac=0.3, seed=1, exclude=(tree / "w.png",))
    names = sorted(p.name for items in src.splits.values() for p in items)
    assert names == ["x.jpg", "y.png", "z.JPEG"] and src.splits["valid"]  # hidden, excluded, text: left out
    assert imagery.find_image_folder(tree, valid_frac=0.3, seed=1, exclude=(tree / "w.png",)).splits == src.splits
    # train/ and valid/ folders are the splits (the sample's: validation crops of other photos)
    src = imagery.find_image_folder(photos_dir)
    assert len(src.splits["train"]) == 40 and len(src.splits["valid"]) == 10
    assert not any(p.name == "style.png" for items in src.splits.values() for p in items)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no JPEG or PNG images"):
        imagery.find_image_folder(tmp_path / "empty")


@pytest.fixture(scope="module")
def tiny_data(photos_dir, tmp_path_factory, ray_session):
    """The photos preprocessed as the tiny config reads them: (cache, manifest, hit)."""
    cache = Cache(tmp_path_factory.mktemp("cache"))
    manifest, hit = registry.get("super-res").preprocess(CONFIGS["tiny"], photos_dir, cache)
    return cache, manifest, hit


def test_pairs_come_from_the_same_image_and_are_cached(photos_dir, tiny_data):
    import pyarrow.parquet as pq

    from preprocessing.chunked import column_array

    cache, m1, hit1 = tiny_data  # sizes 8, 16 and 32 px
    m2, hit2 = imagery.preprocess(imagery.find_image_folder(photos_dir), (8, 16, 32), cache, "images")
    assert (hit1, hit2) == (False, True) and m1["key"] == m2["key"] and m1["rows"] == {"train": 40, "valid": 10}
    t = pq.read_table(cache.path("images", m1["key"]) / "valid")
    hr, lr = column_array(t, "img32")[0], column_array(t, "img8")[0]
    assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
    # the low-resolution input is the same picture: the 32 px target shrunk to 8 px is close to it
    shrunk = imagery.resize(hr, 8).astype(float)
    assert np.abs(shrunk - lr).mean() < 6


# ---------------------------------------------------------------- a run


def test_each_epoch_trains_its_stage_from_the_context(tiny_data, tmp_path, capsys):
    """The tiny config in one process on its cached data: the first epoch trains x2 with
    MSE, the second x4 with the feature loss (the stage comes from ctx.epoch, not from the
    rows); the PSNR of both scales against bicubic's; predictions draw both scales."""
    cache, manifest, _ = tiny_data
    cfg, pipe = CONFIGS["tiny"], registry.get("super-res")
    logs.setup()
    tags = pipe.init_source(cfg, manifest, "")  # allow_random_vgg: the hub cache's VGG16 if there, never downloaded
    assert tags == {"fastray.vgg16": "random"} or tags["fastray.vgg16"].startswith("torchvision:vgg16-"), tags
    if tags["fastray.vgg16"] == "random":
        assert "uses RANDOM VGG features" in capsys.readouterr().err
    shards = {k: ds.materialize() for k, ds in pipe.datasets(cfg, cache, manifest).items()}
    assert set(shards) == {"x2", "x4", "valid"}
    spe = pipe.steps_per_epoch(cfg, manifest, 1)
    session = LocalSession(shards)
    run_loop(RunSpec("super-res", cfg, "sr", 1, 1, False, spe, "", "", "", manifest=manifest), session, pipe)
    first, second = session.reports
    assert "train_mse_loss_x2" in first and "train_feature_loss_x2" not in first
    assert "train_feature_loss_x4" in second and "train_mse_loss_x2" not in second
    assert first["train_loss"] == pytest.approx(first["train_mse_loss_x2"])
    for k in ("psnr", "valid_psnr_x2", "valid_bicubic_psnr_x2", "valid_bicubic_psnr_x4", "valid_psnr_gain"):
        assert np.isfinite(second[k]), k
    assert second["psnr"] == second["valid_psnr_x4"] and second["valid_bicubic_psnr_x4"] > 10
    model = pipe.build_model(cfg)
    model.load_state_dict(session.state["model"])
    ctx = RunContext(cfg=cfg, manifest=manifest, out_dir=tmp_path)
    batch = pipe.to_device(next(iter(pipe.batches(shards["valid"], ctx, train=False))), ctx, train=False)
    files = pipe.predictions(model.eval(), batch, ctx)
    assert sorted(f.name for f in files) == ["super_res_x2.png", "super_res_x4.png"] and all(f.exists() for f in files)


def test_no_vgg_weights_is_one_error_line_from_the_cli(capsys, photos_dir, tmp_path, workdir, monkeypatch):
    """No VGG16 in the hub cache and none to download: one line that says how to pass it."""
    from preprocessing import pretrained
    from tests.http_files import unreachable_url

    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))  # no VGG16 weights anywhere
    monkeypatch.setenv(pretrained.URL_ENV, unreachable_url())  # nor a server to fetch them from
    monkeypatch.setattr(pretrained, "RETRIES", 0)
    code = main(["run", "super-res", "--data", str(photos_dir), "--config", "tiny", "--cache-dir",
                 str(tmp_path / "cache"), "--set", "allow_random_vgg=false"])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1, err[-2000:]
    assert "vgg_weights=auto needs vgg16-397923af.pth" in lines[0] and "--set vgg_weights=DIR/" in lines[0]
    assert not (workdir / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").exists()
