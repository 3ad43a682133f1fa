"""preprocessing.text.corpus: Ragged (to and from arrow, take, concat) and a tokenized split
read back with pyarrow."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing.text import BOS_ID
from preprocessing.text.corpus import Ragged, load_tokens

ROWS = [[5, 6, 7], [], [8], [9, 10]]


def test_ragged_rows_lengths_and_arrow_round_trip():
    r = Ragged.from_rows([np.asarray(x) for x in ROWS])
    assert r.flat.dtype == np.int32 and r.offsets.tolist() == [0, 3, 3, 4, 6]
    assert len(r) == 4 and r.lengths.tolist() == [3, 0, 1, 2] and r[3].tolist() == [9, 10]
    col = r.to_arrow()
    assert col.type == pa.list_(pa.int32()) and col.to_pylist() == ROWS
    back = Ragged.from_arrow(col, np.int64)
    assert back.flat.dtype == np.int64 and back.offsets.tolist() == r.offsets.tolist()


def test_ragged_from_a_chunked_sliced_column_with_nulls():
    chunked = pa.chunked_array([pa.array([[1], [2, 3], [4, 5, 6]]).slice(1), pa.array([None, [7]], pa.list_(pa.int64()))])
    r = Ragged.from_arrow(chunked)
    assert [r[i].tolist() for i in range(len(r))] == [[2, 3], [4, 5, 6], [], [7]]
    batches = [pa.table({"ids": chunked}), pa.table({"ids": pa.array([[8, 9]])})]  # a shard's batches
    both = Ragged.from_arrow([t.column("ids") for t in batches], np.int64)
    assert len(both) == 5 and both[4].tolist() == [8, 9] and len(Ragged.from_arrow([])) == 0


def test_ragged_take_and_concat():
    r = Ragged.from_rows(ROWS)
    t = r.take([3, 0, 1, 3])
    assert [t[i].tolist() for i in range(len(t))] == [[9, 10], [5, 6, 7], [], [9, 10]]
    assert len(r.take([])) == 0 and r.take([]).to_arrow().to_pylist() == []
    both = Ragged.concat([r, t])
    assert len(both) == 8 and both[4].tolist() == [9, 10] and both.offsets[-1] == 6 + 7
    empty = Ragged.concat([])
    assert len(empty) == 0 and empty.flat.dtype == np.int32


def test_load_tokens_agrees_with_the_parquet(imdb_tokens):
    cache, manifest = imdb_tokens
    train = load_tokens(cache, manifest, "train")
    folder = cache.path(manifest["name"], manifest["key"]) / "train"
    table = pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob("*.parquet"))])
    assert train.docs.lengths.tolist() == table.column("len").to_pylist()
    assert train.docs[7].tolist() == table.column("ids")[7].as_py() and train.docs[7][0] == BOS_ID
    assert train.labels.dtype == np.int64 and sorted(train.labels.tolist()) == [0] * 100 + [1] * 100
    with pytest.raises(KeyError, match="no split 'test'"):
        load_tokens(cache, manifest, "test")
