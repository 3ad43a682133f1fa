"""Where the lessons' `default` configs start from: torchvision's ImageNet weights, resolved
once on the driver (init_source: fetched into the hub cache, their name and sha256 in the
MLflow tags) and loaded by the workers from the same file (init_model: never downloads).
A local HTTP server stands in for download.pytorch.org; no training run here."""
from __future__ import annotations

import hashlib
import io

import pytest
import torch

from pipelines.core import registry
from pipelines.core.contract import RunContext
from pipelines.core.vision import loss_network
from preprocessing import pretrained
from preprocessing.pretrained import Weights
from tests.http_files import file_server, unreachable_url  # noqa: F401 (file_server: a fixture)


def _saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def resnet34_file() -> tuple[bytes, dict]:
    """A state dict with torchvision resnet34's keys and shapes as a file's bytes: fp16 zeros
    (quick to make and half the transfer), conv1's weight random to check what was loaded."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in torchvision.models.resnet34().state_dict().items()}
    state = {k: torch.zeros(shape, dtype=torch.float16 if dtype.is_floating_point else dtype)
             for k, (shape, dtype) in shapes.items()}
    state["conv1.weight"] = torch.randn(shapes["conv1.weight"][0], generator=torch.Generator().manual_seed(0)).half()
    return _saved(state), state


def _serve(server, monkeypatch, name: str, body: bytes, published: str) -> Weights:
    """`name`'s table entry replaced by `body` on the server, named as torchvision names its files."""
    w = Weights(name, f"{name}-{hashlib.sha256(body).hexdigest()[:8]}.pth", published)
    monkeypatch.setitem(pretrained.WEIGHTS, name, w)
    server.files[f"/models/{w.file}"] = body
    return w


@pytest.fixture
def hub(tmp_path, monkeypatch, file_server):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(pretrained.URL_ENV, file_server.url + "/models/")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_a_default_start_fetches_resnet34_once_and_records_it(hub, file_server, monkeypatch, resnet34_file):
    body, state = resnet34_file
    w = _serve(file_server, monkeypatch, "resnet34", body, "ResNet34_Weights.IMAGENET1K_V1")
    sha = hashlib.sha256(body).hexdigest()
    ssd = registry.get("pascal-ssd")
    cfg = ssd.configs["default"]
    assert cfg.pretrained == "auto" and cfg.backbone == "resnet34"
    tags = ssd.init_source(cfg, {}, "")
    assert tags == {"fastray.init": f"torchvision:{w.file}", "fastray.init.sha256": sha,
                    "fastray.init.path": str(hub / w.file)}
    model = ssd.build_model(cfg)
    ssd.init_model(model, RunContext(cfg=cfg, manifest={}))  # a worker: loads the same file
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"].float())
    # the U-Net's default starts from the same file: already in the cache, nothing fetched
    unet = registry.get("carvana-unet")
    assert unet.init_source(unet.configs["default"], {}, "")["fastray.init.sha256"] == sha
    assert len(file_server.requests) == 1


def test_a_default_start_without_its_weights_stops_with_one_line(hub, monkeypatch):
    monkeypatch.setenv(pretrained.URL_ENV, unreachable_url())
    monkeypatch.setattr(pretrained, "RETRIES", 0)  # the retries have their own test
    pipe = registry.get("pascal-largest")
    with pytest.raises(FileNotFoundError) as e:
        pipe.init_source(pipe.configs["default"], {}, "")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("pretrained=auto needs resnet34-b627a593.pth (torchvision's ")
    assert "--set pretrained=DIR/resnet34-b627a593.pth" in msg
    # and a worker of such a run never falls back to random weights either
    cfg = pipe.configs["default"]
    with pytest.raises(FileNotFoundError, match="no such file on this node"):
        pipe.init_model(pipe.build_model(cfg), RunContext(cfg=cfg, manifest={}))


@pytest.mark.parametrize("name", ["pascal-largest", "pascal-ssd", "carvana-unet", "super-res", "style-net"])
def test_tiny_and_sample_configs_stay_offline(name, hub, file_server, monkeypatch):
    pipe = registry.get(name)
    for label in ("tiny", "sample"):
        tags = pipe.init_source(pipe.configs[label], {}, "")
        assert tags.get("fastray.init", tags.get("fastray.vgg16")) == "random", (label, tags)
    assert file_server.requests == []


def test_a_perceptual_default_records_vgg16_and_workers_load_it(hub, file_server, monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    ref = make_layers(cfgs["D"])[:4]  # relu1_2: the layers this test's loss network needs
    body = _saved({f"features.{k}": v for k, v in ref.state_dict().items()})
    w = _serve(file_server, monkeypatch, "vgg16", body, "VGG16_Weights.IMAGENET1K_V1")
    pipe = registry.get("super-res")
    cfg = pipe.configs["default"]
    tags = pipe.init_source(cfg, {}, "")
    assert tags["fastray.vgg16"] == f"torchvision:{w.file}"
    assert tags["fastray.vgg16.sha256"] == hashlib.sha256(body).hexdigest()
    loss_network.cache_clear()
    try:
        net = loss_network((3,), cfg.vgg_weights, cfg.allow_random_vgg, "cpu")
        assert torch.equal(net.net[2].weight, ref[2].weight) and net.source == f"file:{hub / w.file}"
    finally:
        loss_network.cache_clear()
    assert len(file_server.requests) == 1
