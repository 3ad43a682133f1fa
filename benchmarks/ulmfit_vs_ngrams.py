"""ULMFiT against n-grams on the generated IMDb sample (issue 16, lesson 10).

One run scores, on the same split (the sample's train/ and test/ folders):

1. an n-gram logistic regression, tuned: word 1-, 1-2- and 1-3-grams (lower-cased words and
   punctuation, the `<br />` tags as spaces), binary or log-count features, each optionally
   scaled by naive Bayes log-count ratios (NB-LR, Wang & Manning's NBSVM with a logistic
   loss: the strong linear baseline of the ULMFiT paper's IMDb table), an L2 penalty; every
   combination fitted (full-batch L-BFGS in torch) on four fifths of train and judged on the
   held-out fifth, the best refitted on all of train, then scored on test. With --grid-test
   every combination is also refitted and scored on test, and the best of them reported (an
   upper bound the baseline could not have chosen honestly);
2. `fastray run imdb-lm --config sample`, then `fastray run imdb-clas --config sample
   --set encoder=<its run id>` (subprocesses, the CLI as a user types it), whose test
   accuracy is the classifier's figure; with --random-control also `fastray run imdb-clas
   --config sample` from random weights (what the LM adds);
3. how well each model's word embedding (the LM's, the classifier's) tells the sample's
   positive adjectives from its negative ones (leave-one-out nearest class mean, 0.5 chance).

Writes benchmarks/results/ulmfit_vs_ngrams.json and prints one JSON line:
``{"ngram_test_acc", "ulmfit_test_acc", "random_init_test_acc", "margin", "passed", ...}``
where passed means ulmfit_test_acc >= ngram_test_acc + 0.02.

    python benchmarks/ulmfit_vs_ngrams.py [--data DIR] [--work DIR] [--skip-ulmfit] [--random-control]
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
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.02  # the classifier must beat the baseline by this much (issue 16)
WORD = re.compile(r"[a-z0-9']+|[.,!?;:]")


# --------------------------------------------------------------------------- n-grams
def load_split(root: Path, split: str) -> tuple[list[list[str]], np.ndarray]:
    """Tokenized reviews of train/ or test/ (neg = 0, pos = 1, as the pipelines number them)."""
    docs, ys = [], []
    for y, cls in ((0, "neg"), (1, "pos")):
        for p in sorted((root / split / cls).glob("*.txt"), key=lambda p: int(p.stem.split("_")[0])):
            docs.append(WORD.findall(p.read_text(encoding="utf-8").lower().replace("<br />", " ")))
            ys.append(y)
    return docs, np.asarray(ys, np.int64)


def ngrams(doc: list[str], n: int) -> Counter:
    return Counter(" ".join(doc[i:i + k]) for k in range(1, n + 1) for i in range(len(doc) - k + 1))


def features(docs: list[Counter], vocab: dict[str, int], value: str, sparse: bool = False) -> torch.Tensor:
    """(N, V) float32: binary presence or log(1 + count) of each vocabulary n-gram; with
    `sparse` a CSR tensor (many documents: a dense matrix would not fit)."""
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        for g, c in d.items():
            j = vocab.get(g)
            if j is not None:
                rows.append(i)
                cols.append(j)
                vals.append(1.0 if value == "binary" else np.log1p(c))
    if sparse:
        idx = torch.tensor(np.asarray([rows, cols], np.int64).reshape(2, -1))
        coo = torch.sparse_coo_tensor(idx, torch.tensor(vals, dtype=torch.float32), (len(docs), len(vocab)))
        return coo.coalesce().to_sparse_csr()
    x = np.zeros((len(docs), len(vocab)), np.float32)
    x[rows, cols] = vals
    return torch.from_numpy(x)


def _dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w for a dense or CSR x, w a vector."""
    return (x @ w[:, None])[:, 0]


