"""`fastray download NAME --out DIR`: the data sets the pipelines read, from their public
addresses, checked and extracted safely.

- Addresses: fast.ai's S3 copies where the pipeline's reader reads their layout, else the
  publisher's own archive (each data set lists both where both exist: ``--source``).
  Carvana and the Jigsaw toxic comments have no public address (Kaggle only): the command
  says how to get them and then checks and extracts the files given with ``--url`` (the
  Jigsaw zip's inner zips too, and train.csv's and test.csv's columns).
- Checksums: the MD5 and size fast.ai publishes (fastai/data/checks.txt) or torchvision /
  torchtext publish for the original archives; where none is published the result reports
  the sha256 it computed so that a user can pin it with ``--checksum sha256:HEX``.
- Resumable: a download goes to ``DIR/.downloads/<file>.part`` and continues from its size
  with an HTTP Range request (after a dropped connection, up to ``--retries`` times, and
  on the next run of the command); a server that ignores Range is read from the start.
- Progress on stderr; the result (the last stdout line) is one JSON object.
- ``--url`` names a mirror or a local copy (a path or file:// URL) of each file, in order,
  or one folder / base URL ending in ``/`` that holds them all under their own names.
- Safe extraction: every member of an archive is checked before anything is written, and
  an archive with an absolute path, a ``..`` that leaves the target, a symlink or hard link
  pointing out of it, a path through a symlink, or a device file is refused whole. The
  archive is extracted into a temporary folder inside DIR and moved into place at the end,
  so a refused or interrupted extraction leaves no member behind.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from . import DataError

CHUNK = 1 << 20  # bytes read and written at a time
USER_AGENT = "fastray-download/0.1"


@dataclass(frozen=True)
class Remote:
    """One file of a data set: where it is and what it must hash to."""

    name: str                     # the file's name on disk
    url: str = ""                 # "" = no public address (see Dataset.manual)
    size: int | None = None       # bytes, where published
    md5: str | None = None
    sha256: str | None = None
    checksum_by: str = ""         # who published the checksum


@dataclass(frozen=True)
class Source:
    files: tuple[Remote, ...]
    layout: str                   # what the files extract to, and what the readers make of it


@dataclass(frozen=True)
class Dataset:
    name: str
    about: str
    sources: dict[str, Source]
    default: str                  # the source the pipelines' readers read
    aliases: tuple[str, ...] = ()
    manual: str = ""              # how to get it when there is no public address
    data: str = ""                # the folder to pass as --data, relative to DIR ("" = DIR)


_FASTAI = "fast.ai (fastai/data/checks.txt)"


def _published(url: str, size: int | None = None, md5: str | None = None, by: str = "") -> Remote:
    """A file at its public address, named as there, with the size and MD5 that `by` publishes."""
    return Remote(url.rsplit("/", 1)[1], url, size, md5, checksum_by=by)


def _original(url: str, layout: str, size: int | None = None, md5: str | None = None, by: str = "") -> Source:
    """The publisher's own single archive."""
    return Source((_published(url, size, md5, by),), layout)


def _fastai(path: str, size: int, md5: str, layout: str) -> Source:
    """fast.ai's single-archive copy on S3 (path: "<bucket>/<file>"), as fastai's checks.txt lists it."""
    return Source((_published(f"https://s3.amazonaws.com/{path}", size, md5, _FASTAI),), layout)


JIGSAW_COMPETITION = "jigsaw-toxic-comment-classification-challenge"
JIGSAW_COLUMNS = {"train.csv": ("id", "comment_text", "toxic", "severe_toxic", "obscene", "threat", "insult",
                                "identity_hate"),
                  "test.csv": ("id", "comment_text")}

DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset(
        "cifar10", "CIFAR-10, 60,000 32x32 images in 10 classes (lesson 12: Darknet)",
        {
            "fastai": _fastai("fast-ai-sample/cifar10.tgz", 168168549, "a5f8c31371b63a406b23368042812d3c",
                              "cifar10/{train,test}/<class>/*.png and labels.txt: read by images.find_cifar10"),
            "original": _original("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                  "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}: read by images.find_cifar10",
                                  170498071, "c58f30108f718f92721af3b95e74349a", "torchvision"),
        }, "fastai", data="cifar10"),
    Dataset(
        "imdb", "IMDb Large Movie Review Dataset, 50,000 labelled and 50,000 unlabelled reviews (lesson 10: ULMFiT)",
        {
            "fastai": _fastai("fast-ai-nlp/imdb.tgz", 144440600, "90f9b1c4ff43a90d67553c9240dc0249",
                              "imdb/{train,test}/{pos,neg}/*.txt and imdb/unsup/*.txt: read by text.readers.find_imdb"),
            "original": _original("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                                  "aclImdb/{train,test}/{pos,neg}/*.txt and aclImdb/train/unsup/*.txt: read by "
                                  "text.readers.find_imdb", 84125825, "7c2ac02c03563afcf9b574c7e56c153a", "torchtext"),
        }, "fastai", data="imdb"),
    Dataset(
        "wikitext-103", "WikiText-103, 103M tokens of Wikipedia articles (the ULMFiT language model's pretraining)",
        {
            "original": _original("https://wikitext.smerity.com/wikitext-103-v1.zip",
                                  "wikitext-103/wiki.{train,valid,test}.tokens: read by text.readers.find_wikitext",
                                  None, "9ddaacaf6af0710eda8c456decff7832", "torchtext"),
            "fastai": _fastai("fast-ai-nlp/wikitext-103.tgz", 190200704, "2dd8cf8693b3d27e9c8f0a7df054b2c7",
                              "wikitext-103/{train,test}.csv, one article a row without a header: not the token "
                              "files text.find_wikitext reads (text.find_table needs a header row)"),
        }, "original", aliases=("wt103", "wikitext"), data="wikitext-103"),
    Dataset(
        "pascal", "Pascal VOC 2007, 9,963 images with boxes of 20 classes (lessons 8 and 9: detection)",
        {
            "original": Source((
                _published("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
                           None, "c52e279531787c972589f7e41ab4ae64", "torchvision"),
                _published("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
                           None, "b6e924de25625d8de591ea690078ad9f", "torchvision"),
            ), "VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}: read by voc.find_pascal "
               "(a mirror of the same tars: --url https://pjreddie.com/media/files/)"),
            "fastai": _fastai("fast-ai-imagelocal/pascal_2007.tgz", 1637796771, "433b4706eb7c42bd74e7f784e3fdf244",
                              "pascal_2007/{train,test}/*.jpg with {train,valid,test}.json (COCO style): not the "
                              "names voc.find_pascal looks for (pascal_train2007.json beside JPEGImages/)"),
        }, "original", aliases=("pascal_2007", "voc2007"), data="VOCdevkit"),
    Dataset(
        "giga-fren", "WMT's French-English giga-fren corpus, 22.5M sentence pairs (lesson 11: translation)",
        {
            "fastai": _fastai("fast-ai-nlp/giga-fren.tgz", 2598183296, "69573f58e2c850b90f2f954077041d8c",
                              "giga-fren/giga-fren.release2.fixed.{en,fr}, aligned by line"),
            "original": _original("https://www.statmt.org/wmt10/training-giga-fren.tar",
                                  "giga-fren.release2.{en,fr}.gz (gunzip them; no checksum published)"),
        }, "fastai", aliases=("translate", "giga_fren"), data="giga-fren"),
    Dataset(
        "carvana", "Kaggle's Carvana Image Masking Challenge, 5,088 car photos with masks (lesson 14: U-Net)",
        {"kaggle": Source((Remote("train.zip"), Remote("train_masks.zip")),
                          "train/<car>_<view>.jpg and train_masks/<car>_<view>_mask.gif: read by imagery.find_carvana")},
        "kaggle",
        manual=("carvana is on Kaggle only: accept the rules of the competition carvana-image-masking-challenge on "
                "kaggle.com, then `kaggle competitions download -c carvana-image-masking-challenge -f train.zip` "
                "and `-f train_masks.zip`, and check and extract them with "
                "`fastray download carvana --out DIR --url train.zip --url train_masks.zip`"),
    ),
    Dataset(
        "jigsaw-toxic", "Kaggle's Jigsaw Toxic Comment Classification Challenge, 159,571 labelled Wikipedia comments "
                        "with six 0/1 labels and 153,164 to predict (text-lm, text-clas)",
        {"kaggle": Source((Remote(f"{JIGSAW_COMPETITION}.zip"),),
                          "train.csv (id, comment_text, toxic, severe_toxic, obscene, threat, insult, identity_hate) and "
                          "test.csv (id, comment_text), each shipped as a zip inside the zip: read by "
                          "text.tables.find_tables")},
        "kaggle", aliases=("jigsaw", "toxic-comments"),
        manual=(f"jigsaw-toxic is on Kaggle only: accept the rules of the competition {JIGSAW_COMPETITION} on "
                f"kaggle.com, then `kaggle competitions download -c {JIGSAW_COMPETITION}`, and check and extract it "
                f"with `fastray download jigsaw-toxic --out DIR --url {JIGSAW_COMPETITION}.zip`"),
    ),
    Dataset(
        "horse2zebra", "CycleGAN's horse2zebra, unpaired horse and zebra photos (lesson 14: CycleGAN)",
        {"original": _original("https://people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/horse2zebra.zip",
                               "horse2zebra/{trainA,trainB,testA,testB}/*.jpg (no checksum published)")},
        "original", data="horse2zebra"),
    Dataset(
        "bedroom", "fast.ai's 20% sample of LSUN bedrooms as JPEG files (lesson 12: WGAN)",
        {"fastai": _fastai("fast-ai-imageclas/bedroom.tgz", 4579163978, "35d84f38f8a15fe47e66e460c8800d68",
                           "bedroom/**/*.jpg: an image folder")},
        "fastai", aliases=("lsun",), data="bedroom"),
    Dataset(
        "imagenette", "Imagenette (10 ImageNet classes, 320 px): an ImageNet-style folder for super-resolution "
                      "and style transfer (lessons 13 and 14)",
        {"fastai": _fastai("fast-ai-imageclas/imagenette2-320.tgz", 341663724, "1f1f74f133caff120e575856659b87a2",
                           "imagenette2-320/{train,val}/<wnid>/*.JPEG: an image folder")},
        "fastai", aliases=("images", "imagenet-sample"), data="imagenette2-320"),
]}


