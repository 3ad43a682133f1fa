"""Evaluation metrics: running sums on the device, classification, and VOC mAP.

Mean average precision at IoU 0.5 is scored as the Pascal VOC 2007 devkit scores it (the
lessons never computed it).

The devkit's procedure, per class: sort every detection of the class by score; each one
takes the ground-truth box of its image it overlaps most; over 0.5 IoU it is a true
positive if that box is not taken yet (a false positive if it is), unless the box is
`difficult`, in which case the detection counts as neither; at or under 0.5 it is a false
positive. Recall is over the non-difficult boxes. AP is the area under the precision/recall
curve made monotone: VOC2007's 11-point form samples it at recall 0, 0.1, ..., 1, the
all-point form (VOC2010 on) integrates it exactly. A class with boxes but no detection has
AP 0; a class with no (non-difficult) box has no AP and is left out of the mean.

Boxes here are continuous (x1, y1, x2, y2) coordinates, so areas have no devkit "+1".

Matching depends only on detections of the same class in the same image with a higher
score, so each worker marks its own images' detections (match_image) and one process
sorts the marks of all of them (average_precision): the marks gather cheaply.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F


class Sums:
    """Running sums of per-batch tensors kept on the device (no host sync per batch), read
    once at the end as means over the examples: {name: sum / n, ..., "n": n}."""

    def __init__(self):
        self.totals: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, n: int, **sums: torch.Tensor) -> None:
        """`sums`: each a batch's sum over its n examples."""
        for k, v in sums.items():
            v = v.detach().double()
            self.totals[k] = v if k not in self.totals else self.totals[k] + v
        self.n += n

    def means(self, **empty: float) -> dict[str, float]:
        """The means; `empty` gives the values when no example was seen (default 0)."""
        if not self.n:
            return {**{k: 0.0 for k in self.totals}, **empty, "n": 0}
        return {**{k: float(v) / self.n for k, v in self.totals.items()}, "n": self.n}


def classification_metrics(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean cross entropy and accuracy over (logits (N, C), targets (N,)) pairs, with "n"
    for combine()."""
    sums = Sums()
    for out, y in pairs:
        out = out.float()
        sums.add(len(y), loss=F.cross_entropy(out, y, reduction="sum"), accuracy=(out.argmax(1) == y).sum())
    return sums.means(loss=0.0, accuracy=0.0)


# ----------------------------------------------------------------------------- VOC mAP


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) boxes against (M, 4) boxes: (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, gt_boxes: np.ndarray,
                gt_labels: np.ndarray, gt_difficult: np.ndarray, iou_thresh: float = 0.5) -> np.ndarray:
    """One image's detections -> marks (n, 3): label, score, and 1 (true positive), 0 (false
    positive) or -1 (matched a difficult box: ignored)."""
    marks = np.zeros((len(scores), 3), np.float64)
    marks[:, 0], marks[:, 1] = labels, scores
    for c in np.unique(labels):
        det = np.flatnonzero(labels == c)
        det = det[np.argsort(-scores[det], kind="stable")]
        gt = np.flatnonzero(gt_labels == c)
        taken = np.zeros(len(gt), bool)
        ious = iou_matrix(boxes[det], gt_boxes[gt]) if len(gt) else np.zeros((len(det), 0))
        for row, d in enumerate(det):
            if not len(gt):
                continue  # mark stays 0: false positive
            j = int(ious[row].argmax())
            if ious[row, j] > iou_thresh:
                if gt_difficult[gt[j]]:
                    marks[d, 2] = -1
                elif not taken[j]:
                    marks[d, 2], taken[j] = 1, True
    return marks


def ap_from_pr(recall: np.ndarray, precision: np.ndarray, eleven_point: bool) -> float:
    """The devkit's voc_ap: the area under the monotone precision envelope."""
    if eleven_point:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision made non-increasing in recall
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[i + 1] - mrec[i]) * mpre[i + 1]).sum())


def average_precision(marks: np.ndarray, n_pos: np.ndarray, eleven_point: bool = True) -> np.ndarray:
    """Per-class AP from every image's marks (concatenated) and the count of non-difficult
    boxes per class; NaN for a class with no box."""
    aps = np.full(len(n_pos), np.nan)
    for c in range(len(n_pos)):
        if n_pos[c] == 0:
            continue
        m = marks[marks[:, 0] == c]
        m = m[np.argsort(-m[:, 1], kind="stable")]
        m = m[m[:, 2] >= 0]  # detections of difficult boxes count as nothing
        tp = np.cumsum(m[:, 2] == 1)
        fp = np.cumsum(m[:, 2] == 0)
        if not len(m):
            aps[c] = 0.0
            continue
        aps[c] = ap_from_pr(tp / n_pos[c], tp / np.maximum(tp + fp, 1e-12), eleven_point)
    return aps


def mean_ap(aps: np.ndarray) -> float:
    """The mean over classes that have an AP (NaN when none has)."""
    ok = ~np.isnan(aps)
    return float(aps[ok].mean()) if ok.any() else float("nan")


def count_positives(gt_labels: np.ndarray, gt_difficult: np.ndarray, num_classes: int) -> np.ndarray:
    """Non-difficult boxes per class (labels < 0 are padding)."""
    keep = (gt_labels >= 0) & ~gt_difficult.astype(bool)
    return np.bincount(gt_labels[keep].astype(np.int64), minlength=num_classes)[:num_classes]
