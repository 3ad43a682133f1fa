"""carvana-unet (lesson 14): dice against hand-computed values, the U-Net, the Carvana
reader and its error messages, the phases of any --epochs, and the tiny config end to end
from the command line (random encoder)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from models.unet import UNet, UNetConfig, load_resnet34_encoder
from pipelines.__main__ import main
from pipelines.core import registry
from pipelines.core.phases import Schedule
from pipelines.lessons.carvana import CONFIGS, dice
from preprocessing import DataError, imagery
from preprocessing.samples import carvana as carvana_samples


def test_dice_hand_computed():
    logits = torch.full((3, 1, 2, 3), -1.0)
    target = torch.zeros(3, 1, 2, 3)
    logits[0, 0, 0, :] = 1.0                 # predicted: 3 pixels
    target[0, 0, 0, :2] = 1.0                # true: 2 pixels, both predicted
    target[0, 0, 1, 0] = 1.0                 # ... and one missed: |P|=3, |T|=3, |P n T|=2
    target[1, 0, 0, 0] = 1.0                 # nothing predicted, one true pixel: 0
    # image 2: nothing predicted, nothing true: 1
    assert dice(logits, target).tolist() == pytest.approx([2 * 2 / 6, 0.0, 1.0])


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


def _stages(cfg) -> list[tuple[int, tuple, str]]:
    """(epoch, frozen groups, data) at the start of each epoch of cfg's run."""
    pipe = registry.get("carvana-unet")
    sched = Schedule(pipe.phases(cfg), steps_per_epoch=10)
    assert sched.total_epochs == cfg.epochs
    return [(e, sched.phases[sched.at(e * 10)[0]].frozen, sched.phase_for_epoch(e).data) for e in range(cfg.epochs)]


def test_phases_fine_tune_first_then_resize_any_epochs():
    tiny, sample, default = CONFIGS["tiny"], CONFIGS["sample"], CONFIGS["default"]
    # as before the port: 1 frozen epoch at 32 px, 1 of everything at 64 px
    assert _stages(tiny) == [(0, (0, 1), "train32"), (1, (), "train64")]
    # sample: 1 frozen + 6 (old freeze_epochs=1, epochs=6), 32 px for the first 3
    assert [d for _, _, d in _stages(sample)] == ["train32"] * 3 + ["train64"] * 4
    assert [f for _, f, _ in _stages(sample)] == [(0, 1)] + [()] * 6
    # default: 2 frozen + 8, the first 6 at 128 px
    assert default.epochs == 10 and [d for _, _, d in _stages(default)][5:7] == ["train128", "train256"]
    # --epochs 1: the frozen stage alone, at the final size (no room to switch sizes)
    assert _stages(dataclasses.replace(tiny, epochs=1)) == [(0, (0, 1), "train64")]
    assert _stages(dataclasses.replace(sample, epochs=3)) == [(0, (0, 1), "train64"), (1, (), "train64"),
                                                              (2, (), "train64")]
    # freeze_epochs=0: no frozen stage
    assert _stages(dataclasses.replace(tiny, freeze_epochs=0, epochs=3))[0] == (0, (), "train32")


# ---------------------------------------------------------------- readers


@pytest.fixture(scope="module")
def carvana_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("carvana") / "carvana"
    carvana_samples.carvana(out, size=40, views=8, seed=3)  # 5 cars
    return out


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


# ---------------------------------------------------------------- the command line


def test_carvana_unet_tiny_from_the_cli(capsys, carvana_dir, tmp_path, workdir, ray_session):
    code = main(["run", "carvana-unet", "--data", str(carvana_dir), "--config", "tiny",
                 "--cache-dir", str(tmp_path / "cache"), "--name", "cv"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    obj = json.loads(out.strip().splitlines()[-1])
    m = obj["metrics"]
    assert 0 <= m["dice"] <= 1 and m["epoch"] == 2 and m["frozen_groups"] == 0
    assert "32 training images of 4 cars, 8 validation images of 1 other car(s)" in err
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    assert "predictions/masks.png" in {f.path for f in client.list_artifacts(obj["run_id"], "predictions")}
    run = client.get_run(obj["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fastray.init"] == "random"
    # the first epoch trained the decoder alone (at 32 px), the second everything (at 64 px)
    history = sorted((h.step, h.value) for h in client.get_metric_history(obj["run_id"], "frozen_groups"))
    assert [v for _, v in history] == [2, 0]
