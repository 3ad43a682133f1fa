"""Reliability and safety: a training worker killed mid-run, the cache under concurrent,
killed and damaging hands, and `fastray download` against a local HTTP server (checksums,
resume, safe extraction)."""
import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.core import registry
from pipelines.__main__ import main
from preprocessing import DataError
from preprocessing.cache import Cache
from preprocessing.download import DATASETS, UnsafeArchive, add_parser, cmd_download, extract
from preprocessing.samples import cifar10 as cifar10_samples, imdb as imdb_samples
from tests.http_files import FileServer

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def _env(ray_address: str) -> dict:
    return {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _wait_for(cond, what: str, timeout: float = 600, procs=()):
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None or cond(), f"process ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- a training worker killed


def test_a_killed_training_worker_costs_one_epoch_at_most(cifar_small, workdir, ray_session, capsys):
    """SIGKILL one of two Ray Train workers as epoch 3 starts: FailureConfig restarts the
    group, the run resumes from its last checkpoint, and MLflow holds every epoch once."""
    from ray.util.state import list_actors

    assert registry.get("cifar10-darknet").configs["tiny"].max_failures >= 1
    run_dir = workdir / "runs" / "workerkill"
    killed: list[int] = []
    finished = threading.Event()

    def saved_epochs() -> set[str]:
        out = set()
        for d in run_dir.glob("checkpoint_*"):
            with contextlib.suppress(OSError):
                out.add((d / "epoch.txt").read_text())
        return out

    def kill_a_worker_after_epoch_2():
        pids: list[int] = []
        while not finished.is_set():
            epochs = saved_epochs()
            if not pids and "1" in epochs:  # both workers are up: note their pids ahead of time
                try:
                    workers = list_actors(address=ray_session, filters=[("class_name", "=", "RayTrainWorker"),
                                                                        ("state", "=", "ALIVE")])
                except Exception:  # the dashboard is slow to answer on a busy machine: ask again
                    workers = []
                pids = sorted(w.pid for w in workers) if len(workers) == 2 else []
            if pids and "2" in epochs:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_after_epoch_2, daemon=True)
    killer.start()
    try:
        code, obj, err = run_cli(capsys, "run", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny",
                                 "--epochs", "5", "--num-workers", "2", "--name", "workerkill")
    finally:
        finished.set()
        killer.join(timeout=30)
    assert killed, "no worker was killed"
    assert code == 0, err[-3000:]
    assert obj["metrics"]["epoch"] == 5 and obj["world_size"] == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    run = client.get_run(obj["run_id"])
    resumed_at = int(run.data.tags["fastray.resumed_from_epoch"])  # set by the restarted rank 0
    assert 2 <= resumed_at < 5 and run.info.status == "FINISHED"
    for metric in ("accuracy", "train_loss"):
        steps = sorted(m.step for m in client.get_metric_history(obj["run_id"], metric))
        assert steps == [1, 2, 3, 4, 5], (metric, steps)  # no epoch lost, none counted twice


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_another_pipeline_is_refused_in_one_line(cifar_tiny, workdir, ray_session, capsys):
    """`run --name` over a run folder that another pipeline checkpointed: refused before
    training (the engine loads checkpoints with weights_only=True; tests/test_engine.py has
    the unit tests, with a checkpoint of other shapes and one that would run code)."""
    import torch

    from pipelines.core.storage import CHECKPOINT_FILE, EPOCH_FILE

    folder = workdir / "runs" / "clash" / "checkpoint_0"
    folder.mkdir(parents=True)
    torch.save({"pipeline": "imdb-lm", "model": {}, "epoch": 1, "metrics": {}}, folder / CHECKPOINT_FILE)
    (folder / EPOCH_FILE).write_text("1")
    code, _, err = run_cli(capsys, "run", "cifar10-darknet", "--data", str(cifar_tiny), "--config", "tiny",
                           "--name", "clash")
    [line] = _error_lines(err)
    assert code == 1 and "run 'clash': its checkpoint" in line
    assert "is from pipeline 'imdb-lm', not 'cifar10-darknet'; use another --name, or delete" in line


# ---------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def cifar_tiny(tmp_path_factory) -> Path:
    """300 images (250 train, 50 test) in fast.ai's PNG layout. Read-only."""
    out = tmp_path_factory.mktemp("data") / "cifar10"
    cifar10_samples.cifar10(out, size=300, seed=2)
    return out


