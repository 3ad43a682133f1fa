"""Image to image (lessons 13, 14): the losses and metrics against hand-computed values,
ICNR, the models, the readers and their error messages, and each pipeline end to end
from the command line with its tiny config (random VGG features, random encoder)."""
import json
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from models.perceptual import VGGFeatures, content_loss, gram_matrix, style_loss
from models.srresnet import PixelShuffleUp, SRResNet, SRResNetConfig
from models.style_net import StyleNet, StyleNetConfig
from models.unet import UNet, UNetConfig, load_resnet34_encoder
from pipelines.__main__ import main
from pipelines.carvana import dice
from preprocessing import DataError, imagery, samples_imagery
from preprocessing.cache import Cache


# ---------------------------------------------------------------- losses and metrics


def test_gram_matrix_and_style_loss_hand_computed():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2 channels of H*W=2 values
    # F F^T = [[1+4, 3+8], [3+8, 9+16]], divided by C*H*W = 4
    assert torch.allclose(gram_matrix(f), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))
    target = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    # mean of squared differences: (0.25^2 + 0.75^2 + 0.25^2 + 2.25^2) / 4 = 1.4375
    assert style_loss([f], [target]).item() == pytest.approx(1.4375)
    assert style_loss([f], [target], [2.0]).item() == pytest.approx(2.875)
    # a style target of batch 1 applies to every image of the batch
    assert style_loss([f.repeat(3, 1, 1, 1)], [target]).item() == pytest.approx(1.4375)
    assert content_loss([f], [torch.zeros_like(f)]).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_dice_hand_computed():
    logits = torch.full((3, 1, 2, 3), -1.0)
    target = torch.zeros(3, 1, 2, 3)
    logits[0, 0, 0, :] = 1.0                 # predicted: 3 pixels
    target[0, 0, 0, :2] = 1.0                # true: 2 pixels, both predicted
    target[0, 0, 1, 0] = 1.0                 # ... and one missed: |P|=3, |T|=3, |P n T|=2
    target[1, 0, 0, 0] = 1.0                 # nothing predicted, one true pixel: 0
    # image 2: nothing predicted, nothing true: 1
    assert dice(logits, target).tolist() == pytest.approx([2 * 2 / 6, 0.0, 1.0])


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


# ---------------------------------------------------------------- models


def _fits(model, batch, loss_fn, steps=8, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_srresnet_x2_x4_shapes_and_loss_falls():
    torch.manual_seed(0)
    m = SRResNet(SRResNetConfig(nf=8, n_res=1))
    x = torch.rand(2, 3, 8, 8)
    assert m(x, 2).shape == (2, 3, 16, 16) and m(x, 4).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="power of 2"):
        m(x, 3)
    hr = torch.rand(2, 3, 32, 32)
    losses = _fits(m, x, lambda m, x: torch.nn.functional.mse_loss(m(x, 4), hr))
    assert losses[-1] < losses[0]
    skip = SRResNet(SRResNetConfig(nf=8, n_res=1, bicubic_skip=True))  # starts exactly at bicubic
    bic = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(skip(x, 4), bic, atol=1e-6)