def resolve(name: str, pipelines: dict[str, str] | None = None) -> Dataset:
    """A data set by its name or alias, or by a pipeline's name (`pipelines`: pipeline ->
    the data set it reads; the CLI passes the registry's, preprocessing imports no pipeline)."""
    for d in DATASETS.values():
        if name == d.name or name in d.aliases:
            return d
    if pipelines and name in pipelines and pipelines[name] != name:
        try:
            return resolve(pipelines[name])
        except KeyError:
            raise KeyError(f"pipeline {name!r} reads {pipelines[name]!r}, which has no download entry; "
                           f"data sets: {', '.join(DATASETS)}") from None
    raise KeyError(f"unknown data set or pipeline {name!r}; data sets: {', '.join(DATASETS)}")


# ---------------------------------------------------------------- the command line


def add_parser(subparsers, weights: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The `download` subcommand; `weights`: the pretrained weights it also fetches (by name)."""
    about = "Data sets: " + "; ".join(f"{k}{' (' + ', '.join(v.aliases) + ')' if v.aliases else ''}"
                                      for k, v in DATASETS.items())
    if weights:
        about += ". Pretrained weights (one file, not extracted): " + ", ".join(weights)
    d = subparsers.add_parser("download", help="download a data set or pretrained weights from their public address, "
                              "check and extract them", description=about)
    d.add_argument("name", help="a data set (cifar10, imdb, wikitext-103, pascal, giga-fren, carvana, ...), a pipeline "
                                "name, or pretrained weights (resnet34, vgg16, ...)")
    d.add_argument("--out", required=True, type=Path, help="folder to extract into (pass it, or the folder the result names, as --data)")
    d.add_argument("--source", default=None, help="fastai | original: which copy (default: the one the pipeline's reader reads)")
    d.add_argument("--url", action="append", default=[], metavar="URL_OR_PATH",
                   help="a mirror or local copy of each file, in order, or one folder / base URL ending in /")
    d.add_argument("--checksum", action="append", default=[], metavar="md5:HEX|sha256:HEX|none",
                   help="expected checksum of each file, in order (default: the published one)")
    d.add_argument("--retries", type=int, default=3, help="resumes after a dropped connection, per file (default 3)")
    d.add_argument("--keep-archive", action="store_true", help="keep the archives in DIR/.downloads/ after extracting")
    return d


def cmd_download(args, pipelines: dict[str, str] | None = None) -> dict:
    """Download, check and extract NAME into --out; the result the CLI prints as JSON.
    `pipelines` maps pipeline names to the data set each reads (NAME may be one)."""
    t0 = time.perf_counter()
    ds = resolve(args.name, pipelines)
    src_name = args.source or ds.default
    if src_name not in ds.sources:
        raise ValueError(f"--source {src_name}: {ds.name} comes from {', '.join(ds.sources)}")
    src = ds.sources[src_name]
    remotes = _with_urls(ds, src, list(args.url))
    checks = _with_checksums(remotes, list(args.checksum), bool(args.url))
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    out = Path(args.out).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    new = not out.exists()
    try:
        return _download(ds, src_name, src, remotes, checks, out, args, t0)
    except OSError as e:  # a full disk, a folder that cannot be written: one line, not a traceback
        where = e.filename or out
        raise DataError(f"{where}: {e.strerror or e}") from None
    finally:
        if new and out.is_dir() and not any(out.iterdir()):  # a failed first download leaves no empty --out
            out.rmdir()


def _download(ds: Dataset, src_name: str, src: Source, remotes: list[Remote], checks: list[dict], out: Path,
              args, t0: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".fastray-download-{ds.name}.json"
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        # another --url is another download; none given: the data set's, wherever it came from
        same_urls = not args.url or [_place(f.get("url", "")) for f in done.get("files", [])] == [_place(r.url) for r in remotes]
        if done.get("source") == src_name and same_urls and done.get("extracted") and all((out / e).exists() for e in done["extracted"]):
            _say(f"{ds.name}: already in {out} (remove {marker.name} to download it again)")
            return {**done, "status": "present", "seconds": round(time.perf_counter() - t0, 3)}

    downloads = out / ".downloads"
    downloads.mkdir(exist_ok=True)
    files = []
    try:
        for remote, check in zip(remotes, checks):
            path, info = fetch(remote.url, downloads / remote.name, check, retries=args.retries)
            if not _is_archive(path):  # an error page served as the file, say
                with open(path, "rb") as f:
                    head = f.read(24)
                path.unlink()
                raise DataError(f"{remote.url}: not a tar or zip archive (it begins {head!r}), so not {ds.name}'s "
                                f"{remote.name}; removed its copy from {downloads}")
            files.append({"name": remote.name, "url": _place(remote.url), **info})
    except BaseException:
        if not any(downloads.iterdir()):  # nothing to resume from: leave no empty folder behind
            downloads.rmdir()
        raise
    extracted: list[str] = []
    staging = out / f".extract-{ds.name}-{uuid.uuid4().hex[:8]}"
    try:
        for f in files:
            extract(downloads / f["name"], staging)
        if ds.name in AFTER_EXTRACT:
            AFTER_EXTRACT[ds.name](staging)
        extracted = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        _merge(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not args.keep_archive:
        for f in files:
            (downloads / f["name"]).unlink(missing_ok=True)
        if not any(downloads.iterdir()):
            downloads.rmdir()
    data = out / ds.data if ds.data and (out / ds.data).exists() else out
    result = {"dataset": ds.name, "source": src_name, "out": str(out), "data": str(data), "layout": src.layout,
              "files": files, "extracted": extracted}
    marker.write_text(json.dumps(result, indent=1))
    _say(f"{ds.name}: {len(extracted)} top-level entr{'y' if len(extracted) == 1 else 'ies'} in {out}; use --data {data}")
    return {**result, "status": "downloaded", "seconds": round(time.perf_counter() - t0, 2)}


def _jigsaw_files(staging: Path) -> None:
    """Kaggle's competition zip holds a zip per file (train.csv.zip ...): extract those (as
    safely as the outer one) and check that train.csv and test.csv are there with their
    columns, so that a wrong or truncated download is named now, not at training."""
    for inner in sorted(staging.rglob("*.csv.zip")):
        extract(inner, inner.parent)
        inner.unlink()
    for name, cols in JIGSAW_COLUMNS.items():
        found = sorted(staging.rglob(name))
        if not found:
            raise DataError(f"jigsaw-toxic: no {name} in the archive (expected Kaggle's {JIGSAW_COMPETITION}.zip); "
                            "nothing was extracted")
        with open(found[0], newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in cols if c not in header]
        if missing:
            raise DataError(f"jigsaw-toxic: {name} lacks the column(s) {', '.join(missing)} (its header: "
                            f"{', '.join(header[:10])}); nothing was extracted")


AFTER_EXTRACT: dict[str, Callable[[Path], None]] = {"jigsaw-toxic": _jigsaw_files}  # checks of what an archive held


def _with_urls(ds: Dataset, src: Source, urls: list[str]) -> list[Remote]:
    """The files to fetch: the source's, or the same files at the --url addresses."""
    if not urls:
        if any(not r.url for r in src.files):
            raise DataError(ds.manual or f"{ds.name}: no public address; give each file with --url")
        return list(src.files)
    if len(urls) == 1 and (urls[0].endswith("/") or Path(urls[0]).is_dir()):
        base = urls[0] if urls[0].endswith("/") else urls[0] + "/"
        return [Remote(r.name, _join(base, r.name), r.size, r.md5, r.sha256, r.checksum_by) for r in src.files]
    if len(urls) != len(src.files):
        raise ValueError(f"{ds.name}: {len(urls)} --url given for {len(src.files)} file(s) "
                         f"({', '.join(r.name for r in src.files)}); or give one folder ending in /")
    return [Remote(r.name, u, r.size, r.md5, r.sha256, r.checksum_by) for r, u in zip(src.files, urls)]


