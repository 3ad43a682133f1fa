"""text-clas against per-label n-gram logistic regressions on the generated Jigsaw sample
(issue 17).

One run scores, on the same split (the one text-clas makes: preprocessing/text/tables.py's
stratified valid fraction of train.csv, the sample config's valid_frac and seed):

1. per label, an n-gram logistic regression (benchmarks/ulmfit_vs_ngrams.py's: lower-cased
   words and punctuation, log-count features, optionally scaled by naive Bayes log-count
   ratios, an L2 penalty, full-batch L-BFGS), its n-grams (1 or 1-2), NB scaling and
   penalty chosen per label by ROC AUC on a held-out fifth of train, refitted on all of
   train and scored on valid;
2. `fastray flow text-ulmfit --config sample --set backwards=true` (a subprocess, the CLI as
   a user types it): text-lm, then text-clas on its encoder; the same backwards (lesson
   10's backward LM and classifier); then text-ensemble, the mean of the two classifiers'
   probabilities. Their validation ROC AUCs are the classifiers' figures.

The figure all are judged by is Kaggle's: the mean over the six labels of each label's ROC
AUC. Writes benchmarks/results/text_clas_vs_ngrams.json and prints one JSON line:
``{"ngram_mean_auc", "text_clas_mean_auc", "backward_mean_auc", "ensemble_mean_auc",
"margin", "ensemble_margin", "passed", "ensemble_passed", ...}`` (passed: the forward
text-clas's mean AUC >= the n-grams'; ensemble_passed: the ensemble's).

    python benchmarks/text_clas_vs_ngrams.py [--data DIR | --sample-seed N] [--work DIR] [--skip-text-clas]
        [--lm-set KEY=VALUE ...] [--clas-set KEY=VALUE ...]
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.ulmfit_vs_ngrams import WORD, features, fit, lm_then_clas, nb_ratio, ngrams, save, scale_columns  # noqa: E402
from pipelines.lessons.text_clas import CLAS_CONFIGS, roc_auc  # noqa: E402
from preprocessing.cache import Cache  # noqa: E402
from preprocessing import samples  # noqa: E402
from preprocessing.text import tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID_N, GRID_NB, GRID_WD = (1, 2), (False, True), (1e-4, 1e-3, 1e-2)


def the_split(data: Path, cache_dir: Path) -> dict:
    """The texts and labels of text-clas's train and valid rows (its own table entry, so the
    very same split), as the sample config makes them."""
    cfg = CLAS_CONFIGS["sample"]
    train, test = tables.find_tables(data)
    cols = tables.resolve_columns(train, cfg.text_col, cfg.label_cols)
    table, _ = tables.prepare(train, test, cols, Cache(cache_dir), valid_frac=cfg.valid_frac, seed=cfg.seed)
    import pyarrow.parquet as pq

    out = {"classes": table["classes"]}
    for split in ("train", "valid"):
        texts = pq.read_table(Path(table["dir"]) / f"{split}.parquet", columns=["text"]).column("text").to_pylist()
        out[split] = ([WORD.findall(t.lower()) for t in texts], tables.labels(table, split))
    return out


def ngram_baseline(split: dict, seed: int = 0, min_df: int = 2) -> dict:
    """Per label: the grid fitted on four fifths of train, judged by AUC on the fifth left
    out; the best refitted on all of train and scored on valid."""
    t0 = time.perf_counter()
    (tr_docs, ytr), (va_docs, yva) = split["train"], split["valid"]
    perm = torch.randperm(len(tr_docs), generator=torch.Generator().manual_seed(seed)).numpy()
    held, fit_idx = perm[: len(tr_docs) // 5], perm[len(tr_docs) // 5:]
    grams = {n: ([ngrams(d, n) for d in tr_docs], [ngrams(d, n) for d in va_docs]) for n in GRID_N}

    def vocab(docs: list[Counter]) -> dict[str, int]:
        df = Counter(g for d in docs for g in d)
        return {g: j for j, g in enumerate(sorted(k for k, c in df.items() if c >= min_df))}

    mats = {}
    for n, (tr, va) in grams.items():
        v_fit, v_all = vocab([tr[i] for i in fit_idx]), vocab(tr)
        sparse = len(tr) * len(v_all) > 2e8  # dense fits 15x faster where the matrix fits (sample: 8,000 x 1,050)
        mats[n] = (features([tr[i] for i in fit_idx], v_fit, "log1p", sparse),
                   features([tr[i] for i in held], v_fit, "log1p", sparse),
                   features(tr, v_all, "log1p", sparse), features(va, v_all, "log1p", sparse))
    res: dict = {"ngram_auc": {}, "ngram_choice": {}, "ngram_heldout_auc": {}}
    for k, label in enumerate(split["classes"]):
        y_fit, y_held = torch.from_numpy(ytr[fit_idx, k]), ytr[held, k]
        scores = {}
        for n in GRID_N:
            xf, xh, _, _ = mats[n]
            for nb in GRID_NB:
                r = nb_ratio(xf, y_fit) if nb else None
                for wd in GRID_WD:
                    f = fit(scale_columns(xf, r) if nb else xf, y_fit, wd)
                    scores[(n, nb, wd)] = roc_auc(f(scale_columns(xh, r) if nb else xh).numpy(), y_held)
        best = max(scores, key=lambda c: -1.0 if np.isnan(scores[c]) else scores[c])  # ties: the first in grid order
        n, nb, wd = best
        _, _, xa, xv = mats[n]
        y_all = torch.from_numpy(ytr[:, k])
        r = nb_ratio(xa, y_all) if nb else None
        f = fit(scale_columns(xa, r) if nb else xa, y_all, wd)
        res["ngram_auc"][label] = roc_auc(f(scale_columns(xv, r) if nb else xv).numpy(), yva[:, k])
        res["ngram_choice"][label] = f"n={n}{' nb' if nb else ''} wd={wd:g}"
        res["ngram_heldout_auc"][label] = scores[best]
        print(f"  n-grams {label}: valid AUC {res['ngram_auc'][label]:.4f} ({res['ngram_choice'][label]})",
              file=sys.stderr, flush=True)
    res["ngram_mean_auc"] = float(np.nanmean(list(res["ngram_auc"].values())))
    res.update(n_train=len(tr_docs), n_valid=len(va_docs), valid_positives=dict(zip(split["classes"],
                                                                                     map(int, yva.sum(0)))))
    res["ngram_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def per_label(m: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}


def text_clas(data: Path, work: Path, lm_set: list[str], clas_set: list[str]) -> dict:
    """`fastray flow text-ulmfit --set backwards=true`: the forward LM and classifier, the
    backward ones, and text-ensemble's mean of the two classifiers' probabilities."""
    st = lm_then_clas("text-ulmfit", data, work, lm_set, clas_set, ("backwards=true",))
    lm, m, e = st["lm"], st["clas"]["metrics"], st["ensemble"]["metrics"]
    return {"text_clas_mean_auc": m["roc_auc"], "text_clas_auc": per_label(m, "valid_auc_"),
            "text_clas_f1": per_label(m, "valid_f1_"),
            "backward_mean_auc": st["clas_bwd"]["metrics"]["roc_auc"],
            "backward_auc": per_label(st["clas_bwd"]["metrics"], "valid_auc_"),
            "ensemble_mean_auc": e["roc_auc"], "ensemble_auc": per_label(e, "auc_"),
            "lm_perplexity": lm["metrics"].get("perplexity"),
            "lm_bwd_perplexity": st["lm_bwd"]["metrics"].get("perplexity"),
            "run_ids": {k: v["run_id"] for k, v in st.items() if isinstance(v, dict)},
            "lm_set": lm_set, "clas_set": clas_set, "flow_seconds": st["seconds"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a Jigsaw-layout folder (default: `fastray sample-data jigsaw-toxic`)")
    ap.add_argument("--work", type=Path, help="runs, cache and MLflow store (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_clas_vs_ngrams.json")
    ap.add_argument("--seed", type=int, default=0, help="the held-out fifth of the n-gram baseline")
    ap.add_argument("--sample-seed", type=int, default=0,
                    help="without --data: the generated sample's seed (0: `fastray sample-data jigsaw-toxic`'s)")
    ap.add_argument("--skip-text-clas", action="store_true", help="the n-gram baseline only")
    ap.add_argument("--lm-set", action="append", default=[], help="--set for text-lm (repeatable)")
    ap.add_argument("--clas-set", action="append", default=[], help="--set for text-clas (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        data = args.data
        if data is None:
            data = work / "jigsaw"
            samples.generate("jigsaw-toxic", data, seed=args.sample_seed)  # seed 0: `fastray sample-data`'s
        data = data.resolve()
        res = {"data": str(data) if args.data else f"the generated Jigsaw sample, seed {args.sample_seed}"
                                                   f"{' (fastray sample-data jigsaw-toxic)' if not args.sample_seed else ''}"}
        print("per-label n-gram logistic regression ...", file=sys.stderr, flush=True)
        res.update(ngram_baseline(the_split(data, work / "storage" / "cache"), args.seed))
        print(f"n-grams: mean valid AUC {res['ngram_mean_auc']:.4f}", file=sys.stderr, flush=True)
        if not args.skip_text_clas:
            print("text-lm then text-clas, sample configs ...", file=sys.stderr, flush=True)
            res.update(text_clas(data, work, args.lm_set, args.clas_set))
            res["margin"] = res["text_clas_mean_auc"] - res["ngram_mean_auc"]
            res["ensemble_margin"] = res["ensemble_mean_auc"] - res["ngram_mean_auc"]
            res["passed"] = res["margin"] >= 0
            res["ensemble_passed"] = res["ensemble_margin"] >= 0
            print(f"text-clas: mean valid AUC forward {res['text_clas_mean_auc']:.4f} (LM perplexity "
                  f"{res['lm_perplexity']:.3f}), backward {res['backward_mean_auc']:.4f}, ensemble "
                  f"{res['ensemble_mean_auc']:.4f}; margins {res['margin']:+.4f}, {res['ensemble_margin']:+.4f}",
                  file=sys.stderr, flush=True)
    save(res, args.out, t0)
    keys = ("ngram_mean_auc", "text_clas_mean_auc", "backward_mean_auc", "ensemble_mean_auc", "lm_perplexity",
            "margin", "ensemble_margin", "passed", "ensemble_passed", "seconds")
    print(json.dumps({k: res[k] for k in keys if k in res}))
    return res


if __name__ == "__main__":
    main()
