"""Lessons 8 and 9: object detection on Pascal VOC 2007.

- pascal-largest (lesson 8): the class and box of each image's largest object, from a
  ResNet body and a small fully connected head; L1 on the box + weighted cross entropy.
  Scored by the class accuracy of the largest object and the mean IoU of its box.
- pascal-ssd (lesson 9): every object, from 189 anchors on 4x4, 2x2 and 1x1 grids; one
  binary cross entropy per class (focal loss by default, plain in the sample config) + L1 on
  anchor offsets; NMS.
  Scored by mAP at IoU 0.5 (VOC2007's 11-point form; the all-point form beside it).

Training as lesson 8: a 1cycle with the body frozen (only the head learns), then a 1cycle
with everything unfrozen and discriminative LRs over three layer groups (lr / lr_factor**2,
lr / lr_factor, lr). Adam, as the lessons.

Data: VOC's XML or fast.ai's JSON (preprocessing/voc.py), squashed to size x size in Ray
Data with the boxes scaled along, cached as uint8; horizontal flips of images and boxes
on the device, by batch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from models import ssd as det
from preprocessing import samples_pascal, voc

from ..core import metrics as dm
from ..core.phases import discriminative, one_cycle, with_frozen
from ..core.contract import Pipeline, RunContext, TrainConfig


# ImageNet's per-channel statistics, in [0, 1] units: what the ResNet weights expect
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DRAW_SCORE = 0.3  # detections at or over this score are drawn in the predictions artifact


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Common:
    classes: tuple[str, ...] = voc.VOC_CLASSES  # the label space, in order; the data's names must be among them
    annotations: str = "auto"   # voc (XML) | json (fast.ai's pascal_*2007.json) | auto (XML when both)
    valid_split: str = "val"    # the image set scored each epoch (train always trains)
    backbone: str = "resnet34"  # resnet34 | resnet18 (torchvision) | narrow (a small ResNet for CPUs)
    width: int = 16             # the narrow backbone's stem channels (x2 per stage)
    pretrained: str = ""        # torchvision ImageNet state dict file for a resnet body ("": random init)
    size: int = 224             # images squashed to size x size px (the body's map must halve to 4x4)
    bs: int = 64                # global batch size, split evenly across workers
    frozen_epochs: int = 3      # 1cycle with the body frozen: only the head trains
    epochs: int = 10            # 1cycle with everything unfrozen, discriminative LRs
    lr: float = 1e-3            # peak LR of the frozen cycle (Adam)
    unfrozen_lr: float = 2e-4   # peak LR of the unfrozen cycle, the head's
    lr_factor: float = 10.0     # discriminative LRs: each layer group lr / lr_factor below the next
    div: float = 20.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.95, 0.85)  # 1cycle Adam beta1: max, min
    beta2: float = 0.99         # Adam beta2
    wd: float = 1e-5            # weight decay (Adam's L2)
    flip: bool = True           # random horizontal flips of images and boxes while training
    seed: int = 0               # init, the cache's row order
    max_failures: int = 1       # Ray Train restarts of the worker group after a failure
    bf16: bool = True           # autocast to bfloat16 on a GPU

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.bs < 1 or self.lr <= 0 or self.unfrozen_lr <= 0 or self.epochs < 1 or self.frozen_epochs < 0:
            raise ValueError(f"need bs >= 1, lr and unfrozen_lr > 0, epochs >= 1, frozen_epochs >= 0 (got bs={self.bs}, "
                             f"lr={self.lr}, unfrozen_lr={self.unfrozen_lr}, epochs={self.epochs}, "
                             f"frozen_epochs={self.frozen_epochs})")
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
    frozen_epochs: int = 5
    lr: float = 3e-3
    unfrozen_lr: float = 1e-3
    focal: bool = True          # focal loss; False: plain binary cross entropy
    gamma: float = 2.0          # focal loss: (1 - p_t)^gamma
    alpha: float = 0.25         # focal loss: weight of the positive targets
    match_iou: float = 0.5      # an anchor is positive over this IoU with an object
    box_weight: float = 1.0     # L1 on the offsets against the classification loss
    score_thresh: float = 0.05  # detections under this score are dropped before NMS
    nms_iou: float = 0.45       # NMS drops a box overlapping a better one of its class over this
    max_det: int = 100          # detections kept per image


_SAMPLE = dict(classes=samples_pascal.SAMPLE_CLASSES, backbone="narrow", size=64)
LARGEST_CONFIGS = {
    "tiny": LargestConfig(**_SAMPLE, width=8, bs=16, frozen_epochs=1, epochs=1, lr=3e-3, unfrozen_lr=3e-3),
    "sample": LargestConfig(**_SAMPLE, width=16, bs=32, frozen_epochs=1, epochs=8, lr=3e-3, unfrozen_lr=3e-3,
                            lr_factor=2.0, p=0.2),
    "default": LargestConfig(),  # lesson 8 on the real VOC 2007 (GPU; --set pretrained=resnet34.pth)
}
SSD_CONFIGS = {
    "tiny": SSDConfig(**_SAMPLE, width=8, bs=16, frozen_epochs=1, epochs=1, lr=3e-3, unfrozen_lr=3e-3),
    # plain BCE: on the sample it beat focal loss at this budget (mAP@0.5 0.666 vs 0.287 after all 13
    # epochs, idle 2 cores; --set focal=true for lesson 9's focal loss)
    "sample": SSDConfig(**_SAMPLE, width=16, bs=16, frozen_epochs=1, epochs=12, lr=3e-3, unfrozen_lr=2e-3,
                        lr_factor=2.0, p=0.05, focal=False),
    "default": SSDConfig(),  # lesson 9 on the real VOC 2007 (GPU; --set pretrained=resnet34.pth)
}


class _PascalBase(Pipeline):
    dataset = "pascal"

    # ---- data
    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples_pascal.pascal(out, size=size or 2000)

    def preprocess(self, cfg, data_dir: Path, cache, on_bad: str = "skip"):
        source = voc.find_pascal(data_dir, cfg.annotations)
        return voc.preprocess_pascal(source, (cfg.size,), cfg.classes, cache, splits=("train", cfg.valid_split),
                                     on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        from preprocessing.images import read_split

        cols = [f"img{cfg.size}", "boxes", "labels", "difficult"]
        return {"train": read_split(cache, manifest, "train", cols), "valid": read_split(cache, manifest, "valid", cols)}

    # ---- model
    def param_groups(self, model) -> list[list[nn.Parameter]]:
        return det.layer_groups(model)

    def init_source(self, cfg, manifest: dict, tracking_uri: str) -> dict[str, str]:
        if not cfg.pretrained:
            say(f"{self.name}: no ImageNet weights given (--set pretrained=FILE): {cfg.backbone} from random init")
            return {"fastray.init": "random"}
        if cfg.backbone == "narrow":
            raise ValueError(f"pretrained {cfg.pretrained}: ImageNet weights need a resnet34 or resnet18 backbone, "
                             "not narrow")
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(f"pretrained {cfg.pretrained}: no such file (a torchvision {cfg.backbone} "
                                    "ImageNet state dict)")
        det.load_imagenet(self.build_model(cfg).body, cfg.pretrained)  # ValueError when it does not fit
        say(f"{self.name}: {cfg.backbone} body from the ImageNet weights in {cfg.pretrained}")
        return {"fastray.init": f"imagenet:{cfg.pretrained}"}

    def init_model(self, model, cfg, tracking_uri: str) -> None:
        if cfg.pretrained:
            det.load_imagenet(model.body, cfg.pretrained)

    def phases(self, cfg) -> list:
        mults = discriminative(3, cfg.lr_factor)  # lr / f**2, lr / f, lr
        kw = dict(div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam", lr_mults=mults, data="train",
                  opt_kwargs={"weight_decay": cfg.wd, "betas": (cfg.moms[0], cfg.beta2)})
        frozen = with_frozen(one_cycle(cfg.frozen_epochs, cfg.lr, **kw), (0, 1)) if cfg.frozen_epochs else []
        return frozen + one_cycle(cfg.epochs, cfg.unfrozen_lr, **kw)

    # ---- steps
    def to_device(self, cfg, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        x = batch[f"img{cfg.size}"].permute(0, 3, 1, 2).float().div_(255)  # (B, H, W, 3) uint8 -> (B, 3, H, W)
        boxes, labels = batch["boxes"].float(), batch["labels"].long()
        if train and cfg.flip:
            x, boxes = flip_batch(x, boxes, labels >= 0)
        x = (x - x.new_tensor(MEAN).view(1, 3, 1, 1)) / x.new_tensor(STD).view(1, 3, 1, 1)
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

    @staticmethod
    def _core(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model


def flip_batch(x: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip half the images left-right, drawn per image, and their boxes with them.
    x (B, 3, H, W); boxes (B, M, 4) in fractions; valid (B, M): padding rows stay zero."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
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
    metric = "accuracy"
    mode = "max"

    def build_model(self, cfg: LargestConfig) -> nn.Module:
        return det.LargestObject(cfg.det(cfg.p))

    def to_device(self, cfg, batch, train):
        b = super().to_device(cfg, batch, train)
        b["y"], b["y_box"] = largest_target(b["boxes"], b["labels"], b["difficult"])
        return b

    def train_step(self, model, batch, opt, cfg: LargestConfig) -> dict[str, torch.Tensor]:
        logits, box = model(batch["x"])
        losses = det.largest_loss(logits, box, batch["y"], batch["y_box"], cfg.clas_weight)
        optimizer_step(opt, losses["loss"])
        return {k: v.detach() for k, v in losses.items()}

    def evaluate(self, model, batches: Iterable, cfg: LargestConfig) -> dict[str, float]:
        loss = correct = iou = None
        n = 0
        for b in batches:
            logits, box = model(b["x"])
            l = det.largest_loss(logits, box, b["y"], b["y_box"], cfg.clas_weight)["loss"] * len(b["y"])
            c = (logits.argmax(1) == b["y"]).sum()
            i = paired_iou(box.float(), b["y_box"]).sum()
            loss, correct, iou = (l, c, i) if loss is None else (loss + l, correct + c, iou + i)
            n += len(b["y"])
        if not n:
            return {"loss": 0.0, "accuracy": 0.0, "box_iou": 0.0, "n": 0}
        return {"loss": loss.item() / n, "accuracy": correct.item() / n, "box_iou": iou.item() / n, "n": n}

    def artifacts(self, model, batch, cfg: LargestConfig, out_dir: Path) -> list[Path]:
        with torch.no_grad():
            logits, box = model(batch["x"][:16])
        pred = [[(box[i].float().cpu().numpy(), int(logits[i].argmax()), float(logits[i].float().softmax(0).max()))]
                for i in range(len(box))]
        truth = [[(batch["y_box"][i].cpu().numpy(), int(batch["y"][i]), False)] for i in range(len(box))]
        return [draw_boxes(batch["x"][:16], pred, truth, cfg.classes, out_dir / "largest.png",
                           "largest object: predicted (coloured, class p), true (white dashed)")]


# ---------------------------------------------------------------- lesson 9


class PascalSSD(_PascalBase):
    Config = SSDConfig
    configs = SSD_CONFIGS
    metric = "mAP"
    mode = "max"

    def build_model(self, cfg: SSDConfig) -> nn.Module:
        return det.SSD(cfg.det(cfg.p))

    def _loss(self, model, out, b, cfg: SSDConfig) -> dict[str, torch.Tensor]:
        return det.ssd_loss(*out, b["boxes"], b["labels"], b["difficult"], self._core(model).anchors,
                            focal=cfg.focal, gamma=cfg.gamma, alpha=cfg.alpha, threshold=cfg.match_iou,
                            box_weight=cfg.box_weight)

    def train_step(self, model, batch, opt, cfg: SSDConfig) -> dict[str, torch.Tensor]:
        losses = self._loss(model, model(batch["x"]), batch, cfg)
        optimizer_step(opt, losses["loss"])
        return {k: losses[k].detach() for k in ("loss", "clas", "loc")}

    def evaluate(self, model, batches: Iterable, cfg: SSDConfig) -> dict[str, Any]:
        """This worker's detections marked true/false positive per image (detection_metrics),
        the count of non-difficult boxes per class, and the summed loss: combine() scores them."""
        anchors = self._core(model).anchors
        marks, loss, n = [], 0.0, 0
        n_pos = np.zeros(len(cfg.classes), np.int64)
        for b in batches:
            out = model(b["x"])
            loss += self._loss(model, out, b, cfg)["loss"].item() * len(b["x"])
            dets = det.detect(*out, anchors, cfg.score_thresh, cfg.nms_iou, cfg.max_det)
            gt_b, gt_l, gt_d = (b[k].cpu().numpy() for k in ("boxes", "labels", "difficult"))
            for i, (boxes, scores, labels) in enumerate(dets):
                keep = gt_l[i] >= 0
                marks.append(dm.match_image(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(),
                                            gt_b[i][keep], gt_l[i][keep], gt_d[i][keep]))
            n_pos += dm.count_positives(gt_l, gt_d, len(cfg.classes))
            n += len(b["x"])
        return {"n": n, "loss": loss / max(n, 1), "marks": np.concatenate(marks) if marks else np.zeros((0, 3)),
                "n_pos": n_pos, "classes": list(cfg.classes)}

    def combine(self, results: list[dict[str, Any]]) -> dict[str, float]:
        n = sum(r["n"] for r in results)
        marks = np.concatenate([r["marks"] for r in results])
        n_pos = np.sum([r["n_pos"] for r in results], axis=0)
        ap07, ap_all = dm.average_precision(marks, n_pos, True), dm.average_precision(marks, n_pos, False)
        out = {"mAP": dm.mean_ap(ap07), "mAP_all": dm.mean_ap(ap_all),
               "loss": sum(r["loss"] * r["n"] for r in results) / max(n, 1)}
        out |= {f"AP_{c}": float(a) for c, a in zip(results[0]["classes"], ap07) if not np.isnan(a)}
        return out

    def artifacts(self, model, batch, cfg: SSDConfig, out_dir: Path) -> list[Path]:
        with torch.no_grad():
            out = model(batch["x"][:16])
        dets = det.detect(*out, model.anchors, DRAW_SCORE, cfg.nms_iou, 10)
        pred = [[(b.cpu().numpy(), int(l), float(s)) for b, s, l in zip(*d)] for d in dets]
        truth = [[(batch["boxes"][i, j].cpu().numpy(), int(batch["labels"][i, j]), bool(batch["difficult"][i, j]))
                  for j in range(batch["labels"].shape[1]) if batch["labels"][i, j] >= 0] for i in range(len(dets))]
        return [draw_boxes(batch["x"][:16], pred, truth, cfg.classes, out_dir / "detections.png",
                           f"detections with score >= {DRAW_SCORE} (coloured), true boxes (white dashed; "
                           "difficult: grey)")]


def draw_boxes(x: torch.Tensor, pred: list, truth: list, classes, path: Path, title: str) -> Path:
    """A grid of validation images: predicted boxes (coloured by class, labelled 'class
    score') over the true ones (white dashed, difficult ones grey)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    mean = x.new_tensor(MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(STD).view(1, 3, 1, 1)
    imgs = (x.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    n, cols = len(imgs), 4
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * 2.6, rows * 2.6))
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(classes))]
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(imgs[i], extent=(0, 1, 1, 0))
        for box, label, difficult in truth[i]:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ls="--", lw=1,
                                   ec="0.6" if difficult else "white"))
        for box, label, score in pred[i]:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.6, ec=colours[label]))
            ax.text(x1, y1, f"{classes[label]} {score:.2f}", fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=colours[label], alpha=0.8, pad=0.5, lw=0))
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