def test_style_net_shapes_and_loss_falls():
    torch.manual_seed(0)
    m = StyleNet(StyleNetConfig(nf=4, n_res=1))
    x = torch.rand(2, 3, 16, 20)
    out = m(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    losses = _fits(m, x, lambda m, x: torch.nn.functional.mse_loss(m(x), x.flip(3)))
    assert losses[-1] < losses[0]


def test_unet_shapes_groups_and_resnet34_weights(tmp_path):
    from torchvision.models import resnet34

    small = UNet(UNetConfig(width=4, layers=(1, 1, 1, 1)))
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    groups = small.layer_groups()
    assert len(groups) == 3 and sum(len(g) for g in groups) == len(list(small.parameters()))
    torch.manual_seed(0)
    ref = resnet34()
    torch.save(ref.state_dict(), tmp_path / "r34.pth")
    net = UNet()
    load_resnet34_encoder(net, tmp_path / "r34.pth")
    assert torch.equal(net.encoder.layer3[5].conv2.weight, ref.layer3[5].conv2.weight)
    with pytest.raises(ValueError, match="need width=64"):
        load_resnet34_encoder(small, tmp_path / "r34.pth")


def test_vgg_weights_missing_is_an_error_that_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    with pytest.raises(FileNotFoundError) as e:
        VGGFeatures((3,))
    assert "vgg16-397923af.pth" in str(e.value) and "allow_random_vgg=true" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        VGGFeatures((3,), weights=str(tmp_path / "nope.pth"))
    net = VGGFeatures((3, 8), allow_random=True)
    assert net.source == "random" and [f.shape[1] for f in net(torch.rand(1, 3, 16, 16))] == [64, 128]
    # a weights file in torch's cache is found without being named
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    ref = VGGFeatures((3,), allow_random=True).net  # the first layers are all relu1_2 needs
    state = {f"features.{k}": v for k, v in ref.state_dict().items()} | {"classifier.0.bias": torch.zeros(1)}
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    net = VGGFeatures((3,))
    assert net.source.startswith("file:") and torch.equal(net.net[2].weight, ref[2].weight)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not VGG16"):
        VGGFeatures((3,), weights=str(tmp_path / "bad.pth"))


# ---------------------------------------------------------------- readers


@pytest.fixture(scope="module")
def carvana_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("carvana") / "carvana"
    samples_imagery.carvana(out, size=40, views=8, seed=3)  # 5 cars
    return out


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "photos"
    samples_imagery.natural_images(out, size=50, seed=3, px=48)
    return out


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_carvana_split_is_by_car_id(carvana_dir):
    src = imagery.find_carvana(carvana_dir, valid_frac=0.4, seed=0)
    cars = {s: {imagery.car_id(i) for i, _ in items} for s, items in src.splits.items()}
    assert cars["train"] and cars["valid"] and not cars["train"] & cars["valid"]
    assert len(cars["valid"]) == 2 and sum(len(v) for v in src.splits.values()) == 40
    for split, items in src.splits.items():  # every view of a car is in its car's split
        assert len(items) == 8 * len(cars[split])
    assert all(m.name == i.stem + "_mask.gif" for i, m in src.splits["train"])
    # found one folder above too (as the archive extracts), same split for the same seed
    assert imagery.find_carvana(carvana_dir.parent, valid_frac=0.4, seed=0).splits == src.splits


def test_carvana_sample_masks_are_palette_gifs_that_fit(carvana_dir):
    img, mask = next(iter(imagery.find_carvana(carvana_dir).splits["train"]))
    with Image.open(mask) as m:
        assert m.format == "GIF" and m.mode == "P" and set(np.unique(np.asarray(m))) == {0, 1}
    a, b = imagery.decode_pair(img, mask)
    assert a.shape[:2] == b.shape and 0.05 < b.mean() < 0.6  # a car, not the whole frame


def test_missing_mask_message(carvana_dir, tmp_path, capsys):
    data = tmp_path / "carvana"
    shutil.copytree(carvana_dir, data)
    gone = sorted((data / "train_masks").iterdir())[3]
    gone.unlink()
    image = data / "train" / (gone.name[: -len("_mask.gif")] + ".jpg")
    with pytest.raises(DataError) as e:
        imagery.find_carvana(data, on_bad="fail")
    assert str(e.value) == f"{image.absolute()}: no mask (expected {(data / 'train_masks' / gone.name).absolute()})"
    src = imagery.find_carvana(data, on_bad="skip")  # the default: counted and said
    assert src.missing == 1 and sum(len(v) for v in src.splits.values()) == 39
    assert "skipped 1 image(s) without a mask, e.g. " + str(image.absolute()) in capsys.readouterr().err


def test_mask_size_mismatch_message(carvana_dir, tmp_path):
    img, mask = imagery.find_carvana(carvana_dir).splits["train"][0]
    bad = tmp_path / mask.name
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="P").save(bad)
    with pytest.raises(DataError) as e:
        imagery.decode_pair(img, bad)
    assert str(e.value) == f"{bad}: mask is 12x10 px but its image {img.name} is 96x64 px"


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


def test_pairs_come_from_the_same_image_and_are_cached(photos_dir, tmp_path, ray_session):
    import pyarrow.parquet as pq

    src = imagery.find_image_folder(photos_dir)
    cache = Cache(tmp_path / "cache")
    m1, hit1 = imagery.preprocess(src, (8, 16, 32), cache, "images")
    m2, hit2 = imagery.preprocess(src, (8, 16, 32), cache, "images")
    assert (hit1, hit2) == (False, True) and m1["key"] == m2["key"] and m1["rows"] == {"train": 40, "valid": 10}
    t = pq.read_table(cache.path("images", m1["key"]) / "valid")
    hr = np.asarray(t.column("img32")[0].as_py(), np.uint8)
    lr = np.asarray(t.column("img8")[0].as_py(), np.uint8)
    assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
    # the low-resolution input is the same picture: the 32 px target shrunk to 8 px is close to it
    shrunk = imagery.resize(hr, 8).astype(float)
    assert np.abs(shrunk - lr).mean() < 6


