"""The explicit registry of pipelines, and the contract each one fulfils."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

# modules that register pipelines when imported; a new pipeline adds its module here
PIPELINE_MODULES = ("pipelines.cifar10_darknet", "pipelines.imdb_ulmfit", "pipelines.pascal", "pipelines.carvana", "pipelines.super_res", "pipelines.style", "pipelines.translate", "pipelines.gans")

_REGISTRY: dict[str, "Pipeline"] = {}


class Pipeline:
    """What a lesson pipeline gives the engine. Subclass, fill in, and @register it.

    A pipeline is stateless: every method takes the config it needs.
    """

    name: str = ""
    dataset: str = ""            # the data set `sample-data` / `download` make for it
    Config: type = object        # frozen dataclass, one comment per field
    configs: dict[str, Any] = {}  # "tiny", "sample", "default"
    metric: str = ""             # the lesson's metric, as evaluate() names it
    mode: str = "max"            # whether a larger metric is better

    # ---- data
    def default_data_dir(self) -> Path:
        return Path("data") / self.dataset

    def sample_data(self, out: Path, size: int | None = None) -> dict:
        raise NotImplementedError

    def preprocess(self, cfg: Any, data_dir: Path, cache: Any, on_bad: str = "skip") -> tuple[dict, bool]:
        """Build (or find) the cached, preprocessed data: (manifest, hit). A hit starts no Ray."""
        raise NotImplementedError

    def datasets(self, cfg: Any, cache: Any, manifest: dict) -> dict[str, Any]:
        """The cached data as Ray Datasets, keyed by the names phases use (+ "valid")."""
        raise NotImplementedError

    def train_rows(self, manifest: dict) -> int:
        return int(manifest["rows"]["train"])

    def steps_per_epoch(self, cfg: Any, manifest: dict, world: int) -> int:
        """Optimizer steps each worker takes per epoch (the Schedule's unit). Every worker
        must take exactly this many (DDP deadlocks on unequal counts): batches() sees to it."""
        return (self.train_rows(manifest) // world) // (cfg.bs // world)

    def batches(self, cfg: Any, shard: Any, bs: int, device: torch.device, train: bool,
                steps: int | None = None, epoch: int = 0) -> Iterable[Any]:
        """This worker's batches of its shard, on `device`, fed to to_device(). `steps`: the
        number of training batches each worker must yield (None for evaluation)."""
        from .engine import _batches

        return _batches(shard, bs, device, train=train)

    def init_source(self, cfg: Any, manifest: dict, tracking_uri: str) -> dict[str, str]:
        """On the driver, before training: check where initial weights come from (a clear
        error if they cannot be used) and say so on stderr; tags for the MLflow run."""
        return {}

    def init_model(self, model: nn.Module, cfg: Any, tracking_uri: str) -> None:
        """On each worker, after build_model: load initial weights (pretrained, transferred)."""

    # ---- model and training
    def build_model(self, cfg: Any) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[list[nn.Parameter]]:
        """Groups for discriminative LRs and freezing; one group by default."""
        return [list(model.parameters())]

    def phases(self, cfg: Any) -> list:
        raise NotImplementedError

    def optimizers(self, model: nn.Module, cfg: Any) -> dict[str, torch.optim.Optimizer] | None:
        """Optimizers the pipeline owns, by name (GANs: generator and critic), built on the
        unwrapped model. train_step then gets this dict instead of one optimizer; the phases'
        LR curve becomes a factor on each param group's own LR (phases use lr=1.0), and the
        engine checkpoints and restores every optimizer. None: one optimizer from the phases."""
        return None

    # DDP options: a model whose train_step runs several forward calls, each using only part
    # of the model (a generator step, a critic step), needs find_unused_parameters=True.
    ddp_kwargs: dict[str, Any] = {}

    def to_device(self, cfg: Any, batch: dict[str, torch.Tensor], train: bool) -> Any:
        """A batch from iter_torch_batches (already on the device) -> the model's input:
        augmentation by batch goes here."""
        return batch

    def train_step(self, model: nn.Module, batch: Any, opt: torch.optim.Optimizer, cfg: Any) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the named losses (detached or not)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable[Any], cfg: Any) -> dict[str, float]:
        """The metric on this worker's shard, with "n" (examples seen) for combine()."""
        raise NotImplementedError

    def combine(self, results: list[dict[str, float]]) -> dict[str, float]:
        """Merge the workers' evaluate() results: an n-weighted mean by default."""
        n = sum(r["n"] for r in results)
        keys = [k for k in results[0] if k != "n"]
        return {k: sum(r[k] * r["n"] for r in results) / max(n, 1) for k in keys}

    def artifacts(self, model: nn.Module, batch: Any, cfg: Any, out_dir: Path) -> list[Path]:
        """Files for MLflow drawn from one validation batch (e.g. predictions on images)."""
        return []

    def final_artifacts(self, model: nn.Module, cfg: Any, out_dir: Path) -> dict[str, list[Path]]:
        """Files for MLflow at the end of training, by artifact folder (rank 0 only)."""
        return {}

    # ---- the whole run
    def run(self, cfg: Any, **fit_options: Any) -> dict:
        """`fastray run`: engine.fit's training with Ray Train (its keyword arguments). A
        pipeline that does not train a model (style-transfer) runs its own way here."""
        from .engine import fit

        return fit(self.name, cfg, **fit_options)

    def search_space(self, cfg: Any) -> dict[str, Any]:
        """What Tune varies around `cfg`: Config field -> a ray.tune domain."""
        return {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"pipeline {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return wrap


def _load() -> None:
    for mod in PIPELINE_MODULES:
        importlib.import_module(mod)


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Pipeline:
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