class _KeyOnly(Cache):
    """A cache that only reports the key a pipeline asks for."""

    def build(self, name, key, make):
        raise LookupError(name, key)


def _cache_key(data: Path, cache_dir: Path) -> tuple[str, str]:
    pipe = registry.get("cifar10-darknet")
    with pytest.raises(LookupError) as e:
        pipe.preprocess(pipe.configs["tiny"], data, _KeyOnly(cache_dir))
    return e.value.args


def _entries(cache_dir: Path) -> list[str]:
    """The cache's entries and leftovers (not its logs/ folder of preprocess logs, nor the
    commands' .receipts/)."""
    return sorted(p.name for p in cache_dir.iterdir() if p.name not in ("logs", ".receipts"))


def test_two_preprocess_processes_at_once_build_once(cifar_tiny, workdir, ray_session):
    """Both start while the key's lock is held, both wait on it; released, one builds and
    the other reads its entry: both exit 0 and one intact entry is left."""
    cache_dir = workdir / "cache"
    cache = Cache(cache_dir, verify="full")
    name, key = _cache_key(cifar_tiny, cache_dir)
    cache_dir.mkdir()
    argv = [sys.executable, "-m", "pipelines", "preprocess", "cifar10-darknet", "--data", str(cifar_tiny),
            "--config", "tiny", "--cache-dir", str(cache_dir)]
    logs = [workdir / f"p{i}.log" for i in range(2)]
    procs = []
    try:
        with cache._lock(name, key):
            for lp in logs:
                with open(lp, "w") as f:
                    procs.append(subprocess.Popen(argv, env=_env(ray_session), stdout=subprocess.PIPE, stderr=f,
                                                  cwd=workdir, text=True, start_new_session=True))
            _wait_for(lambda: all("waiting for another process building cache" in lp.read_text() for lp in logs),
                      "both processes to wait on the lock", procs=procs)
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], [lp.read_text()[-2000:] for lp in logs]
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert sorted(r["cache"] for r in results) == ["hit", "miss"]
    assert {r["key"] for r in results} == {key}
    assert results[0]["rows"] == results[1]["rows"] == {"train": 250, "valid": 50}
    assert _entries(cache_dir) == [f"{name}-{key}"]  # no temporary folder, no lock file
    assert cache.lookup(name, key) is not None  # every file's sha256 checks


def test_without_file_locks_the_rename_decides(tmp_path, monkeypatch, capsys):
    """A file system without flock (some NFS set-ups): both builders work, the first
    complete entry stays, the other is thrown away, and both get a valid manifest."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cache, calls, results = Cache(tmp_path), [], []
    gate = threading.Barrier(2)

    def make(tmp):
        calls.append(1)
        gate.wait(timeout=30)  # both are building at once
        tmp.mkdir()
        (tmp / "part-0.bin").write_bytes(b"z" * 9)
        return {"rows": 9}

    threads = [threading.Thread(target=lambda: results.append(cache.build("d", "k", make))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and [m["rows"] for m, _ in results] == [9, 9]
    assert _entries(tmp_path) == ["d-k"] and "no file locks here" in capsys.readouterr().err


_KILLED_BUILDER = """
import sys, time
from preprocessing.cache import Cache

def make(tmp):
    (tmp / "train").mkdir(parents=True)
    (tmp / "train" / "part-0.parquet").write_bytes(b"PAR1" + b"x" * 5000)
    print("writing", flush=True)
    time.sleep(600)  # killed here, half-way through

