"""Lesson 10's forward + backward ensemble (imdb-ensemble): the mean of the class
probabilities of a forward and a backward imdb-clas run on the validation reviews (the
notebook: 94.8 % forward, 95.4 % both on IMDb).

It trains nothing: `fastray run imdb-ensemble --set forward=RUN_ID --set backward=RUN_ID`
loads both runs' configs and weights from MLflow, reads the validation reviews from the
cache their runs made (each in its direction), and logs one MLflow run with the accuracy
of each and of the ensemble. The `ulmfit` flow with `--set backwards=true` feeds it.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config as configs
from ..core import registry
from ..core.contract import Pipeline, TrainConfig

logger = logging.getLogger("fastray")
CLASSIFIER = "imdb-clas"


@dataclass(frozen=True)
class EnsembleConfig(TrainConfig):
    forward: str = ""   # the MLflow run id of an imdb-clas run with backwards=false
    backward: str = ""  # ... and of one with backwards=true
    bs: int = 64        # reviews a forward pass


CONFIGS = {"tiny": EnsembleConfig(bs=32), "sample": EnsembleConfig(), "default": EnsembleConfig()}


def probabilities(clas: Any, cfg: Any, model: torch.nn.Module, shard: Any, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), labels (N,)) of the shard's reviews in their order, read as the
    classifier's validation reads them (its direction, its last max_len + bptt tokens)."""
    from preprocessing import text
    from preprocessing.text import batching

    from .imdb_ulmfit import _read_shard

    ids, offsets, labels = _read_shard(shard, cfg.backwards)
    out = np.zeros((len(labels), clas.n_classes), np.float32)
    keep = cfg.max_len + cfg.bptt
    model.eval()
    with torch.no_grad():
        for idx in batching.sorted_batches(np.diff(offsets), bs):
            x = batching.pad_batch(clas.docs(ids, offsets, idx, keep), text.PAD_ID)
            out[idx] = torch.softmax(model(x).float(), 1).numpy()
    return out, labels


class ImdbEnsemble(Pipeline):
    Config = EnsembleConfig
    configs = CONFIGS

    def preprocess(self, cfg: EnsembleConfig, data_dir: Path, cache, on_bad: str = "skip"):
        """Nothing of its own: it reads what its two classifier runs read (a flow's identity of
        this stage holds theirs)."""
        return {"key": "classifier-runs", "rows": {}}, True

    def datasets(self, cfg, cache, manifest):
        raise ValueError("imdb-ensemble trains nothing: engine.fit hands it the whole run (ImdbEnsemble.run)")

    def run(self, cfg: EnsembleConfig, *, data_dir: Path, cache, name: str, tracking_uri: str | None = None,
            on_bad: str = "skip", config_label: str = "", **fit_options: Any) -> dict:
        from mlflow.tracking import MlflowClient

        from preprocessing.runtime import init_ray

        from ..core import tracking
        from ..core.config import to_dict

        t0 = time.perf_counter()
        if not cfg.forward or not cfg.backward:
            raise ValueError("imdb-ensemble: give both classifier runs: --set forward=RUN_ID --set backward=RUN_ID")
        uri = tracking.resolve_uri(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        clas = registry.get(CLASSIFIER)
        init_ray()
        probs, labels = {}, None
        for way, run_id in (("forward", cfg.forward), ("backward", cfg.backward)):
            try:
                run = client.get_run(run_id)
            except Exception:
                raise ValueError(f"imdb-ensemble: {way}={run_id}: no such MLflow run in {uri}") from None
            if run.data.tags.get("fastray.pipeline") != CLASSIFIER:
                raise ValueError(f"imdb-ensemble: {way}={run_id} is a {run.data.tags.get('fastray.pipeline')} run, "
                                 f"not {CLASSIFIER}")
            with tempfile.TemporaryDirectory() as d:
                saved = json.loads(Path(client.download_artifacts(run_id, "config.json", d)).read_text())
                weights = torch.load(client.download_artifacts(run_id, "model/model.pt", d), map_location="cpu")
            ccfg = configs.apply(clas.configs["default"], saved, source=f"run {run_id}'s config.json")
            if ccfg.backwards != (way == "backward"):
                raise ValueError(f"imdb-ensemble: {way}={run_id} read its reviews "
                                 f"{'backwards' if ccfg.backwards else 'forwards'}")
            manifest, _ = clas.preprocess(ccfg, Path(data_dir), cache, on_bad)
            model = clas.build_model(ccfg)
            model.load_state_dict(weights)
            probs[way], y = probabilities(clas, ccfg, model, clas.datasets(ccfg, cache, manifest)["valid"], cfg.bs)
            if labels is not None and not np.array_equal(labels, y):
                raise ValueError("imdb-ensemble: the two runs were validated on different reviews")
            labels = y
        acc = lambda p: float((p.argmax(1) == labels).mean())  # noqa: E731
        metrics = {"accuracy": acc((probs["forward"] + probs["backward"]) / 2),
                   "forward_accuracy": acc(probs["forward"]), "backward_accuracy": acc(probs["backward"])}
        run_id, resumed = tracking.start_run(
            uri, self.name, name, params={"config": to_dict(cfg)},
            tags={"fastray.pipeline": self.name, "fastray.config": config_label, "fastray.git_commit": tracking.git_commit(),
                  "fastray.metric": "accuracy", "fastray.higher_is_better": True,
                  **tracking.source_tags(f"fastray run {self.name}")})
        run_log = tracking.RunLogger(uri, run_id)
        run_log.metrics({**metrics, "reviews": len(labels)}, step=1)
        run_log.tags({"mlflow.note.content": f"**{self.name}**: the mean probabilities of imdb-clas runs "
                      f"{cfg.forward} (forward) and {cfg.backward} (backward) on {len(labels)} validation reviews: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())})
        run_log.finish()
        logger.info(f"[{name}] {len(labels)} validation reviews: forward {metrics['forward_accuracy']:.4f}, backward "
                    f"{metrics['backward_accuracy']:.4f}, ensemble {metrics['accuracy']:.4f}")
        return {"run_id": run_id, "experiment": self.name, "name": name, "metrics": {**metrics, "epoch": 1},
                "resumed": resumed, "seconds": round(time.perf_counter() - t0, 2)}
