"""Lessons 8 and 9: object detection on Pascal VOC 2007.

- pascal-largest (lesson 8): the class and box of each image's largest object, from a
  ResNet body and a small fully connected head; L1 on the box + weighted cross entropy.
  Scored by the class accuracy of the largest object and the mean IoU of its box.
- pascal-ssd (lesson 9): every object, from 189 anchors on 4x4, 2x2 and 1x1 grids; focal
  loss per class (or plain binary cross entropy: focal=false) + box_weight x L1 on anchor
  offsets; NMS.
  Scored by mAP at IoU 0.5 (VOC2007's 11-point form; the all-point form beside it).

Training as lesson 8 (core.phases.fine_tune): `epochs` in all, the first `frozen_epochs` a
1cycle with the body frozen (only the head learns), the rest a 1cycle with everything
unfrozen and discriminative LRs over three layer groups (lr / lr_factor**2, lr / lr_factor,
lr). Adam, as the lessons.

Data: VOC's XML or fast.ai's JSON (preprocessing/voc.py), squashed to size x size in Ray
Data with the boxes scaled along, cached as uint8; horizontal flips of images and boxes
on the device, by batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from models import ssd as det
from preprocessing import pretrained, voc
from preprocessing.samples import pascal as pascal_samples

from ..core import metrics as dm
from ..core import plots
from ..core.contract import Pipeline, RunContext, TrainConfig, unwrap
from ..core.phases import discriminative, fine_tune
from ..core.vision import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, random_flip, to_float

logger = logging.getLogger("fastray")
DRAW_SCORE = 0.3  # detections at or over this score are drawn in the predictions artifact


@dataclass(frozen=True)
class _Common(TrainConfig):
    classes: tuple[str, ...] = voc.VOC_CLASSES  # the label space, in order; the data's names must be among them
    annotations: str = "auto"   # voc (XML) | json (fast.ai's pascal_*2007.json) | auto (XML when both)
    valid_split: str = "val"    # the image set scored each epoch (train always trains)
    backbone: str = "resnet34"  # resnet34 | resnet18 (torchvision) | narrow (a small ResNet for CPUs)
    width: int = 16             # the narrow backbone's stem channels (x2 per stage)
    pretrained: str = "auto"    # a resnet body's ImageNet weights: auto (torchvision's; narrow: none), none or a file
    size: int = 224             # images squashed to size x size px (the body's map must halve to 4x4)
    epochs: int = 13            # epochs the whole run trains, every stage together (lesson 8: 3 frozen + 10)
    frozen_epochs: int = 3      # the first epochs of `epochs`: a 1cycle with the body frozen, only the head trains
    lr: float = 1e-3            # peak LR of the frozen cycle (Adam)
    unfrozen_lr: float = 2e-4   # peak LR of the unfrozen cycle (the rest of `epochs`), the head's
    lr_factor: float = 10.0     # discriminative LRs: each layer group lr / lr_factor below the next
    div: float = 20.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.95, 0.85)  # 1cycle Adam beta1: max, min
    beta2: float = 0.99         # Adam beta2
    wd: float = 1e-5            # weight decay (Adam's L2)
    flip: bool = True           # random horizontal flips of images and boxes while training

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "pretrained", pretrained.weights_spec(self.pretrained))
        if self.lr <= 0 or self.unfrozen_lr <= 0 or self.frozen_epochs < 0:
            raise ValueError(f"need lr and unfrozen_lr > 0 and frozen_epochs >= 0 (got lr={self.lr}, "
                             f"unfrozen_lr={self.unfrozen_lr}, frozen_epochs={self.frozen_epochs})")
        if len(self.moms) != 2:
            raise ValueError(f"moms needs two values (max, min), got {self.moms}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names, got {self.classes}")
        if self.backbone not in det.BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(det.BACKBONES)}, got {self.backbone!r}")
        if self.valid_split not in voc.SPLITS or self.valid_split == "train":
            raise ValueError(f"valid_split must be val or test, got {self.valid_split!r}")

    def det(self, p: float) -> det.DetConfig:
        return det.DetConfig(num_classes=len(self.classes), backbone=self.backbone, width=self.width, size=self.size, p=p)


@dataclass(frozen=True)
class LargestConfig(_Common):
    p: float = 0.5              # dropout after the head's BatchNorm (and before its first Linear)
    clas_weight: float = 20 / 224  # cross entropy's weight against L1 in fractions of the image (lesson 8: 20 vs px of 224)


@dataclass(frozen=True)
class SSDConfig(_Common):
    p: float = 0.4              # dropout after each head BatchNorm (lesson 9: 0.4)
    epochs: int = 15            # epochs the whole run trains, every stage together (lesson 9: 5 frozen + 10)
    frozen_epochs: int = 5      # the first epochs of `epochs`, with the body frozen
    lr: float = 3e-3            # peak LR of the frozen cycle (Adam)
    unfrozen_lr: float = 1e-3   # peak LR of the unfrozen cycle, the head's
    focal: bool = True          # focal loss (its true gradient); False: plain binary cross entropy
    gamma: float = 1.0          # focal loss: (1 - p_t)^gamma (lesson 9's notebook: 1; RetinaNet: 2)
    alpha: float = 0.25         # focal loss: weight of the positive targets (lesson 9 and RetinaNet: 0.25)
    prior: float = 0.01         # every class's starting probability: the class logits' bias is -log((1 - prior) / prior)
    match_iou: float = 0.4      # an anchor is positive over this IoU with an object (lesson 9's notebook: 0.4; SSD: 0.5)
    box_weight: float = 0.15    # L1 on the offsets (divided by the variances 0.1, 0.2) against the class loss: RetinaNet's
                                # balance (its L1 on unscaled offsets is ~0.15 of ours; at 1.0 focal loss trailed BCE)
    score_thresh: float = 0.05  # detections under this score are dropped before NMS
    nms_iou: float = 0.45       # NMS drops a box overlapping a better one of its class over this
    max_det: int = 100          # detections kept per image


_SAMPLE = dict(classes=pascal_samples.SAMPLE_CLASSES, backbone="narrow", size=64)
LARGEST_CONFIGS = {
    "tiny": LargestConfig(**_SAMPLE, width=8, bs=16, epochs=2, frozen_epochs=1, lr=3e-3, unfrozen_lr=3e-3),
    "sample": LargestConfig(**_SAMPLE, width=16, bs=32, epochs=9, frozen_epochs=1, lr=3e-3, unfrozen_lr=3e-3,
                            lr_factor=2.0, p=0.2),
    "default": LargestConfig(),  # lesson 8 on the real VOC 2007 (GPU; --set pretrained=resnet34.pth)
}
SSD_CONFIGS = {
    "tiny": SSDConfig(**_SAMPLE, width=8, bs=16, epochs=2, frozen_epochs=1, lr=3e-3, unfrozen_lr=3e-3),
    # focal loss, lesson 9's gamma 1 and IoU 0.4, box_weight 0.15 (benchmarks/focal_vs_bce.py; --set focal=false: BCE)
    "sample": SSDConfig(**_SAMPLE, width=16, bs=16, epochs=13, frozen_epochs=1, lr=3e-3, unfrozen_lr=2e-3,
                        lr_factor=2.0, p=0.05),
    "default": SSDConfig(),  # lesson 9 on the real VOC 2007 (GPU; --set pretrained=resnet34.pth)
}


class _PascalBase(Pipeline):

    # ---- data
    def preprocess(self, cfg, data_dir: Path, cache, on_bad: str = "skip"):
        source = voc.find_pascal(data_dir, cfg.annotations)
        return voc.preprocess_pascal(source, (cfg.size,), cfg.classes, cache, splits=("train", cfg.valid_split),
                                     on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        from preprocessing.chunked import read_split

        cols = [f"img{cfg.size}", "boxes", "labels", "difficult"]
        return {"train": read_split(cache, manifest, "train", cols), "valid": read_split(cache, manifest, "valid", cols)}

    # ---- model
    def param_groups(self, model) -> list[list[nn.Parameter]]:
        return det.layer_groups(model)

    def init_source(self, cfg, manifest: dict, tracking_uri: str) -> dict[str, str]:
        """On the driver: the body's ImageNet weights resolved once (auto: torchvision's file,
        downloaded into the hub cache when absent) and tried on the body; the MLflow tags name
        the file and its sha256."""
        if cfg.pretrained == "none" or (cfg.pretrained == "auto" and cfg.backbone not in pretrained.WEIGHTS):
            why = "pretrained=none" if cfg.pretrained == "none" else f"no ImageNet weights for the {cfg.backbone} backbone"
            logger.info(f"{self.name}: {cfg.backbone} body from random init ({why})")
            return {"fastray.init": "random"}
        if cfg.backbone not in pretrained.WEIGHTS:
            raise ValueError(f"pretrained {cfg.pretrained}: ImageNet weights need a resnet34 or resnet18 backbone, "
                             f"not {cfg.backbone}")
        got = pretrained.resolve(cfg.pretrained, cfg.backbone)
        assert got is not None  # none is random, above
        det.load_imagenet(self.build_model(cfg).body, str(got.path))  # ValueError when it does not fit
        logger.info(f"{self.name}: {cfg.backbone} body from the ImageNet weights {got.path} (sha256 {got.sha256[:12]}...)")
        return got.tags("fastray.init")

    def init_model(self, model, ctx: RunContext) -> None:
        """On a worker: the file init_source resolved, never downloaded."""
        cfg = ctx.cfg
        if cfg.backbone in pretrained.WEIGHTS:
            path = pretrained.locate(cfg.pretrained, cfg.backbone)
            if path is not None:
                det.load_imagenet(model.body, str(path))

    def phases(self, cfg) -> list:
        """fine_tune: the first frozen_epochs train the head alone (groups 0 and 1 frozen),
        the rest of `epochs` everything, at unfrozen_lr."""
        return fine_tune(
            cfg.epochs, cfg.frozen_epochs, cfg.lr, frozen=(0, 1), unfrozen_lr=cfg.unfrozen_lr,
            div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam", data="train",
            lr_mults=discriminative(3, cfg.lr_factor),  # lr / f**2, lr / f, lr
            opt_kwargs={"weight_decay": cfg.wd, "betas": (cfg.moms[0], cfg.beta2)},
        )

    # ---- steps
    def to_device(self, batch: dict[str, torch.Tensor], ctx: RunContext, train: bool) -> dict[str, torch.Tensor]:
        cfg = ctx.cfg
        x = to_float(batch[f"img{cfg.size}"])  # (B, 3, H, W) in [0, 1]
        boxes, labels = batch["boxes"].float(), batch["labels"].long()
        if train and cfg.flip:
            x, boxes = flip_batch(x, boxes, labels >= 0)
        x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)  # what the ResNet weights expect
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"x": x, "boxes": boxes, "labels": labels, "difficult": batch["difficult"].bool()}

    def search_space(self, cfg) -> dict[str, Any]:
        """Lesson 9's dropout dial, the LRs and the 1cycle's shape."""
        from ray import tune

        return {
            "p": tune.uniform(0.0, 0.5),
            "lr": tune.loguniform(cfg.lr / 4, cfg.lr * 3),
            "unfrozen_lr": tune.loguniform(cfg.unfrozen_lr / 4, cfg.unfrozen_lr * 3),
            "div": tune.uniform(5.0, 30.0),
            "pct": tune.uniform(0.05, 0.3),
        }


def flip_batch(x: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip half the images left-right, drawn per image (core.vision.random_flip), and their
    boxes with them. x (B, 3, H, W); boxes (B, M, 4) in fractions; valid (B, M): padding rows
    stay zero."""
    # a (0, 1) ramp flipped along with each image reads back which images were flipped
    ramp = torch.arange(2.0, device=x.device).expand(len(x), 1, 1, 2)
    x, ramp = random_flip(x, ramp)
    flip = ramp[:, 0, 0, 0] > 0
    flipped = torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0], boxes[..., 3]], -1)
    boxes = torch.where((flip[:, None] & valid)[..., None], flipped, boxes)
    return x, boxes