def _place(url: str) -> str:
    """A URL, or a local path made absolute (the same file however it was typed)."""
    return url if "://" in url else os.path.abspath(url)


def _join(base: str, name: str) -> str:
    if "://" in base:
        return urllib.parse.urljoin(base, urllib.parse.quote(name))
    return str(Path(base) / name)


def _with_checksums(remotes: list[Remote], given: list[str], mirror: bool) -> list[dict]:
    """Per file: {"size", "md5", "sha256", "by"} to check; --checksum replaces the published one."""
    if given and len(given) != len(remotes):
        raise ValueError(f"{len(given)} --checksum given for {len(remotes)} file(s)")
    out = []
    for i, r in enumerate(remotes):
        if not given:
            out.append({"size": r.size, "md5": r.md5, "sha256": r.sha256, "by": r.checksum_by,
                        "note": "; a mirror must serve the very same file" if mirror and r.checksum_by else ""})
            continue
        spec = given[i].strip().lower()
        if spec == "none":
            out.append({"size": None, "md5": None, "sha256": None, "by": "", "note": ""})
            continue
        algo, _, hexd = spec.partition(":")
        width = {"md5": 32, "sha256": 64}.get(algo)
        if width is None or not re.fullmatch(f"[0-9a-f]{{{width}}}", hexd):
            raise ValueError(f"--checksum {given[i]}: expected md5:<32 hex digits>, sha256:<64 hex digits> or none")
        out.append({"size": None, "md5": hexd if algo == "md5" else None, "sha256": hexd if algo == "sha256" else None,
                    "by": "--checksum", "note": ""})
    return out


