"""Pretrained weights (preprocessing/pretrained.py) and `fastray download resnet34|vgg16`,
against a local HTTP server that serves small state dicts named as torchvision names its
files (<arch>-<sha256 prefix>.pth); TORCH_HOME is a fresh folder, so the hub cache is empty."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from pipelines.__main__ import main
from preprocessing import pretrained
from preprocessing.pretrained import Weights
from tests.http_files import FileServer, file_server, unreachable_url  # noqa: F401 (file_server: a fixture)


def _state_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed))}, buf)
    return buf.getvalue()


class Served:
    """resnet34's table entry replaced by a small file the server holds under /models/."""

    def __init__(self, server: FileServer, body: bytes, monkeypatch):
        self.server, self.body = server, body
        self.sha256 = hashlib.sha256(body).hexdigest()
        self.w = Weights("resnet34", f"resnet34-{self.sha256[:8]}.pth", "ResNet34_Weights.IMAGENET1K_V1")
        monkeypatch.setitem(pretrained.WEIGHTS, "resnet34", self.w)
        server.files[f"/models/{self.w.file}"] = body

    @property
    def requests(self) -> list:
        return self.server.requests


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; the weights' base address is the test's to set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def served(file_server, hub, monkeypatch) -> Served:
    monkeypatch.setenv(pretrained.URL_ENV, file_server.url + "/models/")
    return Served(file_server, _state_bytes(), monkeypatch)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_the_table_is_torchvisions_own(monkeypatch):
    """Each entry's file, address and hash prefix are what torchvision publishes."""
    from torchvision.models import get_weight

    monkeypatch.delenv(pretrained.URL_ENV, raising=False)
    for w in pretrained.WEIGHTS.values():
        published = get_weight(w.published)
        assert w.url == published.url == pretrained.BASE_URL + w.file
        assert w.sha256_prefix == torch.hub.HASH_REGEX.search(w.file).group(1) and len(w.sha256_prefix) == 8


def test_auto_fetches_into_the_hub_cache_once(served, hub):
    got = pretrained.resolve("auto", "resnet34")
    assert got.path == hub / served.w.file and got.path.read_bytes() == served.body
    assert got.sha256 == served.sha256 and got.source == f"torchvision:{served.w.file}"
    assert got.tags("fastray.init") == {"fastray.init": f"torchvision:{served.w.file}",
                                        "fastray.init.sha256": served.sha256, "fastray.init.path": str(got.path)}
    assert _listing(hub) == {served.w.file}  # no .part, no .lock left behind
    assert pretrained.resolve("auto", "resnet34") == got and len(served.requests) == 1  # a second run fetches nothing
    assert pretrained.locate("auto", "resnet34") == got.path and len(served.requests) == 1


def test_a_wrong_hash_is_refused_and_nothing_kept(served, hub):
    served.server.files[f"/models/{served.w.file}"] = _state_bytes(seed=1)  # not the file its name promises
    with pytest.raises(FileNotFoundError) as e:
        pretrained.resolve("auto", "resnet34")
    msg = str(e.value)
    assert "\n" not in msg and f"{served.w.file}: sha256 " in msg and f"expected {served.sha256[:8]}..." in msg
    assert f"fastray download resnet34 --out DIR` and pass --set pretrained=DIR/{served.w.file}" in msg
    assert _listing(hub) == set()


def test_a_cached_file_with_the_wrong_hash_is_refused(served, hub):
    hub.mkdir(parents=True)
    (hub / served.w.file).write_bytes(_state_bytes(seed=2))
    with pytest.raises(ValueError, match=f"not torchvision's {served.w.file} .*delete it to download it again"):
        pretrained.resolve("auto", "resnet34")
    assert served.requests == []


def test_an_unreachable_server_is_one_line_within_seconds(served, hub, monkeypatch):
    url = unreachable_url()
    monkeypatch.setenv(pretrained.URL_ENV, url)
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError) as e:
        pretrained.resolve("auto", "resnet34")
    assert time.monotonic() - t0 < 10  # RETRIES=2: 1 s and 2 s apart
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"pretrained=auto needs {served.w.file} (torchvision's "
                                              f"ResNet34_Weights.IMAGENET1K_V1) from {url}{served.w.file}: ")
    assert "Connection refused" in msg and f"--set pretrained=DIR/{served.w.file}" in msg
    assert _listing(hub) == set()


def test_a_dropped_transfer_resumes(served, hub):
    served.server.cut_once.add(f"/models/{served.w.file}")
    got = pretrained.resolve("auto", "resnet34")
    assert got.path.read_bytes() == served.body
    half = len(served.body) // 2
    assert [r for _, r in served.requests] == [None, f"bytes={half}-"]  # the retry asks for the rest only


