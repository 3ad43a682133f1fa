"""preprocessing.text.subwords: SentencePiece cached and deterministic; decode and
normalize round trips."""
import random

import pytest
import torch

from preprocessing.cache import Cache
from preprocessing.text import BOS_ID, PAD_ID, UNK_ID
from preprocessing.text.corpus import load_tokens
from preprocessing.text.readers import find_imdb
from preprocessing.text.subwords import decode, encode_texts, normalize, train_spm

def test_spm_model_is_cached_and_deterministic(imdb_small, tmp_path, spm_small):
    src = find_imdb(imdb_small)
    a = train_spm(src, Cache(tmp_path / "a"), **spm_small)
    b = train_spm(src, Cache(tmp_path / "b"), **spm_small)
    assert a.read_bytes() == b.read_bytes()
    assert train_spm(src, Cache(tmp_path / "a"), **spm_small) == a
    assert train_spm(src, Cache(tmp_path / "a"), **spm_small, model_type="bpe") != a
    assert train_spm(src, Cache(tmp_path / "a"), **{**spm_small, "case": "keep"}) != a
    with pytest.raises(ValueError, match="model_type"):
        train_spm(src, Cache(tmp_path / "a"), model_type="word")


def test_round_trip(imdb_small, imdb_tokens):
    cache, manifest = imdb_tokens
    model = manifest["spm_model"]
    train = load_tokens(cache, manifest, "train")
    assert len(train) == 200 and (train.docs.flat[train.docs.offsets[:-1]] == BOS_ID).all()
    decoded = {decode(train.docs[i], model) for i in range(len(train))}
    files = random.Random(0).sample(sorted((imdb_small / "train").glob("*/*.txt"))[:400], 20)
    for f in (p for p in files if p.parent.name != "unsup"):
        assert normalize(f.read_text(), model) in decoded, f
    assert decode(torch.tensor([BOS_ID, PAD_ID]), model) == ""
    # a model whose output layer is larger than the tokenizer (vocab_size is an upper bound)
    # can predict an id past the last piece: it reads as unknown, where SentencePiece raised
    piece = train.docs[0][1:2].tolist()
    past = manifest["vocab_size"] + 5
    assert decode(piece + [past] + piece, model) == decode(piece + [UNK_ID] + piece, model)
    assert "\u2047" in decode([past], model)  # SentencePiece's unknown mark


# accented and rare characters: some are folded by NFKC ("½" -> "1⁄2", "ﬁ" -> "fi", "…" -> "...")
TRAIN_LINES = ["Où est le café numéro {} ?", "Zoë a écrit {} lettres à sa sœur.", "The naïve résumé has {} pages."]
RARE = "Dvořák’s ﬁnal 3½ … «déjà vu» — 東京 ☃ Ærø"