def scale_columns(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Each column of x times r (dense, or CSR: its stored values scaled)."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), x.values() * r[x.col_indices()], x.shape)
    return x * r


def nb_ratio(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Naive Bayes log-count ratio r = log((a + sum_pos x) / |.|_1) - log((a + sum_neg x) / |.|_1)."""
    pos = (y == 1).float()
    p = alpha + _dot(x.t(), pos)
    q = alpha + _dot(x.t(), 1 - pos)
    return torch.log(p / p.sum()) - torch.log(q / q.sum())


def fit(x: torch.Tensor, y: torch.Tensor, wd: float, iters: int = 300):
    """Logistic regression, mean log loss + wd/2 |w|^2, full-batch L-BFGS (x dense or CSR);
    -> a function giving the logits of new rows."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")
    yf = y.float()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(_dot(x, w) + b, yf) + 0.5 * wd * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: _dot(z, w) + b


def ngram_baseline(data: Path, seed: int = 0, min_df: int = 2, grid_test: bool = False) -> dict:
    """The tuned n-gram logistic regression (see the module docstring)."""
    t0 = time.perf_counter()
    tr_docs, ytr = load_split(data, "train")
    te_docs, yte = load_split(data, "test")
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(tr_docs), generator=g)
    va, fit_idx = perm[: len(tr_docs) // 5], perm[len(tr_docs) // 5:]
    grid_n, grid_value, grid_nb = (1, 2, 3), ("binary", "log1p"), (False, True)
    grid_wd = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    val, test, cells = {}, {}, {}
    for n in grid_n:
        tr_grams = [ngrams(d, n) for d in tr_docs]
        te_grams = [ngrams(d, n) for d in te_docs] if grid_test else []

        def vocab_of(idx):  # n-grams in >= min_df of these training documents
            df = Counter(g for i in idx for g in tr_grams[int(i)])
            return {gram: j for j, gram in enumerate(sorted(k for k, c in df.items() if c >= min_df))}

        voc_fit, voc_all = vocab_of(fit_idx), vocab_of(range(len(tr_docs)))
        for value in grid_value:
            xf = features([tr_grams[int(i)] for i in fit_idx], voc_fit, value)
            xv = features([tr_grams[int(i)] for i in va], voc_fit, value)
            if grid_test:
                xa, xt = features(tr_grams, voc_all, value), features(te_grams, voc_all, value)
            for nb in grid_nb:
                rf = nb_ratio(xf, ytr_t[fit_idx]) if nb else None
                ra = nb_ratio(xa, ytr_t) if nb and grid_test else None
                for wd in grid_wd:
                    key = f"n={n} {value}{' nb' if nb else ''} wd={wd:g}"
                    pf = fit(xf * rf if nb else xf, ytr_t[fit_idx], wd)
                    val[key] = ((pf(xv * rf if nb else xv) > 0) == ytr_t[va].bool()).float().mean().item()
                    cells[key] = (n, value, nb, wd)
                    if grid_test:
                        pa = fit(xa * ra if nb else xa, ytr_t, wd)
                        test[key] = ((pa(xt * ra if nb else xt) > 0) == yte_t.bool()).float().mean().item()
                print(f"  n-grams {n} {value}{' nb' if nb else ''}: best val "
                      f"{max(v for k, v in val.items() if k.startswith(f'n={n} {value}' + (' nb' if nb else ' wd'))):.4f}",
                      file=sys.stderr, flush=True)
    best = max(val, key=val.get)  # ties: the first in grid order (fewer n-grams, then a smaller penalty)
    if best not in test:  # refit the choice on all of train, score it on test
        n, value, nb, wd = cells[best]
        tr_grams, te_grams = [ngrams(d, n) for d in tr_docs], [ngrams(d, n) for d in te_docs]
        df = Counter(g for d in tr_grams for g in d)
        voc = {gram: j for j, gram in enumerate(sorted(k for k, c in df.items() if c >= min_df))}
        xa, xt = features(tr_grams, voc, value), features(te_grams, voc, value)
        ra = nb_ratio(xa, ytr_t) if nb else torch.ones(())
        test[best] = ((fit(xa * ra, ytr_t, wd)(xt * ra) > 0) == yte_t.bool()).float().mean().item()
    res = {"ngram_test_acc": test[best], "ngram_choice": best, "ngram_val_acc": val[best],
           "ngram_grid_val": val, "ngram_n_train": len(tr_docs), "ngram_n_test": len(te_docs), "ngram_min_df": min_df}
    if grid_test:
        oracle = max(test, key=test.get)
        res.update(ngram_best_test_acc=test[oracle], ngram_best_test_choice=oracle, ngram_grid_test=test)
    res["ngram_seconds"] = round(time.perf_counter() - t0, 1)
    return res


# --------------------------------------------------------------------------- ULMFiT
def run_cli(args: list[str], log: Path) -> dict:
    """`python -m pipelines ARGS`: its last stdout line, parsed; stderr to log."""
    cmd = [sys.executable, "-m", "pipelines", *args]
    print("  $ fastray " + " ".join(args) + f"   (its progress: {log})", file=sys.stderr, flush=True)
    with open(log, "a") as err:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"fastray {' '.join(args)} failed (exit {p.returncode}); see {log}")
    return json.loads(lines[-1])