def test_a_part_file_from_a_killed_run_is_resumed(served, hub):
    hub.mkdir(parents=True)
    (hub / f"{served.w.file}.part").write_bytes(served.body[:100])
    got = pretrained.resolve("auto", "resnet34")
    assert got.sha256 == served.sha256 and [r for _, r in served.requests] == ["bytes=100-"]
    assert _listing(hub) == {served.w.file}


def test_two_runs_starting_at_once_fetch_once(served, hub):
    served.server.delay = 0.3  # both are waiting before the first transfer ends
    got, errors = [], []

    def run():
        try:
            got.append(pretrained.resolve("auto", "resnet34"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 2 and got[0] == got[1] and len(served.requests) == 1


def test_a_worker_locates_and_never_downloads(served, hub):
    with pytest.raises(FileNotFoundError) as e:
        pretrained.locate("auto", "resnet34")
    assert "no such file on this node" in str(e.value) and "TORCH_HOME" in str(e.value)
    assert served.requests == []


def test_specs_none_and_a_file(tmp_path, monkeypatch, hub):
    assert pretrained.resolve("none", "resnet34") is None and pretrained.locate("none", "resnet34") is None
    assert pretrained.weights_spec(" AUTO ") == "auto"
    with pytest.raises(ValueError, match="pretrained is empty: expected auto, none or a weights file"):
        pretrained.weights_spec("")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.pth").write_bytes(_state_bytes())
    spec = pretrained.weights_spec("mine.pth")
    assert spec == str(tmp_path / "mine.pth")  # absolute: Ray workers run in other folders
    got = pretrained.resolve(spec, "resnet34")
    assert got.source == "file:mine.pth" and got.sha256 == hashlib.sha256(_state_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match=r"pretrained /no/r34.pth: no such file$"):
        pretrained.resolve("/no/r34.pth", "resnet34")
    with pytest.raises(FileNotFoundError, match="no such file on this node"):
        pretrained.locate("/no/r34.pth", "resnet34")


# ---------------------------------------------------------------- fastray download NAME


def _cli(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def test_download_weights_for_offline_nodes(served, hub, tmp_path, capsys):
    out = tmp_path / "weights"
    code, obj, err = _cli(capsys, "download", "resnet34", "--out", str(out))
    dest = out / served.w.file
    assert code == 0, err
    assert obj["status"] == "downloaded" and obj["file"] == str(dest) and obj["sha256"] == served.sha256
    assert obj["use"] == f"--set pretrained={dest}" and dest.read_bytes() == served.body
    assert _listing(out) == {served.w.file} and _listing(hub) == set()  # DIR, not the hub cache
    code, obj, _ = _cli(capsys, "download", "resnet34", "--out", str(out))
    assert code == 0 and obj["status"] == "present" and len(served.requests) == 1
    # a run on an offline node: the file by path, its hash in the tags
    assert pretrained.resolve(str(dest), "resnet34").tags("fastray.init")["fastray.init.sha256"] == served.sha256
    # or from a local copy of the file (--url a folder), as from a mirror
    code, obj, err = _cli(capsys, "download", "resnet34", "--out", str(tmp_path / "again"), "--url", str(out))
    assert code == 0 and obj["sha256"] == served.sha256 and len(served.requests) == 1, err


def test_download_weights_refuses_a_wrong_file(served, hub, tmp_path, capsys):
    served.server.files[f"/models/{served.w.file}"] = _state_bytes(seed=3)
    code, obj, err = _cli(capsys, "download", "resnet34", "--out", str(tmp_path / "w"))
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and f"expected {served.sha256[:8]}..." in lines[0], err
    assert _listing(tmp_path / "w") == set()
    code, obj, err = _cli(capsys, "download", "resnet34", "--out", str(tmp_path / "w"), "--checksum", "none")
    assert code == 1 and "--source and --checksum are for data sets" in obj["error"]


def test_vgg16_says_how_to_pass_it(file_server, hub, tmp_path, capsys, monkeypatch):
    body = _state_bytes(seed=4)
    w = Weights("vgg16", f"vgg16-{hashlib.sha256(body).hexdigest()[:8]}.pth", "VGG16_Weights.IMAGENET1K_V1")
    monkeypatch.setitem(pretrained.WEIGHTS, "vgg16", w)
    monkeypatch.setenv(pretrained.URL_ENV, file_server.url + "/m/")
    file_server.files[f"/m/{w.file}"] = body
    code, obj, err = _cli(capsys, "download", "vgg16", "--out", str(tmp_path))
    assert code == 0 and obj["use"] == f"--set vgg_weights={tmp_path / w.file}", err