def _table(tmp_path, lines: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocessing.text.readers import find_table

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": lines}), path)
    return find_table(path, "text", None)


def test_settings_choose_byte_pieces_or_full_coverage():
    from preprocessing.text.subwords import BYTE_FALLBACK_MIN_VOCAB, SpmSettings

    big = SpmSettings(vocab_size=BYTE_FALLBACK_MIN_VOCAB).trainer_options()
    assert big == {"byte_fallback": True, "character_coverage": 0.9999, "normalization": "identity"}
    small = SpmSettings(vocab_size=BYTE_FALLBACK_MIN_VOCAB - 1).trainer_options()
    assert small == {"byte_fallback": False, "character_coverage": 1.0, "normalization": "identity"}
    assert SpmSettings(byte_fallback=False).trainer_options()["character_coverage"] == 1.0  # never <unk> for a seen one
    with pytest.raises(ValueError, match="normalization"):
        SpmSettings(normalization="nfc")


@pytest.mark.parametrize("vocab_size", [1024, 120])
def test_every_character_round_trips(tmp_path, vocab_size):
    """decode(encode(x)) == x for accented and rare characters. With byte pieces (vocab_size
    >= 1024) even characters never seen in training; with a small vocabulary every character
    of the training text, seen once or more (character_coverage 1.0), and only an unseen
    one is <unk>."""
    import sentencepiece as spm

    lines = [t.format(n) for n in range(200) for t in TRAIN_LINES] + ([RARE] if vocab_size < 1024 else [])
    model = train_spm(_table(tmp_path, lines), Cache(tmp_path / "c"), vocab_size=vocab_size, sample_docs=1000)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for x in (RARE, "Zoë’s ﬁnal naïve résumé… ½"):
        ids = sp.encode(x)
        assert decode(ids, model) == x and normalize(x, model) == x
        assert 0 not in ids  # no <unk>
    if vocab_size >= 1024:
        assert sp.id_to_piece(4) == "<0x00>" and sp.id_to_piece(259) == "<0xFF>"  # byte pieces after the specials
    else:
        assert decode(sp.encode("Ω"), model).strip() == "\u2047"  # never seen, no byte pieces: " ⁇ "


def test_the_old_settings_lost_characters(tmp_path):
    """What the issue measured: SentencePiece's defaults (nmt_nfkc, coverage < 1, no byte
    pieces) do not give the text back."""
    import io

    import sentencepiece as spm

    lines = [t.format(n) for n in range(200) for t in TRAIN_LINES]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=1024,
                                   character_coverage=0.9999, hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    assert sp.decode(sp.encode(RARE)) != RARE


def test_a_vocabulary_too_small_for_the_characters_is_one_clear_error(tmp_path):
    lines = [t.format(n) for n in range(50) for t in TRAIN_LINES]
    with pytest.raises(ValueError, match=r"vocab_size=20 cannot hold every character .*raise vocab_size"):
        train_spm(_table(tmp_path, lines), Cache(tmp_path / "c"), vocab_size=20)


def test_case_markers_share_pieces_and_give_the_case_back(tmp_path):
    """case "markers" (lesson 10's rule): "Movie", "MOVIE" and "movie" are one piece behind
    a marker piece of its own, and decode gives every case back, mixed case included."""
    import sentencepiece as spm

    from preprocessing.text.documents import mark_case, unmark_case

    lines = [t.format(n) for n in range(200) for t in TRAIN_LINES + ["This MOVIE was a movie, {}!", "McCoy said MOVIE"]]
    model = train_spm(_table(tmp_path, lines), Cache(tmp_path / "c"), vocab_size=1024, sample_docs=1000, case="markers")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert [sp.id_to_piece(i) for i in range(4, 9)] == ["\u2581xxup", "xxup", "\u2581xxmaj", "xxmaj", "<0x00>"]
    up, low, cap = (list(r) for r in encode_texts(["MOVIE", "movie", "Movie"], model))
    assert up[0] == sp.piece_to_id("\u2581xxup") and cap[0] == sp.piece_to_id("\u2581xxmaj") and up[1:] == low == cap[1:]
    for x in (RARE, "McCoy SAID: «Déjà VU» (MOVIE) İstanbul I a", "This MOVIE was a movie, 7!"):
        ids = encode_texts([x], model)[0]
        assert decode(ids, model) == x and normalize(x, model) == x and 0 not in ids
    assert mark_case("The BEST film, McCoy.") == "xxmaj the xxup best film, McCoy."
    assert unmark_case(mark_case("ÉTÉ Été été A I")) == "ÉTÉ Été été A I"
    keep = train_spm(_table(tmp_path, lines), Cache(tmp_path / "c"), vocab_size=1024, sample_docs=1000)
    assert keep != model and decode(encode_texts(["MOVIE"], keep)[0], keep) == "MOVIE"
    with pytest.raises(ValueError, match="case must be one of"):
        train_spm(_table(tmp_path, lines), Cache(tmp_path / "c"), case="lower")