def _say(msg: str, end: str = "\n") -> None:
    print(msg, file=sys.stderr, end=end, flush=True)


# ---------------------------------------------------------------- fetching


def fetch(url: str, dest: Path, check: dict, retries: int = 3, timeout: float = 60.0) -> tuple[Path, dict]:
    """Download `url` (http(s), file:// or a local path) to `dest`, resuming from
    dest.part, and check its size and checksum. Returns (dest, info for the result).
    `timeout`: seconds to wait for the server to connect or to send more."""
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():  # kept by --keep-archive, or a run killed while extracting
        try:
            info = _verify(dest, check)
        except DataError:
            dest.unlink()
            raise
        _say(f"{dest.name}: already downloaded")
        return dest, {**info, "resumed_from": None}
    resumed_from = part.stat().st_size if part.exists() else 0
    attempt = 0
    while True:
        try:
            _transfer(url, part, check.get("size"), timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
            reason = getattr(e, "reason", None)
            if isinstance(reason, socket.gaierror):  # no such host, or no network: retrying will not help
                raise DataError(f"{url}: cannot resolve {urllib.parse.urlsplit(url).hostname} ({reason.strerror}); "
                                "without network, give a local copy of the file with --url PATH") from None
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                kept = f"; {have} bytes kept in {part}: run the command again to resume" if have else ""
                raise DataError(f"{url}: download failed after {retries} retr{'y' if retries == 1 else 'ies'} "
                                f"({type(e).__name__}: {e}){kept}") from None
            after_bar = "\n" if have else ""  # a progress bar was drawn: end its line first
            how = f"resuming at byte {have}" if have else "retrying"
            _say(f"{after_bar}{dest.name}: {type(e).__name__}: {e}; {how} ({attempt}/{retries})")
            time.sleep(min(2.0 ** (attempt - 1), 10.0))
    try:
        info = _verify(part, check, dest.name)
    except DataError:
        part.unlink(missing_ok=True)  # a wrong prefix cannot be resumed into the right file
        raise
    os.replace(part, dest)
    return dest, {**info, "resumed_from": resumed_from or None}


def _transfer(url: str, part: Path, size: int | None, timeout: float = 60.0) -> None:
    """Append the rest of `url` to `part` (from its current size), printing progress."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start == size:
        return  # complete already, not yet checked
    stream, total, start = _open(url, start, part, timeout)
    with stream, open(part, "ab" if start else "wb") as f:
        progress = _Progress(part.name[: -len(".part")], start, total)
        while block := stream.read(CHUNK):
            f.write(block)
            progress.update(len(block))
        f.flush()
        os.fsync(f.fileno())
    have = part.stat().st_size
    if total is not None and have < total:
        raise ConnectionError(f"connection closed at byte {have} of {total}")
    progress.done()


def _open(url: str, start: int, part: Path, timeout: float = 60.0) -> tuple[BinaryIO, int | None, int]:
    """(stream from byte `start` or 0, total size or None, where the stream starts)."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("", "file") or re.match(r"^[A-Za-z]:[\\/]", url):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path) if scheme == "file" else url)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        total = path.stat().st_size
        f = open(path, "rb")
        start = start if start <= total else 0
        f.seek(start)
        return f, total, start
    if scheme not in ("http", "https"):
        raise DataError(f"{url}: not an http(s) or file address")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing after `start`: the part is complete (or wrong: the checksum says)
            return _Empty(), start, start
        raise
    length = resp.headers.get("Content-Length")
    if start and resp.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != start:
            resp.close()
            raise DataError(f"{url}: the server answered a resume at byte {start} with the range {resp.headers.get('Content-Range')!r}")
        return resp, (int(m.group(3)) if m.group(3) != "*" else None), start
    if start:
        _say(f"{part.name}: the server does not resume downloads: starting again from byte 0")
    return resp, (int(length) if length else None), 0


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Progress:
    """`name: 12.3 / 160.4 MB (8%) 5.1 MB/s` on stderr: rewritten in place on a terminal,
    a line every 5 s otherwise."""

    def __init__(self, name: str, start: int, total: int | None):
        self.name, self.have, self.total = name, start, total
        self.t0 = self.last = time.monotonic()
        self.start = start
        self.tty = sys.stderr.isatty()

    def text(self) -> str:
        mb = self.have / 1e6
        rate = (self.have - self.start) / 1e6 / max(time.monotonic() - self.t0, 1e-6)
        of = f" / {self.total / 1e6:.1f} MB ({100 * self.have / self.total:.0f}%)" if self.total else " MB"
        return f"{self.name}: {mb:.1f}{of} {rate:.1f} MB/s"

    def update(self, n: int) -> None:
        self.have += n
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 5.0):
            self.last = now
            _say(("\r" if self.tty else "") + self.text(), end="" if self.tty else "\n")

    def done(self) -> None:
        _say(("\r" if self.tty else "") + self.text())


