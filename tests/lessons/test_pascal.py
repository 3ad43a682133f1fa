"""Detection (lessons 8 and 9): mAP against a hand-worked case, anchors and box coding,
the VOC/JSON readers and their bad input, the phases of every named config, the loop in
process on one batch, and both pipelines from the CLI with --config tiny."""
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models import ssd as det
from pipelines.__main__ import main
from pipelines.core import metrics as dm
from pipelines.core.engine import plan
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.sessions import LocalSession
from pipelines.lessons.pascal import LARGEST_CONFIGS, SSD_CONFIGS, PascalLargest, PascalSSD, flip_batch, largest_target
from preprocessing import DataError
from preprocessing.cache import Cache
from preprocessing.samples.pascal import SAMPLE_CLASSES, pascal
from preprocessing.voc import _records, _Tally, find_pascal, preprocess_pascal


@pytest.fixture(scope="module")
def voc_small(tmp_path_factory) -> Path:
    """60 generated scenes (42 train, 9 val, 9 test) in the VOC layout, with fast.ai's JSON."""
    out = tmp_path_factory.mktemp("data") / "pascal"
    pascal(out, size=60, seed=3)
    return out


# ---------------------------------------------------------------- mAP


def _hand_worked():
    """Two images, three classes (a, b, c). Class a: 4 boxes, one difficult (3 count);
    detections by score: TP, matches the difficult box (ignored), a duplicate of a found box
    (FP), TP, a miss (FP). Class b: one box, no detection. Class c: no box, one detection."""
    box = lambda x, y, s=10: [x, y, x + s, y + s]
    gts = [  # (boxes, labels, difficult) per image
        (np.array([box(0, 0), box(20, 20)], float), np.array([0, 0]), np.array([False, False])),
        (np.array([box(0, 0), box(50, 50), box(0, 0, 20)], float), np.array([0, 0, 1]), np.array([True, False, False])),
    ]
    dets = [  # (boxes, scores, labels) per image
        (np.array([box(0, 0), [1, 1, 10, 10], box(100, 100), box(30, 30)], float), np.array([0.9, 0.7, 0.5, 0.4]),
         np.array([0, 0, 0, 2])),
        (np.array([box(0, 0), box(50, 50)], float), np.array([0.8, 0.6]), np.array([0, 0])),
    ]
    marks = np.concatenate([dm.match_image(*d, *g) for d, g in zip(dets, gts)])
    n_pos = sum(dm.count_positives(g[1], g[2], 3) for g in gts)
    return marks, n_pos


def test_map_agrees_with_a_hand_worked_case():
    marks, n_pos = _hand_worked()
    assert n_pos.tolist() == [3, 1, 0]  # the difficult box is not counted
    # class a, in score order: TP (r 1/3, p 1), ignored, FP (1/3, 1/2), TP (2/3, 2/3), FP (2/3, 1/2)
    a = marks[marks[:, 0] == 0]
    assert sorted(a[:, 2].tolist()) == [-1, 0, 0, 1, 1]
    ap11 = dm.average_precision(marks, n_pos, eleven_point=True)
    ap_all = dm.average_precision(marks, n_pos, eleven_point=False)
    # 11-point: precision 1 at recall 0, .1, .2, .3; 2/3 at .4, .5, .6; 0 from .7 on
    assert ap11[0] == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)
    # all-point: recall steps of 1/3 at precision 1 and 2/3 (the envelope), the last third unreached
    assert ap_all[0] == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)
    assert ap11[1] == 0.0 and ap_all[1] == 0.0  # a class with a box and no detection
    assert np.isnan(ap11[2])                    # a class with no box has no AP ...
    assert dm.mean_ap(ap11) == pytest.approx(6 / 11 / 2)  # ... and stays out of the mean
    assert dm.mean_ap(ap_all) == pytest.approx(5 / 9 / 2)