def save(res: dict, out: Path, t0: float) -> None:
    """The result JSON, with the run's seconds, the load average and the commit measured."""
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["load_average"] = os.getloadavg()
    res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr, flush=True)


def lm_then_clas(flow: str, data: Path, work: Path, lm_set: list[str], clas_set: list[str],
                 flow_set: tuple[str, ...] = ()) -> dict:
    """`fastray flow FLOW` (the LM, then the classifier on its encoder) with the sample configs
    on `data`; {"lm": stage, "clas": stage, ...} of its JSON (each with run_id and metrics).
    flow_set: the flow's own options (backwards=true)."""
    storage = work / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    sets = [f"lm.{s}" for s in lm_set] + [f"clas.{s}" for s in clas_set] + list(flow_set)
    out = run_cli(["flow", flow, "--data", str(data), "--config", "sample", "--storage", str(storage),
                   "--tracking-uri", f"sqlite:///{storage}/mlruns.db", *sum((["--set", s] for s in sets), [])],
                  work / "fastray.log")
    return {**out["stages"], "seconds": out.get("seconds")}


def ulmfit(data: Path, work: Path, lm_set: list[str], clas_set: list[str]) -> dict:
    st = lm_then_clas("ulmfit", data, work, lm_set, clas_set)
    lm, clas = st["lm"], st["clas"]
    return {"ulmfit_test_acc": clas["metrics"]["accuracy"], "lm_perplexity": lm["metrics"].get("perplexity"),
            "lm_metrics": lm["metrics"], "clas_metrics": clas["metrics"], "lm_run_id": lm["run_id"],
            "clas_run_id": clas["run_id"], "lm_set": lm_set, "clas_set": clas_set, "flow_seconds": st["seconds"]}