def _verify(path: Path, check: dict, name: str | None = None) -> dict:
    """Size and checksum against `check`; the file's size, md5, sha256 and what was checked.
    A checksum shorter than its digest is a prefix (torch.hub's file names carry the first
    8 hex digits of the sha256). check["advice"], if there, replaces the advice that ends a
    mismatch's message."""
    name = name or path.name
    size = path.stat().st_size
    if check.get("size") is not None and size != check["size"]:
        raise DataError(f"{name}: {size} bytes, expected {check['size']} (published by {check['by']}{check['note']}); "
                        f"deleted: {check.get('advice', 'run the command again to download it anew')}")
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            md5.update(block)
            sha.update(block)
    got = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
    checked = []
    for algo in ("md5", "sha256"):
        want = check.get(algo)
        if want:
            if not got[algo].startswith(want):
                advice = check.get("advice", "run the command again to download it anew, or pass --checksum for a "
                                             "file you trust")
                raise DataError(f"{name}: {algo} {got[algo]}, expected {want}{'...' if len(want) < len(got[algo]) else ''} "
                                f"(published by {check['by']}{check['note']}); deleted: {advice}")
            checked.append(algo)
    if not checked:
        _say(f"{name}: no checksum to check against; its sha256 is {got['sha256']}")
    return {"bytes": size, **got, "checked": "+".join(checked) or "none", "checksum_by": check["by"] if checked else ""}


