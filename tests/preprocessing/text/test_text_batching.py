"""preprocessing.text.batching: LMStream, sortish batches and padding (no Ray)."""
import numpy as np
import pytest
import torch

from preprocessing.text.batching import LMStream, pad_batch, sortish_batches


def test_lm_stream_covers_the_stream_with_variable_lengths():
    ids = np.arange(10_007, dtype=np.int32)
    stream = LMStream(ids, bs=4, bptt=20, seed=0)
    n = 10_007 // 4
    xs, ys, lens = [], [], []
    for x, y in stream:
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] == 4
        xs.append(x)
        ys.append(y)
        lens.append(x.shape[1])
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    rows = torch.from_numpy(ids[: 4 * n].reshape(4, n).astype(np.int64))
    assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])  # every token once, y = next token
    assert len(set(lens)) > 5 and min(lens[:-1]) >= 5 and max(lens) < 40
    assert any(l < 15 for l in lens[:-1])  # the bptt / 2 draws
    assert abs(stream.approx_batches() - len(lens)) <= 0.15 * len(lens)
    # a new pass draws new lengths; the same seed and pass repeat them
    assert [x.shape[1] for x, _ in stream] != lens
    again = LMStream(ids, bs=4, bptt=20, seed=0)
    assert [x.shape[1] for x, _ in again] == lens
    with pytest.raises(ValueError, match="too short"):
        LMStream(np.arange(5), bs=4)


def test_sortish_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 5003)
    batches = sortish_batches(lengths, bs=16, seed=1)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(5003))  # a permutation
    assert sum(len(b) != 16 for b in batches) == 1 and len(batches) == -(-5003 // 16)  # one short batch
    assert lengths[batches[0]].max() == lengths.max()  # the longest batch goes first
    for b in batches:  # each batch is cut from a sorted chunk
        assert all(lengths[i] >= lengths[j] for i, j in zip(b, b[1:]))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 0.1 * (lengths.max() - lengths.min())  # roughly sorted, so little padding
    assert sortish_batches(lengths, 16, seed=2) != batches and sortish_batches(lengths, 16, seed=1) == batches


def test_pad_batch():
    out = pad_batch([[5, 6, 7], np.array([8]), torch.tensor([9, 10])])
    assert out.dtype == torch.int64 and out.tolist() == [[5, 6, 7], [1, 1, 8], [1, 9, 10]]
    assert pad_batch([[5, 6], [7]], pad_first=False).tolist() == [[5, 6], [7, 1]]
    assert pad_batch([[5], [6, 7]], pad_id=0).tolist() == [[0, 5], [6, 7]]
