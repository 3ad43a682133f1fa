"""The explicit registry: pipeline name -> "module:Class", imported only when asked for.

A Ray Train worker or a Tune trial imports the one lesson it runs, nothing else; core
never imports a lesson except through these strings.
"""
from __future__ import annotations

import importlib
from typing import Any

PIPELINES: dict[str, str] = {
    "cifar10-darknet": "pipelines.lessons.cifar10_darknet:Cifar10Darknet",   # lesson 12
    "pascal-largest": "pipelines.lessons.pascal:PascalLargest",              # lesson 8
    "pascal-ssd": "pipelines.lessons.pascal:PascalSSD",                      # lesson 9
    "imdb-lm": "pipelines.lessons.imdb_ulmfit:ImdbLM",                       # lesson 10
    "imdb-clas": "pipelines.lessons.imdb_ulmfit:ImdbClas",                   # lesson 10
    "translate": "pipelines.lessons.translate:Translate",                    # lesson 11
    "wgan": "pipelines.lessons.gans:WGANPipeline",                           # lesson 12
    "cyclegan": "pipelines.lessons.gans:CycleGANPipeline",                   # lesson 12
    "style-transfer": "pipelines.lessons.style:StyleTransfer",               # lesson 13
    "style-net": "pipelines.lessons.style:StyleNetPipeline",                 # lesson 14
    "super-res": "pipelines.lessons.super_res:SuperRes",                     # lesson 14
    "carvana-unet": "pipelines.lessons.carvana:CarvanaUNet",                 # lesson 14
}


def names() -> list[str]:
    return sorted(PIPELINES)


def pipeline_class(name: str) -> type:
    """The Pipeline subclass registered as `name` (its module imported, no other)."""
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(names())}")
    module, _, cls_name = PIPELINES[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    cls.name = name
    return cls


def get(name: str) -> Any:
    """A new instance of pipeline `name`: one per run, so it may hold the run's state."""
    return pipeline_class(name)()
