"""A worker's shard read through Ray Data once, then from memory (issue 19: a fresh Ray Data
iteration each epoch cost a 2-core worker a large part of a short epoch)."""
from __future__ import annotations

import torch

from pipelines.core.batching import KeptShard


class _Shard:
    """What a Ray Data shard does for the loop: batches of rows in chunks; counts its reads."""

    def __init__(self, n: int = 10):
        self.x, self.reads = torch.arange(n), 0

    def iter_torch_batches(self, batch_size: int, local_shuffle_buffer_size=None, drop_last=False, **_):
        self.reads += 1
        for i in range(0, len(self.x) - (len(self.x) % batch_size if drop_last else 0), batch_size):
            yield {"x": self.x[i : i + batch_size].clone()}

    def count(self) -> int:
        return len(self.x)


def _rows(batches) -> list[int]:
    return [int(v) for b in batches for v in b["x"]]


def test_a_shard_is_read_once_then_replayed_and_reshuffled_where_asked():
    shard = _Shard()
    kept = KeptShard(shard)
    assert _rows(kept.iter_torch_batches(batch_size=4)) == list(range(10))
    assert _rows(kept.iter_torch_batches(batch_size=4)) == list(range(10)) and shard.reads == 1  # replayed in order
    first = _rows(kept.iter_torch_batches(batch_size=4, local_shuffle_buffer_size=8))
    again = [_rows(kept.iter_torch_batches(batch_size=4, local_shuffle_buffer_size=8)) for _ in range(3)]
    assert shard.reads == 2 and all(sorted(r) == list(range(10)) for r in again)  # the same rows each epoch
    assert len({tuple(r) for r in again}) > 1 and first == list(range(10))  # in a new order each epoch
    for _ in range(2):  # read, then replayed
        assert [len(b["x"]) for b in kept.iter_torch_batches(batch_size=4, local_shuffle_buffer_size=8,
                                                             drop_last=True)] == [4, 4]
    assert kept.count() == 10  # anything else is the shard's own


def test_a_shard_too_large_or_left_unfinished_streams_again():
    shard = _Shard()
    big = KeptShard(shard, max_bytes=40)  # 10 int64 rows are 80 bytes
    for _ in range(2):
        assert _rows(big.iter_torch_batches(batch_size=4)) == list(range(10))
    assert shard.reads == 2
    shard = _Shard(n=0)  # a shard of several workers' split (max_bytes=0) joins every epoch, even empty
    split = KeptShard(shard, max_bytes=0)
    for _ in range(2):
        assert _rows(split.iter_torch_batches(batch_size=4)) == []
    assert shard.reads == 2
    shard = _Shard()
    kept = KeptShard(shard)
    next(iter(kept.iter_torch_batches(batch_size=4)))  # abandoned after one batch: nothing kept
    assert _rows(kept.iter_torch_batches(batch_size=4)) == list(range(10)) and shard.reads == 2


def test_a_shuffled_read_through_ray_data_is_seeded_so_a_run_made_twice_reads_alike(ray_session):
    import ray.data

    # materialized, as the engine hands every data set to Ray Train: its blocks keep their order
    # (a lazy read's blocks come in whichever order its tasks end)
    data = ray.data.range(200, override_num_blocks=4).materialize()

    def first_epoch(seed: int) -> list[int]:
        kept = KeptShard(data, seed=seed)
        return [int(v) for b in kept.iter_torch_batches(batch_size=50, local_shuffle_buffer_size=100) for v in b["id"]]

    a, b, c = first_epoch(0), first_epoch(0), first_epoch(1)
    assert sorted(a) == list(range(200)) and a != list(range(200))  # shuffled
    assert a == b and a != c  # the same order for the same seed only


def test_a_runs_seed_orders_its_shuffled_reads(ray_session):
    """--set seed=N gives a run (here a Tune trial's session) its own data order, the same each time."""
    import ray.data

    from pipelines.core.sessions import TuneSession

    data = ray.data.range(200, override_num_blocks=4).materialize()  # as the engine's (above)

    def first_epoch(seed: int) -> list[int]:
        shard = TuneSession({"train": data}, use_gpu=False, seed=seed).shard("train")
        return [int(v) for b in shard.iter_torch_batches(batch_size=50, local_shuffle_buffer_size=100) for v in b["id"]]

    assert first_epoch(1) == first_epoch(1) != first_epoch(2)
