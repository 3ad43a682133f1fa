"""Weights files (state dicts saved by torch.save) read and loaded with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | Path, what: str = "weights file") -> dict:
    """The state dict in `path` (on the CPU, weights_only); ValueError "<what> <path>: ..."
    when the file is not a PyTorch state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own text for a non-torch file suggests weights_only=False: not repeated
        raise ValueError(f"{what} {path}: not a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: not a state dict")
    return state


def load_fitting(module: nn.Module, state: dict, path: str | Path, target: str, what: str = "weights file") -> None:
    """module.load_state_dict(state) (strict); ValueError "<what> <path>: does not fit <target>"
    with the first line of torch's complaint when keys or shapes differ."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{what} {path}: does not fit {target}: {str(e).splitlines()[0]}") from None


def load_resnet_body(module: nn.Module, path: str | Path, target: str, what: str = "weights file") -> None:
    """torchvision's ImageNet ResNet state dict, its classifier (fc.*) dropped, into `module`."""
    state = {k: v for k, v in read_state_dict(path, what).items() if not k.startswith("fc.")}
    load_fitting(module, state, path, target, what)
