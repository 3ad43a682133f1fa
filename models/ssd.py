"""Detection, fast.ai Part 2 lessons 8 and 9: a ResNet body with two heads.

- lesson 8, LargestObject: the class and box of an image's largest object. The body's
  feature map is flattened into Linear -> ReLU -> BatchNorm -> Dropout -> Linear(4 + C);
  the box is a sigmoid, in fractions of the image. Loss: L1 on the box + a weighted
  cross entropy on the class.
- lesson 9, SSD: stride-2 convs take the body's map down to 4x4, 2x2 and 1x1 grids; each
  cell has k = 9 anchors (3 zooms x 3 aspect ratios): 16*9 + 4*9 + 9 = 189 anchors. Per
  anchor, C logits (one binary cross entropy per class, no background class: background
  is "no class fires") and 4 offsets from the anchor. Anchors are matched to objects by
  IoU over a threshold (lesson 9's notebook: 0.4; SSD's paper: 0.5), plus each object's
  best anchor. The class loss is focal loss (lesson 9's notebook: gamma 1, alpha 0.25, a
  bias of -4; RetinaNet: gamma 2, alpha 0.25, a prior of 0.01) or plain BCE; the box loss
  is L1 on the offsets, weighted against it; non-maximum suppression at inference.

Boxes are (x1, y1, x2, y2) in fractions of the image, throughout. The body is torchvision's
resnet34 or resnet18 (ImageNet weights from a file, else random), or a narrow ResNet of
the same shape for CPUs (stride 16, no max-pool).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_resnet_body

BACKBONES = ("resnet34", "resnet18", "narrow")
ANCHOR_GRIDS = (4, 2, 1)
ANCHOR_ZOOMS = (0.7, 1.0, 1.3)
ANCHOR_RATIOS = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0))  # (width, height) factors
VARIANCES = (0.1, 0.2)  # SSD's scaling of the centre and size offsets: unit-sized targets


# ---------------------------------------------------------------- the body


def _narrow_body(width: int) -> tuple[nn.Sequential, int]:
    """A ResNet of BasicBlocks, widths w, 2w, 4w, 8w; a stride-2 3x3 stem and no max-pool,
    so the map is 1/16 of the image (ResNet's is 1/32): 64 px in, 4x4 out."""
    from torchvision.models.resnet import BasicBlock

    def stage(ni: int, nf: int, stride: int) -> nn.Sequential:
        down = None if stride == 1 and ni == nf else nn.Sequential(
            nn.Conv2d(ni, nf, 1, stride=stride, bias=False), nn.BatchNorm2d(nf))
        return nn.Sequential(BasicBlock(ni, nf, stride=stride, downsample=down))

    w = width
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), bn1=nn.BatchNorm2d(w), relu=nn.ReLU(inplace=True),
        layer1=stage(w, w, 1), layer2=stage(w, 2 * w, 2), layer3=stage(2 * w, 4 * w, 2), layer4=stage(4 * w, 8 * w, 2),
    )), 8 * w


def make_body(name: str, width: int = 16) -> tuple[nn.Sequential, int, int]:
    """(body, output channels, number of halvings of the image size). A torchvision ResNet's
    children up to layer4, under their own names, so an ImageNet state dict loads into it."""
    if name == "narrow":
        if width < 4:
            raise ValueError(f"the narrow backbone needs width >= 4, got {width}")
        body, c = _narrow_body(width)
        return body, c, 4
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)), 512, 5


