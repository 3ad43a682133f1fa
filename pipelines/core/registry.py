"""The explicit registry: the catalogue of pipelines, each imported only when asked for.

An entry names the pipeline's class as "module:Class" and says, without importing it, the
data set it reads, its headline metric and whether higher is better: `fastray list`,
`sample-data` and `download` read the catalogue; a Ray Train worker or a Tune trial imports
the one lesson it runs. core never imports a lesson except through these strings.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    target: str        # "module:Class"
    lesson: int        # fast.ai Part 2 (2018) lesson
    dataset: str       # the data set it reads: `fastray sample-data` / `download` take its name too
    metric: str        # the headline metric, as evaluate() names it
    mode: str = "max"  # whether a larger metric is better


PIPELINES: dict[str, Entry] = {
    "pascal-largest": Entry("pipelines.lessons.pascal:PascalLargest", 8, "pascal", "accuracy"),
    "pascal-ssd": Entry("pipelines.lessons.pascal:PascalSSD", 9, "pascal", "mAP"),
    "imdb-lm": Entry("pipelines.lessons.imdb_ulmfit:ImdbLM", 10, "imdb", "perplexity", "min"),
    "imdb-clas": Entry("pipelines.lessons.imdb_ulmfit:ImdbClas", 10, "imdb", "accuracy"),
    "imdb-ensemble": Entry("pipelines.lessons.ulmfit_ensemble:ImdbEnsemble", 10, "imdb", "accuracy"),
    "text-lm": Entry("pipelines.lessons.text_clas:TextLM", 10, "jigsaw-toxic", "perplexity", "min"),
    "text-clas": Entry("pipelines.lessons.text_clas:TextClas", 10, "jigsaw-toxic", "roc_auc"),
    "text-ensemble": Entry("pipelines.lessons.ulmfit_ensemble:TextEnsemble", 10, "jigsaw-toxic", "roc_auc"),
    "translate": Entry("pipelines.lessons.translate:Translate", 11, "giga-fren", "bleu"),
    "cifar10-darknet": Entry("pipelines.lessons.cifar10_darknet:Cifar10Darknet", 12, "cifar10", "accuracy"),
    "wgan": Entry("pipelines.lessons.gans:WGANPipeline", 12, "lsun", "fd", "min"),
    "cyclegan": Entry("pipelines.lessons.gans:CycleGANPipeline", 12, "horse2zebra", "domain_acc"),
    "style-transfer": Entry("pipelines.lessons.style:StyleTransfer", 13, "images", "style_loss_factor"),
    "style-net": Entry("pipelines.lessons.style:StyleNetPipeline", 14, "images", "loss", "min"),
    "super-res": Entry("pipelines.lessons.super_res:SuperRes", 14, "images", "psnr"),
    "carvana-unet": Entry("pipelines.lessons.carvana:CarvanaUNet", 14, "carvana", "dice"),
}


def names() -> list[str]:
    return sorted(PIPELINES)


def entry(name: str) -> Entry:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(names())}")
    return PIPELINES[name]


def pipeline_class(name: str) -> type:
    """The Pipeline subclass registered as `name` (its module imported, no other), with the
    catalogue's name, data set, metric and mode."""
    e = entry(name)
    module, _, cls_name = e.target.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    cls.name, cls.dataset, cls.metric, cls.mode = name, e.dataset, e.metric, e.mode
    return cls


def get(name: str) -> Any:
    """A new instance of pipeline `name`: one per run, so it may hold the run's state."""
    return pipeline_class(name)()
