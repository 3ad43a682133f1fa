"""tokenize: every document of a TextSource encoded with SentencePiece in Ray Data tasks
(a chunk of documents each, the model loaded once per worker), cached as parquet."""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import DataError
from ..cache import Cache, digest, fingerprint_paths
from ..chunked import BadInput, chunks, data_errors, listing_skips, map_chunks, unusable_key
from . import SPECIAL_IDS, TEXT_VERSION
from .corpus import Ragged
from .documents import iter_docs
from .readers import TextSource, table_labels
from .subwords import SpmSettings, encode_texts, train_spm_manifest

_ENCODE_BYTES = 4 << 20  # text encoded and written per parquet row group: bounds a task's memory


_SCHEMA = None


def _schema():
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = pa.schema([("ids", pa.list_(pa.int32())), ("len", pa.int32()), ("label", pa.int64())])
    return _SCHEMA


class _EncodeChunks:
    """Ray Data map_batches function: a batch of pickled chunks -> one parquet file each
    (<split>/part-<chunk>.parquet) and a row of counts. The model loads once per worker
    process (and so at most once per task)."""

    def __init__(self, kind: str, model_path: str, out_dir: str, add_eos: bool, on_bad: BadInput):
        self.kind, self.model_path, self.out_dir, self.add_eos, self.on_bad = kind, model_path, out_dir, add_eos, on_bad

    def __call__(self, batch: dict) -> dict:
        stats: dict[str, list] = {k: [] for k in ("split", "id", "rows", "tokens", "bytes", "skipped", "errors")}
        for split, cid, payload in zip(batch["split"], batch["id"], batch["chunk"]):
            row = self._encode(str(split), int(cid), pickle.loads(payload))
            for k, v in row.items():
                stats[k].append(v)
        return {k: np.asarray(v) for k, v in stats.items()}

    def _encode(self, split: str, cid: int, chunk) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(self.out_dir, split, f"part-{cid:05d}.parquet")
        rows = tokens = nbytes = skipped = 0
        errors: list[str] = []
        texts: list[str] = []
        labels: list[int] = []
        with pq.ParquetWriter(path, _schema()) as writer:

            def flush():
                nonlocal rows, tokens
                if not texts:
                    return
                docs = Ragged.from_rows(encode_texts(texts, self.model_path, add_bos=True, add_eos=self.add_eos,
                                                     num_threads=1))
                lens = docs.lengths.astype(np.int32)
                writer.write_table(pa.table([docs.to_arrow(), pa.array(lens), pa.array(np.asarray(labels, np.int64))],
                                            schema=_schema()))
                rows += len(docs)
                tokens += int(lens.sum())
                texts.clear()
                labels.clear()

            size = 0
            for text, label in iter_docs(self.kind, chunk):
                if isinstance(text, DataError):
                    if self.on_bad == "fail":
                        raise text
                    skipped += 1
                    if len(errors) < 3:
                        errors.append(str(text))
                    continue
                texts.append(text)
                labels.append(label)
                size += len(text)
                if size >= _ENCODE_BYTES:
                    nbytes += size
                    size = 0
                    flush()
            nbytes += size
            flush()
        return {"split": split, "id": cid, "rows": rows, "tokens": tokens, "bytes": nbytes, "skipped": skipped, "errors": "\n".join(errors)}


