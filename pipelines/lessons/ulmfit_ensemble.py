"""Lesson 10's forward + backward ensemble: the mean of the probabilities of a forward and a
backward classifier run on the validation rows (the notebook: 94.8 % forward, 95.4 % both
on IMDb). imdb-ensemble averages two imdb-clas runs, text-ensemble two text-clas runs (a
user's table, one label or many: it scores the mean as text-clas does, per-label AUC, F1
and thresholds, and averages the two runs' test predictions into its own submission.csv).

It trains nothing: `fastray run imdb-ensemble --set forward=RUN --set backward=RUN` (a run's
id or --name) loads both runs' configs and weights from MLflow, reads the validation rows from the cache
their runs made (each in its direction), and logs one MLflow run with the metrics of each
and of the ensemble. The `ulmfit` and `text-ulmfit` flows with `--set backwards=true` feed it.
"""
from __future__ import annotations

import csv
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
from ..core.contract import Pipeline, RunContext, TrainConfig

logger = logging.getLogger("fastray")


@dataclass(frozen=True)
class EnsembleConfig(TrainConfig):
    forward: str = ""   # a classifier run with backwards=false: its MLflow run id or --name
    backward: str = ""  # ... and one with backwards=true


CONFIGS = {"tiny": EnsembleConfig(), "sample": EnsembleConfig(), "default": EnsembleConfig()}