# ---------------------------------------------------------------- safe extraction


class UnsafeArchive(DataError):
    """An archive with a member that would land outside the target folder."""


def extract(archive: Path, dest: Path) -> list[str]:
    """Extract a tar (any compression) or zip archive into `dest`, refusing the whole
    archive if any member is unsafe (checked before anything is written), and a file
    that is not an archive. Returns the member names."""
    if zipfile.is_zipfile(archive):
        dest.mkdir(parents=True, exist_ok=True)
        return _extract_zip(archive, dest)
    if _is_tar(archive):
        dest.mkdir(parents=True, exist_ok=True)
        return _extract_tar(archive, dest)
    raise DataError(f"{archive}: not a tar or zip archive")


def _is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, tarfile.TarError):
        return False


def _absolute(path: str) -> bool:
    """A POSIX or Windows absolute path (or a drive path) in an archive."""
    return path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path) is not None


def _walk(start: list[str], path: str, each: Callable[[list[str]], None] | None = None) -> list[str] | None:
    """The components of `path` (a relative path, / or \\ separated) taken from the folder
    `start` (components below the root): "." dropped, ".." going up; None when a ".." leaves
    the root. each(components so far) is called after every component of path but its last."""
    steps = PurePosixPath(path.replace("\\", "/")).parts
    out = list(start)
    for i, p in enumerate(steps):
        if p in ("", "."):
            continue
        if p == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(p)
            if each is not None and i < len(steps) - 1:
                each(out)
    return out


def _parts(name: str, archive: Path, member: str) -> list[str]:
    """A member path as components, refusing an absolute or drive path and a `..` that
    leaves the root; "." components are dropped."""
    if _absolute(name):
        raise UnsafeArchive(f"{archive}: refused: member {member!r} has an absolute path; nothing was extracted")
    out = _walk([], name)
    if out is None:
        raise UnsafeArchive(f"{archive}: refused: member {member!r} leaves the target folder (..); "
                            "nothing was extracted")
    return out


