"""Pieces of train_step / evaluate that pipelines share."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float = 0.0) -> None:
    """zero_grad, backward, optional gradient-norm clipping, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()


def classification_metrics(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean cross entropy and accuracy over (logits (N, C), targets (N,)) pairs, summed on
    the device and read once at the end (no host sync per batch), with "n" for combine()."""
    loss = correct = n = None
    for out, y in pairs:
        out = out.float()
        l, c = F.cross_entropy(out, y, reduction="sum"), (out.argmax(1) == y).sum()
        loss, correct = (l, c) if loss is None else (loss + l, correct + c)
        n = len(y) + (n or 0)
    if not n:
        return {"loss": 0.0, "accuracy": 0.0, "n": 0}
    return {"loss": loss.item() / n, "accuracy": correct.item() / n, "n": n}


def cycle_batches(make: Callable[[int], Iterable[Any]], steps: int) -> Iterator[Any]:
    """Exactly `steps` items from make(k), made again with k + 1 whenever it runs out: every
    rank of a data-parallel run takes the same number of steps, whatever its shard holds."""
    k, it, n = 0, iter(make(0)), 0
    while n < steps:
        item = next(it, None)
        if item is None:
            k += 1
            it = iter(make(k))
            item = next(it, None)
            if item is None:
                raise ValueError("a worker's shard makes no batch: lower bs")
        yield item
        n += 1
