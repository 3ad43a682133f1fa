"""The loop's view of where it runs: rank, device, data shards, reports and checkpoints.

Three sessions run the one loop (core.loop.run_loop): a Ray Train worker, a one-worker
Tune trial (which reports with ray.tune), and one plain process (tests, experiments).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from .batching import KEEP_BYTES, KeptShard
from .storage import is_uri, load_newest, load_state, save_state


class LocalSession:
    """One process with no Ray: rank 0 of 1 on the CPU, the given datasets (or any iterables
    the pipeline's batches() reads) as shards, `state` as the checkpoint to resume from;
    reports and the newest state are kept."""

    rank, world = 0, 1

    def __init__(self, shards: dict, state: dict | None = None, device: str = "cpu"):
        self.shards, self.state, self.reports = shards, state, []
        self._device = torch.device(device)

    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None = None) -> torch.nn.Module:
        return model.to(self._device)

    def shard(self, name: str):
        return self.shards[name]

    def checkpoint(self, run_dir: str) -> dict | None:
        return self.state

    def report(self, metrics: dict, state: dict | None) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.state = state

    def gather(self, obj: Any) -> list:
        return [obj]


class TuneSession(LocalSession):
    """A one-worker Tune trial: the trial's datasets, tune.report and tune's checkpoints.
    `seed` (the config's) orders the shuffled reads, as in a run."""

    def __init__(self, datasets: dict, use_gpu: bool, seed: int = 0):
        # each epoch after the first from the trial's memory (batching.KeptShard)
        super().__init__({k: KeptShard(ds, seed=seed) for k, ds in datasets.items()},
                         device="cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def checkpoint(self, run_dir: str | None) -> dict | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_state(Path(d))

    def report(self, metrics: dict, state: dict | None) -> None:
        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(state, Path(d))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


class RayTrainSession:
    """A Ray Train worker; `seed` (the config's) orders its shuffled reads."""

    def __init__(self, seed: int = 0):
        import ray.train

        self.ctx = ray.train.get_context()
        self.rank, self.world = self.ctx.get_world_rank(), self.ctx.get_world_size()
        self.seed = seed
        self._shards: dict[str, KeptShard] = {}

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None = None) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)

    def shard(self, name: str):
        """This worker's shard of `name`. One worker: the whole data set (no split: the
        engine asks for none), read through Ray Data in this process in its first epoch, then
        from memory (batching.KeptShard). Several stream every epoch (seeded all the same):
        their shards come from one streaming split that waits for every worker to start each
        epoch, so one worker replaying while another (over the byte limit) streams would hang."""
        import ray.train

        if name not in self._shards:
            keep = KEEP_BYTES if self.world == 1 else 0
            self._shards[name] = KeptShard(ray.train.get_dataset_shard(name), max_bytes=keep, seed=self.seed)
        return self._shards[name]

    def checkpoint(self, run_dir: str) -> dict | None:
        """The state of the latest epoch whose checkpoint reached storage.

        Ray Train restores the last checkpoint its controller registered; one uploaded
        just before a crash may be missing from that record although rank 0 already logged
        its epoch to MLflow. So also look at the run's folder and take the newest epoch
        that loads: no epoch is trained, and logged, twice."""
        import ray.train

        dirs = [Path(p) for p in Path(run_dir).glob("checkpoint_*")] if run_dir and not is_uri(run_dir) else []
        registered = ray.train.get_checkpoint()
        ckpt_ctx = registered.as_directory() if registered else contextlib.nullcontext(None)
        with ckpt_ctx as d:
            if d:
                dirs.append(Path(d))
            return load_newest(dirs, warn=self.rank == 0)

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(state, Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out