def test_perfect_detections_score_one_and_workers_combine():
    rng = np.random.default_rng(0)
    results = []
    for worker in range(2):
        boxes = np.sort(rng.uniform(0, 1, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
        labels = np.arange(5) % 3
        marks = dm.match_image(boxes, rng.uniform(0.5, 1, 5), labels, boxes, labels, np.zeros(5, bool))
        results.append({"n": 1, "loss": 0.0, "marks": marks, "n_pos": dm.count_positives(labels, np.zeros(5, bool), 3),
                        "classes": ["a", "b", "c"]})
    out = PascalSSD().combine(results)
    assert out["mAP"] == 1.0 and out["mAP_all"] == 1.0 and out["AP_b"] == 1.0


# ---------------------------------------------------------------- anchors, matching, box coding


def test_anchors_matching_and_box_coding_round_trip():
    anchors = det.make_anchors()
    assert anchors.shape == (189, 4)  # (16 + 4 + 1) cells x 3 zooms x 3 ratios
    assert torch.allclose((anchors[0, :2] + anchors[0, 2:]) / 2, torch.tensor([0.125, 0.125]))
    assert torch.allclose(anchors[-9], torch.tensor([0.15, 0.15, 0.85, 0.85]))  # 1x1 grid, zoom 0.7
    # encode then decode gives the boxes back, whatever anchor they are coded against
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.6, 0.6, 0.7, 0.65]])[:, None].expand(2, 189, 4)
    assert torch.allclose(det.decode(det.encode(boxes, anchors), anchors), boxes, atol=1e-5)
    # image 0: an object exactly on anchor 40, a small one no anchor overlaps by 0.5, padding;
    # image 1: a difficult object on anchor 40
    gt = torch.zeros(2, 3, 4)
    gt[0, 0], gt[0, 1], gt[1, 0] = anchors[40], torch.tensor([0.46, 0.46, 0.54, 0.54]), anchors[40]
    labels = torch.tensor([[2, 4, -1], [1, -1, -1]])
    difficult = torch.tensor([[False, False, False], [True, False, False]])
    idx, pos, ignore = det.match_anchors(gt, labels, difficult, anchors)
    assert pos[0, 40] and idx[0, 40] == 0
    assert (det.box_iou(gt[0, 1:2], anchors)[0] <= 0.5).all()
    small = det.box_iou(gt[0, 1:2], anchors)[0].argmax()
    assert pos[0, small] and idx[0, small] == 1  # its best anchor is positive all the same
    assert not (pos[0] & (idx[0] == 2)).any()   # padding matches nothing
    assert not pos[1].any() and ignore[1, 40]   # a difficult object's anchors are ignored, not negatives
    # offsets that decode onto the matched objects leave no box loss
    offsets = det.encode(gt.gather(1, idx[..., None].expand(-1, -1, 4)), anchors)
    loss = det.ssd_loss(torch.zeros(2, 189, 5), offsets, gt, labels, difficult, anchors)
    assert loss["loc"] == pytest.approx(0.0, abs=1e-5) and loss["n_pos"] == int(pos.sum())
    # non-maximum suppression: two anchors predicting the same object keep one box
    logits = torch.full((1, 189, 5), -10.0)
    logits[0, [40, 41], 2] = torch.tensor([3.0, 2.0])
    (b, s, l), = det.detect(logits, offsets[:1], anchors)
    assert len(b) == 1 and l.tolist() == [2] and torch.allclose(b[0], gt[0, 0], atol=1e-5)