# --------------------------------------------------------------------------- what the LM knows
def adjective_separation(storage: Path, run_ids: dict[str, str]) -> dict[str, float]:
    """How well each run's word embedding tells the sample's positive adjectives from its
    negative ones: leave-one-out nearest class mean over the 60 adjectives' embedding rows
    (0.5 is chance; every adjective is one SentencePiece piece). run_ids: {label: MLflow run
    id} of imdb-lm / imdb-clas runs in `storage` (the flow's --storage)."""
    from mlflow.artifacts import download_artifacts

    from preprocessing.samples.imdb import _NEG_ADJ, _POS_ADJ
    from preprocessing.text import subwords

    spm = sorted(storage.glob("cache/spm-*/spm.model"))
    if len(spm) != 1:
        raise SystemExit(f"expected one SentencePiece model under {storage}/cache, found {len(spm)}")
    rows = subwords.encode_texts(list(_POS_ADJ + _NEG_ADJ), spm[0])
    if any(len(r) != 1 for r in rows):
        raise SystemExit(f"{spm[0]}: an adjective is several pieces; the probe needs one row per adjective")
    ids = [int(r[0]) for r in rows]
    y = torch.tensor([1] * len(_POS_ADJ) + [0] * len(_NEG_ADJ))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for label, run_id in run_ids.items():
            path = download_artifacts(run_id=run_id, artifact_path="model/model.pt", dst_path=d,
                                      tracking_uri=f"sqlite:///{storage}/mlruns.db")
            state = torch.load(path, map_location="cpu")
            x = next(v for k, v in state.items() if k.endswith("embed.emb.weight"))[ids].float()
            right = 0
            for i in range(len(x)):
                rest = torch.ones(len(x), dtype=torch.bool)
                rest[i] = False
                d_pos = (x[i] - x[rest & (y == 1)].mean(0)).norm()
                d_neg = (x[i] - x[rest & (y == 0)].mean(0)).norm()
                right += int((d_pos < d_neg) == bool(y[i]))
            out[label] = right / len(x)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="an aclImdb folder (default: `fastray sample-data imdb` into --work)")
    ap.add_argument("--work", type=Path, help="runs, cache and MLflow store (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ulmfit_vs_ngrams.json")
    ap.add_argument("--seed", type=int, default=0, help="the held-out fifth of the n-gram baseline")
    ap.add_argument("--skip-ulmfit", action="store_true", help="the n-gram baseline only")
    ap.add_argument("--grid-test", action="store_true", help="score every n-gram combination on test too (slower)")
    ap.add_argument("--lm-set", action="append", default=[], help="--set for imdb-lm (repeatable)")
    ap.add_argument("--clas-set", action="append", default=[], help="--set for imdb-clas (repeatable)")
    ap.add_argument("--random-control", action="store_true",
                    help="also train imdb-clas's sample config from random weights (no LM) on the same cache")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        data = args.data
        if data is None:
            data = work / "imdb"
            run_cli(["sample-data", "imdb", "--out", str(data)], work / "fastray.log")
        data = data.resolve()
        res = {"data": str(data) if args.data else "fastray sample-data imdb (the default sample)"}
        print("n-gram logistic regression ...", file=sys.stderr, flush=True)
        res.update(ngram_baseline(data, args.seed, grid_test=args.grid_test))
        print(f"n-grams: test {res['ngram_test_acc']:.4f} ({res['ngram_choice']}, val {res['ngram_val_acc']:.4f})"
              + (f"; best of the grid on test {res['ngram_best_test_acc']:.4f}" if args.grid_test else ""),
              file=sys.stderr, flush=True)
        if not args.skip_ulmfit:
            print("ULMFiT: imdb-lm then imdb-clas, sample configs ...", file=sys.stderr, flush=True)
            res.update(ulmfit(data, work, args.lm_set, args.clas_set))
            res["margin"] = res["ulmfit_test_acc"] - res["ngram_test_acc"]
            res["passed"] = res["margin"] >= MARGIN
            print(f"ULMFiT: test {res['ulmfit_test_acc']:.4f} (LM perplexity {res['lm_perplexity']:.3f}); "
                  f"margin {100 * res['margin']:+.1f} points", file=sys.stderr, flush=True)
            runs = {"lm": res["lm_run_id"], "clas": res["clas_run_id"]}
            if args.random_control:
                storage = work / "storage"
                ctl = run_cli(["run", "imdb-clas", "--data", str(data), "--config", "sample", "--storage", str(storage),
                               "--tracking-uri", f"sqlite:///{storage}/mlruns.db",
                               *sum((["--set", s] for s in args.clas_set), [])], work / "fastray.log")
                res["random_init_test_acc"] = ctl["metrics"]["accuracy"]
                runs["random_init"] = ctl["run_id"]
                print(f"imdb-clas from random weights: test {res['random_init_test_acc']:.4f}", file=sys.stderr, flush=True)
            res["adjective_separation"] = adjective_separation(work / "storage", runs)
            print("positive vs negative adjectives told apart by each embedding (0.5: chance): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in res["adjective_separation"].items()), file=sys.stderr, flush=True)
    save(res, args.out, t0)
    keys = ("ngram_test_acc", "ngram_best_test_acc", "ulmfit_test_acc", "random_init_test_acc", "lm_perplexity",
            "margin", "passed", "adjective_separation", "seconds")
    print(json.dumps({k: res[k] for k in keys if k in res}))
    return res


if __name__ == "__main__":
    main()