def _chunks(source: TextSource, split: str, n_cpus: int, seed: int, tables: dict | None) -> list:
    """A split's documents in chunks: about four per CPU, a few thousand files each.
    IMDb files are shuffled once (the class folders are sorted); WikiText is cut into
    byte spans (articles stay whole, in order); table rows into row ranges."""
    if source.kind == "imdb":
        return chunks(source.splits[split], n_cpus, seed, 256, 4000)
    if source.kind == "wikitext":
        out = []
        for path, start, stop in source.splits[split]:
            n = max(4 * n_cpus, -(-(stop - start) // (32 << 20)))  # <= 32 MB of text a task
            step = -(-(stop - start) // n)
            out += [(path, a, min(a + step, stop)) for a in range(start, stop, step)]
        return out
    texts, labels = tables["texts"][split], tables["labels"][split]
    path = source.splits[split][0][0]
    size = max(256, min(8000, -(-len(texts) // (4 * n_cpus))))
    return [(path, i, texts[i : i + size], labels[i : i + size]) for i in range(0, len(texts), size)]


def tokenize(
    source: TextSource,
    cache: Cache,
    *,
    add_eos: bool = False,
    on_bad: BadInput = "skip",
    name: str | None = None,
    **settings: Any,
) -> tuple[dict, bool]:
    """Encode every split with SentencePiece (trained by train_spm with `settings`: see
    SpmSettings; its seed also shuffles the IMDb files into chunks);
    (manifest, hit). Writes <cache>/<name>-<key>/<split>/part-*.parquet with columns ids
    (list<int32>: [BOS] + pieces (+ [EOS])), len (int32) and label (int64), and a copy of
    the model as spm.model. An unreadable, non-UTF-8 or empty document, or a listed entry
    that is not a regular file (source.unusable: a FIFO, a dangling symlink), is skipped and
    counted (on_bad="skip") or stops the run with a DataError naming it ("fail"; for an
    unusable entry before anything is read, on a cache hit too).
    The manifest holds rows, skipped, bad_input ({split: {reason: count}}), tokens and bytes
    per split, vocab_size, spm_model (its path), special_ids, classes and seconds. A hit
    starts no Ray and reads no document."""
    left_out = listing_skips(source.unusable, on_bad)  # ValueError for an unknown on_bad
    name = name or f"tokens-{source.kind}"
    t0 = time.perf_counter()
    spm = SpmSettings(**settings)
    model, spm_manifest, spm_hit = train_spm_manifest(source, cache, spm)
    spm_seconds = 0.0 if spm_hit else time.perf_counter() - t0
    key = digest({
        "inputs": fingerprint_paths(source.input_files(), source.root),
        "splits": {s: len(items) if source.kind == "imdb" else [[os.path.relpath(it[0], source.root), *it[1:]]
                                                             for it in items] for s, items in source.splits.items()},
        "kind": source.kind, "options": source.options, "spm": spm_manifest["sha256"],
        "spm_params": [spm.vocab_size, spm.model_type, spm.character_coverage, spm.sample_docs],
        "add_eos": add_eos, "seed": spm.seed, "version": TEXT_VERSION,
        **unusable_key(source.unusable, source.root),
    })

    def make(tmp: Path) -> dict:
        from ..runtime import cluster_cpus, init_ray

        t1 = time.perf_counter()
        init_ray()
        t_ray = time.perf_counter() - t1
        tmp.mkdir(parents=True)
        shutil.copyfile(model, tmp / "spm.model")
        tables, classes = None, list(source.classes)
        if source.kind == "table":
            texts, labels, classes = table_labels(source)
            tables = {"texts": texts, "labels": labels}
        n_cpus = cluster_cpus()
        # one Ray Data run over every split's chunks: no idle CPU at each split's tail
        rows = []
        for split in source.splits:
            (tmp / split).mkdir()
            for i, c in enumerate(_chunks(source, split, n_cpus, spm.seed, tables)):
                rows.append({"split": split, "id": i, "chunk": pickle.dumps(c, protocol=5)})
        fn = _EncodeChunks(source.kind, str(model), str(tmp), add_eos, on_bad)
        with data_errors():
            res = sorted(map_chunks(rows, fn).take_all(), key=lambda r: (str(r["split"]), int(r["id"])))
        stats: dict[str, dict] = {k: {} for k in ("rows", "skipped", "tokens", "bytes")}
        bad_input: dict[str, dict[str, int]] = {}
        for split in source.splits:
            mine = [r for r in res if r["split"] == split]
            for k in stats:
                stats[k][split] = int(sum(r[k] for r in mine))
            failed = stats["skipped"][split]
            bad_input[split] = dict(left_out.get(split, {})) | (
                {"unreadable or empty document": failed} if failed else {})
            if failed:
                errors = [line for r in mine for line in str(r["errors"]).splitlines()]
                total = stats["rows"][split] + failed
                print(
                    f"warning: {split}: skipped {failed} unreadable or empty document(s) of {total} "
                    f"(on_bad='fail' stops at the first): {'; '.join(errors[:3])}",
                    file=sys.stderr,
                )
            stats["skipped"][split] += sum(left_out.get(split, {}).values())
            if stats["rows"][split] == 0:
                raise DataError(f"{source.root}: no readable documents in split {split!r}")
        return {
            **stats,
            "bad_input": bad_input,
            "kind": source.kind,
            "source": str(source.root),
            "classes": classes,
            "labelled": {s: _labelled(source, s) for s in source.splits},
            "vocab_size": spm_manifest["vocab_size"],
            "spm_sha256": spm_manifest["sha256"],
            "spm_model": "spm.model",
            "special_ids": SPECIAL_IDS,
            "add_eos": add_eos,
            "seconds": {"spm_train": round(spm_seconds, 3), "ray_start": round(t_ray, 3),
                        "encode": round(time.perf_counter() - t1 - t_ray, 3)},
        }

    manifest, hit = cache.build(name, key, make)
    manifest = dict(manifest, spm_model=str(cache.path(name, key) / "spm.model"))
    return manifest, hit


def _labelled(source: TextSource, split: str) -> bool:
    if source.kind == "imdb":
        return split != "unsup"
    return source.kind == "table" and source.options.get("label_col") is not None


