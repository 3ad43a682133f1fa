"""Ray Train's overhead: the same model, data, batch size and device, trained by a bare
PyTorch loop and by fastray's engine under Ray Train with one worker.

Both read the same cached parquet, run the same augmentation-by-batch and train step
(bf16 autocast and channels_last on CUDA, as the engine does), on as many threads as the
worker holds CPUs. Steady state = the mean images/s of the epochs after the first.
Ray's fixed start-up = fit() wall time minus the epochs' own time.

    python benchmarks/train_overhead.py                  # CPU, the sample config's model
    python benchmarks/train_overhead.py --device cuda    # GPU, lesson 12's Darknet
"""
from __future__ import annotations

import os
import sys

# run as a script, this folder is sys.path[0], and its tokenize.py would shadow the
# standard library's: put the repository root there instead
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.core import config as configs
from pipelines.core import registry
from preprocessing.cache import Cache
from preprocessing.runtime import init_ray


def bare_loop(pipe, cfg, folder: Path, device: torch.device, epochs: int, threads: int) -> tuple[list[float], float]:
    """(images/s of each epoch, last loss) of a plain loop over tensors already on the device."""
    torch.set_num_threads(threads)
    table = pq.read_table(folder / "train", columns=[f"img{cfg.size}", "label"])
    col = table.column(f"img{cfg.size}").combine_chunks()
    # a Ray tensor column is stored as fixed-size lists of uint8: view it without copying row by row
    flat = np.asarray(col.storage.flatten() if hasattr(col, "storage") else col.flatten(), dtype=np.uint8)
    x_all = torch.from_numpy(flat.reshape(len(table), cfg.size, cfg.size, 3).copy()).to(device)
    y_all = torch.as_tensor(table.column("label").to_numpy()).to(device)
    torch.manual_seed(cfg.seed)
    model = pipe.build_model(cfg).to(device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the engine does
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr / cfg.div, momentum=0.9, weight_decay=cfg.wd)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    n, bs, rates = len(y_all), cfg.bs, []
    model.train()
    for _ in range(epochs):
        if cuda:
            torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        perm = torch.randperm(n, device=device)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i : i + bs]
            batch = pipe.to_device(cfg, {f"img{cfg.size}": x_all[idx], "label": y_all[idx]}, train=True)
            with autocast():
                losses = pipe.train_step(model, batch, opt, cfg)
            seen += bs
        last = losses["loss"].item()  # waits for the last step
        if cuda:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--images", type=int, default=None, help="sample images to generate (default: 6000 cpu, 60000 cuda)")
    ap.add_argument("--epochs", type=int, default=None, help="default: 4 cpu, 6 cuda")
    ap.add_argument("--config", default=None, help="pipeline config (default: sample on cpu, default on cuda)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    images = args.images or (60000 if cuda else 6000)
    epochs = args.epochs or (6 if cuda else 4)
    pipe = registry.get("cifar10-darknet")
    cfg, _ = configs.load(pipe.configs, args.config or ("default" if cuda else "sample"))
    cfg = configs.apply(cfg, {"epochs": str(epochs), "small_frac": "0", "small_size": "0", **configs.parse_sets(args.set)})

    work = Path(tempfile.mkdtemp(prefix="fastray-bench-"))
    os.chdir(work)  # runs/, cache/ and mlruns.db of this benchmark stay out of the repo
    print(f"generating {images} sample images in {work}", file=sys.stderr)
    pipe.sample_data(work / "cifar10", images)
    init_ray()
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    cache = Cache(work / "cache")
    manifest, _ = pipe.preprocess(cfg, work / "cifar10", cache)
    folder = cache.path(manifest["name"], manifest["key"])
    ray.shutdown()  # the bare loop gets the machine to itself

    # bare loop, Ray Train, bare loop again: a shared machine drifts, so the bare figure is
    # the mean of a run before and a run after the Ray one
    device = torch.device(args.device)
    bare_before, _ = bare_loop(pipe, cfg, folder, device, epochs, cpus)

    # the engine under Ray Train, one worker holding every CPU (and the GPU)
    from pipelines.core.engine import fit
    from pipelines.core.tracking import RunLogger, resolve_uri

    init_ray()
    t0 = time.perf_counter()
    # MLFLOW_TRACKING_URI if set, else sqlite:///mlruns.db in the benchmark's folder
    res = fit("cifar10-darknet", cfg, data_dir=work / "cifar10", cache=cache, name="overhead",
              num_workers=1, use_gpu=cuda)
    fit_wall = time.perf_counter() - t0
    hist = RunLogger(resolve_uri(), res["run_id"])
    ray_rates = [v for _, v in sorted(hist.history("images_per_s"))]
    epoch_secs = [v for _, v in sorted(hist.history("epoch_seconds"))]
    ray.shutdown()

    bare_after, bare_loss = bare_loop(pipe, cfg, folder, device, epochs, cpus)
    steady = lambda r: float(np.mean(r[1:])) if len(r) > 1 else float(r[0])
    bare = (steady(bare_before) + steady(bare_after)) / 2
    out = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{cpus}",
        "model": {"groups": list(cfg.groups), "nf": cfg.nf, "image_size": cfg.size, "bs": cfg.bs},
        "images": manifest["rows"]["train"],
        "epochs": epochs,
        "threads": cpus,
        "bare_images_per_s": round(bare, 1),
        "ray_train_images_per_s": round(steady(ray_rates), 1),
        "ratio": round(steady(ray_rates) / bare, 3),
        "ray_fixed_startup_seconds": round(res["fit_seconds"] - sum(epoch_secs), 1),
        "per_epoch": {"bare_before": [round(r, 1) for r in bare_before], "ray_train": [round(r, 1) for r in ray_rates],
                      "bare_after": [round(r, 1) for r in bare_after]},
        "fit_wall_seconds": round(fit_wall, 1),
        "last_train_loss": {"bare": bare_loss, "ray_train": res["metrics"].get("train_loss")},
        "config_overrides": args.set,
    }
    text = json.dumps(out, indent=1)
    print(text)
    dest = args.out or Path(__file__).resolve().parent / "results" / f"train_overhead_{args.device}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text + "\n")
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
