"""Batches of token ids for the training loops, plain numpy and torch (no Ray): the LM's
stream, sortish and sorted batches of documents, and padding."""
from __future__ import annotations

import numpy as np

from . import PAD_ID


class LMStream:
    """fastai's LanguageModelLoader: the token stream cut into bs rows, read bptt tokens
    at a time with a varying length: bptt with probability 0.95, else bptt / 2, then
    seq_len = max(5, int(normal(that, 5))), capped so that y exists. Yields (x, y), int64
    tensors of shape (bs, seq_len), y = x shifted by one token along the stream.
    Each pass over the stream draws new lengths (seeded by seed and the pass number)."""

    def __init__(self, ids: np.ndarray, bs: int, bptt: int = 70, seed: int = 0):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if bs < 1 or bptt < 1:
            raise ValueError(f"need bs >= 1 and bptt >= 1 (got {bs}, {bptt})")
        n = len(ids) // bs
        if n < 2:
            raise ValueError(f"a stream of {len(ids)} tokens is too short for {bs} rows")
        self.data = ids[: n * bs].reshape(bs, n)  # (bs, n): row r is the r-th stretch of the stream
        self.bs, self.bptt, self.seed, self.epoch = bs, bptt, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def approx_batches(self) -> int:
        """About how many batches a pass yields (the mean length is 0.975 bptt)."""
        return max(1, round((self.data.shape[1] - 1) / (0.975 * self.bptt)))

    def __iter__(self):
        import torch

        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n, i = self.data.shape[1], 0
        while i < n - 1:
            bptt = self.bptt if rng.random() < 0.95 else self.bptt / 2
            seq_len = min(max(5, int(rng.normal(bptt, 5))), n - 1 - i)
            block = torch.from_numpy(self.data[:, i : i + seq_len + 1].astype(np.int64))  # (bs, seq_len + 1)
            yield block[:, :-1].contiguous(), block[:, 1:].contiguous()
            i += seq_len


def sortish_batches(lengths, bs: int, seed: int = 0) -> list[list[int]]:
    """fastai's SortishSampler as batches of indices: shuffle, cut into chunks of bs * 50,
    sort each chunk by length (longest first), cut into batches, shuffle the batches but
    put the one holding the longest document first (so memory runs out early, if ever)."""
    lengths = np.asarray(lengths)
    if bs < 1:
        raise ValueError(f"bs must be >= 1, got {bs}")
    if len(lengths) == 0:
        return []
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(lengths))
    big = bs * 50
    chunks = [idx[i : i + big] for i in range(0, len(idx), big)]
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    first = int(np.argmax([lengths[b[0]] for b in batches]))
    batches[0], batches[first] = batches[first], batches[0]
    rest = [batches[i] for i in rng.permutation(np.arange(1, len(batches)))]
    return [b.tolist() for b in [batches[0]] + rest]


def sorted_batches(lengths, bs: int) -> list[list[int]]:
    """fastai's SortSampler for validation: every index, longest first, in batches."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]


def pad_batch(seqs, pad_id: int = PAD_ID, pad_first: bool = True):
    """Sequences of token ids -> a (B, T) int64 tensor, T the longest, padded with pad_id
    at the start (pad_first: the classifier reads the text last, as in fastai) or end."""
    import torch

    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    t = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), t), pad_id, dtype=np.int64)
    for i, a in enumerate(arrays):
        if len(a):
            if pad_first:
                out[i, t - len(a) :] = a
            else:
                out[i, : len(a)] = a
    return torch.from_numpy(out)