Cache(sys.argv[1]).build("d", "k", make)
"""


def test_a_builder_killed_while_writing_leaves_nothing_complete(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
    cache, calls = Cache(tmp_path), []
    assert cache.lookup("d", "k") is None
    assert any(n.startswith(".tmp-d-k-") for n in _entries(tmp_path))  # the dead builder's half-made folder

    def make(tmp):
        calls.append(1)
        tmp.mkdir()
        (tmp / "part-0.bin").write_bytes(b"complete")
        return {"rows": 1}

    manifest, hit = cache.build("d", "k", make)
    assert not hit and calls == [1] and manifest["files"] == {"part-0.bin": 8}
    assert _entries(tmp_path) == ["d-k"]  # the leftover is gone, and no lock file stays


def test_a_preprocess_killed_while_writing_is_rebuilt(cifar_small, workdir, ray_session, capsys):
    """SIGKILL a real `fastray preprocess` once its first parquet file is written: the
    next run finds no entry, removes the leftover and builds a complete one."""
    cache_dir = workdir / "cache"
    argv = ["preprocess", "cifar10-darknet", "--data", str(cifar_small), "--config", "tiny", "--cache-dir", str(cache_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", *argv], env=_env(ray_session),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
    try:
        _wait_for(lambda: cache_dir.is_dir() and any(cache_dir.glob(".tmp-cifar10-*/*/*.parquet")),
                  "a parquet file in the temporary folder", procs=[proc])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not any(p.name.startswith("cifar10-") for p in cache_dir.iterdir())  # nothing in place
    code, obj, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert obj["cache"] == "miss" and obj["rows"] == {"train": 1000, "valid": 200}
    assert Cache(cache_dir, verify="full").lookup("cifar10", obj["key"]) is not None
    code, again, _ = run_cli(capsys, *argv)
    assert again["cache"] == "hit"


def test_a_truncated_or_altered_cache_is_detected_and_rebuilt(cifar_tiny, workdir, ray_session, capsys):
    cache_dir = workdir / "cache"
    argv = ["preprocess", "cifar10-darknet", "--data", str(cifar_tiny), "--config", "tiny", "--cache-dir", str(cache_dir)]
    code, first, err = run_cli(capsys, *argv)
    assert code == 0 and first["cache"] == "miss", err
    folder = Path(first["path"])
    victim = sorted(folder.glob("train/*.parquet"))[0]
    rel = victim.relative_to(folder).as_posix()
    whole = victim.read_bytes()

    victim.write_bytes(whole[: len(whole) // 2])  # truncated
    code, second, err = run_cli(capsys, *argv)
    assert code == 0 and second["cache"] == "miss" and second["rows"] == first["rows"]
    assert f"{rel} is {len(whole) // 2} bytes, its manifest says {len(whole)}" in err

    victim = sorted(folder.glob("train/*.parquet"))[0]  # the rebuilt entry's files have new names
    rel = victim.relative_to(folder).as_posix()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte altered, same size
    victim.write_bytes(bytes(data))
    code, third, err = run_cli(capsys, *argv)
    assert code == 0 and third["cache"] == "miss" and f"{rel} was altered" in err

    (folder / "manifest.json").write_text("{not json")  # a damaged manifest
    code, fourth, err = run_cli(capsys, *argv)
    assert code == 0 and fourth["cache"] == "miss" and "manifest.json unreadable" in err
    code, fifth, err = run_cli(capsys, *argv)
    assert fifth["cache"] == "hit" and "warning" not in err
    assert _entries(cache_dir) == [folder.name]


def test_an_alteration_that_keeps_size_and_mtime_needs_full_verify(tmp_path):
    cache = Cache(tmp_path)

    def make(tmp):
        tmp.mkdir()
        (tmp / "a.bin").write_bytes(b"0123456789")
        return {"rows": 10}

    cache.build("d", "k", make)
    f = cache.path("d", "k") / "a.bin"
    st = f.stat()
    f.write_bytes(b"0123456780")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # a forged mtime: fast lookups trust it
    assert cache.lookup("d", "k") is not None
    assert Cache(tmp_path, verify="full").lookup("d", "k") is None
    _, hit = Cache(tmp_path, verify="full").build("d", "k", make)
    assert not hit and f.read_bytes() == b"0123456789"


# ---------------------------------------------------------------- bad input through the command line


def _error_lines(err: str) -> list[str]:
    """The `fastray: error:` lines; no traceback from fastray's own process (lines that Ray
    relays from its worker processes carry a `(name pid=N)` prefix and are not ours)."""
    own = [l for l in err.splitlines() if not re.search(r"^(\x1b\[\d+m)?\(\S+ pid=\d+", l)]
    assert not any(l.startswith("Traceback") for l in own), err[-3000:]
    return [l for l in own if l.startswith("fastray: error:")]


def test_bad_images_are_counted_skips_or_one_line_errors(cifar_tiny, tmp_path, workdir, ray_session, capsys):
    import shutil

    data = tmp_path / "cifar10"
    shutil.copytree(cifar_tiny, data)
    dogs = sorted((data / "train" / "dog").iterdir())
    dogs[0].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    dogs[1].write_bytes(dogs[1].read_bytes()[:50])  # truncated
    dogs[2].write_bytes(b"")  # zero bytes
    argv = ["preprocess", "cifar10-darknet", "--data", str(data), "--config", "tiny", "--cache-dir", str(workdir / "c")]
    code, _, err = run_cli(capsys, *argv, "--on-bad-input", "fail")
    [line] = _error_lines(err)
    assert code == 1 and "/train/dog/" in line and ": not a readable image (" in line
    assert not list((workdir / "c").glob("cifar10-*"))
    code, obj, err = run_cli(capsys, *argv)  # the default policy: skip and count
    assert code == 0 and obj["skipped"] == {"train": 3, "valid": 0} and obj["rows"]["train"] == 247
    [warning] = [l for l in err.splitlines() if "skipped 3 unreadable image(s) of 250, e.g. " in l]
    assert warning.count("/train/dog/") == 3 and ": not a readable image (" in warning, err  # the three, named
    # that build is a cache hit for the same data under fail too (the key holds no policy): refused, and kept
    code, _, err = run_cli(capsys, *argv, "--on-bad-input", "fail")
    [line] = _error_lines(err)
    assert code == 1 and ("--on-bad-input fail: this data has 3 bad input(s), skipped when its cache entry was built "
                          "(train: 3 unreadable image)") in line, err
    assert len(list((workdir / "c").glob("cifar10-*"))) == 1


def test_bad_reviews_are_counted_skips_or_one_line_errors(tmp_path, workdir, ray_session, capsys):
    data = tmp_path / "aclImdb"
    imdb_samples.imdb(data, size=80, unsup=0, seed=3)
    review = sorted((data / "train" / "pos").iterdir())[0]
    review.write_bytes(b"caf\xe9 au lait \xff")  # not UTF-8
    sorted((data / "test" / "neg").iterdir())[0].write_text(" <br /><br /> ")  # empty once cleaned
    argv = ["preprocess", "imdb-lm", "--data", str(data), "--config", "tiny", "--cache-dir", str(workdir / "c")]
    code, _, err = run_cli(capsys, *argv, "--on-bad-input", "fail")
    [line] = _error_lines(err)
    assert code == 1 and (f"{review}: not UTF-8 text (byte 0xe9 at offset 3)" in line or ": empty document" in line)
    code, obj, err = run_cli(capsys, *argv)
    assert code == 0 and obj["skipped"] == {"train": 1, "valid": 1}


@pytest.mark.parametrize("case", ["cifar-class-folder", "imdb-label-folder", "hostile-pickle", "not-a-batch"])
def test_bad_layouts_are_one_line_errors(case, cifar_tiny, tmp_path, workdir, ray_session, capsys):
    import pickle
    import shutil

    import numpy as np

    if case == "cifar-class-folder":
        data = tmp_path / "cifar10"
        shutil.copytree(cifar_tiny, data)
        (data / "test" / "zebra").mkdir()  # a label folder that train/ lacks
        argv, want = ["cifar10-darknet"], "test/zebra: class folder not in"
    elif case == "imdb-label-folder":
        data = tmp_path / "aclImdb"
        imdb_samples.imdb(data, size=20, unsup=0, seed=3)
        shutil.rmtree(data / "test" / "pos")
        argv, want = ["imdb-lm"], "test/pos: missing (expected"
    else:
        data = tmp_path / "cifar-10-batches-py"
        data.mkdir()
        good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        for name in ("data_batch_1", "test_batch"):
            (data / name).write_bytes(pickle.dumps(good))
        hostile = pickle.dumps({b"data": _RunsCode(str(tmp_path / "pwned")), b"labels": [0]})
        (data / "data_batch_1").write_bytes(hostile if case == "hostile-pickle" else b"\x80\x04K\x01.")
        argv, want = ["cifar10-darknet"], ("data_batch_1: not a CIFAR-10 pickle batch (UnpicklingError: refused to load posix.system"
                                            if case == "hostile-pickle" else "data_batch_1: not a CIFAR-10 pickle batch (ValueError: a int, not a dict)")
    code, _, err = run_cli(capsys, "preprocess", *argv, "--data", str(data), "--config", "tiny",
                           "--cache-dir", str(workdir / "c"))
    [line] = _error_lines(err)
    assert code == 1 and want in line, line
    assert not (tmp_path / "pwned").exists()


class _RunsCode:
    """Unpickling this runs a shell command (what a hostile CIFAR batch could do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- downloads


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def _tgz(entries: list[tuple[str, bytes | None, dict]]) -> bytes:
    """A gzipped tar from (name, content or None for a dir, TarInfo attributes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            for k, v in attrs.items():
                setattr(info, k, v)
            if content is None and "type" not in attrs:
                info.type = tarfile.DIRTYPE
            if content is not None:
                info.size = len(content)
            info.mode = 0o755 if info.isdir() else 0o644
            tf.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _cifar_tgz() -> bytes:
    """fast.ai's CIFAR-10 layout in miniature: cifar10/{train,test}/<class>/*.png."""
    entries = [("cifar10", None, {})]
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            entries.append((f"cifar10/{split}/{cls}", None, {}))
            entries += [(f"cifar10/{split}/{cls}/{i}.png", _png(hash((split, cls, i)) % 1000), {}) for i in range(3)]
    entries.append(("cifar10/labels.txt", b"cat\ndog\n", {}))
    return _tgz(entries)


def _download(*argv: str) -> dict:
    parser = argparse.ArgumentParser(prog="fastray")
    add_parser(parser.add_subparsers(dest="command"))
    return cmd_download(parser.parse_args(["download", *argv]))


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_download_checks_extracts_and_the_reader_reads_it(server, tmp_path, capsys):
    from preprocessing.images import find_cifar10

    body = _cifar_tgz()
    server.files["/cifar10.tgz"] = body
    md5 = hashlib.md5(body).hexdigest()
    out = tmp_path / "data"
    res = _download("cifar10", "--out", str(out), "--url", f"{server.url}/cifar10.tgz", "--checksum", f"md5:{md5}")
    assert res["status"] == "downloaded" and res["files"][0]["checked"] == "md5" and res["files"][0]["md5"] == md5
    assert res["extracted"] == ["cifar10"] and res["data"] == str(out / "cifar10")
    src = find_cifar10(res["data"])
    assert src.classes == ["cat", "dog"] and len(src.splits["train"]) == 6
    assert not (out / ".downloads").exists()  # the archive is removed once extracted
    assert "cifar10.tgz: " in capsys.readouterr().err  # progress on stderr
    again = _download("cifar10", "--out", str(out), "--url", f"{server.url}/cifar10.tgz")
    assert again["status"] == "present" and len(server.requests) == 1
    # another address is another download: it was answered "present" from the first one's record
    server.files["/mirror/cifar10.tgz"] = body
    other = _download("cifar10", "--out", str(out), "--url", f"{server.url}/mirror/cifar10.tgz", "--checksum", f"md5:{md5}")
    assert other["status"] == "downloaded" and server.requests[-1][0] == "/mirror/cifar10.tgz"
    # no --url: the data set is there, wherever it came from (offline too: nothing is fetched)
    assert _download("cifar10", "--out", str(out))["status"] == "present" and len(server.requests) == 2


def test_a_page_served_for_the_archive_is_refused_and_nothing_kept(server, tmp_path):
    """With no checksum to catch it, an error page was "extracted" as a copied file and
    recorded as the data set, so every later command answered "already in"."""
    server.files["/cifar10.tgz"] = b"<!DOCTYPE html><html><body>Access denied</body></html>"
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"cifar10.tgz: not a tar or zip archive \(it begins b'<!DOCTYPE html>"):
        _download("cifar10", "--out", str(out), "--url", f"{server.url}/cifar10.tgz", "--checksum", "none")
    assert not out.exists()  # nothing kept: not even the --out folder this command made