def largest_target(boxes: torch.Tensor, labels: torch.Tensor, difficult: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesson 8's target: the class and box of the largest object by box area, among the
    non-difficult ones (the lesson read only those); any object if all are difficult."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    valid = labels >= 0
    easy = valid & ~difficult
    area = torch.where(easy, area, torch.where(valid, area - 2.0, torch.full_like(area, -4.0)))
    i = area.argmax(1)
    rows = torch.arange(len(boxes), device=boxes.device)
    return labels[rows, i], boxes[rows, i]


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i]: (N, 4), (N, 4) -> (N,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


# ---------------------------------------------------------------- lesson 8


class PascalLargest(_PascalBase):
    Config = LargestConfig
    configs = LARGEST_CONFIGS

    def build_model(self, cfg: LargestConfig) -> nn.Module:
        return det.LargestObject(cfg.det(cfg.p))

    def to_device(self, batch, ctx: RunContext, train: bool):
        b = super().to_device(batch, ctx, train)
        b["y"], b["y_box"] = largest_target(b["boxes"], b["labels"], b["difficult"])
        return b

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        logits, box = model(batch["x"])
        return det.largest_loss(logits, box, batch["y"], batch["y_box"], ctx.cfg.clas_weight)

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        sums = dm.Sums()
        for b in batches:
            logits, box = model(b["x"])
            n = len(b["y"])
            sums.add(n, loss=det.largest_loss(logits, box, b["y"], b["y_box"], ctx.cfg.clas_weight)["loss"] * n,
                     accuracy=(logits.argmax(1) == b["y"]).sum(), box_iou=paired_iou(box.float(), b["y_box"]).sum())
        return sums.means(loss=0.0, accuracy=0.0, box_iou=0.0)

    def predictions(self, model, batch, ctx: RunContext) -> list[Path]:
        """16 validation images: the predicted class and box of the largest object (green when
        the class is right, red when wrong) over the true box."""
        with torch.no_grad():
            logits, box = model(batch["x"][:16])
        y, right = batch["y"][:16], (logits.argmax(1) == batch["y"][:16]).cpu()
        pred = [[(box[i].float().cpu().numpy(), int(logits[i].argmax()), float(logits[i].float().softmax(0).max()),
                  bool(right[i]))] for i in range(len(box))]
        truth = [[(batch["y_box"][i].cpu().numpy(), int(y[i]), False)] for i in range(len(box))]
        iou, acc = paired_iou(box.float(), batch["y_box"][:16]).mean().item(), right.float().mean().item()
        return [draw_boxes(batch["x"][:16], pred, truth, ctx.manifest["classes"], ctx.out_dir / "largest.png",
                           f"largest object, predicted class and box: {int(right.sum())} of {len(right)} right ({acc:.0%}; "
                           f"wrong in red), mean box IoU {iou:.2f}; true box white dashed")]


# ---------------------------------------------------------------- lesson 9


class PascalSSD(_PascalBase):
    Config = SSDConfig
    configs = SSD_CONFIGS

    def build_model(self, cfg: SSDConfig) -> nn.Module:
        return det.SSD(cfg.det(cfg.p), prior=cfg.prior)

    def _loss(self, model, out, b, cfg: SSDConfig) -> dict[str, torch.Tensor]:
        return det.ssd_loss(*out, b["boxes"], b["labels"], b["difficult"], unwrap(model).anchors,
                            focal=cfg.focal, gamma=cfg.gamma, alpha=cfg.alpha, threshold=cfg.match_iou,
                            box_weight=cfg.box_weight)

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        losses = self._loss(model, model(batch["x"]), batch, ctx.cfg)
        return {k: losses[k] for k in ("loss", "clas", "loc")}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, Any]:
        """This worker's detections marked true/false positive per image (core.metrics), the
        count of non-difficult boxes per class, and the mean loss: combine() scores them."""
        cfg, classes = ctx.cfg, list(ctx.manifest["classes"])
        anchors = unwrap(model).anchors
        marks, sums = [], dm.Sums()
        n_pos = np.zeros(len(classes), np.int64)
        for b in batches:
            out = model(b["x"])
            sums.add(len(b["x"]), loss=self._loss(model, out, b, cfg)["loss"] * len(b["x"]))
            dets = det.detect(*out, anchors, cfg.score_thresh, cfg.nms_iou, cfg.max_det)
            gt_b, gt_l, gt_d = (b[k].cpu().numpy() for k in ("boxes", "labels", "difficult"))
            for i, (boxes, scores, labels) in enumerate(dets):
                keep = gt_l[i] >= 0
                marks.append(dm.match_image(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(),
                                            gt_b[i][keep], gt_l[i][keep], gt_d[i][keep]))
            n_pos += dm.count_positives(gt_l, gt_d, len(classes))
        return {**sums.means(loss=0.0), "marks": np.concatenate(marks) if marks else np.zeros((0, 3)),
                "n_pos": n_pos, "classes": classes}

    def combine(self, results: list[dict[str, Any]]) -> dict[str, float]:
        n = sum(r["n"] for r in results)
        marks = np.concatenate([r["marks"] for r in results])
        n_pos = np.sum([r["n_pos"] for r in results], axis=0)
        ap07, ap_all = dm.average_precision(marks, n_pos, True), dm.average_precision(marks, n_pos, False)
        out = {"mAP": dm.mean_ap(ap07), "mAP_all": dm.mean_ap(ap_all),
               "loss": sum(r["loss"] * r["n"] for r in results) / max(n, 1)}
        out |= {f"AP_{c}": float(a) for c, a in zip(results[0]["classes"], ap07) if not np.isnan(a)}
        return out

    def predictions(self, model, batch, ctx: RunContext) -> list[Path]:
        """16 validation images: the detections over DRAW_SCORE, green when they find a true
        box of their class (IoU over 0.5, as mAP counts them), red when not."""
        with torch.no_grad():
            out = model(batch["x"][:16])
        dets = det.detect(*out, unwrap(model).anchors, DRAW_SCORE, ctx.cfg.nms_iou, 10)
        gt_b, gt_l, gt_d = (batch[k][:16].cpu().numpy() for k in ("boxes", "labels", "difficult"))
        pred, truth = [], []
        for i, (boxes, scores, labels) in enumerate(dets):
            boxes, scores, labels, keep = boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(), gt_l[i] >= 0
            marks = dm.match_image(boxes, scores, labels, gt_b[i][keep], gt_l[i][keep], gt_d[i][keep])
            pred.append([(b, int(l), float(s), None if m < 0 else bool(m))  # m: 1 right, 0 wrong, -1 difficult
                         for b, s, l, m in zip(boxes, scores, labels, marks[:, 2])])
            truth.append([(b, int(l), bool(d)) for b, l, d in zip(gt_b[i][keep], gt_l[i][keep], gt_d[i][keep])])
        right = sum(p[3] is True for ps in pred for p in ps)
        wrong = sum(p[3] is False for ps in pred for p in ps)
        found = right / max(1, right + wrong)
        return [draw_boxes(batch["x"][:16], pred, truth, ctx.manifest["classes"], ctx.out_dir / "detections.png",
                           f"detections with score >= {DRAW_SCORE}: {right} of {right + wrong} right ({found:.0%}; "
                           f"wrong in red: no true box of their class over IoU 0.5); true boxes white dashed "
                           "(difficult: grey)")]


def draw_boxes(x: torch.Tensor, pred: list, truth: list, classes, path: Path, title: str) -> Path:
    """A grid of validation images: predicted boxes, labelled 'class score', green when
    right, red when wrong, grey when neither (a difficult object), over the true ones (white
    dashed, difficult ones grey). pred: per image [(box, label, score, right or None)]."""
    from matplotlib.patches import Rectangle

    imgs = denormalize(x, IMAGENET_MEAN, IMAGENET_STD).permute(0, 2, 3, 1).cpu().numpy()
    n, cols = len(imgs), 4
    rows = -(-n // cols)
    fig = plots.figure((cols * 2.6, rows * 2.6))
    colour = {True: "tab:green", False: "tab:red", None: "0.5"}
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(imgs[i], extent=(0, 1, 1, 0))
        for box, label, difficult in truth[i]:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ls="--", lw=1,
                                   ec="0.6" if difficult else "white"))
        for box, label, score, right in pred[i]:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6, ec=colour[right]))
            ax.text(x1, y1, f"{classes[label]} {score:.2f}", fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=colour[right], alpha=0.8, pad=0.5, lw=0))
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.axis("off")
    return plots.save(fig, path, title=title)
