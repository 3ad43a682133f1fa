"""The readers take regular files only (issue 20, items 6 and 9): a FIFO named like a data
file used to hang preprocessing (the reader opened it and waited for a writer), a dangling
symlink aborted the run with "[Errno 2] No such file or directory". Now an entry that is not
a regular file is judged by stat, never opened: under --on-bad-input skip a counted skip
(its reason in the manifest's "bad_input"), under fail a one-line DataError naming it; a file
the user names that is not a regular file is a one-line DataError.

Each call that could block runs in a thread that must end within LIMIT seconds (a bound on
hanging, not a speed test); should it block, the test opens the FIFOs for writing so that the
reader gets end-of-file and the session goes on."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import preprocessing
from preprocessing import DataError, file_problem, read_regular, regular_file
from preprocessing.cache import Cache

LIMIT = 60  # seconds a reader may take on this tiny data before it counts as blocked


def bounded(fn, *args, fifos=(), **kwargs):
    """fn(*args, **kwargs), run in a thread that must end within LIMIT seconds."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(LIMIT)
    if t.is_alive():
        for f in fifos:  # a reader blocked on a FIFO gets end-of-file
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(10)
        pytest.fail(f"{getattr(fn, '__name__', fn)} was still running after {LIMIT} s (blocked on a FIFO?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def one_line_error(fn, *args, fifos=(), **kwargs) -> str:
    """The message of the DataError that fn raises, checked to be one line."""
    with pytest.raises(DataError) as e:
        bounded(fn, *args, fifos=fifos, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def plant(folder: Path, fifo: str, dangling: str) -> tuple[Path, Path]:
    """A FIFO and a symlink to a file that does not exist, in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / fifo)
    os.symlink(folder / "no-such-target", folder / dangling)
    return folder / fifo, folder / dangling


def png(path: Path, seed: int = 0, size: int = 8) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- the one check


def test_file_problem_judges_by_stat_alone(tmp_path):
    fifo, dangling = plant(tmp_path, "f.png", "d.png")
    real = png(tmp_path / "r.png")
    os.symlink(real, tmp_path / "link.png")
    (tmp_path / "dir.png").mkdir()
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    got = {p.name: file_problem(p) for p in sorted(tmp_path.iterdir())}
    assert got == {"d.png": "dangling symlink", "dir.png": "folder", "f.png": "FIFO", "link.png": None,
                   "loop.png": "symlink loop", "r.png": None}
    assert file_problem(tmp_path / "absent.png") == "missing" and file_problem("/dev/null") == "device"
    assert regular_file(tmp_path / "link.png") == tmp_path / "link.png"
    assert "f.png: not a regular file (a FIFO)" in one_line_error(regular_file, fifo, fifos=[fifo])
    assert "d.png: a dangling symlink" in one_line_error(regular_file, dangling)


def test_read_regular_never_waits_on_a_fifo(tmp_path, monkeypatch):
    fifo, _ = plant(tmp_path, "f.txt", "d.txt")
    assert "f.txt: not a regular file (a FIFO)" in one_line_error(read_regular, fifo, fifos=[fifo])
    # a FIFO swapped in after the stat check: opened non-blocking, refused by fstat
    monkeypatch.setattr(preprocessing, "file_problem", lambda path: None)
    assert "f.txt: not a regular file (a FIFO)" in one_line_error(read_regular, fifo, fifos=[fifo])


# ---------------------------------------------------------------- CIFAR-10, PNG folders


def cifar_folders(root: Path) -> tuple[Path, Path, Path]:
    """train/{cat,dog}/ 3 PNGs each, test/{cat,dog}/ 1 each; in train/cat a FIFO, a
    dangling symlink and a folder, all named *.png. (root, fifo, dangling)."""
    for i, cls in enumerate(("cat", "dog")):
        for j in range(3):
            png(root / "train" / cls / f"{j}.png", seed=10 * i + j)
        png(root / "test" / cls / "0.png", seed=100 + i)
    fifo, dangling = plant(root / "train" / "cat", "a_fifo.png", "b_dangling.png")
    (root / "train" / "cat" / "c_folder.png").mkdir()
    return root, fifo, dangling


def test_cifar_folders_list_regular_files_only(tmp_path):
    from preprocessing.images import find_cifar10

    root, fifo, dangling = cifar_folders(tmp_path / "cifar10")
    os.symlink(root / "train" / "dog" / "0.png", root / "train" / "dog" / "9_link.png")  # a good link is used
    src = bounded(find_cifar10, root, fifos=[fifo])
    assert src.count("train") == 7 and src.count("valid") == 2
    assert sorted((Path(p).name, r) for p, r in src.unusable["train"]) == [
        ("a_fifo.png", "FIFO"), ("b_dangling.png", "dangling symlink"), ("c_folder.png", "folder")]
    assert src.unusable["valid"] == []


def test_cifar_folders_skip_counts_and_fail_names_the_fifo(tmp_path, ray_session, capfd):
    from preprocessing.images import find_cifar10, preprocess_images

    root, fifo, dangling = cifar_folders(tmp_path / "cifar10")
    cache = Cache(tmp_path / "cache")
    msg = one_line_error(preprocess_images, find_cifar10(root), (8,), cache, "cifar10", on_bad="fail", fifos=[fifo])
    assert msg == f"{fifo}: not a regular file (a FIFO)"
    assert not cache.root.exists() or not any(cache.root.glob("cifar10-*"))  # nothing made

    manifest, hit = bounded(preprocess_images, find_cifar10(root), (8,), cache, "cifar10", fifos=[fifo])
    assert not hit and manifest["rows"] == {"train": 6, "valid": 2}
    assert manifest["skipped"] == {"train": 3, "valid": 0}
    assert manifest["bad_input"] == {"train": {"FIFO": 1, "dangling symlink": 1, "folder": 1}, "valid": {}}
    err = capfd.readouterr().err
    assert "train: skipped 3 listed entries that are not a regular file (1 FIFO, 1 dangling symlink, 1 folder)" in err
    # a warm run says it again, and `fail` does not pass what the build skipped
    m2, hit2 = bounded(preprocess_images, find_cifar10(root), (8,), cache, "cifar10", fifos=[fifo])
    assert hit2 and m2["skipped"] == manifest["skipped"] and "train: skipped 3 listed entries" in capfd.readouterr().err
    assert "a_fifo.png" in one_line_error(preprocess_images, find_cifar10(root), (8,), cache, "cifar10", on_bad="fail")


def test_cifar_pickle_batch_that_is_a_fifo_is_named(tmp_path):
    from preprocessing.images import find_cifar10

    d = tmp_path / "cifar-10-batches-py"
    fifo, _ = plant(d, "data_batch_1", "unrelated")
    (d / "test_batch").write_bytes(b"")
    assert one_line_error(find_cifar10, tmp_path, fifos=[fifo]) == f"{fifo}: not a regular file (a FIFO)"


# ---------------------------------------------------------------- IMDb, aclImdb


def test_imdb_lists_regular_files_only(imdb_copy):
    from preprocessing.text.readers import find_imdb

    fifo, dangling = plant(imdb_copy / "train" / "pos", "a_fifo.txt", "b_dangling.txt")
    (imdb_copy / "test" / "neg" / "c_folder.txt").mkdir()
    src = bounded(find_imdb, imdb_copy, fifos=[fifo])
    assert [len(src.splits[s]) for s in ("train", "valid", "unsup")] == [200, 200, 200]
    assert src.unusable == {"train": [(str(fifo), "FIFO"), (str(dangling), "dangling symlink")],
                            "valid": [(str(imdb_copy / "test" / "neg" / "c_folder.txt"), "folder")], "unsup": []}


def test_imdb_tokenize_skip_counts_and_fail_names_the_fifo(imdb_copy, tmp_path, ray_session, capfd):
    from preprocessing.text.encoding import tokenize
    from preprocessing.text.readers import find_imdb

    fifo, dangling = plant(imdb_copy / "train" / "pos", "a_fifo.txt", "b_dangling.txt")
    cache = Cache(tmp_path / "c")
    msg = one_line_error(tokenize, find_imdb(imdb_copy), cache, on_bad="fail", vocab_size=300, sample_docs=300,
                         fifos=[fifo])
    assert msg == f"{fifo}: not a regular file (a FIFO)"
    assert not any(cache.root.glob("tokens-*"))  # stopped before SentencePiece and Ray

    manifest, _ = bounded(tokenize, find_imdb(imdb_copy), cache, vocab_size=300, sample_docs=300, fifos=[fifo])
    assert manifest["rows"] == {"train": 200, "valid": 200, "unsup": 200}
    assert manifest["skipped"] == {"train": 2, "valid": 0, "unsup": 0}
    assert manifest["bad_input"]["train"] == {"FIFO": 1, "dangling symlink": 1}
    assert "train: skipped 2 listed entries that are not a regular file (1 FIFO, 1 dangling symlink)" \
        in capfd.readouterr().err


# ---------------------------------------------------------------- Pascal VOC


def test_voc_skip_counts_and_fail_names_the_fifo(tmp_path, ray_session, capfd):
    from preprocessing.samples.pascal import SAMPLE_CLASSES, pascal
    from preprocessing.voc import find_pascal, preprocess_pascal

    pascal(tmp_path / "pascal", size=8, seed=3)
    voc = tmp_path / "pascal" / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()
    n_train = len(ids)
    jpeg, xml = voc / "JPEGImages" / f"{ids[0]}.jpg", voc / "Annotations" / f"{ids[1]}.xml"
    jpeg.unlink()
    os.mkfifo(jpeg)  # a listed JPEG that is a FIFO
    xml.unlink()
    os.symlink(voc / "Annotations" / "gone.xml", xml)  # a listed annotation that is a dangling symlink
    cache = Cache(tmp_path / "c")
    kw = dict(sizes=(16,), classes=tuple(SAMPLE_CLASSES))
    msg = one_line_error(preprocess_pascal, find_pascal(tmp_path / "pascal", "voc"), cache=cache, on_bad="fail",
                         fifos=[jpeg], **kw)
    assert msg == f"{jpeg}: not a regular file (a FIFO)"

    manifest, hit = bounded(preprocess_pascal, find_pascal(tmp_path / "pascal", "voc"), cache=cache, fifos=[jpeg], **kw)
    assert not hit and manifest["rows"]["train"] == n_train - 2 and manifest["skipped"]["train"] == 2
    assert manifest["bad_input"]["train"] == {"FIFO": 1, "dangling symlink": 1}
    assert f"{xml}: a dangling symlink" in capfd.readouterr().err


# ---------------------------------------------------------------- image folders, GAN folders


def _folder_layouts(tmp_path):
    from preprocessing import gan_data, imagery

    def image_folder_split(root):  # train/ and valid/ sub-folders
        for s in ("train", "valid"):
            for j in range(2):
                png(root / s / f"{j}.png", seed=j)
        return plant(root / "train" / "deep", "a_fifo.png", "b_dangling.png"), imagery.find_image_folder, "train"

    def image_folder_drawn(root):  # one folder, split by a seeded draw
        for j in range(4):
            png(root / f"{j}.png", seed=j)
        return plant(root, "a_fifo.png", "b_dangling.png"), imagery.find_image_folder, None

    def gan_folder(root):
        for j in range(4):
            png(root / "0" / f"{j}.png", seed=j)
        return plant(root / "0", "a_fifo.png", "b_dangling.png"), gan_data.find_image_folder, None

    def gan_unpaired(root):
        for d in ("trainA", "trainB", "testA", "testB"):
            png(root / d / "0.png")
        return plant(root / "trainB", "a_fifo.png", "b_dangling.png"), gan_data.find_unpaired, "train"

    return {f.__name__: f for f in (image_folder_split, image_folder_drawn, gan_folder, gan_unpaired)}


@pytest.mark.parametrize("layout", ["image_folder_split", "image_folder_drawn", "gan_folder", "gan_unpaired"])
def test_image_folders_list_regular_files_only_and_fail_names_the_fifo(tmp_path, layout):
    from preprocessing import gan_data, imagery

    root = tmp_path / "data"
    (fifo, dangling), find, split = _folder_layouts(tmp_path)[layout](root)
    src = bounded(find, root, fifos=[fifo])
    listed = sorted((p, r) for bad in src.unusable.values() for p, r in bad)
    assert listed == [(str(fifo), "FIFO"), (str(dangling), "dangling symlink")]
    if split:
        assert len(src.unusable[split]) == 2
    files = {str(p) for p in src.input_files()}
    assert str(fifo) not in files and str(dangling) not in files
    prep = imagery.preprocess if layout.startswith("image") else gan_data.preprocess
    size = (8,) if layout.startswith("image") else 8
    msg = one_line_error(prep, src, size, Cache(tmp_path / "c"), "x", on_bad="fail", fifos=[fifo])
    assert msg == f"{fifo}: not a regular file (a FIFO)"


def test_carvana_lists_regular_images_and_masks_only(tmp_path):
    from preprocessing import imagery

    root = tmp_path / "carvana"
    for car in ("aaa", "bbb", "ccc"):
        for view in ("01", "02"):
            png(root / "train" / f"{car}_{view}.jpg")
            png(root / "train_masks" / f"{car}_{view}_mask.gif")
    fifo, _ = plant(root / "train", "aaa_03.jpg", "unrelated")
    (root / "train_masks" / "bbb_02_mask.gif").unlink()
    os.symlink(root / "train_masks" / "gone.gif", root / "train_masks" / "bbb_02_mask.gif")
    src = bounded(imagery.find_carvana, root, 0.34, 0, fifos=[fifo])
    listed = sorted((Path(p).name, r) for bad in src.unusable.values() for p, r in bad)
    assert listed == [("aaa_03.jpg", "FIFO"), ("bbb_02_mask.gif", "dangling symlink")]
    assert sum(len(v) for v in src.splits.values()) == 5
    # each is counted in the split of its car
    where = {Path(p).name: s for s, bad in src.unusable.items() for p, _ in bad}
    split_of = {imagery.car_id(i): s for s, items in src.splits.items() for i, _ in items}
    assert where == {"aaa_03.jpg": split_of["aaa"], "bbb_02_mask.gif": split_of["bbb"]}
    msg = one_line_error(imagery.find_carvana, root, 0.34, 0, "fail", fifos=[fifo])
    assert msg == f"{fifo}: not a regular file (a FIFO)"


# ---------------------------------------------------------------- files the user names


def _named_file_cases(tmp_path):
    from preprocessing import imagery, pairs, voc
    from preprocessing.text import readers

    def table(d):
        fifo, _ = plant(d, "reviews.csv", "gone.csv")
        return fifo, lambda: readers.find_table(fifo)

    def table_dangling(d):
        _, dangling = plant(d, "f.tsv", "reviews.tsv")
        return dangling, lambda: readers.find_table({"train": dangling})

    def giga_fren(d):
        fifo, _ = plant(d, "giga-fren.release2.fixed.en", "x")
        (d / "giga-fren.release2.fixed.fr").write_text("Bonjour .\n")
        return fifo, lambda: pairs.find_pairs(d, "fr", "en")

    def giga_fren_valid(d):
        (d / "giga-fren.release2.fixed.en").write_text("Hello .\n")
        (d / "giga-fren.release2.fixed.fr").write_text("Bonjour .\n")
        (d / "valid.en").write_text("Hi .\n")
        _, dangling = plant(d, "x", "valid.fr")
        return dangling, lambda: pairs.find_pairs(d, "fr", "en")

    def pairs_file(d):
        fifo, _ = plant(d, "fra.txt", "x")
        return fifo, lambda: pairs.find_pairs(fifo)

    def pairs_only_fifo(d):
        fifo, _ = plant(d, "fra.tsv", "x")
        return fifo, lambda: pairs.find_pairs(d)

    def wikitext(d):
        fifo, _ = plant(d, "wiki.train.tokens", "x")
        return fifo, lambda: readers.find_wikitext(d)

    def voc_json(d):
        (d / "JPEGImages").mkdir()
        fifo, _ = plant(d, "pascal_train2007.json", "x")
        (d / "pascal_val2007.json").write_text(json.dumps({"images": []}))
        return fifo, lambda: voc.find_pascal(d, "json")

    def style_image(d):
        fifo, _ = plant(d, "style.jpg", "x")
        return fifo, lambda: imagery.load_style(fifo, 8)

    return {f.__name__: f for f in (table, table_dangling, giga_fren, giga_fren_valid, pairs_file, pairs_only_fifo,
                                    wikitext, voc_json, style_image)}


@pytest.mark.parametrize("case", ["table", "table_dangling", "giga_fren", "giga_fren_valid", "pairs_file",
                                  "pairs_only_fifo", "wikitext", "voc_json", "style_image"])
def test_a_named_file_that_is_not_regular_is_a_one_line_error(tmp_path, case):
    d = tmp_path / "data"
    d.mkdir()
    bad, call = _named_file_cases(tmp_path)[case](d)
    fifos = [p for p in d.iterdir() if file_problem(p) == "FIFO"]
    msg = one_line_error(call, fifos=fifos)
    assert msg.startswith(f"{bad}: ") or msg.startswith(f"style image {bad}: "), msg
    assert ("not a regular file (a FIFO)" if bad in fifos else "a dangling symlink") in msg
