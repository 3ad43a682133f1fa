"""style-net (lesson 14) and style-transfer (lesson 13): the Gram and style losses against
hand-computed values, the style network, the VGG weights' error message, LBFGS in epochs,
style-net's tiny config in one process and style-transfer's end to end from the command
line (Ray tasks), on random VGG features."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models.perceptual import VGGFeatures, content_loss, gram_matrix, style_loss
from models.style_net import StyleNet, StyleNetConfig
from pipelines.__main__ import main
from pipelines.core import config as configs
from pipelines.core import registry
from pipelines.core.contract import RunContext
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.sessions import LocalSession
from pipelines.lessons.style import TRANSFER_CONFIGS, gatys
from preprocessing.cache import Cache
from preprocessing.samples import images as image_samples


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


def test_style_net_shapes_and_loss_falls():
    torch.manual_seed(0)
    m = StyleNet(StyleNetConfig(nf=4, n_res=1))
    x = torch.rand(2, 3, 16, 20)
    out = m(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(m(x), x.flip(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_vgg_features_load_a_file_or_random_only_when_asked(tmp_path):
    """VGGFeatures takes a weights file (found or fetched by preprocessing.pretrained);
    without one, random features only when asked for by name."""
    with pytest.raises(ValueError, match="allow_random=True"):
        VGGFeatures((3,))
    with pytest.raises(FileNotFoundError, match="no such file"):
        VGGFeatures((3,), weights=str(tmp_path / "nope.pth"))
    net = VGGFeatures((3, 8), allow_random=True)
    assert net.source == "random" and [f.shape[1] for f in net(torch.rand(1, 3, 16, 16))] == [64, 128]
    ref = VGGFeatures((3,), allow_random=True).net  # the first layers are all relu1_2 needs
    state = {f"features.{k}": v for k, v in ref.state_dict().items()} | {"classifier.0.bias": torch.zeros(1)}
    torch.save(state, tmp_path / "vgg16.pth")
    net = VGGFeatures((3,), weights=tmp_path / "vgg16.pth")
    assert net.source == f"file:{tmp_path / 'vgg16.pth'}" and torch.equal(net.net[2].weight, ref[2].weight)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not VGG16"):
        VGGFeatures((3,), weights=str(tmp_path / "bad.pth"))


def test_style_transfer_epochs_are_rounds_of_one_lbfgs_run():
    """--epochs N: N rounds of iters_per_epoch LBFGS iterations, which take the same steps
    as one call of N x iters_per_epoch (LBFGS keeps its state); losses after each round."""
    cfg = dataclasses.replace(TRANSFER_CONFIGS["tiny"], size=16, style_size=16, epochs=2, iters_per_epoch=4)
    content = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rounds = gatys(content, cfg, seed=1)
    once = gatys(content, dataclasses.replace(cfg, epochs=1, iters_per_epoch=8), seed=1)
    assert len(rounds["style"]) == 3 and len(once["style"]) == 2  # the start, then each epoch
    assert rounds["style"][-1] == pytest.approx(once["style"][-1], rel=1e-4)
    assert rounds["content"][-1] == pytest.approx(once["content"][-1], rel=1e-4)
    assert rounds["style"][-1] < rounds["style"][1] < rounds["style"][0]
    assert rounds["evals"] == once["evals"] == 8
    # TrainConfig's fields work on it as on every pipeline (--epochs N, --set seed=3)
    again = configs.apply(TRANSFER_CONFIGS["tiny"], {"epochs": "1", "seed": "3"})
    assert (again.epochs, again.seed, again.iters_per_epoch) == (1, 3, 10)


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "photos"
    image_samples.natural_images(out, size=50, seed=3, px=48)
    return out


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def _artifacts(workdir, run_id, folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    return client, {f.path for f in client.list_artifacts(run_id, folder)}


def test_style_net_tiny_in_one_process(photos_dir, shared_cache, tmp_path, ray_session):
    """The tiny config on its cached photos through the loop (no Ray Train): the losses add
    up, and its output on held-out photographs is drawn."""
    pipe = registry.get("style-net")
    cfg = configs.apply(pipe.configs["tiny"], {"style": str(photos_dir / "style.png")})
    assert pipe.init_source(cfg, {}, "")["fastray.style"] == str(photos_dir / "style.png")
    manifest, _ = pipe.preprocess(cfg, photos_dir, Cache(shared_cache))
    shards = {k: ds.materialize() for k, ds in pipe.datasets(cfg, Cache(shared_cache), manifest).items()}
    session = LocalSession(shards)
    spe = pipe.steps_per_epoch(cfg, manifest, 1)
    run_loop(RunSpec("style-net", cfg, "sn", 1, 1, False, spe, "", "", "", manifest=manifest), session, pipe)
    (m,) = session.reports
    assert m["loss"] == pytest.approx(m["valid_content_loss"] + m["valid_style_loss"], rel=1e-5)
    assert m["train_loss"] == pytest.approx(m["train_content_loss"] + m["train_style_loss"], rel=1e-5)
    model = pipe.build_model(cfg)
    model.load_state_dict(session.state["model"])
    ctx = RunContext(cfg=cfg, manifest=manifest, out_dir=tmp_path)
    x = pipe.to_device(next(iter(pipe.batches(shards["valid"], ctx, train=False))), ctx, train=False)
    (png,) = pipe.predictions(model.eval(), x, ctx)
    assert png.name == "style_net.png" and png.exists()


def test_style_net_bad_style_image_is_an_error_from_the_cli(capsys, photos_dir, shared_cache):
    code, _, err = _cli(capsys, "run", "style-net", "--data", str(photos_dir), "--config", "tiny",
                        "--cache-dir", str(shared_cache), "--set", "style=no/such.png")
    assert code == 1 and "style image " in err and "no/such.png: no such file" in err


def test_style_transfer_refuses_a_skip_built_entry_under_fail(capsys, photos_dir, tmp_path, workdir, ray_session):
    """--on-bad-input fail holds for the pipeline that runs its own way too: the entry a skip
    build made leaving an unreadable photo out is refused before any task or MLflow run."""
    import shutil

    data = tmp_path / "photos"
    shutil.copytree(photos_dir, data)
    sorted((data / "train").rglob("*.png"))[0].write_bytes(b"")  # a content photo (style.png is not one)
    argv = ["--data", str(data), "--config", "tiny", "--cache-dir", str(tmp_path / "c")]
    code, obj, err = _cli(capsys, "preprocess", "style-transfer", *argv)
    assert code == 0 and sum(obj["skipped"].values()) == 1, err[-2000:]
    code, _, err = _cli(capsys, "run", "style-transfer", *argv, "--name", "st-fail", "--on-bad-input", "fail")
    assert code == 1 and "--on-bad-input fail: this data has 1 bad input(s), skipped when its cache entry" in err, err
    db = workdir / "mlruns.db"
    if db.exists():  # other tests' runs may be there: none of this name
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        ids = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(ids, filter_string="tags.mlflow.runName = 'st-fail'")


def test_style_transfer_tiny(capsys, photos_dir, shared_cache, workdir, ray_session):
    """LBFGS on the pixels, one Ray task per image, through `fastray run` (engine.fit hands
    over the run): the losses of each epoch in MLflow, as engine.fit's runs have them."""
    code, obj, err = _cli(capsys, "run", "style-transfer", "--data", str(photos_dir), "--config", "tiny",
                          "--cache-dir", str(shared_cache), "--name", "st")
    assert code == 0, err[-3000:]
    m = obj["metrics"]
    assert obj["images"] == 2 and m["epoch"] == 2
    assert m["min_style_loss_factor"] > 1.2 and m["min_content_loss_factor"] > 1.2, m
    client, arts = _artifacts(workdir, obj["run_id"], "predictions")
    assert "predictions/style_transfer.png" in arts
    assert "plots/curves.png" in _artifacts(workdir, obj["run_id"], "plots")[1]
    run = client.get_run(obj["run_id"])
    assert run.data.metrics["style_loss_factor"] == pytest.approx(m["style_loss_factor"])
    assert run.data.tags["fastray.pipeline"] == "style-transfer" and run.data.tags["fastray.config"] == "tiny"
    history = sorted((h.step, h.value) for h in client.get_metric_history(obj["run_id"], "style_loss"))
    assert [s for s, _ in history] == [0, 1, 2] and history[2][1] < history[0][1]