def test_a_wrong_checksum_is_refused_and_nothing_kept(server, tmp_path):
    server.files["/cifar10.tgz"] = _cifar_tgz()
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"cifar10.tgz: md5 [0-9a-f]{32}, expected 0{32} \(published by --checksum\)"):
        _download("cifar10", "--out", str(out), "--url", f"{server.url}/cifar10.tgz", "--checksum", "md5:" + "0" * 32)
    assert _files_under(out) == set()  # no archive, no part, nothing extracted, no empty .downloads/


def test_the_published_checksum_applies_to_a_mirror(server, tmp_path):
    server.files["/m/cifar10.tgz"] = _cifar_tgz()
    with pytest.raises(DataError, match=r"cifar10.tgz: \d+ bytes, expected 168168549 \(published by fast.ai"):
        _download("cifar10", "--out", str(tmp_path / "d"), "--url", f"{server.url}/m/")


@pytest.mark.parametrize("honour_range", [True, False])
def test_a_dropped_download_resumes(server, tmp_path, honour_range):
    body = _cifar_tgz()
    server.files["/cifar10.tgz"] = body
    server.cut_once.add("/cifar10.tgz")
    server.honour_range = honour_range
    res = _download("cifar10", "--out", str(tmp_path / "d"), "--url", f"{server.url}/cifar10.tgz",
                    "--checksum", f"sha256:{hashlib.sha256(body).hexdigest()}")
    assert res["files"][0]["checked"] == "sha256" and res["files"][0]["bytes"] == len(body)
    ranges = [r for _, r in server.requests]
    half = len(body) // 2
    assert ranges == [None, f"bytes={half}-"]  # the second request asks for the rest only


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    body = _cifar_tgz()
    server.files["/cifar10.tgz"] = body
    downloads = tmp_path / "d" / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / "cifar10.tgz.part").write_bytes(body[:1000])
    res = _download("cifar10", "--out", str(tmp_path / "d"), "--url", f"{server.url}/cifar10.tgz",
                    "--checksum", f"md5:{hashlib.md5(body).hexdigest()}")
    assert res["files"][0]["resumed_from"] == 1000 and server.requests == [("/cifar10.tgz", "bytes=1000-")]


