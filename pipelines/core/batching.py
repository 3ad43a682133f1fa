"""Batches for the loop: from a Ray Data shard to the device, equal counts on every rank."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import torch

FETCH_ROWS = 4096  # rows per Ray Data batch; device_batches slices them into training batches
# a worker keeps a shard of up to this many bytes after its first epoch (larger: streamed every epoch; 0: never kept)
KEEP_BYTES = int(os.environ.get("FASTRAY_KEEP_BYTES", 2 << 30))


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


class KeptShard:
    """A worker's Ray Data shard, read through Ray Data once and then served from the
    worker's memory (on its device where the batches were made there).

    Each epoch's iteration of a shard costs Ray Data a fresh start (its executor and a
    background thread that holds the GIL): on 2 CPU cores that was a large part of an epoch
    of a few seconds. A data set that fits in KEEP_BYTES is what airbench
    keeps on the device anyway. The first complete iteration of each kind (method and
    arguments) is recorded while it streams; the next ones replay it, reshuffled in memory
    (a full permutation, drawn from the epoch) where the call asked for a shuffle; a shuffled
    read through Ray Data gets a seed drawn alike, so a run made twice reads its data in the
    same order (Ray Data's own shuffle is seeded afresh each time). A shard
    larger than `max_bytes` (0: every shard), or a shuffled iteration of batches that are
    not dicts of tensors, streams every time. Other attributes are the shard's own."""

    def __init__(self, shard: Any, max_bytes: int = KEEP_BYTES, seed: int = 0):
        self.shard, self.max_bytes, self.seed = shard, max_bytes, seed
        self._kept: dict[str, list | None] = {}  # call -> its batches, or None: too big, stream
        self._replays = self._streams = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)

    def iter_batches(self, **kwargs) -> Iterator[Any]:
        return self._iter("iter_batches", kwargs)

    def iter_torch_batches(self, **kwargs) -> Iterator[Any]:
        return self._iter("iter_torch_batches", kwargs)

    def _iter(self, method: str, kwargs: dict) -> Iterator[Any]:
        key = method + repr(sorted((k, repr(v)) for k, v in kwargs.items()))
        shuffled = bool(kwargs.get("local_shuffle_buffer_size"))
        if key in self._kept and self._kept[key] is not None:
            yield from self._replay(self._kept[key], kwargs, shuffled)
            return
        out, size = ([] if key not in self._kept and self.max_bytes > 0 else None), 0
        if shuffled and kwargs.get("local_shuffle_seed") is None:  # seeded: a run made twice reads alike
            kwargs = {**kwargs, "local_shuffle_seed": self.seed * 1_000_003 + 500_009 + self._streams}
            self._streams += 1
        for batch in getattr(self.shard, method)(**kwargs):
            if out is not None:
                size += _nbytes(batch)
                keepable = not shuffled or (isinstance(batch, dict) and all(torch.is_tensor(v) for v in batch.values()))
                out = out if keepable and size <= self.max_bytes else None
                if out is not None:
                    out.append(batch)
            yield batch
        self._kept[key] = out  # only an iteration that ran to its end is kept

    def _replay(self, kept: list, kwargs: dict, shuffled: bool) -> Iterator[Any]:
        if not shuffled:
            yield from (dict(b) if isinstance(b, dict) else b for b in kept)  # a hook may add keys to its dict
            return
        if len(kept) > 1:  # one dict of whole columns, made once
            kept[:] = [{k: torch.cat([b[k] for b in kept]) for k in kept[0]}]
        whole = kept[0] if kept else {}
        n = len(next(iter(whole.values()))) if whole else 0
        self._replays += 1
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._replays)
        order = torch.randperm(n, generator=g)
        bs = kwargs.get("batch_size") or n
        end = n - n % bs if kwargs.get("drop_last") else n
        for i in range(0, end, bs):
            idx = order[i : i + bs]
            yield {k: v[idx.to(v.device)] for k, v in whole.items()}


def _nbytes(batch: Any) -> int:
    """Bytes of a batch: a dict of tensors or arrays, a pyarrow table, or anything with nbytes."""
    if isinstance(batch, dict):
        return sum(_nbytes(v) for v in batch.values())
    if torch.is_tensor(batch):
        return batch.element_size() * batch.nelement()
    return int(getattr(batch, "nbytes", 0))
