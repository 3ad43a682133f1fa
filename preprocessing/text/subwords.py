"""SentencePiece: trained once on a deterministic sample of the training documents and
cached; decode and normalize for round trips. Special ids: unk 0, pad 1, bos 2, eos 3."""
from __future__ import annotations

import hashlib
import io
import os
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal

from .. import DataError
from ..cache import Cache, digest, fingerprint_paths
from . import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS, TEXT_VERSION, UNK_ID
from .documents import CASE_MARKERS, fixup, iter_docs, mark_case, unmark_case
from .readers import TextSource, table_labels

_SPAN_BYTES = 1 << 20  # WikiText sampling unit for SentencePiece's training sample
_SAMPLE_MAX_BYTES = 32 << 20  # SentencePiece's sample stops here whatever sample_docs says


def _sample_units(source: TextSource, sample_docs: int, seed: int) -> list:
    """The deterministic choice of what SentencePiece learns from: imdb files; WikiText
    1 MB spans in random order (read until sample_docs articles); a table's train file."""
    rng = random.Random(seed)
    if source.kind == "imdb":
        items = [it for s in source.train_splits() for it in source.splits[s]]
        return items if len(items) <= sample_docs else rng.sample(items, sample_docs)
    if source.kind == "wikitext":
        spans = []
        for s in source.train_splits():
            for path, start, stop in source.splits[s]:
                spans += [(path, a, min(a + _SPAN_BYTES, stop)) for a in range(start, stop, _SPAN_BYTES)]
        rng.shuffle(spans)
        return spans
    return [it for s in source.train_splits() for it in source.splits[s]]


def _sample_texts(source: TextSource, units: list, sample_docs: int, seed: int, case: str = "keep") -> list[str]:
    """The sample's documents, at most sample_docs of them and _SAMPLE_MAX_BYTES in all
    (unreadable or empty ones are left out here: tokenize counts them); case "markers":
    as mark_case writes them."""
    if source.kind == "imdb":
        docs = iter_docs("imdb", units)
    elif source.kind == "wikitext":
        docs = (d for span in units for d in iter_docs("wikitext", span))
    else:
        all_texts, _, _ = table_labels(TextSource(source.root, "table", {"train": units}, [], source.options))
        rows = all_texts["train"]
        pick = range(len(rows)) if len(rows) <= sample_docs else sorted(random.Random(seed).sample(range(len(rows)), sample_docs))
        docs = ((fixup(rows[i]), 0) for i in pick if rows[i] and rows[i].strip())
    texts: list[str] = []
    size = 0
    for text, _ in docs:
        if isinstance(text, str):
            texts.append(mark_case(text) if case == "markers" else text)
            size += len(text)
            if len(texts) >= sample_docs or size >= _SAMPLE_MAX_BYTES:
                break
    return texts


