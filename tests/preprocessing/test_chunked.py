"""preprocessing.chunked: the decode template's parts without Ray: a Decoder's task
function (columns, the bad-input policy), the chunks, and Ray's wrapped DataErrors."""
from pathlib import Path

import numpy as np
import pytest

from preprocessing import DataError
from preprocessing.chunked import Decoder, chunks, column_array, data_errors, image_sizes


class _Squares(Decoder):
    """An item n -> one row: an (n, n) block and n; n < 0 is bad input."""

    columns = {"block": ((2, 2), np.uint8), "n": ((), np.int64), "name": ((), object)}

    def rows(self, item):
        if item < 0:
            raise DataError(f"item {item}: negative")
        yield {"block": np.full((2, 2), item, np.uint8), "n": item, "name": f"x{item}"}


def _task(decoder, *chunk_list):
    table = decoder.table([it for c in chunk_list for it in c])
    return {k: column_array(table, k) for k in table.column_names}


def test_a_decoder_makes_typed_columns_and_skips_bad_items(capsys):
    out = _task(_Squares("skip"), [1, -2, 3], [4])
    assert out["block"].shape == (3, 2, 2) and out["block"].dtype == np.uint8
    assert out["n"].tolist() == [1, 3, 4] and out["n"].dtype == np.int64 and out["name"].tolist() == ["x1", "x3", "x4"]
    assert "warning: skipped item -2: negative" in capsys.readouterr().err
    empty = _task(_Squares("skip"), [-1])
    assert empty["block"].shape == (0, 2, 2) and empty["n"].dtype == np.int64 and empty["name"].dtype == object


def test_a_decoder_fails_at_the_first_bad_item_under_fail():
    with pytest.raises(DataError, match="item -2: negative"):
        _task(_Squares("fail"), [1, -2, 3])
    with pytest.raises(ValueError, match="on_bad"):
        _Squares("ignore")


def test_chunks_are_seeded_bounded_and_hold_plain_strings():
    items = [(Path(f"/d/{i}.png"), i % 3) for i in range(100)]
    parts = chunks(items, n_cpus=2, seed=0, lo=8, hi=20)
    assert [len(c) for c in parts] == [13] * 7 + [9]  # ceil(100 / 8) a chunk, within [8, 20]
    flat = [it for c in parts for it in c]
    assert sorted(flat) == sorted((str(p), k) for p, k in items) and flat != sorted(flat)
    assert parts == chunks(items, 2, 0, 8, 20) and parts != chunks(items, 2, 1, 8, 20)
    assert chunks(items, 64, 0, 8, 20)[0] == flat[:8]  # many CPUs: chunks of lo
    assert chunks(list(range(5)), 1, 0, 1, 1, shuffle=False) == [[0], [1], [2], [3], [4]]


def test_a_wrapped_data_error_surfaces_as_itself():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    with pytest.raises(DataError, match=r"^/d/x.png: not a readable image$"):
        with data_errors():
            raise Wrapper(DataError("/d/x.png: not a readable image"))
    with pytest.raises(DataError, match=r"^/d/y.png: empty$"):  # only the text of it left
        with data_errors():
            raise RuntimeError("ray.exceptions.RayTaskError: DataError: /d/y.png: empty")
    with pytest.raises(KeyError):  # anything else is left alone
        with data_errors():
            raise KeyError("x")


def test_image_sizes():
    assert image_sizes([32, 16, 32]) == (16, 32)
    with pytest.raises(ValueError, match=">= 8 px"):
        image_sizes((4,), min_px=8)
    with pytest.raises(ValueError):
        image_sizes(())