def test_a_local_copy_and_a_kaggle_only_data_set(tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/car1_01.jpg", b"jpeg")
    masks = tmp_path / "train_masks.zip"
    with zipfile.ZipFile(masks, "w") as zf:
        zf.writestr("train_masks/car1_01_mask.gif", b"gif")
    with pytest.raises(DataError, match="carvana is on Kaggle only"):
        _download("carvana", "--out", str(tmp_path / "c"))
    res = _download("carvana", "--out", str(tmp_path / "c"), "--url", str(archive), "--url", masks.as_uri())
    assert res["extracted"] == ["train", "train_masks"] and res["files"][0]["checked"] == "none"
    assert (tmp_path / "c" / "train_masks" / "car1_01_mask.gif").read_bytes() == b"gif"
    with pytest.raises(KeyError, match="unknown data set or pipeline 'mnist'"):
        _download("mnist", "--out", str(tmp_path / "m"))


def test_every_pipeline_data_set_has_an_address():
    from preprocessing.download import resolve

    pipelines = {n: registry.entry(n).dataset for n in registry.names()}
    for name, dataset in pipelines.items():
        ds = resolve(name, pipelines)
        src = ds.sources[ds.default]
        assert all(r.url for r in src.files) or ds.manual, name
    for ds in DATASETS.values():
        for src in ds.sources.values():
            for r in src.files:
                assert r.url.startswith(("https://", "http://")) or (not r.url and ds.manual)
                assert r.md5 is None or len(r.md5) == 32


def test_a_host_that_does_not_resolve_is_one_line_at_once_and_leaves_nothing(tmp_path, capsys):
    """No network (or a mistyped host): no retries with a backoff, no empty .downloads/ left;
    the line says how to go on without network."""
    code, _, err = run_cli(capsys, "download", "cifar10", "--out", str(tmp_path / "d"),
                           "--url", "http://fastray-no-such-host.invalid/cifar10.tgz", "--checksum", "none")
    [line] = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and "cannot resolve fastray-no-such-host.invalid" in line and "--url PATH" in line, err
    assert "retrying" not in err and "resuming" not in err  # it retried three times, with 1 + 2 + 4 s of backoff
    assert not (tmp_path / "d" / ".downloads").exists()


def test_download_through_the_cli(server, tmp_path, capsys):
    body = _cifar_tgz()
    server.files["/cifar10.tgz"] = body
    code, obj, err = run_cli(capsys, "download", "cifar10-darknet", "--out", str(tmp_path / "d"),
                             "--url", f"{server.url}/cifar10.tgz", "--checksum", f"md5:{hashlib.md5(body).hexdigest()}")
    assert code == 0 and obj["dataset"] == "cifar10" and obj["status"] == "downloaded", err
    server.files["/evil.tgz"] = _escapes(tmp_path)["dotdot"]
    code, _, err = run_cli(capsys, "download", "cifar10", "--out", str(tmp_path / "e"), "--url", f"{server.url}/evil.tgz",
                           "--checksum", "none")
    [line] = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and "refused: member '../outside.txt' leaves the target folder" in line and "Traceback" not in err
    assert not (tmp_path / "outside.txt").exists()


# ---------------------------------------------------------------- safe extraction


def _escapes(tmp_path: Path) -> dict[str, bytes]:
    outside = str(tmp_path / "outside.txt")
    return {
        "dotdot": _tgz([("ok.txt", b"fine", {}), ("../outside.txt", b"pwned", {})]),
        "absolute": _tgz([("ok.txt", b"fine", {}), (outside, b"pwned", {})]),
        "symlink-out": _tgz([("ok.txt", b"fine", {}), ("link", None, {"type": tarfile.SYMTYPE, "linkname": "../"}),
                             ("link/outside.txt", b"pwned", {})]),
        "symlink-absolute": _tgz([("link", None, {"type": tarfile.SYMTYPE, "linkname": str(tmp_path)})]),
        "symlink-chain": _tgz([("here", None, {"type": tarfile.SYMTYPE, "linkname": "."}),
                               ("sub", None, {}),
                               ("sub/up", None, {"type": tarfile.SYMTYPE, "linkname": "../here/.."})]),
        "hardlink-out": _tgz([("hard", None, {"type": tarfile.LNKTYPE, "linkname": "../outside.txt"})]),
        "hardlink-absolute": _tgz([("hard", None, {"type": tarfile.LNKTYPE, "linkname": outside})]),
        "device": _tgz([("null", None, {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})]),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-out", "symlink-absolute", "symlink-chain",
                                  "hardlink-out", "hardlink-absolute", "device", "zip-dotdot", "zip-absolute"])
