"""Baselines on the generated CIFAR-10 stand-in (preprocessing.samples.cifar10.cifar10).

Measures how learnable the sample data is:

1. multinomial logistic regression on the raw pixels (scaled to [0, 1], then
   standardised), full-batch L-BFGS with an L2 penalty picked on a held-out
   part of the training set;
2. a small Darknet-ish convnet (3 stages, ~200k params) trained for a few
   minutes on the CPU with random crop (pad 4) and horizontal flip.

Prints the figures and writes them as JSON:
``{"logreg_test_acc", "convnet_test_acc", "convnet_seconds", "n_train", "n_test", ...}``.

    python benchmarks/sample_baseline.py [--data DIR] [--out FILE] [--epochs N]
"""

from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from preprocessing.samples.cifar10 import CIFAR10_CLASSES, cifar10  # noqa: E402


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N,) int64 labels of one split."""
    classes = (root / "labels.txt").read_text().split()
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted((root / split / name).glob("*.png"), key=lambda p: int(p.stem))
        for f in files:
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


# --------------------------------------------------------------------------- logreg
def _fit_logreg(x: torch.Tensor, y: torch.Tensor, wd: float, iters: int = 200) -> nn.Linear:
    model = nn.Linear(x.shape[1], 10)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * wd * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def logreg(xtr, ytr, xte, yte, seed: int = 0) -> dict:
    xtr = torch.from_numpy(xtr.reshape(len(xtr), -1).astype(np.float32) / 255.0)
    xte = torch.from_numpy(xte.reshape(len(xte), -1).astype(np.float32) / 255.0)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    # pick the L2 penalty on a held-out fifth of the training set
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(xtr), generator=g)
    n_val = len(xtr) // 5
    va, tr = perm[:n_val], perm[n_val:]
    grid = (1e-3, 1e-2, 1e-1, 1.0)
    val = {wd: _acc(_fit_logreg(xtr[tr], ytr[tr], wd), xtr[va], ytr[va]) for wd in grid}
    best = max(grid, key=lambda wd: val[wd])
    model = _fit_logreg(xtr, ytr, best)
    return {"logreg_test_acc": _acc(model, xte, yte),
            "logreg_train_acc": _acc(model, xtr, ytr),
            "logreg_wd": best,
            "logreg_val_acc": {str(k): v for k, v in val.items()}}


# --------------------------------------------------------------------------- convnet
def conv_bn(ci: int, co: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(co), nn.LeakyReLU(0.1, inplace=True))


class ResLayer(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(ch, ch // 2, 1), conv_bn(ch // 2, ch, 3))

    def forward(self, x):
        return x + self.body(x)


def darknet_small(n_classes: int = 10, widths=(16, 32, 64, 128)) -> nn.Sequential:
    layers = [conv_bn(3, widths[0])]
    for ci, co in zip(widths[:-1], widths[1:]):
        layers += [conv_bn(ci, co, stride=2), ResLayer(co)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], n_classes)]
    return nn.Sequential(*layers)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero pad ``pad``) and random horizontal flip, per sample."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = xp.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def convnet(xtr, ytr, xte, yte, epochs: int, bs: int = 128, lr: float = 4e-3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255.0)
    xtr, xte = to_t(xtr), to_t(xte)
    mean = xtr.mean((0, 2, 3), keepdim=True)
    std = xtr.std((0, 2, 3), keepdim=True)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = darknet_small()
    n_params = sum(p.numel() for p in model.parameters())
    steps = epochs * ((len(xtr) + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)

    def evaluate():
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte[i:i + 500]).argmax(1) for i in range(0, len(xte), 500)])
        model.train()
        return (pred == yte).float().mean().item()

    t0 = time.perf_counter()
    history = []
    for ep in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        tot, correct, seen = 0.0, 0, 0
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            xb, yb = augment(xtr[idx], gen), ytr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(idx)
        te = evaluate()
        history.append({"epoch": ep + 1, "train_loss": tot / seen, "train_acc": correct / seen,
                        "test_acc": te, "seconds": time.perf_counter() - t0})
        print(f"  epoch {ep + 1:2d}/{epochs}  loss {tot / seen:.3f}  train {correct / seen:.3f}"
              f"  test {te:.3f}  {time.perf_counter() - t0:6.1f}s", flush=True)
    seconds = time.perf_counter() - t0
    return {"convnet_test_acc": history[-1]["test_acc"], "convnet_seconds": seconds,
            "convnet_params": n_params, "convnet_epochs": epochs, "convnet_history": history}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="existing sample dir (default: generate into a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_baseline.json")
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-convnet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        gen_seconds = None
        if data is None:
            data = Path(tmp) / "cifar10"
            t = time.perf_counter()
            cifar10(data, size=args.size, seed=args.seed)
            gen_seconds = time.perf_counter() - t
            print(f"generated {args.size} images in {gen_seconds:.1f}s")
        xtr, ytr = load_split(data, "train")
        xte, yte = load_split(data, "test")
    print(f"train {xtr.shape}  test {xte.shape}  classes {CIFAR10_CLASSES}")

    res = {"n_train": int(len(xtr)), "n_test": int(len(xte)), "generate_seconds": gen_seconds}
    t = time.perf_counter()
    res.update(logreg(xtr, ytr, xte, yte, seed=args.seed))
    res["logreg_seconds"] = time.perf_counter() - t
    print(f"logreg: test acc {res['logreg_test_acc']:.3f} (train {res['logreg_train_acc']:.3f}, "
          f"wd {res['logreg_wd']}, {res['logreg_seconds']:.1f}s)", flush=True)

    if not args.skip_convnet:
        res.update(convnet(xtr, ytr, xte, yte, epochs=args.epochs, seed=args.seed))
        print(f"convnet: test acc {res['convnet_test_acc']:.3f} in {res['convnet_seconds']:.1f}s "
              f"({res['convnet_params']} params, {res['convnet_epochs']} epochs)")
    else:
        res.update(convnet_test_acc=None, convnet_seconds=None)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    summary = {k: res[k] for k in ("logreg_test_acc", "convnet_test_acc", "convnet_seconds", "n_train", "n_test")}
    print(json.dumps(summary))
    return res


if __name__ == "__main__":
    main()