# ---------------------------------------------------------------- the command line


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def _artifacts(workdir, run_id, folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    return client, {f.path for f in client.list_artifacts(run_id, folder)}


def test_carvana_unet_tiny_from_the_cli(capsys, carvana_dir, shared_cache, workdir, ray_session):
    code, obj, err = _cli(capsys, "run", "carvana-unet", "--data", str(carvana_dir), "--config", "tiny",
                          "--cache-dir", str(shared_cache), "--name", "cv")
    assert code == 0, err[-3000:]
    m = obj["metrics"]
    assert 0 <= m["dice"] <= 1 and m["epoch"] == 2 and m["frozen_groups"] == 0
    assert "32 training images of 4 cars, 8 validation images of 1 other car(s)" in err
    client, arts = _artifacts(workdir, obj["run_id"], "predictions")
    assert "predictions/masks.png" in arts
    run = client.get_run(obj["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fastray.init"] == "random"
    # the first epoch trained the decoder alone at 32 px, the second everything at 64 px
    assert [v for _, v in sorted((h.step, h.value) for h in client.get_metric_history(obj["run_id"], "frozen_groups"))] == [2, 0]


def test_super_res_tiny_from_the_cli(capsys, photos_dir, shared_cache, workdir, ray_session, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))  # no VGG16 weights anywhere
    code, _, err = _cli(capsys, "run", "super-res", "--data", str(photos_dir), "--config", "tiny",
                        "--cache-dir", str(shared_cache), "--set", "allow_random_vgg=false")
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "needs VGG16's ImageNet weights" in lines[0], err[-2000:]
    code, obj, err = _cli(capsys, "run", "super-res", "--data", str(photos_dir), "--config", "tiny",
                          "--cache-dir", str(shared_cache), "--name", "sr")
    assert code == 0, err[-3000:]
    assert "uses RANDOM VGG features" in err
    m = obj["metrics"]
    for k in ("psnr", "valid_psnr_x2", "valid_bicubic_psnr_x2", "valid_bicubic_psnr_x4", "valid_psnr_gain"):
        assert np.isfinite(m[k]), k
    assert m["psnr"] == m["valid_psnr_x4"] and m["valid_bicubic_psnr_x4"] > 10
    client, arts = _artifacts(workdir, obj["run_id"], "predictions")
    assert {"predictions/super_res_x2.png", "predictions/super_res_x4.png"} <= arts
    # MSE at x2 in the first stage, the feature loss at x4 in the second
    keys = client.get_run(obj["run_id"]).data.metrics
    assert "train_mse_loss_x2" in keys and "train_feature_loss_x4" in keys


def test_style_net_tiny_from_the_cli(capsys, photos_dir, shared_cache, workdir, ray_session):
    code, obj, err = _cli(capsys, "run", "style-net", "--data", str(photos_dir), "--config", "tiny",
                          "--cache-dir", str(shared_cache), "--set", f"style={photos_dir / 'style.png'}",
                          "--name", "sn")
    assert code == 0, err[-3000:]
    m = obj["metrics"]
    assert m["loss"] == pytest.approx(m["valid_content_loss"] + m["valid_style_loss"], rel=1e-5)
    client, arts = _artifacts(workdir, obj["run_id"], "predictions")
    assert "predictions/style_net.png" in arts  # its output on held-out images
    assert client.get_run(obj["run_id"]).data.tags["fastray.style"] == str(photos_dir / "style.png")
    code, _, err = _cli(capsys, "run", "style-net", "--data", str(photos_dir), "--config", "tiny",
                        "--cache-dir", str(shared_cache), "--set", "style=no/such.png")
    assert code == 1 and "style image " in err and "no/such.png: no such file" in err


def test_style_transfer_tiny(capsys, photos_dir, shared_cache, workdir, ray_session):
    """LBFGS on the pixels, one Ray task per image, through `fastray run` (Pipeline.run)."""
    argv = ["run", "style-transfer", "--data", str(photos_dir), "--config", "tiny", "--cache-dir", str(shared_cache),
            "--name", "st"]
    code, obj, err = _cli(capsys, *argv)
    assert code == 0, err[-3000:]
    m = obj["metrics"]
    assert obj["images"] == 2
    assert m["min_style_loss_factor"] > 1.2 and m["min_content_loss_factor"] > 1.2, m
    client, arts = _artifacts(workdir, obj["run_id"], "predictions")
    assert "predictions/style_transfer.png" in arts
    assert client.get_run(obj["run_id"]).data.metrics["style_loss_factor"] == pytest.approx(m["style_loss_factor"])