def test_an_escaping_archive_is_refused_whole(tmp_path, case):
    box = tmp_path / "box"  # everything the test makes stays in box/; the target is box/target
    box.mkdir()
    archive = box / "evil.tgz"
    if case.startswith("zip"):
        archive = box / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ok.txt", b"fine")
            zf.writestr(zipfile.ZipInfo("../outside.txt" if case == "zip-dotdot" else str(box / "outside.txt")), b"pwned")
    else:
        archive.write_bytes(_escapes(box)[case])
    before = _files_under(tmp_path)
    with pytest.raises(UnsafeArchive, match=r"evil\.(tgz|zip): refused: .*"):
        extract(archive, box / "target")
    after = _files_under(tmp_path)
    assert after - before <= {"box/target"} and _files_under(box / "target") == set()  # nothing extracted at all


def test_the_escape_archive_over_http_writes_nothing_outside(server, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    server.files["/cifar10.tgz"] = _escapes(box)["symlink-out"]
    before = _files_under(tmp_path)
    with pytest.raises(UnsafeArchive, match=r"cifar10.tgz: refused: symlink 'link' -> '../' points out of the target"):
        _download("cifar10", "--out", str(box / "target"), "--url", f"{server.url}/cifar10.tgz", "--checksum", "none")
    assert not (box / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()
    new = _files_under(tmp_path) - before
    assert new <= {"box/target", "box/target/.downloads", "box/target/.downloads/cifar10.tgz"}, new


def test_links_inside_the_target_are_kept(tmp_path):
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(_tgz([("d", None, {}), ("d/a.txt", b"A", {}),
                              ("d/b.txt", None, {"type": tarfile.SYMTYPE, "linkname": "a.txt"}),
                              ("c.txt", None, {"type": tarfile.LNKTYPE, "linkname": "d/a.txt"})]))
    extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / "d" / "b.txt").read_text() == "A" and (tmp_path / "t" / "c.txt").read_text() == "A"
