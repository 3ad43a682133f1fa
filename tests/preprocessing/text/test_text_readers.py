"""preprocessing.text.readers: IMDb found at or above its folder, and bad folders."""
import shutil
from pathlib import Path

import pytest

from preprocessing import DataError
from preprocessing.text.readers import find_imdb


def test_imdb_is_found_at_or_above_its_folder(imdb_small):
    for where in (imdb_small, imdb_small.parent):
        src = find_imdb(where)
        assert src.kind == "imdb" and src.root == imdb_small and src.classes == ["neg", "pos"]
        assert {s: len(v) for s, v in src.splits.items()} == {"train": 200, "valid": 200, "unsup": 200}
        assert {lab for _, lab in src.splits["train"]} == {0, 1}
        assert {lab for _, lab in src.splits["unsup"]} == {-1}
        assert all(Path(p).parent.name == ("pos" if lab else "neg") for p, lab in src.splits["valid"])


@pytest.mark.parametrize("setup, msg", [
    (lambda p: shutil.rmtree(p / "test" / "pos"), r"test/pos: missing"),
    (lambda p: [f.unlink() for f in (p / "train" / "neg").iterdir()], r"train/neg: no reviews"),
    (lambda p: shutil.rmtree(p / "test"), r"no IMDb here"),
])
def test_bad_imdb_folders_are_data_errors(imdb_copy, setup, msg):
    setup(imdb_copy)
    with pytest.raises(DataError, match=msg):
        find_imdb(imdb_copy)


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_imdb(tmp_path / "nope")