def test_flip_moves_boxes_with_images_and_largest_skips_difficult():
    x = torch.zeros(1, 3, 8, 8)
    x[0, :, 0:2, 0:4] = 1.0  # a patch at the top left: box (0, 0, 0.5, 0.25)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.0, 0.0]]])
    torch.manual_seed(1)
    for _ in range(10):
        fx, fb = flip_batch(x, boxes, torch.tensor([[True, False]]))
        ys, xs = torch.nonzero(fx[0, 0], as_tuple=True)
        assert torch.allclose(fb[0, 0], torch.tensor([xs.min() / 8, ys.min() / 8, (xs.max() + 1) / 8, (ys.max() + 1) / 8]))
        assert (fb[0, 1] == 0).all()
    boxes = torch.tensor([[[0, 0, 0.9, 0.9], [0, 0, 0.5, 0.5], [0, 0, 0.2, 0.2]]])
    y, yb = largest_target(boxes, torch.tensor([[3, 1, -1]]), torch.tensor([[True, False, False]]))
    assert y.tolist() == [1] and yb.tolist() == [[0, 0, 0.5, 0.5]]


# ---------------------------------------------------------------- readers and bad input


def test_voc_and_json_annotations_agree(voc_small):
    voc = find_pascal(voc_small)
    assert voc.layout == "voc" and voc.root.name == "VOC2007" and set(voc.splits) == {"train", "val", "test"}
    js = find_pascal(voc_small, "json")
    assert js.layout == "json" and js.images == voc.images
    assert find_pascal(voc.root).layout == "voc"  # found at the VOC2007 folder itself too
    for split in ("train", "val"):
        a, b = _records(voc, split, SAMPLE_CLASSES, _Tally("fail")), _records(js, split, SAMPLE_CLASSES, _Tally("fail"))
        assert len(a) == len(b) == len(voc.ids(split))
        for ra, rb in zip(a, b):
            assert ra[0] == rb[0] and np.allclose(ra[1], rb[1]) and (ra[2] == rb[2]).all() and (ra[3] == rb[3]).all()
            assert (ra[1] >= 0).all() and (ra[1] <= 1).all()
    assert sum(r[3].sum() for r in _records(voc, "train", SAMPLE_CLASSES, _Tally("fail"))) > 0  # difficult kept


def _damaged(voc_small, tmp_path) -> tuple[Path, dict]:
    """A copy with an XML without size, a box outside its image, and a listed image deleted."""
    data = tmp_path / "pascal"
    shutil.copytree(voc_small, data)
    v = data / "VOCdevkit" / "VOC2007"
    ids = (v / "ImageSets" / "Main" / "train.txt").read_text().split()
    multi = [i for i in ids if (v / "Annotations" / f"{i}.xml").read_text().count("<object>") >= 2]
    no_size, absent = ids[0], ids[-1]
    outside = next(i for i in multi if i not in (no_size, absent))
    xml = v / "Annotations" / f"{no_size}.xml"
    xml.write_text(re.sub(r"<size>.*?</size>", "", xml.read_text(), flags=re.S))
    xml = v / "Annotations" / f"{outside}.xml"
    xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>900</xmax>", xml.read_text(), count=1))
    (v / "JPEGImages" / f"{absent}.jpg").unlink()
    return data, {"no_size": no_size, "outside": outside, "absent": absent, "n_train": len(ids)}


def test_bad_input_is_skipped_and_counted(voc_small, tmp_path, ray_session, capfd):
    data, bad = _damaged(voc_small, tmp_path)
    manifest, hit = preprocess_pascal(find_pascal(data), (64,), SAMPLE_CLASSES, Cache(tmp_path / "cache"))
    assert not hit and manifest["rows"]["train"] == bad["n_train"] - 2 and manifest["skipped"]["train"] == 2
    assert manifest["bad_input"]["train"] == {"listed but absent": 1, "no size": 1, "box outside the image": 1}
    err = capfd.readouterr().err
    assert f"{bad['no_size']}.xml: no image size" in err and f"{bad['absent']}.jpg does not exist" in err
    assert re.search(rf"{bad['outside']}.xml: object 1 \(\w+\) box .* lies outside the \d+x\d+ image", err)
    assert "train: skipped 2 of 42 listed image(s) and dropped 1 box(es)" in err
    # a warm run says it again, and `fail` does not pass what the build skipped
    manifest2, hit2 = preprocess_pascal(find_pascal(data), (64,), SAMPLE_CLASSES, Cache(tmp_path / "cache"))
    assert hit2 and "train: skipped 2 of 42" in capfd.readouterr().err
    with pytest.raises(DataError):
        preprocess_pascal(find_pascal(data), (64,), SAMPLE_CLASSES, Cache(tmp_path / "cache"), on_bad="fail")


