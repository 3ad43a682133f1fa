"""ULMFiT on the user's own text (issue 17): text-lm and text-clas over any CSV, TSV or
parquet table, one label or many (Kaggle's toxic comment competition, lesson 10's reason to
leave torchtext: six labels a comment, each 0 or 1).

Everything but the data is imdb_ulmfit's: the same SentencePiece cache (text-lm and
text-clas with the same table and settings share one key), AWD-LSTM, LM fine-tuning, then
the classifier on its encoder with gradual unfreezing and discriminative LRs.

- The table: `text_col` and `label_cols` as named, or found from the header
  (preprocessing/text/tables.py: an ambiguous header is a one-line error naming the columns).
  One label column: single-label, softmax and cross entropy; accuracy and macro F1. Several
  0/1 columns: multi-label, one sigmoid a label and BCE.
- The headline is the mean column-wise ROC AUC, as Kaggle scored the competition (one-vs-
  rest per class for single-label), so that tune and the runs table rank both alike; per
  label, the AUC and the F1 at the threshold that maximises it on validation are logged each
  epoch (valid_auc_<label>, valid_f1_<label>, valid_threshold_<label>), the last thresholds as
  thresholds.json.
- Split: the table's `split` column (train / valid), else `valid_frac` of the rows,
  stratified (by class; multi-label: by each row's rarest positive label), seeded by `seed`.
- A test table (test.csv beside train.csv) is tokenized with the rest; after the last
  epoch its predictions go to MLflow as submission/submission.csv in the competition's
  layout: `id` and one probability column per label (or class).
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from preprocessing import text
from preprocessing.text import batching, corpus, encoding, readers, tables

from ..core.contract import RunContext, unwrap
from .imdb_ulmfit import _SMALL, Classifier, ClasConfig, LanguageModel, LMConfig, reverse_docs


@dataclass(frozen=True)
class _Table:
    text_col: str = ""                  # the text column ("": the one string column that is not an id or `split`)
    label_cols: tuple[str, ...] = ()    # the label column(s) ((): every other column but ids and `split`); several = multi-label, 0/1 each
    valid_frac: float = 0.1             # without a `split` column: this fraction of the rows validates (stratified, seeded by seed)

    def _check_table(self) -> None:
        object.__setattr__(self, "label_cols", tuple(str(c) for c in self.label_cols))
        if not 0 < self.valid_frac < 1:
            raise ValueError(f"valid_frac must be in (0, 1), got {self.valid_frac}")


@dataclass(frozen=True)
class TextLMConfig(LMConfig, _Table):
    def __post_init__(self):
        super().__post_init__()
        self._check_table()


@dataclass(frozen=True)
class TextClasConfig(ClasConfig, _Table):
    def __post_init__(self):
        super().__post_init__()
        self._check_table()


_TINY = {**_SMALL, "vocab_size": 300, "sample_docs": 300, "emb_sz": 16, "n_hid": 32}
LM_CONFIGS = {
    "tiny": TextLMConfig(**_TINY, bs=16, epochs=1, lr=3e-3),
    "sample": TextLMConfig(**_SMALL, bs=64, epochs=4, lr=5e-3, drop_mult=0.3, valid_frac=0.2),
    "default": TextLMConfig(lr=1e-3, epochs=15),  # lesson 10's LM settings (GPU)
}
CLAS_CONFIGS = {
    "tiny": TextClasConfig(**_TINY, bs=16, epochs=3, unfreeze_epochs=(1, 1), lr=1e-2, max_len=120, lin_ftrs=(16,)),
    # stages of 1, 1 and 14 epochs; drop_mult and epochs chosen on a Jigsaw sample of another seed (README)
    "sample": TextClasConfig(**_SMALL, bs=32, epochs=16, unfreeze_epochs=(1, 1), lr=1e-2, drop_mult=0.5, max_len=200,
                             lin_ftrs=(32,), valid_frac=0.2),
    "default": TextClasConfig(bs=48, lr=3e-3, drop_mult=0.5, epochs=16, unfreeze_epochs=(1, 1)),  # lesson 10 (GPU)
}


def table_tokens(cfg, data_dir: Path, cache, on_bad: str) -> tuple[dict, bool]:
    """The table checked and split (its own cache entry), then tokenized like any corpus:
    (the tokens' manifest with the table's under "table", hit). Rows the table step skipped
    (empty text, a bad label) count in "skipped" with those the tokenizer skipped."""
    train, test = tables.find_tables(data_dir)
    cols = tables.resolve_columns(train, cfg.text_col, cfg.label_cols)
    table, hit = tables.prepare(train, test, cols, cache, valid_frac=cfg.valid_frac, seed=cfg.seed, on_bad=on_bad)
    source = readers.find_table(tables.split_files(table), text_col="text", label_col="row")
    tokens, tok_hit = encoding.tokenize(source, cache, vocab_size=cfg.vocab_size, sample_docs=cfg.sample_docs,
                                        seed=cfg.seed, case=cfg.case, on_bad=on_bad)
    skipped = {s: int(tokens["skipped"].get(s, 0)) + int(table["skipped"].get(s, 0)) for s in tokens["rows"]}
    keep = ("dir", "key", "text_col", "label_cols", "multi", "split_col", "classes", "n_out", "rows", "positives",
            "bad_input", "source")
    return {**tokens, "skipped": skipped, "table": {k: table[k] for k in keep}}, hit and tok_hit


# ---------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of one label: the chance that a positive scores above a
    negative, ties counting half (Mann-Whitney U; sklearn's roc_auc_score). nan when y holds
    one class only."""
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return float("nan")
    s = np.asarray(scores, np.float64)
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    ends = np.r_[starts[1:], len(ss)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # tied scores share their mean rank
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def best_threshold(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the rule `score >= threshold` with the highest F1 on (scores, y);
    (0.5, nan) when y has no positive."""
    y = np.asarray(y).astype(bool)
    pos = int(y.sum())
    if not pos:
        return 0.5, float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    s, tp = np.asarray(scores, np.float64)[order], np.cumsum(y[order])
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last index of each distinct score
    f1 = 2 * tp[last] / (last + 1 + pos)                        # 2 tp / (predicted + actual)
    best = int(np.argmax(f1))
    return float(s[last[best]]), float(f1[best])


def f1_at(scores: np.ndarray, y: np.ndarray, threshold: float) -> float:
    pred, y = np.asarray(scores) >= threshold, np.asarray(y).astype(bool)
    denom = int(pred.sum() + y.sum())
    return float(2 * (pred & y).sum() / denom) if denom else float("nan")


def metric_key(name: str) -> str:
    """A label as part of an MLflow metric key."""
    return re.sub(r"[^0-9A-Za-z_\-.]", "_", str(name))


def table_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str], multi: bool) -> tuple[dict, dict]:
    """(metrics, thresholds) of validation predictions. Multi-label: mean and per-label ROC
    AUC, per-label F1 at the threshold best on these rows, and their mean F1. Single-label:
    accuracy, macro F1, and one-vs-rest AUC per class and its mean. Means leave out a label
    whose AUC is undefined (no positive row in valid)."""
    out: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    if multi:
        aucs, f1s = [], []
        for k, c in enumerate(classes):
            key = metric_key(c)
            auc = roc_auc(probs[:, k], y[:, k])
            thresholds[c], f1 = best_threshold(probs[:, k], y[:, k])
            out[f"auc_{key}"], out[f"f1_{key}"], out[f"threshold_{key}"] = auc, f1, thresholds[c]
            aucs.append(auc)
            f1s.append(f1)
        out["f1"] = float(np.nanmean(f1s)) if not np.isnan(f1s).all() else float("nan")
    else:
        pred = probs.argmax(1)
        out["accuracy"] = float((pred == y).mean()) if len(y) else 0.0
        aucs, f1s = [], []
        for k, c in enumerate(classes):
            key = metric_key(c)
            out[f"auc_{key}"] = roc_auc(probs[:, k], y == k)
            out[f"f1_{key}"] = f1_at((pred == k).astype(float), y == k, 0.5)
            aucs.append(out[f"auc_{key}"])
            f1s.append(0.0 if math.isnan(out[f"f1_{key}"]) else out[f"f1_{key}"])
        out["f1_macro"] = float(np.mean(f1s))
    out["roc_auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    return out, thresholds


# ---------------------------------------------------------------- the pipelines


class TextLM(LanguageModel):
    """The LM of a table's texts: train and test rows (labels unused), validated on valid."""

    Config = TextLMConfig
    configs = LM_CONFIGS
    lm_name = "text-lm"

    def tokens(self, cfg, data_dir: Path, cache, on_bad: str) -> tuple[dict, bool]:
        return table_tokens(cfg, data_dir, cache, on_bad)


class TextClas(Classifier):
    """A classifier of a table's rows on a text-lm encoder: single- or multi-label."""

    Config = TextClasConfig
    configs = CLAS_CONFIGS
    lm_name = "text-lm"

    def tokens(self, cfg, data_dir: Path, cache, on_bad: str) -> tuple[dict, bool]:
        manifest, hit = table_tokens(cfg, data_dir, cache, on_bad)
        self.n_classes = manifest["table"]["n_out"]  # the driver's model (and its checks) see the data's labels
        return manifest, hit

    def init_model(self, model, ctx: RunContext) -> None:
        """A worker knows the labels from the manifest only: the head is sized here."""
        self.n_classes = ctx.manifest["table"]["n_out"]
        model.set_n_classes(self.n_classes)
        super().init_model(model, ctx)

    def _labels(self, ctx: RunContext, split: str) -> np.ndarray:
        cached = getattr(self, "_label_arrays", {})
        if split not in cached:
            cached[split] = tables.labels(ctx.manifest["table"], split)
            self._label_arrays = cached
        return cached[split]

    def targets(self, labels: np.ndarray, ctx: RunContext, train: bool) -> torch.Tensor:
        """The rows' labels (a token row's "label" is its row in the split's table)."""
        y = self._labels(ctx, "train" if train else "valid")[labels]
        return torch.from_numpy(y.astype(np.float32) if ctx.manifest["table"]["multi"] else y.astype(np.int64))

    def loss(self, out, y, manifest: dict, reduction: str = "mean") -> torch.Tensor:
        """Multi-label: BCE of each label's sigmoid (a row's sum is its mean over the labels)."""
        if not manifest["table"]["multi"]:
            return super().loss(out, y, manifest, reduction)
        if reduction == "sum":
            return F.binary_cross_entropy_with_logits(out, y, reduction="sum") / out.shape[1]
        return F.binary_cross_entropy_with_logits(out, y, reduction=reduction)

    def activate(self, out, manifest: dict) -> torch.Tensor:
        return out.sigmoid() if manifest["table"]["multi"] else out.softmax(1)

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, Any]:
        table = ctx.manifest["table"]
        return {**super().evaluate(model, batches, ctx), "classes": table["classes"], "multi": table["multi"]}

    def score(self, probs: np.ndarray, y: np.ndarray, result: dict) -> dict[str, float]:
        """table_metrics (the thresholds chosen here are the ones on_epoch_end writes)."""
        metrics, self._thresholds = table_metrics(probs, y, result["classes"], result["multi"])
        return metrics

    def on_epoch_end(self, model, ctx: RunContext) -> dict[str, list[Path]]:
        """After the last epoch: the thresholds chosen on validation (multi-label) and the
        test table's predictions in the submission layout."""
        if not ctx.is_last_epoch:
            return {}
        out: dict[str, list[Path]] = {}
        table = ctx.manifest["table"]
        if table["multi"] and getattr(self, "_thresholds", None):
            path = ctx.out_dir / "thresholds.json"
            path.write_text(json.dumps({"chosen_on": "valid", "rule": "probability >= threshold (best F1)",
                                        "thresholds": self._thresholds}, indent=1))
            out["thresholds"] = [path]
        if "test" in table["rows"]:
            out["submission"] = [self.submission(model, ctx, ctx.out_dir / "submission.csv")]
        return out

    def submission(self, model, ctx: RunContext, path: Path) -> Path:
        """Every test row's probabilities as `id,<label or class>...`, the rows in the test
        table's order; a row whose text was empty is predicted from no text (the document
        start alone), so that every id has its line."""
        cfg, table = ctx.cfg, ctx.manifest["table"]
        ids = tables.test_ids(table)
        arr = corpus.load_folder(Path(ctx.manifest["spm_model"]).parent / "test")
        flat, offsets = arr.docs.flat.astype(np.int64), arr.docs.offsets
        if cfg.backwards:
            flat = reverse_docs(flat, offsets)
        keep = cfg.max_len + cfg.bptt
        docs = [np.asarray([text.BOS_ID], np.int64)] * len(ids)
        for j, d in enumerate(self.docs(flat, offsets, range(len(arr)), keep)):
            docs[int(arr.labels[j])] = d
        m = unwrap(model)
        was_training = m.training
        m.eval()
        probs = np.zeros((len(ids), len(table["classes"])), np.float32)
        with torch.no_grad():
            for b in batching.sorted_batches([len(d) for d in docs], max(ctx.bs, 1) * 2):
                out = m(batching.pad_batch([docs[i] for i in b], text.PAD_ID).to(ctx.device)).float()
                probs[b] = self.activate(out, ctx.manifest).cpu().numpy()
        m.train(was_training)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *table["classes"]])
            for i, row in zip(ids, probs):
                w.writerow([i, *(f"{p:.6g}" for p in row)])
        return path