class Ensemble(Pipeline):
    Config = EnsembleConfig
    configs = CONFIGS
    classifier = ""  # the registry name of the classifier whose runs it averages

    def preprocess(self, cfg: EnsembleConfig, data_dir: Path, cache, on_bad: str = "skip"):
        """Nothing of its own: it reads what its two classifier runs read (a flow's identity of
        this stage holds theirs)."""
        return {"key": "classifier-runs", "rows": {}, "nothing": "it reads what its two classifier runs read"}, True

    def datasets(self, cfg, cache, manifest):
        raise ValueError(f"{self.name} trains nothing: engine.fit hands it the whole run (Ensemble.run)")

    def _load(self, clas: Any, client, uri: str, way: str, ref: str, tmp: str) -> tuple[Any, dict, Path | None, str]:
        """(the run's classifier config, its weights, its submission.csv or None, its run id):
        `ref` is the run's id or its --name."""
        from ..core import tracking

        try:
            run = tracking.run_by_id_or_name(uri, ref, self.classifier)
        except ValueError:
            raise ValueError(f"{self.name}: {way}={ref}: no such MLflow run in {uri} (neither a run id nor the "
                             f"--name of any {self.classifier} run)") from None
        run_id = run.info.run_id
        if run.data.tags.get("fastray.pipeline") != self.classifier:
            raise ValueError(f"{self.name}: {way}={run_id} is a {run.data.tags.get('fastray.pipeline')} run, "
                             f"not {self.classifier}")
        d = Path(tmp) / way
        d.mkdir()
        saved = json.loads(Path(client.download_artifacts(run_id, "config.json", str(d))).read_text())
        weights = torch.load(client.download_artifacts(run_id, "model/model.pt", str(d)), map_location="cpu")
        submission = None
        if any(f.path == "submission/submission.csv" for f in client.list_artifacts(run_id, "submission")):
            submission = Path(client.download_artifacts(run_id, "submission/submission.csv", str(d)))
        ccfg = configs.apply(clas.configs["default"], saved, source=f"run {run_id}'s config.json")
        if ccfg.backwards != (way == "backward"):
            raise ValueError(f"{self.name}: {way}={run_id} read its rows {'backwards' if ccfg.backwards else 'forwards'}")
        return ccfg, weights, submission, run_id

    def run(self, cfg: EnsembleConfig, *, data_dir: Path, cache, name: str, tracking_uri: str | None = None,
            on_bad: str = "skip", config_label: str = "", **fit_options: Any) -> dict:
        from mlflow.tracking import MlflowClient

        from preprocessing.runtime import init_ray

        from ..core import tracking
        from ..core.config import to_dict

        t0 = time.perf_counter()
        if not cfg.forward or not cfg.backward:
            raise ValueError(f"{self.name}: give both classifier runs: --set forward=RUN --set backward=RUN (id or --name)")
        uri = tracking.resolve_uri(tracking_uri)
        tracking.require_runs(uri)
        client = MlflowClient(tracking_uri=uri)
        clas = registry.get(self.classifier)
        headline = clas.metric
        init_ray()
        results, submissions, shards = {}, {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            ids = {}
            for way, ref in (("forward", cfg.forward), ("backward", cfg.backward)):
                ccfg, weights, submissions[way], ids[way] = self._load(clas, client, uri, way, ref, tmp)
                manifest, _ = clas.prepare(ccfg, Path(data_dir), cache, on_bad)
                if manifest["key"] not in shards:  # both directions read one token cache: read its valid rows once
                    shards[manifest["key"]] = clas._read(cache, manifest, "valid")
                model = clas.build_model(ccfg)
                model.load_state_dict(weights)
                model.eval()
                ctx = RunContext(cfg=ccfg, manifest=manifest)  # its batches: the run's own validation's
                logger.info(f"[{name}] {way}: {self.classifier} run {ids[way]} on {manifest['rows']['valid']} "
                            "validation rows ...")
                with torch.no_grad():
                    results[way] = clas.evaluate(model, clas.batches(shards[manifest["key"]], ctx, train=False), ctx)
            fwd, bwd = results["forward"], results["backward"]
            if not np.array_equal(fwd["targets"], bwd["targets"]):
                raise ValueError(f"{self.name}: the two runs were validated on different rows")
            metrics = {f"{way}_{headline}": clas.combine([r])[headline] for way, r in results.items()}
            # the mean scored last: the thresholds files() writes are the ensemble's
            metrics = {**clas.score((fwd["probs"] + bwd["probs"]) / 2, fwd["targets"], fwd), **metrics}
            files = self.files(clas, submissions, Path(tmp))
            run_id, resumed = tracking.start_run(
                uri, self.name, name, params={"config": to_dict(cfg)},
                tags={"fastray.pipeline": self.name, "fastray.config": config_label,
                      "fastray.git_commit": tracking.git_commit(), "fastray.metric": headline,
                      "fastray.higher_is_better": clas.mode == "max",
                      **tracking.source_tags(f"fastray run {self.name}")})
            run_log = tracking.RunLogger(uri, run_id)
            run_log.metrics({**metrics, "rows": fwd["n"]}, step=1)
            for folder, path in files.items():
                run_log.artifact(path, folder)
        both = f"{headline} forward {metrics[f'forward_{headline}']:.4f}, backward " \
               f"{metrics[f'backward_{headline}']:.4f}, ensemble {metrics[headline]:.4f}"
        run_log.tags({"mlflow.note.content": f"**{self.name}**: the mean probabilities of {self.classifier} runs "
                      f"{ids['forward']} (forward) and {ids['backward']} (backward) on {fwd['n']} validation rows: {both}"})
        run_log.finish()
        kept = " and ".join(f"{f}/{path.name}" for f, path in files.items())
        logger.info(f"[{name}] {fwd['n']} validation rows: {both}" + (f"; {kept} in its artifacts" if kept else "")
                    + f"\n[{name}] see it in the MLflow UI: {tracking.shown(uri, tracking.run_url(uri, run_id))}")
        return {"run_id": run_id, "experiment": self.name, "name": name, "metrics": {**metrics, "epoch": 1},
                "resumed": resumed, "seconds": round(time.perf_counter() - t0, 2)}

    def files(self, clas: Any, submissions: dict[str, Path | None], tmp: Path) -> dict[str, Path]:
        """The ensemble's own artifacts by folder: the thresholds its score() chose, and the mean
        of the two runs' submission.csv (same ids, same columns) when both wrote one."""
        out = {}
        if getattr(clas, "_thresholds", None):
            out["thresholds"] = tmp / "thresholds.json"
            out["thresholds"].write_text(json.dumps({"chosen_on": "valid", "rule": "probability >= threshold (best F1)",
                                                     "thresholds": clas._thresholds}, indent=1))
        if all(submissions.values()):
            rows = {way: list(csv.reader(p.read_text().splitlines())) for way, p in submissions.items()}
            f, b = rows["forward"], rows["backward"]
            if f[0] != b[0] or [r[0] for r in f] != [r[0] for r in b]:
                raise ValueError(f"{self.name}: the two runs' submissions differ in their ids or columns")
            out["submission"] = tmp / "submission.csv"
            with open(out["submission"], "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(f[0])
                for rf, rb in zip(f[1:], b[1:]):
                    w.writerow([rf[0], *(f"{(float(x) + float(y)) / 2:.6g}" for x, y in zip(rf[1:], rb[1:]))])
        return out


class ImdbEnsemble(Ensemble):
    classifier = "imdb-clas"


class TextEnsemble(Ensemble):
    classifier = "text-clas"