def _sentences(texts: list[str], max_bytes: int = 8192) -> Iterator[str]:
    """Training lines for SentencePiece: paragraphs, long ones cut at spaces (it skips a
    line longer than its max_sentence_length)."""
    for t in texts:
        for line in t.split("\n"):
            line = line.strip()
            while len(line) > max_bytes // 4:  # characters may take up to 4 bytes
                cut = line.rfind(" ", 0, max_bytes // 4)
                cut = cut if cut > 0 else max_bytes // 4
                yield line[:cut]
                line = line[cut:].strip()
            if line:
                yield line


BYTE_FALLBACK_MIN_VOCAB = 1024  # byte pieces only where their 256 take at most a quarter of the vocabulary
NORMALIZATIONS = ("identity", "nmt_nfkc")
CASES = ("keep", "markers")
# "identity": every character as written but these, Python's str.isspace() but " " (tab, newline,
# no-break and typographic spaces ...), which become a space, as nmt_nfkc makes them: SentencePiece
# then folds runs of spaces into one. Fixed here so that the model does not depend on the
# Python's Unicode tables.
_SPACES = (0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
           0x2028, 0x2029, 0x202F, 0x205F, 0x3000)


@dataclass(frozen=True)
class SpmSettings:
    """How SentencePiece is trained: train_spm's and tokenize's keyword arguments.
    vocab_size is an upper bound (a small corpus gives fewer pieces); sample_docs is the
    size of the training sample (WikiText: articles), drawn with seed.

    Every character round-trips, decode(encode(x)) == x up to whitespace runs (after
    fixup): normalization "identity" keeps characters as written but whitespace
    characters, which become spaces (nmt_nfkc, SentencePiece's default, would also turn
    "½" into "1⁄2", "ﬁ" into "fi", "…" into "..."), and no character becomes <unk> (" ⁇ "):
    with byte_fallback and vocab_size >= BYTE_FALLBACK_MIN_VOCAB a character rarer than
    character_coverage, or one never seen in training, is spelled as its UTF-8 bytes
    (256 byte pieces <0x00>..<0xFF>, ids 4..259); with a smaller vocabulary, which the byte
    pieces would crowd out, every character of the training text becomes a piece
    (character_coverage 1.0), so only characters never seen in training are <unk>.

    case "markers" (ULMFiT's rule, documents.mark_case) lower-cases capitalised and
    all-capital words behind a marker word, "xxmaj" or "xxup", each a piece of its own
    (user-defined pieces, ids 4-7: the byte pieces follow them); encode and train_spm mark
    the text, decode and normalize give the case back."""

    vocab_size: int = 30000
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9999  # with byte pieces; without them 1.0 (every training character a piece)
    sample_docs: int = 10000
    seed: int = 0
    byte_fallback: bool = True          # unseen and rare characters as UTF-8 byte pieces (vocab_size >= 1024)
    normalization: str = "identity"     # "identity": characters as written, whitespace to " "; "nmt_nfkc": NFKC
    case: str = "keep"                  # "keep": as written; "markers": lower case behind xxmaj / xxup pieces

    def __post_init__(self):
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {self.model_type!r}")
        if self.vocab_size < 8 or self.sample_docs < 1 or not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(
                f"need vocab_size >= 8, sample_docs >= 1 and 0.9 <= character_coverage <= 1 "
                f"(got {self.vocab_size}, {self.sample_docs}, {self.character_coverage})"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.case not in CASES:
            raise ValueError(f"case must be one of {CASES}, got {self.case!r}")

    def trainer_options(self) -> dict[str, Any]:
        """What SentencePiece's trainer is given for characters: byte pieces, their coverage,
        the normalization rule (see the class docstring)."""
        use_bytes = self.byte_fallback and self.vocab_size >= BYTE_FALLBACK_MIN_VOCAB
        return {"byte_fallback": use_bytes, "character_coverage": self.character_coverage if use_bytes else 1.0,
                "normalization": self.normalization}


def train_spm(source: TextSource, cache: Cache, **settings: Any) -> Path:
    """Train SentencePiece on a deterministic sample of the training documents; the path
    of the cached model. `settings`: SpmSettings's fields (vocab_size=30000,
    model_type="unigram", character_coverage=0.9999, sample_docs=10000, seed=0,
    byte_fallback=True, normalization="identity").
    The cache key is the sample's content hash and the parameters; an index keyed by the
    sampled files' (path, size, mtime) finds it again without reading them.
    Special ids: unk 0, pad 1, bos 2, eos 3. Runs in this process (no Ray)."""
    return train_spm_manifest(source, cache, SpmSettings(**settings))[0]


def train_spm_manifest(source: TextSource, cache: Cache, settings: SpmSettings) -> tuple[Path, dict, bool]:
    """train_spm's work: (the model's path, its cache manifest, hit)."""
    params = {"vocab_size": settings.vocab_size, "model_type": settings.model_type, **settings.trainer_options(),
              "seed": settings.seed, "special": SPECIAL_IDS, "version": TEXT_VERSION,
              **({"case": settings.case} if settings.case != "keep" else {})}  # "keep": the keys made before case
    units = _sample_units(source, settings.sample_docs, settings.seed)
    index_key = digest({"files": fingerprint_paths(sorted({u[0] for u in units}), source.root),
                        "units": digest([u[1:] for u in units]),
                        "kind": source.kind, "options": source.options, "sample_docs": settings.sample_docs, **params})
    ref = cache.lookup("spm-index", index_key)
    if ref is not None:
        found = cache.lookup("spm", ref["spm_key"])
        if found is not None:
            return cache.path("spm", ref["spm_key"]) / "spm.model", found, True
    texts = _sample_texts(source, units, settings.sample_docs, settings.seed, settings.case)
    if not texts:
        raise DataError(f"{source.root}: no readable training documents to learn SentencePiece from")
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    key = digest({"sample": h.hexdigest(), **params})

    def make(tmp: Path) -> dict:
        import sentencepiece as spm

        t0 = time.perf_counter()
        tmp.mkdir(parents=True)
        buf = io.BytesIO()
        spm.set_random_generator_seed(settings.seed)
        chars = settings.trainer_options()
        if chars.pop("normalization") == "identity":
            rules = tmp / "normalization.tsv"  # codepoint TAB replacement (hex)
            rules.write_text("".join(f"{c:X}\t20\n" for c in _SPACES))
            chars["normalization_rule_tsv"] = str(rules)
        else:
            chars["normalization_rule_name"] = settings.normalization
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(texts), model_writer=buf, vocab_size=settings.vocab_size,
                model_type=settings.model_type, **chars,
                unk_id=UNK_ID, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                hard_vocab_limit=False, max_sentence_length=8192, num_threads=os.cpu_count() or 1,
                user_defined_symbols=_marker_pieces() if settings.case == "markers" else [],
                minloglevel=2,
            )
        except RuntimeError as e:
            if "smaller than required_chars" not in str(e):
                raise
            need = str(e).split("Vocabulary size is smaller than required_chars.")[-1].split(".")[0].strip()
            raise ValueError(f"vocab_size={settings.vocab_size} cannot hold every character of the training text "
                             f"with the special pieces ({need}): raise vocab_size (>= {BYTE_FALLBACK_MIN_VOCAB} "
                             f"spells rare characters as bytes)") from None
        model = buf.getvalue()
        if chars.get("normalization_rule_tsv"):  # the rules are compiled into the model: forget the file's path
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto.FromString(model)
            proto.normalizer_spec.ClearField("normalization_rule_tsv")
            proto.normalizer_spec.name = "identity"  # SentencePiece says user_defined
            model = proto.SerializeToString()
            Path(chars["normalization_rule_tsv"]).unlink()
        (tmp / "spm.model").write_bytes(model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        return {"sha256": hashlib.sha256(model).hexdigest(), "vocab_size": sp.get_piece_size(),
                **params, "sample_docs": len(texts), "sample_bytes": sum(len(t) for t in texts),
                "seconds": round(time.perf_counter() - t0, 3)}

    manifest, hit = cache.build("spm", key, make)
    cache.build("spm-index", index_key, lambda tmp: tmp.mkdir(parents=True) or {"spm_key": key})
    return cache.path("spm", key) / "spm.model", manifest, hit


def _marker_pieces() -> list[str]:
    """Each case marker after a space and after anything else ("(xxup"): one piece either way."""
    return [p for m in CASE_MARKERS for p in ("\u2581" + m, m)]


@lru_cache(maxsize=4)
def processor(model_path: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model_path)


@lru_cache(maxsize=4)
def marks_case(model_path: str) -> bool:
    """Whether the model was trained with case "markers" (its marker pieces are user-defined)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(processor(model_path).serialized_model_proto())
    user = {p.piece for p in proto.pieces if p.type == p.USER_DEFINED}
    return all(p in user for p in _marker_pieces())


def encode_texts(texts: list[str], model_path: str | Path, **kw):
    """SentencePiece's encode_as_numpy of the texts, marked as the model was trained
    (case "markers"); kw: add_bos, add_eos, num_threads."""
    if marks_case(str(model_path)):
        texts = [mark_case(t) for t in texts]
    return processor(str(model_path)).encode_as_numpy(texts, **kw)


def piece_ids(ids, sp: Any) -> list[int]:
    """The ids SentencePiece `sp` decodes: special ids dropped (unknown kept), and an id past
    its last piece as unknown: a model's output layer may have more rows than its tokenizer
    has pieces (the config's vocab_size is an upper bound), and a prediction of one of those
    is no text (SentencePiece raises on it)."""
    size = sp.get_piece_size()
    return [UNK_ID if i >= size else i for i in map(int, ids) if i > EOS_ID or i == UNK_ID]


def decode(ids, model_path: str | Path) -> str:
    """Token ids (a list, array or tensor; special ids are dropped, ids past the model's
    pieces read as unknown) -> text."""
    sp = processor(str(model_path))
    text = sp.decode(piece_ids(ids, sp))
    return unmark_case(text) if marks_case(str(model_path)) else text


def normalize(text: str, model_path: str | Path) -> str:
    """What decode(encode(text)) gives: fixup, SentencePiece's normalisation (the model's
    rule: "identity" for the models train_spm makes now; whitespace runs and newlines to one
    space, trimmed). A character the model cannot spell (no piece, no byte fallback) comes
    back from decode as " ⁇ " instead."""
    marks = marks_case(str(model_path))
    text = fixup(text)
    norm = processor(str(model_path)).normalize(mark_case(text) if marks else text).replace("\u2581", " ").strip()
    return unmark_case(norm) if marks else norm