@pytest.mark.parametrize("which, msg", [
    ("absent", r"train.txt: lists '{id}' but .*/JPEGImages/{id}.jpg does not exist"),
    ("no_size", r"Annotations/{id}.xml: no image size"),
    ("outside", r"Annotations/{id}.xml: object 1 \(\w+\) box \(x1, y1, x2, y2\) = \(\d+, \d+, 900, \d+\) lies outside"),
])
def test_bad_input_fail_names_the_file(voc_small, tmp_path, which, msg):
    data, bad = _damaged(voc_small, tmp_path)
    v = data / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    v.write_text(f"{bad[which]}\n")  # only the damaged image: the first error is its own
    with pytest.raises(DataError, match=msg.format(id=bad[which])):
        preprocess_pascal(find_pascal(data), (64,), SAMPLE_CLASSES, Cache(tmp_path / "cache"), on_bad="fail")


def test_a_class_outside_the_config_and_a_missing_layout_are_errors(voc_small, tmp_path):
    with pytest.raises(DataError, match=r"class '\w+' is not among the config's classes \(disc, square\)"):
        _records(find_pascal(voc_small), "train", ("disc", "square"), _Tally("skip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Pascal VOC 2007 here"):
        find_pascal(tmp_path / "empty")


# ---------------------------------------------------------------- phases


@pytest.mark.parametrize("pipe", [PascalLargest(), PascalSSD()])
def test_every_named_config_lasts_its_epochs_frozen_first(pipe):
    """epochs is the whole run: the first frozen_epochs train the head alone (groups 0 and 1
    frozen), the rest everything; --epochs 1 keeps only the frozen stage."""
    for cfg in pipe.configs.values():
        for epochs in (cfg.epochs, 1):
            c = dataclasses.replace(cfg, epochs=epochs)
            sched = plan(pipe, c, steps_per_epoch=10)  # refuses phases that do not last c.epochs
            frozen = [sched.phase_for_epoch(e).frozen for e in range(epochs)]
            assert frozen == [(0, 1)] * min(epochs, c.frozen_epochs) + [()] * max(0, epochs - c.frozen_epochs)
    # what the sample configs trained before `epochs` meant the whole run: 1 frozen + 8 and 1 + 12
    assert [(c["sample"].frozen_epochs, c["sample"].epochs) for c in (LARGEST_CONFIGS, SSD_CONFIGS)] == [(1, 9), (1, 13)]


# ---------------------------------------------------------------- the loop, in process


@pytest.fixture(scope="module")
def one_batch(voc_small) -> dict:
    """16 sample images at 64 px as the cache holds them: uint8 images, padded boxes."""
    from PIL import Image

    recs = _records(find_pascal(voc_small), "train", SAMPLE_CLASSES, _Tally("fail"))[:16]
    m = max(len(r[2]) for r in recs)
    pad = lambda a, v: np.concatenate([a, np.full((m - len(a),) + a.shape[1:], v, a.dtype)])
    return {
        "img64": torch.from_numpy(np.stack([np.asarray(Image.open(r[0]).convert("RGB").resize((64, 64))) for r in recs])),
        "boxes": torch.from_numpy(np.stack([pad(r[1], 0) for r in recs])),
        "labels": torch.from_numpy(np.stack([pad(r[2], -1) for r in recs])),
        "difficult": torch.from_numpy(np.stack([pad(r[3], 0) for r in recs])),
    }


class _Shard:
    """A stand-in for a Ray Data shard: the one batch, `times` times over."""

    def __init__(self, batch: dict, times: int):
        self.batch, self.times = batch, times

    def iter_torch_batches(self, batch_size, device, **_):
        for _ in range(self.times):
            yield {k: v.to(device) for k, v in self.batch.items()}


@pytest.mark.parametrize("cls", [PascalLargest, PascalSSD])
def test_the_loop_learns_one_batch_scores_and_draws(one_batch, cls):
    """`tiny` (no flips) through core.loop on one 16-image batch, 20 steps an epoch (the head
    alone, then everything): the model, loss and optimizer fit (the loss falls by 40 %; 55 to
    60 % when written), evaluate scores, and predictions draws its picture on the last epoch."""
    from pipelines.core import registry

    registry.pipeline_class("pascal-largest" if cls is PascalLargest else "pascal-ssd")  # its metric, as get() gives it

    class Recorded(cls):
        losses, drawn = [], []

        def train_step(self, model, batch, ctx):
            out = super().train_step(model, batch, ctx)
            self.losses.append(float(out["loss"].detach()))
            return out

        def predictions(self, model, batch, ctx):
            paths = super().predictions(model, batch, ctx)
            self.drawn = [(p.name, p.stat().st_size) for p in paths]
            return paths

    pipe, cfg, steps = Recorded(), dataclasses.replace(cls.configs["tiny"], flip=False), 20
    session = LocalSession({"train": _Shard(one_batch, steps), "valid": _Shard(one_batch, 1)})
    # one thread: these small steps cost 5x the CPU time with two threads on busy cores
    spec = RunSpec(cls.__name__, cfg, "here", 1, 1, False, steps, "", "", "", manifest={"classes": list(SAMPLE_CLASSES)})
    threads = torch.get_num_threads()
    try:
        run_loop(spec, session, pipe)
    finally:
        torch.set_num_threads(threads)  # run_loop sets the worker's
    assert len(pipe.losses) == 2 * steps
    assert np.mean(pipe.losses[-5:]) < 0.6 * np.mean(pipe.losses[:5]), pipe.losses
    last = session.reports[-1]
    assert [r["frozen_groups"] for r in session.reports] == [2, 0]
    assert 0.0 <= last[pipe.metric] <= 1.0 and last["valid_loss"] > 0
    assert [name for name, _ in pipe.drawn] == ["largest.png" if cls is PascalLargest else "detections.png"]
    assert pipe.drawn[0][1] > 10_000


# ---------------------------------------------------------------- the CLI


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def test_both_pipelines_tiny_from_the_cli(capsys, workdir, ray_session):
    code, info, err = _run(capsys, "sample-data", "pascal", "--out", "data/pascal", "--size", "60")
    assert code == 0 and info["train"] == 42 and (workdir / "data/pascal/VOCdevkit/VOC2007/ImageSets/Main/val.txt").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    for name, metric, image in (("pascal-largest", "accuracy", "largest.png"), ("pascal-ssd", "mAP", "detections.png")):
        code, obj, err = _run(capsys, "run", name, "--data", "data/pascal", "--config", "tiny", "--name", name)
        assert code == 0, err[-3000:]
        assert "from random init" in err
        assert 0.0 <= obj["metrics"][metric] <= 1.0 and obj["metrics"]["epoch"] == 2
        # lesson 8's training: the first epoch with the body's two groups frozen, the second unfrozen
        assert [m.value for m in client.get_metric_history(obj["run_id"], "frozen_groups")] == [2, 0]
        run = client.get_run(obj["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["fastray.pipeline"] == name
        assert image in [a.path.split("/")[-1] for a in client.list_artifacts(obj["run_id"], "predictions")]
    assert "valid_mAP_all" in obj["metrics"] and "valid_loss" in obj["metrics"]