def feature_size(size: int, halvings: int) -> int:
    """The body's map side for a `size` px image: each stride-2 conv (padding 1) takes n to ceil(n / 2)."""
    for _ in range(halvings):
        size = -(-size // 2)
    return size


def load_imagenet(body: nn.Module, path: str) -> None:
    """torchvision's ImageNet state dict for the ResNet (its fc.* is dropped) into the body;
    ValueError naming the file when it does not fit."""
    load_resnet_body(body, path, "this backbone", what="pretrained")


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """fast.ai's split of a ResNet learner (lesson 8): [stem, layer1, layer2], [layer3,
    layer4], [head], for freezing and discriminative LRs."""
    b = model.body
    first = [p for n in ("conv1", "bn1", "layer1", "layer2") for p in getattr(b, n).parameters()]
    second = [p for n in ("layer3", "layer4") for p in getattr(b, n).parameters()]
    return [first, second, list(model.head.parameters())]


# ---------------------------------------------------------------- lesson 8: the largest object


@dataclass(frozen=True)
class DetConfig:
    num_classes: int = 20
    backbone: str = "resnet34"   # one of BACKBONES
    width: int = 16              # the narrow backbone's stem channels
    size: int = 224              # input image side, px (decides the body's map size)
    p: float = 0.5               # dropout after the head's BatchNorm (lesson 9: the regularising dial)
    hidden: int = 256            # lesson 8's hidden layer


class LargestObject(nn.Module):
    """(B, 3, H, W) -> (class logits (B, C), box (B, 4) in fractions of the image)."""

    def __init__(self, cfg: DetConfig):
        super().__init__()
        if not 0.0 <= cfg.p < 1.0 or cfg.num_classes < 1:
            raise ValueError(f"need 0 <= p < 1 and num_classes >= 1, got p={cfg.p}, num_classes={cfg.num_classes}")
        self.cfg = cfg
        self.body, c, halvings = make_body(cfg.backbone, cfg.width)
        g = feature_size(cfg.size, halvings)
        self.head = nn.Sequential(
            nn.Flatten(), nn.ReLU(), nn.Dropout(cfg.p), nn.Linear(c * g * g, cfg.hidden), nn.ReLU(),
            nn.BatchNorm1d(cfg.hidden), nn.Dropout(cfg.p), nn.Linear(cfg.hidden, 4 + cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(x))
        return out[:, 4:], torch.sigmoid(out[:, :4])


def largest_loss(logits: torch.Tensor, box: torch.Tensor, y: torch.Tensor, y_box: torch.Tensor,
                 clas_weight: float) -> dict[str, torch.Tensor]:
    """Lesson 8: L1 on the box (fractions of the image) + clas_weight * cross entropy."""
    l1 = F.l1_loss(box.float(), y_box)
    ce = F.cross_entropy(logits.float(), y)
    return {"loss": l1 + clas_weight * ce, "box_l1": l1.detach(), "clas": ce.detach()}


# ---------------------------------------------------------------- lesson 9: anchors and boxes


def make_anchors(grids=ANCHOR_GRIDS, zooms=ANCHOR_ZOOMS, ratios=ANCHOR_RATIOS) -> torch.Tensor:
    """(A, 4) anchor boxes, in the order the head's outputs are flattened: grid by grid,
    cells row by row, then k = len(zooms) * len(ratios) anchors per cell (zoom-major)."""
    out = []
    for g in grids:
        c = (torch.arange(g, dtype=torch.float64) + 0.5) / g
        cy, cx = torch.meshgrid(c, c, indexing="ij")                 # (g, g): row-major cells
        wh = torch.tensor([[z * rw / g, z * rh / g] for z in zooms for rw, rh in ratios], dtype=torch.float64)
        ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2)            # (g*g, 1, 2)
        out.append(torch.cat([ctr - wh / 2, ctr + wh / 2], -1).reshape(-1, 4))  # (g*g*k, 4)
    return torch.cat(out).float()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (..., N, 4) boxes against (M, 4) boxes: (..., N, M)."""
    lt = torch.maximum(a[..., :, None, :2], b[:, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[..., :, None] + area_b - inter).clamp(min=1e-9)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (..., A, 4) -> offsets from their anchors (A, 4): centre shift in anchor sizes,
    log size ratio, each divided by its variance."""
    a_wh = anchors[:, 2:] - anchors[:, :2]
    a_c = anchors[:, :2] + a_wh / 2
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)
    c = boxes[..., :2] + wh / 2
    return torch.cat([(c - a_c) / a_wh / VARIANCES[0], torch.log(wh / a_wh) / VARIANCES[1]], -1)


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The inverse of encode: offsets (..., A, 4) -> boxes (..., A, 4)."""
    a_wh = anchors[:, 2:] - anchors[:, :2]
    a_c = anchors[:, :2] + a_wh / 2
    c = a_c + offsets[..., :2] * VARIANCES[0] * a_wh
    wh = a_wh * torch.exp((offsets[..., 2:] * VARIANCES[1]).clamp(max=math.log(1000.0)))
    return torch.cat([c - wh / 2, c + wh / 2], -1)


def match_anchors(boxes: torch.Tensor, labels: torch.Tensor, difficult: torch.Tensor, anchors: torch.Tensor,
                  threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lesson 9's map_to_ground_truth, for a batch. boxes (B, M, 4), labels (B, M) with -1 for
    padding, difficult (B, M). Each anchor takes the object it overlaps most; it is positive
    when that IoU is over `threshold`, and each object's best anchor is positive whatever
    its IoU. Anchors matched to a difficult object are neither positive nor negative.
    Returns (matched object index (B, A), positive (B, A), ignore (B, A))."""
    valid = labels >= 0
    iou = box_iou(boxes, anchors).masked_fill(~valid[..., None], -1.0)  # (B, M, A)
    best_iou, idx = iou.max(1)                                           # per anchor (B, A)
    best_anchor = iou.argmax(2)                                          # per object (B, M)
    rows = torch.arange(len(boxes), device=boxes.device)
    for m in range(boxes.shape[1]):  # in order, as the lesson's loop: a later object wins a shared anchor
        v = valid[:, m]
        a = best_anchor[:, m]
        idx[rows[v], a[v]] = m
        best_iou[rows[v], a[v]] = 2.0
    hit = best_iou > threshold
    hard = difficult.bool().gather(1, idx)
    return idx, hit & ~hard, hit & hard


