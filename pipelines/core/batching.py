"""Batches for the loop: from a Ray Data shard to the device, equal counts on every rank."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch

FETCH_ROWS = 4096  # rows per Ray Data batch; device_batches slices them into training batches


def device_batches(shard, bs: int, device: torch.device, train: bool) -> Iterator[dict]:
    """Batches of `bs` rows on the device. Ray Data hands over chunks of many batches at a
    time: its per-batch work (a background thread that holds the GIL) cost a 2-core worker
    30% of its steps at bs=64; slicing a chunk on the device costs nothing."""
    chunk = bs * max(1, FETCH_ROWS // bs)
    it = shard.iter_torch_batches(
        batch_size=chunk,
        device=device,
        drop_last=False,
        local_shuffle_buffer_size=max(2 * chunk, 4096) if train else None,
        prefetch_batches=2,
    )
    for big in it:
        n = len(next(iter(big.values())))
        for i in range(0, n - bs + 1 if train else n, bs):  # train: full batches only
            yield {k: v[i : i + bs] for k, v in big.items()}


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


def batch_len(batch: Any) -> int:
    """Examples in a batch: a dict of tensors, a tuple or list, or a tensor."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return len(batch)