def check_members(archive: Path, members: list[tuple[str, str, str]]) -> None:
    """members: (name, kind, link target) with kind file | dir | symlink | hardlink | other.
    Raises UnsafeArchive for the first member that is absolute, leaves the root with `..`,
    passes through a symlink of the archive, is a link pointing out of the root, or is a
    device file or fifo."""
    symlinks = {"/".join(_parts(n, archive, n)) for n, kind, _ in members if kind == "symlink"}

    def through_link(parts: list[str], member: str, what: str) -> None:
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise UnsafeArchive(f"{archive}: refused: {what} of member {member!r} passes through the symlink "
                                    f"{'/'.join(parts[:i])!r}; nothing was extracted")

    for name, kind, target in members:
        parts = _parts(name, archive, name)
        if kind == "other":
            raise UnsafeArchive(f"{archive}: refused: member {name!r} is a device file or fifo; nothing was extracted")
        through_link(parts, name, "the path")
        if kind == "symlink":
            if _absolute(target):
                raise UnsafeArchive(f"{archive}: refused: symlink {name!r} points to the absolute path {target!r}; "
                                    "nothing was extracted")

            def not_through_symlink(walk: list[str]) -> None:
                if "/".join(walk) in symlinks:
                    raise UnsafeArchive(f"{archive}: refused: symlink {name!r} -> {target!r} passes through the "
                                        f"symlink {'/'.join(walk)!r}; nothing was extracted")

            if _walk(parts[:-1], target, not_through_symlink) is None:
                raise UnsafeArchive(f"{archive}: refused: symlink {name!r} -> {target!r} points out of the "
                                    "target folder; nothing was extracted")
        elif kind == "hardlink":
            if _absolute(target):
                raise UnsafeArchive(f"{archive}: refused: hard link {name!r} points to the absolute path {target!r}; "
                                    "nothing was extracted")
            link_parts = _parts(target, archive, name)
            if not link_parts:
                raise UnsafeArchive(f"{archive}: refused: hard link {name!r} -> {target!r} points out of the "
                                    "target folder; nothing was extracted")
            through_link(link_parts, name, "the hard link's target")


def _extract_tar(archive: Path, dest: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            kinds = []
            for m in members:
                kind = ("file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym()
                        else "hardlink" if m.islnk() else "other")
                kinds.append((m.name, kind, m.linkname))
            check_members(archive, kinds)
            if hasattr(tarfile, "data_filter"):  # Python's own check, the same rules, a second time
                tf.extractall(dest, members=members, filter="data")
            else:
                tf.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, tarfile.FilterError):
            raise UnsafeArchive(f"{archive}: refused by tarfile's data filter ({e}); nothing was extracted") from None
        raise DataError(f"{archive}: not a readable tar archive ({type(e).__name__}: {e})") from None
    _check_inside(archive, dest)
    return [m.name for m in members]


def _extract_zip(archive: Path, dest: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            kinds = []
            for i in infos:
                mode = i.external_attr >> 16
                if stat.S_ISLNK(mode):
                    kinds.append((i.filename, "symlink", zf.read(i).decode("utf-8", "replace")))
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    kinds.append((i.filename, "other", ""))
                else:
                    kinds.append((i.filename, "dir" if i.is_dir() else "file", ""))
            check_members(archive, kinds)
            zf.extractall(dest)  # zipfile writes a symlink entry as a small file holding its target
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
        raise DataError(f"{archive}: not a readable zip archive ({type(e).__name__}: {e})") from None
    _check_inside(archive, dest)
    return [i.filename for i in infos]


def _check_inside(archive: Path, dest: Path) -> None:
    """After extraction: every path resolves inside dest (the member checks already
    guarantee it; this guards against a rule they miss)."""
    root = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            real = os.path.realpath(p)
            if real != root and not real.startswith(root + os.sep):
                raise UnsafeArchive(f"{archive}: refused: {os.path.relpath(p, dest)!r} resolves to {real}, outside the "
                                    "target folder")


def _merge(src: Path, dest: Path) -> None:
    """Move everything in src into dest; folders present in both are merged (two VOC
    tars both fill VOCdevkit/VOC2007/), a file or link present in both is replaced."""
    if not src.exists():
        return
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge(entry, target)
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        os.rename(entry, target)