def prior_bias(prior: float) -> float:
    """The class logits' starting bias, so that every class starts at probability `prior`:
    -log((1 - prior) / prior). RetinaNet: prior 0.01, bias -4.595 (lesson 9 set -4.0, a prior
    of 0.018), so that the many easy negatives do not dominate the first steps' loss."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Focal loss per element (Lin et al. 2017), unreduced: alpha_t (1 - p_t)^gamma BCE(logits,
    target), the factor inside the graph so the gradient is focal loss's (torchvision.ops.
    sigmoid_focal_loss's formula; alpha < 0: no alpha_t). gamma 0 and alpha 0.5 give BCE / 2."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


def ssd_loss(cls_logits: torch.Tensor, offsets: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
             difficult: torch.Tensor, anchors: torch.Tensor, focal: bool = True, gamma: float = 2.0,
             alpha: float = 0.25, threshold: float = 0.5, box_weight: float = 0.15) -> dict[str, torch.Tensor]:
    """Binary cross entropy per class over every anchor (focal if asked), and L1 on the
    positive anchors' offsets (encode's: divided by VARIANCES) summed over the four, each term
    summed and divided by the number of positive anchors; loss = clas + box_weight * loc.
    Anchors matched to a difficult object count in neither term."""
    cls_logits, offsets = cls_logits.float(), offsets.float()
    idx, pos, ignore = match_anchors(boxes, labels, difficult, anchors, threshold)
    n_pos = pos.sum().clamp(min=1).float()
    matched_labels = labels.gather(1, idx)                                # (B, A)
    target = F.one_hot(matched_labels.clamp(min=0), cls_logits.shape[-1]).float() * pos[..., None]
    keep = (~ignore).float()[..., None]                                   # (B, A, 1)
    if focal:
        per = focal_loss(cls_logits, target, gamma, alpha)
    else:
        per = F.binary_cross_entropy_with_logits(cls_logits, target, reduction="none")
    clas = (per * keep).sum() / n_pos
    matched_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))     # (B, A, 4)
    loc = (offsets - encode(matched_boxes, anchors)).abs().sum(-1)[pos].sum() / n_pos
    return {"loss": clas + box_weight * loc, "clas": clas.detach(), "loc": loc.detach(), "n_pos": n_pos.detach()}


# ---------------------------------------------------------------- lesson 9: the SSD head


class StdConv(nn.Sequential):
    """Conv -> ReLU -> BatchNorm -> Dropout (lesson 9: dropout after the BatchNorm)."""

    def __init__(self, ni: int, nf: int, stride: int = 2, p: float = 0.1):
        super().__init__(nn.Conv2d(ni, nf, 3, stride=stride, padding=1), nn.ReLU(), nn.BatchNorm2d(nf), nn.Dropout(p))


class OutConv(nn.Module):
    """k anchors per cell: (B, c, g, g) -> class logits (B, g*g*k, C) and offsets (B, g*g*k, 4)."""

    def __init__(self, k: int, ni: int, num_classes: int, bias: float):
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.clas = nn.Conv2d(ni, num_classes * k, 3, padding=1)
        self.box = nn.Conv2d(ni, 4 * k, 3, padding=1)
        nn.init.constant_(self.clas.bias, bias)  # every class starts rare: sigmoid(bias) = the prior

    @staticmethod
    def _flatten(x: torch.Tensor, per: int) -> torch.Tensor:
        b = x.shape[0]
        return x.permute(0, 2, 3, 1).reshape(b, -1, per)  # cell-major, then anchor: make_anchors' order

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._flatten(self.clas(x), self.num_classes), self._flatten(self.box(x), 4)


class SSDHead(nn.Module):
    def __init__(self, ni: int, g: int, num_classes: int, p: float, nf: int = 256, prior: float = 0.01):
        super().__init__()
        bias = prior_bias(prior)
        k = len(ANCHOR_ZOOMS) * len(ANCHOR_RATIOS)
        self.drop = nn.Dropout(p)
        self.conv0 = StdConv(ni, nf, stride=1, p=p)
        # stride-2 convs from the body's g x g map down to the first anchor grid
        downs, n = [], g
        while n > ANCHOR_GRIDS[0]:
            downs.append(StdConv(nf, nf, p=p))
            n = -(-n // 2)
        if n != ANCHOR_GRIDS[0]:
            raise ValueError(f"the body's {g}x{g} feature map does not halve to {ANCHOR_GRIDS[0]}x{ANCHOR_GRIDS[0]}: "
                             "pick an image size whose map is 4, 7-8, 13-16, 25-32 ... cells wide")
        self.down = nn.Sequential(*downs)
        self.grids = nn.ModuleList([StdConv(nf, nf, p=p) for _ in ANCHOR_GRIDS[1:]])  # 4 -> 2 -> 1
        self.outs = nn.ModuleList([OutConv(k, nf, num_classes, bias) for _ in ANCHOR_GRIDS])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.down(self.conv0(self.drop(F.relu(x))))
        clas, box = [], []
        for i, out in enumerate(self.outs):
            if i:
                x = self.grids[i - 1](x)
            c, b = out(x)
            clas.append(c)
            box.append(b)
        return torch.cat(clas, 1), torch.cat(box, 1)  # (B, 189, C), (B, 189, 4)


class SSD(nn.Module):
    """(B, 3, H, W) -> (class logits (B, A, C), offsets (B, A, 4)); anchors is a buffer (A, 4).
    The class logits' biases start at prior_bias(prior)."""

    def __init__(self, cfg: DetConfig, nf: int = 256, prior: float = 0.01):
        super().__init__()
        if not 0.0 <= cfg.p < 1.0 or cfg.num_classes < 1:
            raise ValueError(f"need 0 <= p < 1 and num_classes >= 1, got p={cfg.p}, num_classes={cfg.num_classes}")
        self.cfg = cfg
        self.body, c, halvings = make_body(cfg.backbone, cfg.width)
        self.head = SSDHead(c, feature_size(cfg.size, halvings), cfg.num_classes, cfg.p, nf=nf, prior=prior)
        self.register_buffer("anchors", make_anchors(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


@torch.no_grad()
def detect(cls_logits: torch.Tensor, offsets: torch.Tensor, anchors: torch.Tensor, score_thresh: float = 0.05,
           nms_iou: float = 0.45, max_det: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image: (boxes (n, 4), scores (n,), labels (n,)) after per-class non-maximum
    suppression, best first. Each anchor may propose every class whose score passes."""
    from torchvision.ops import batched_nms

    scores = torch.sigmoid(cls_logits.float())                 # (B, A, C)
    boxes = decode(offsets.float(), anchors).clamp(0, 1)       # (B, A, 4)
    out = []
    for s, b in zip(scores, boxes):
        a, c = torch.nonzero(s > score_thresh, as_tuple=True)
        keep = batched_nms(b[a], s[a, c], c, nms_iou)[:max_det]
        out.append((b[a][keep], s[a, c][keep], c[keep]))
    return out
