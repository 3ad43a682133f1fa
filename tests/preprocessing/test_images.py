"""CIFAR-10 readers (both shipped layouts) and the cached Ray Data decode/resize."""
import os
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing import DataError
from preprocessing.cache import Cache
from preprocessing.chunked import column_array, read_table, to_table
from preprocessing.images import find_cifar10, preprocess_images


def write_pickle_batches(root, n_train=300, n_test=100, seed=0):
    """The python layout: cifar-10-batches-py/{data_batch_1,2, test_batch, batches.meta}."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, n in [("data_batch_1", n_train // 2), ("data_batch_2", n_train - n_train // 2), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return d


def test_png_layout_is_found_at_or_above_its_folder(cifar_small):
    for where in (cifar_small, cifar_small.parent):
        src = find_cifar10(where)
        assert src.layout == "folders" and len(src.classes) == 10
        assert src.count("train") == 1000 and src.count("valid") == 200


def test_pickle_layout(tmp_path, ray_session):
    d = write_pickle_batches(tmp_path)
    src = find_cifar10(tmp_path)
    assert src.layout == "pickle" and src.classes[3] == "c3" and src.count("train") == 300
    manifest, hit = preprocess_images(src, (16, 32), Cache(tmp_path / "cache"), "cifar10")
    assert not hit and manifest["rows"] == {"train": 300, "valid": 100}
    folder = Cache(tmp_path / "cache").path("cifar10", manifest["key"])
    table = pq.read_table(folder / "valid")
    # the pickle's CHW rows become HWC uint8 images, same pixels at the native size
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    want = {(lab, np.asarray(row, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0).tobytes())
            for row, lab in zip(raw[b"data"], raw[b"labels"])}
    img32 = column_array(table, "img32")
    assert img32.shape == (100, 32, 32, 3) and img32.dtype == np.uint8
    got = {(lab, img.tobytes()) for img, lab in zip(img32, table.column("label").to_pylist())}
    assert got == want
    assert column_array(table, "img16").shape == (100, 16, 16, 3)


def test_preprocess_hit_miss(cifar_small, tmp_path, ray_session):
    data = tmp_path / "cifar10"
    shutil.copytree(cifar_small, data)
    cache = Cache(tmp_path / "cache")
    src = find_cifar10(data)
    m1, hit1 = preprocess_images(src, (24, 32), cache, "cifar10")
    assert not hit1 and m1["rows"] == {"train": 1000, "valid": 200} and m1["sizes"] == [24, 32]
    m2, hit2 = preprocess_images(find_cifar10(data), (32, 24), cache, "cifar10")
    assert hit2 and m2["key"] == m1["key"]
    # a different size, or a touched input file, gives a new key
    assert preprocess_images(find_cifar10(data), (28, 32), cache, "cifar10")[1] is False
    f = next((data / "train" / "cat").iterdir())
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    m3, hit3 = preprocess_images(find_cifar10(data), (24, 32), cache, "cifar10")
    assert not hit3 and m3["key"] != m1["key"]


def _corrupt_copy(cifar_small, tmp_path):
    data = tmp_path / "cifar10"
    shutil.copytree(cifar_small, data)
    files = sorted((data / "train" / "dog").iterdir())
    files[0].write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    files[1].write_bytes(files[1].read_bytes()[:60])  # truncated
    files[2].write_bytes(b"")  # zero bytes
    return data, files[:3]


def test_unreadable_images_are_skipped_and_counted(cifar_small, tmp_path, ray_session, capfd):
    data, bad = _corrupt_copy(cifar_small, tmp_path)
    manifest, _ = preprocess_images(find_cifar10(data), (32,), Cache(tmp_path / "c"), "cifar10")
    assert manifest["rows"]["train"] == 997 and manifest["skipped"] == {"train": 3, "valid": 0}
    assert "skipped 3 unreadable image(s) of 1000" in capfd.readouterr().err


def test_on_bad_input_fail_names_the_file(cifar_small, tmp_path, ray_session):
    data, bad = _corrupt_copy(cifar_small, tmp_path)
    cache = Cache(tmp_path / "c")
    with pytest.raises(DataError, match=r"dog/.*\.png: not a readable image"):
        preprocess_images(find_cifar10(data), (32,), cache, "cifar10", on_bad="fail")
    assert not cache.root.exists() or not any(cache.root.glob("cifar10-*"))  # nothing half-made


@pytest.mark.parametrize("setup, msg", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "no CIFAR-10 here"),
    (lambda p: (p / "train").mkdir(parents=True) or (p / "test").mkdir(), "no class folders"),
    (lambda p: (p / "train" / "cat").mkdir(parents=True) or (p / "test").mkdir(), "train: no images"),
])
def test_bad_folders_are_data_errors(tmp_path, setup, msg):
    p = tmp_path / "cifar10"
    setup(p)
    with pytest.raises(DataError, match=msg):
        find_cifar10(p)


def test_a_damaged_pickle_batch_names_the_file(tmp_path, ray_session):
    d = write_pickle_batches(tmp_path, n_train=20, n_test=10)
    (d / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_2: not a CIFAR-10 pickle batch"):
        preprocess_images(find_cifar10(tmp_path), (32,), Cache(tmp_path / "c"), "cifar10")


@pytest.mark.parametrize("n", [0, 5])
def test_shaped_columns_are_stored_as_bytes_and_read_back_as_arrays(tmp_path, n):
    """An image, a mask or padded boxes per row: one fixed-size binary value in parquet (no
    number-by-number encoding), the same (N, *shape) arrays when read back."""
    rng = np.random.default_rng(0)
    cols = {"label": np.arange(n, dtype=np.int64), "img4": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
            "boxes": rng.random((n, 2, 4), dtype=np.float32), "mask": rng.integers(0, 2, (n, 4, 4), dtype=np.uint8)}
    pq.write_table(to_table(cols), tmp_path / "x.parquet", compression="none")
    raw = pq.read_table(tmp_path / "x.parquet")
    assert raw.schema.field("img4").type.byte_width == 48 and raw.schema.field("boxes").type.byte_width == 32
    for k, v in cols.items():
        got = column_array(raw, k)
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), k
    if n:  # read_table: Ray's tensor columns, as a cache written before this format gave them
        from ray.data.extensions import ArrowTensorArray

        new = read_table(tmp_path / "x.parquet")
        assert np.array_equal(new.column("img4").combine_chunks().to_numpy(), cols["img4"])
        pq.write_table(pa.table({"img4": ArrowTensorArray.from_numpy(cols["img4"])}), tmp_path / "old.parquet")
        old = read_table(tmp_path / "old.parquet")
        assert old.schema.field("img4").type == new.schema.field("img4").type
        assert np.array_equal(old.column("img4").combine_chunks().to_numpy(), cols["img4"])
        assert np.array_equal(column_array(pq.read_table(tmp_path / "old.parquet"), "img4").reshape(n, 4, 4, 3),
                              cols["img4"])
