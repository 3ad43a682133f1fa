import os
import threading
import time

import pytest

from preprocessing.cache import Cache, digest, fingerprint_files


def _writer(payload: bytes, calls: list):
    def make(tmp):
        calls.append(1)
        tmp.mkdir(parents=True)
        (tmp / "part-0.bin").write_bytes(payload)
        return {"rows": len(payload)}
    return make


def test_digest_is_stable_and_order_free():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_fingerprint_changes_when_a_file_is_touched(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"abc")
    before = fingerprint_files([f], tmp_path)
    assert fingerprint_files([f], tmp_path) == before
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint_files([f], tmp_path) != before


def test_fingerprint_is_the_key_caches_were_made_with(tmp_path):
    """The fingerprint names files as strings now (twice as fast): the same hash as the
    Path-ordered one it replaced, so the caches users already have stay hits, whatever
    the order of the listing and with names that sort differently as strings and as paths."""
    import hashlib
    from pathlib import Path

    names = ["a-b.png", "a/b.png", "a.png", "a/c/d.png", "Z.png", "é.png", "a b.png", "a/b-c/e.png"]
    for i, n in enumerate(names):
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x" * i)
    h = hashlib.sha256()
    for p in sorted((Path(tmp_path / n) for n in names), key=lambda p: p.parts):  # Python 3.11 sorted Paths so
        st = p.stat()
        h.update(f"{p.relative_to(tmp_path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert fingerprint_files([tmp_path / n for n in reversed(names)], tmp_path) == h.hexdigest()[:16]


def test_second_build_is_a_hit_and_does_no_work(tmp_path):
    cache, calls = Cache(tmp_path), []
    m1, hit1 = cache.build("d", "k1", _writer(b"x" * 10, calls))
    m2, hit2 = cache.build("d", "k1", _writer(b"x" * 10, calls))
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert m1 == m2 and m2["rows"] == 10 and m2["files"] == {"part-0.bin": 10}


def test_a_failed_build_leaves_nothing_readable(tmp_path):
    cache = Cache(tmp_path)

    def boom(tmp):
        tmp.mkdir()
        (tmp / "part-0.bin").write_bytes(b"half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        cache.build("d", "k", boom)
    assert cache.lookup("d", "k") is None
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_a_truncated_file_is_detected_and_rebuilt(tmp_path):
    cache, calls = Cache(tmp_path), []
    cache.build("d", "k", _writer(b"x" * 100, calls))
    (cache.path("d", "k") / "part-0.bin").write_bytes(b"x" * 40)  # truncated
    assert cache.lookup("d", "k") is None
    _, hit = cache.build("d", "k", _writer(b"x" * 100, calls))
    assert not hit and len(calls) == 2


def test_two_builders_of_one_key_leave_one_valid_entry(tmp_path):
    cache, calls, results = Cache(tmp_path), [], []

    def slow(tmp):
        time.sleep(0.2)
        return _writer(b"y" * 7, calls)(tmp)

    threads = [threading.Thread(target=lambda: results.append(cache.build("d", "k", slow))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(m["rows"] == 7 for m, _ in results)
    assert [p.name for p in tmp_path.iterdir()] == ["d-k"]


def test_a_receipt_finds_the_entry_until_anything_it_read_changes(tmp_path):
    """A command's receipt (issue 19: a hit without importing the lesson) holds while the
    files it read are as they were; a touched, added or removed file, a damaged entry or
    verify=full sends the command the full way."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.txt").write_text("a")
    cache, calls = Cache(tmp_path / "cache"), []
    manifest, _ = cache.build("d", "k", _writer(b"x" * 10, calls))
    request = {"pipeline": "p", "data": str(data)}
    assert cache.recall(request) is None  # nothing remembered yet
    cache.remember(request, [data], manifest, said=["no data in data/: using generated sample data"])
    got, said = cache.recall(request)  # the entry, and what the full path told the user (said again)
    assert got["key"] == "k" and said == ["no data in data/: using generated sample data"]
    assert cache.recall({**request, "data": "other"}) is None
    assert Cache(tmp_path / "cache", verify="full").recall(request) is None

    f = data / "sub" / "a.txt"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    assert cache.recall(request) is None
    cache.remember(request, [data], manifest)
    (data / "sub" / "b.txt").write_text("b")  # added
    assert cache.recall(request) is None
    cache.remember(request, [data], manifest)
    (cache.path("d", "k") / "part-0.bin").write_bytes(b"x")  # the entry damaged
    assert cache.recall(request) is None
