"""Translation (lesson 11): the pairs readers and their errors, the number sample, the
seq2seq model and its decoders, BLEU, and the pipeline through the command line."""
from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.seq2seq import Seq2Seq, Seq2SeqConfig, load_vectors, strip_tokens
from pipelines.__main__ import main
from pipelines.core import engine, registry
from pipelines.core.contract import RunContext
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.sessions import LocalSession
from pipelines.lessons.translate import CONFIGS, Config, bleu, cmd_translate, teacher_forcing, translate_lines
from preprocessing import DataError, pairs
from preprocessing.samples import giga_fren as giga_fren_samples

STEM = pairs.GIGA_FREN_STEM


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def write_pair(folder: Path, en: list[str], fr: list[str], stem: str = STEM) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.en").write_text("".join(l + "\n" for l in en), encoding="utf-8")
    (folder / f"{stem}.fr").write_text("".join(l + "\n" for l in fr), encoding="utf-8")
    return folder


# ---------------------------------------------------------------- BLEU


def _bleu_by_hand(hyps: list[str], refs: list[str]) -> float:
    """BLEU-4 from its definition (Papineni et al.): clipped n-gram precisions summed over
    the corpus, their geometric mean, the brevity penalty. Whitespace tokens: the sentences
    below have no punctuation, so sacrebleu's 13a tokenizer splits them the same way."""
    match, total = [0] * 4, [0] * 4
    h_len = r_len = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        h_len, r_len = h_len + len(h), r_len + len(r)
        for n in range(1, 5):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(0, len(h) - n + 1)
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if h_len > r_len else math.exp(1 - r_len / h_len)
    return 100 * bp * math.exp(log_p)


HYPS = ["the cat sat on the mat", "where are the seventy three cats", "who bought nine tickets today"]
REFS = ["the cat sat on a mat", "where are the seventy three cats", "who bought ninety tickets"]


def test_bleu_is_sacrebleu_and_matches_a_count_by_hand():
    import sacrebleu

    score = bleu(HYPS, REFS)
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert score == pytest.approx(_bleu_by_hand(HYPS, REFS), abs=1e-6)
    assert 40 < score < 90
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    assert bleu([], []) == 0.0
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        bleu(HYPS[:2], REFS)
    # on detokenized text: punctuation attached as people write it is tokenized by sacrebleu
    assert bleu(["Where are the cats?"], ["Where are the cats ?"]) == pytest.approx(100.0)


def test_combine_scores_the_concatenated_corpus_not_a_mean():
    pipe = registry.get("translate")
    parts = [{"hyps": HYPS[:2], "refs": REFS[:2], "beam_hyps": REFS[:2], "loss_sum": 4.0, "tokens": 4, "n": 2},
             {"hyps": HYPS[2:], "refs": REFS[2:], "beam_hyps": HYPS[2:], "loss_sum": 2.0, "tokens": 6, "n": 1}]
    out = pipe.combine(parts)
    assert out["bleu"] == pytest.approx(bleu(HYPS, REFS))  # 61.6
    mean = (2 * bleu(HYPS[:2], REFS[:2]) + bleu(HYPS[2:], REFS[2:])) / 3
    assert abs(out["bleu"] - mean) > 1  # an n-weighted mean of shard scores: 59.8
    assert out["bleu_beam"] == pytest.approx(bleu(REFS[:2] + HYPS[2:], REFS))
    assert out["loss"] == pytest.approx(0.6)  # per target token
    assert "n" not in out and "hyps" not in out


VALID_EN = ["Where is Zoë’s café?", "Who wrote “Dvořák’s ﬁnal naïve résumé” — 3½ pages…?",
            "What does «déjà vu» mean in Ærø, Tōkyō (東京) and Kraków ☃?"]
VALID_FR = ["Où est le café de Zoë ?", "Qui a écrit « le résumé naïf de Dvořák » ?", "Que veut dire « déjà vu » ?"]


class _Oracle(torch.nn.Module):
    """A model that outputs the references exactly: what the teacher-forced forward saw."""

    def forward(self, src, src_len, tgt, tf=1.0):
        self.tgt = tgt
        return torch.nn.functional.one_hot(tgt[:, 1:], 4000).float() * 50  # (B, T-1, V)

    def greedy(self, src, src_len, max_len):
        return self.tgt[:, 1:], None  # after BOS: the pieces, EOS, then PAD

    def beam_search(self, src, src_len, beam, max_len, alpha=1.0):
        return self.tgt[:, 1:]


def test_a_perfect_model_scores_bleu_100_on_accented_and_rare_characters(tmp_path, ray_session):
    """Issue 16: decoded output was scored against the raw references, and characters outside
    the SentencePiece model came back as " ⁇ " (a perfect model: 67.4). Now every character of
    the references round-trips, with byte pieces (vocab_size >= 1024) characters never seen in
    training too: the references' rare characters are absent from the training text. (A small
    vocabulary keeps every training character instead: tests/preprocessing/text/test_text_subwords.py.)"""
    from preprocessing.cache import Cache

    vocab_size = 2000
    en = [f"Where is the café number {n} of the naïve résumé?" for n in range(150)]
    fr = [f"Où est le café numéro {n} du résumé naïf ?" for n in range(150)]
    data = write_pair(tmp_path / "data", en, fr)
    write_pair(data, VALID_EN, VALID_FR, stem="valid")
    pipe = registry.get("translate")
    cfg = replace(CONFIGS["tiny"], questions=False, vocab_size=vocab_size, sample_docs=1000, max_len=200, beam=2)
    cache = Cache(tmp_path / "cache")
    manifest, _ = pipe.preprocess(cfg, data, cache)
    valid = pipe.datasets(cfg, cache, manifest)["valid"]
    ctx = _ctx(cfg, manifest)
    out = pipe.combine([pipe.evaluate(_Oracle(), pipe.batches(valid, ctx, train=False), ctx)])
    assert sorted(manifest["rows"].items()) == [("train", len(en)), ("valid", 3)]
    assert out["bleu"] == pytest.approx(100.0) and out["bleu_beam"] == pytest.approx(100.0)


# ---------------------------------------------------------------- readers


def test_line_files_with_different_counts_or_empty_are_clear_errors(tmp_path):
    d = write_pair(tmp_path / "a", ["Where is it?", "Who is it?", "Why?"], ["Où est-il ?", "Qui est-ce ?"])
    src = pairs.find_pairs(d)
    assert src.kind == "lines" and src.splits == {"train": (str(d / f"{STEM}.fr"), str(d / f"{STEM}.en"))}
    with pytest.raises(DataError) as e:
        list(pairs.iter_pairs(src, "train"))
    assert f"{d / STEM}.fr has 2 lines but {d / STEM}.en has 3" in str(e.value)

    d = write_pair(tmp_path / "b", ["Where is it?"], [])
    with pytest.raises(DataError, match=re.escape(f"{d / STEM}.fr: empty file")):
        list(pairs.iter_pairs(pairs.find_pairs(d), "train"))

    d = write_pair(tmp_path / "c", ["Where is it?"], ["x"])
    (d / f"{STEM}.fr").write_bytes(b"O\xf9 est-il ?\n")  # latin-1, not UTF-8
    with pytest.raises(DataError, match="line 1 is not UTF-8"):
        list(pairs.iter_pairs(pairs.find_pairs(d), "train"))

    (d / f"{STEM}.fr").unlink()
    with pytest.raises(DataError, match=re.escape(f"{STEM}.fr: missing")):
        pairs.find_pairs(d)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.md").write_text("not a corpus")
    with pytest.raises(DataError, match="no parallel text here"):
        pairs.find_pairs(tmp_path / "e")
    assert pairs.find_pairs(tmp_path).root == tmp_path / "a"  # one folder below, as an archive extracts
    with pytest.raises(DataError, match="no such file or folder"):
        pairs.find_pairs(tmp_path / "nothing")


def test_question_filter_is_lesson_11s():
    got = list(pairs.question_filter([
        ("Où est le chat ?", "Where is the cat?"),             # kept
        ("Qui est là ? Moi.", "Who is there? Me."),             # kept, both cut after the '?'
        ("Comment allez-vous ?", "How are you?"),               # not a Wh question
        ("Le chat est là.", "What a cat."),                     # no '?' before the '.'
        ("Quoi. Vraiment ?", "What is it?"),                    # French has a '.' before its '?'
    ], "fr", "en"))
    assert got == [("Où est le chat ?", "Where is the cat?"), ("Qui est là ?", "Who is there?")]
    assert list(pairs.question_filter([("Where?", "Où ?")], "en", "fr")) == [("Where?", "Où ?")]
    with pytest.raises(ValueError, match="one side must be en"):
        list(pairs.question_filter([], "fr", "de"))


def test_tab_separated_pairs_anki_format(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text("Go.\tVa !\tCC-BY 2.0 (France)\nWho are you?\tQui êtes-vous ?\tCC-BY\n\n", encoding="utf-8")
    src = pairs.find_pairs(tmp_path)  # the only .txt in the folder
    assert src.kind == "tsv" and src.splits["train"] == (str(f),)
    assert list(pairs.iter_pairs(src, "train")) == [("Va !", "Go."), ("Qui êtes-vous ?", "Who are you?")]
    en_fr = pairs.find_pairs(f, src="en", tgt="fr")
    assert list(pairs.iter_pairs(en_fr, "train"))[1] == ("Who are you?", "Qui êtes-vous ?")
    f.write_text("Go.\tVa !\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 has no tab"):
        list(pairs.iter_pairs(src, "train"))
    with pytest.raises(ValueError, match="must hold fr and de"):
        pairs.find_pairs(f, src="fr", tgt="de")


# ---------------------------------------------------------------- the sample


def _numbers(lines: list[str], lang: str) -> list[int]:
    """The number each sample line is about, recovered from its words."""
    words = {giga_fren_samples.number_words(n)[0 if lang == "en" else 1]: n for n in range(2, 1000)}
    templates = [t[0 if lang == "en" else 1] for t in giga_fren_samples.QUESTIONS + giga_fren_samples.OTHERS]
    out = []
    for line in lines:
        for t in templates:
            a, b = t.split("{" + lang + "}")
            if line.startswith(a) and line.endswith(b) and line[len(a) : len(line) - len(b)] in words:
                out.append(words[line[len(a) : len(line) - len(b)]])
                break
        else:
            raise AssertionError(f"no template makes {line!r}")
    return out


def test_sample_is_real_french_split_by_number(tmp_path):
    info = giga_fren_samples.giga_fren(tmp_path / "s", size=400, seed=3)
    assert info["train"] + info["valid"] == 400 and info["valid"] == 40
    d = tmp_path / "s"
    nums = {}
    for split, stem in (("train", STEM), ("valid", "valid")):
        en = (d / f"{stem}.en").read_text(encoding="utf-8").splitlines()
        fr = (d / f"{stem}.fr").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(fr) == info[split]
        assert _numbers(en, "en") == _numbers(fr, "fr")  # line i of each file is about the same number
        nums[split] = set(_numbers(en, "en"))
    assert nums["train"] and nums["valid"] and not nums["train"] & nums["valid"]
    fr_text = (d / f"{STEM}.fr").read_text(encoding="utf-8")
    assert "quatre-vingt" in fr_text or "soixante" in fr_text
    assert giga_fren_samples.number_words(71) == ("seventy-one", "soixante et onze")
    kept = list(pairs.question_filter(pairs.iter_pairs(pairs.find_pairs(d), "train"), "fr", "en"))
    assert 0.6 * info["train"] < len(kept) < info["train"]  # statements and How questions are dropped
    again = giga_fren_samples.giga_fren(tmp_path / "t", size=400, seed=3)
    assert again["questions"] == info["questions"]
    assert (tmp_path / "t" / f"{STEM}.en").read_bytes() == (d / f"{STEM}.en").read_bytes()


# ---------------------------------------------------------------- the model


def _model(attention=True, bidir=True, **kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab=30, tgt_vocab=25, emb_sz=12, n_hid=16, n_layers=2, bidir=bidir,
                        attention=attention, emb_drop=0.0, rnn_drop=0.0, out_drop=0.0, **kw)
    return Seq2Seq(cfg).eval()


def _batch():
    src = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 3, 1, 1]])  # the second padded at the end
    return src, torch.tensor([6, 4]), torch.tensor([[2, 4, 5, 6, 3], [2, 7, 3, 1, 1]])


@pytest.mark.parametrize("attention,bidir", [(True, True), (False, False)])
def test_shapes_and_padding_changes_nothing(attention, bidir):
    m = _model(attention, bidir)
    src, src_len, tgt = _batch()
    assert m(src, src_len, tgt).shape == (2, 4, 25)
    toks, attn = m.greedy(src, src_len, max_len=7)
    assert toks.shape[0] == 2 and toks.shape[1] <= 7
    # the short sentence alone (no padding) gives the same logits and output as in the batch
    alone = m(src[1:, :4], src_len[1:], tgt[1:, :3])
    assert torch.allclose(alone, m(src, src_len, tgt)[1:, :2], atol=1e-5)
    assert strip_tokens(m.greedy(src[1:, :4], src_len[1:], 7)[0]) == strip_tokens(toks)[1:]
    if attention:
        assert attn.shape == (2, toks.shape[1], 6)
        assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[:2]))
        assert attn[1, :, 4:].abs().max() == 0  # no weight on padding
    else:
        assert attn is None


def test_beam_of_one_is_greedy_and_beams_are_batched():
    m = _model()
    src, src_len, _ = _batch()
    greedy, _ = m.greedy(src, src_len, 8)
    assert strip_tokens(m.beam_search(src, src_len, beam=1, max_len=8)) == strip_tokens(greedy)
    wide = m.beam_search(src, src_len, beam=4, max_len=8)
    # each sentence's beam result is the one it gets alone: no leak between sentences
    assert strip_tokens(m.beam_search(src[1:, :4], src_len[1:], 4, 8)) == strip_tokens(wide)[1:]
    with pytest.raises(ValueError, match="beam must be >= 1"):
        m.beam_search(src, src_len, beam=0, max_len=8)


def _scripted(m: Seq2Seq, table: dict[int, dict[int, float]]) -> None:
    """Replace the decoder by a fixed table: last token -> {next token: probability}."""
    V = m.cfg.tgt_vocab

    def step(tok, h, mem):
        logits = torch.full((len(tok), V), -1e9)
        for r, t in enumerate(tok.tolist()):
            for nxt, p in table.get(t, {3: 1.0}).items():
                logits[r, nxt] = math.log(p)
        return logits, h, None

    m.decoder.step = step


def test_beam_search_escapes_greedys_garden_path():
    """BOS -> A (0.6) or B (0.4); A -> EOS (0.3) or one of ten words (0.07 each); B -> EOS (1).
    Greedy takes A, then EOS: p = 0.18. A beam of 2 keeps B and finds B EOS: p = 0.4."""
    m = _model()
    _scripted(m, {2: {4: 0.6, 5: 0.4}, 4: {3: 0.3, **{w: 0.07 for w in range(6, 16)}}, 5: {3: 1.0}})
    src, src_len, _ = _batch()
    assert strip_tokens(m.greedy(src, src_len, 6)[0]) == [[4], [4]]
    assert strip_tokens(m.beam_search(src, src_len, beam=2, max_len=6, alpha=0.0)) == [[5], [5]]
    assert strip_tokens(m.beam_search(src, src_len, beam=1, max_len=6)) == [[4], [4]]


def test_beam_length_normalisation():
    """BOS -> EOS (0.5) or C (0.5); C -> D (0.9); D -> EOS (0.9). Total log p prefers the
    empty sentence (0.5 > 0.405); per token (alpha = 1) C D EOS wins (-0.30 > -0.69)."""
    m = _model()
    _scripted(m, {2: {3: 0.5, 6: 0.5}, 6: {7: 0.9, 3: 0.1}, 7: {3: 0.9, 8: 0.1}})
    src, src_len, _ = _batch()
    assert strip_tokens(m.beam_search(src, src_len, beam=3, max_len=6, alpha=0.0)) == [[], []]
    assert strip_tokens(m.beam_search(src, src_len, beam=3, max_len=6, alpha=1.0)) == [[6, 7], [6, 7]]


def test_a_few_steps_teach_a_tiny_batch():
    torch.manual_seed(0)
    m = _model().train()
    src, src_len, tgt = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits = m(src, src_len, tgt, tf=1.0)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 25), tgt[:, 1:].reshape(-1), ignore_index=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    m.eval()
    assert strip_tokens(m.greedy(src, src_len, 8)[0]) == [[4, 5, 6], [7]]


def test_teacher_forcing_falls_over_training():
    cfg = Config(tf_start=1.0, tf_end=0.0, tf_decay=0.5)
    assert [teacher_forcing(cfg, p) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.5, 0.0, 0.0]
    draws = iter([0.3, 0.9, 0.1, 0.5])
    m = _model()
    src, src_len, tgt = _batch()
    # tf = 0.5: step 1 feeds the reference (0.3 < 0.5), step 2 the prediction, step 3 the reference
    seen = []
    real = m.decoder.step
    m.decoder.step = lambda tok, h, mem: (seen.append(tok.clone()), real(tok, h, mem))[1]
    logits = m(src, src_len, tgt, tf=0.5, rand=lambda: next(draws))
    assert torch.equal(seen[1], tgt[:, 1]) and torch.equal(seen[2], logits[:, 1].argmax(1))
    assert torch.equal(seen[3], tgt[:, 3])


def test_lr_schedule_is_lesson_11s_use_clr():
    """use_clr=(div, cut_div): linear from lr / div up to lr over 1/cut_div of training, then down."""
    from pipelines.core.phases import Schedule

    cfg = Config(epochs=4, lr=1e-2, div=20, cut_div=4)
    sched = Schedule(registry.get("translate").phases(cfg), 10)  # 40 steps, the peak at step 10
    lrs = [sched.at(i)[1] for i in range(40)]
    assert lrs[0] == pytest.approx(5e-4) and max(lrs) == pytest.approx(1e-2, rel=1e-6)
    assert lrs.index(max(lrs)) == 10
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 1e-3 and sched.at(40)[1] == pytest.approx(5e-4)  # back to lr / div at the end
    assert {sched.at(i)[2] for i in (0, 20, 39)} == {0.8}  # Adam beta1 fixed at lesson 11's 0.8
    # the whole schedule lasts --epochs, whatever the config
    for name, c in CONFIGS.items():
        for epochs in (1, 2, 3, c.epochs):
            s = engine.plan(registry.get("translate"), replace(c, epochs=epochs), 7)
            assert s.total_epochs == epochs and s.total_steps == 7 * epochs, (name, epochs)


def test_word_vectors_fill_the_embedding(tmp_path):
    vec = tmp_path / "wiki.fr.vec"
    vec.write_text("3 4\nchat 1 2 3 4\nChien 0.5 0.5 0.5 0.5\nvingt -1 0 1 0\n", encoding="utf-8")
    emb = torch.nn.Embedding(6, 4)
    before = emb.weight.detach().clone()
    itos = ["<unk>", "<pad>", "<s>", "</s>", "\u2581chat", "\u2581chien"]
    assert load_vectors(emb, vec, itos, scale=3.0) == 2
    assert torch.equal(emb.weight[4], torch.tensor([3.0, 6, 9, 12]))
    assert torch.equal(emb.weight[5], torch.tensor([1.5, 1.5, 1.5, 1.5]))  # by its lower-cased form
    assert torch.equal(emb.weight[:4], before[:4])
    with pytest.raises(ValueError, match="dimension 4, the embedding has 5"):
        load_vectors(torch.nn.Embedding(6, 5), vec, itos)
    (tmp_path / "bad.vec").write_text("chat 1 2 3\n")
    with pytest.raises(ValueError, match="not a fastText .vec file"):
        load_vectors(emb, tmp_path / "bad.vec", itos)


# ---------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def fren_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "giga-fren"
    giga_fren_samples.giga_fren(out, size=600, seed=1)
    return out


@pytest.fixture(scope="module")
def tiny_cache(fren_small, tmp_path_factory, ray_session) -> tuple[Path, dict]:
    """fren_small preprocessed with the tiny config, once: (cache folder, manifest)."""
    from preprocessing.cache import Cache

    d = tmp_path_factory.mktemp("cache")
    manifest, hit = registry.get("translate").preprocess(CONFIGS["tiny"], fren_small, Cache(d))
    assert not hit
    return d, manifest


def test_rows_carry_ids_and_texts_the_tokenizers_are_in_the_manifest(tiny_cache, fren_small):
    from preprocessing.cache import Cache

    d, manifest = tiny_cache
    pipe, cfg = registry.get("translate"), CONFIGS["tiny"]
    again, hit = pipe.preprocess(cfg, fren_small, Cache(d))
    assert hit and again["key"] == manifest["key"]
    assert manifest["rows"]["train"] > 300 and manifest["rows"]["valid"] > 30
    assert all(Path(manifest["spm"][lang]).is_file() for lang in ("fr", "en"))
    for split, ds in pipe.datasets(cfg, Cache(d), manifest).items():
        names = set(ds.schema().names)
        assert {"src", "tgt", "src_text", "tgt_text"} <= names and not any("spm" in n for n in names), (split, names)


def _ctx(cfg, manifest=None, **kw) -> RunContext:
    return RunContext(cfg=cfg, manifest=manifest or {}, **kw)


def test_train_step_takes_teacher_forcing_from_ctx_and_leaves_the_step_to_the_engine():
    pipe, cfg = registry.get("translate"), CONFIGS["tiny"]
    torch.manual_seed(0)
    model = pipe.build_model(cfg).train()
    src, src_len, tgt = _batch()
    batch = {"src": src, "src_len": src_len, "tgt": tgt, "src_text": ["a", "b"], "ref": ["A", "B"]}
    before = [p.detach().clone() for p in model.parameters()]
    ctx = _ctx(cfg, steps_per_epoch=10, total_epochs=2)
    for step, want in ((0, 1.0), (10, teacher_forcing(cfg, 0.5)), (20, 0.0)):
        ctx.global_step = step
        out = pipe.train_step(model, batch, ctx)
        assert out["tf"].item() == pytest.approx(want) and out["loss"].requires_grad
    assert 0 < teacher_forcing(cfg, 0.5) < 1
    assert all(p.grad is None for p in model.parameters())  # no backward, no step in train_step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_init_model_fills_embeddings_through_the_manifests_tokenizers(tiny_cache, tmp_path):
    import sentencepiece as spm

    _, manifest = tiny_cache
    pipe = registry.get("translate")
    cfg = replace(CONFIGS["tiny"], src_vectors=str(tmp_path / "fr.vec"))
    sp = spm.SentencePieceProcessor(model_file=manifest["spm"]["fr"])
    words = [p.replace("\u2581", "") for p in (sp.id_to_piece(i) for i in range(4, sp.get_piece_size()))]
    words = sorted({w for w in words if w.isalpha()})[:3]
    (tmp_path / "fr.vec").write_text(f"{len(words)} {cfg.emb_sz}\n" + "".join(
        f"{w} " + " ".join(["0.5"] * cfg.emb_sz) + "\n" for w in words), encoding="utf-8")
    model = pipe.build_model(cfg)
    tgt_before = model.decoder.emb.weight.detach().clone()
    pipe.init_model(model, _ctx(cfg, manifest))
    filled = (model.encoder.emb.weight == 0.5 * cfg.vec_scale).all(1)
    assert words and int(filled.sum()) >= len(words)
    assert torch.equal(model.decoder.emb.weight, tgt_before)  # no tgt_vectors: untouched


def test_registered():
    pipe = registry.get("translate")
    assert (pipe.dataset, pipe.metric, pipe.mode) == ("giga-fren", "bleu", "max")
    assert set(pipe.configs) == {"tiny", "sample", "default"}
    assert set(pipe.search_space(pipe.configs["tiny"])) >= {"out_drop", "lr", "tf_decay"}
    with pytest.raises(ValueError, match="must differ"):
        Config(src_lang="en", tgt_lang="en")


def test_mismatched_files_through_the_cli_are_one_line(capsys, tmp_path, workdir):
    d = write_pair(tmp_path / "bad", ["Where is it?", "Who is it?"], ["Où est-il ?"])
    code, _, err = run_cli(capsys, "preprocess", "translate", "--data", str(d), "--config", "tiny")
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "has 1 lines but" in lines[0] and "Traceback" not in err
    code, _, err = run_cli(capsys, "run", "translate", "--data", str(d), "--config", "tiny",
                           "--set", "src_vectors=/no/wiki.fr.vec")
    assert code == 1 and "src_vectors /no/wiki.fr.vec: no such file" in err
    # a .tsv whose columns are fr<TAB>en: the filter finds no English question, and says which columns it read
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "pairs.tsv").write_text("Où est-il ?\tWhere is it?\tCC-BY\n" * 10, encoding="utf-8")
    code, _, err = run_cli(capsys, "preprocess", "translate", "--data", str(tmp_path / "rev"), "--config", "tiny")
    assert code == 1 and "starts with 'Wh'" in err and "first two columns are read as en<TAB>fr (tsv_langs)" in err, err


def test_tiny_run_end_to_end_then_translate(capsys, fren_small, tiny_cache, workdir, monkeypatch):
    """`fastray run` (Ray Train, MLflow) then `fastray translate RUN_ID` with what it logged."""
    code, res, err = run_cli(capsys, "run", "translate", "--data", str(fren_small), "--config", "tiny", "--name", "t",
                             "--cache-dir", str(tiny_cache[0]))
    assert code == 0, err
    assert res["cache"] == "hit"
    m = res["metrics"]
    assert 0 <= m["bleu"] <= 100 and 0 <= m["valid_bleu_beam"] <= 100 and m["valid_loss"] > 0
    assert m["epoch"] == 2 and 0 <= m["train_tf"] < 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    rid = res["run_id"]
    assert [s for s, _ in ((h.step, h.value) for h in client.get_metric_history(rid, "bleu"))] == [1, 2]
    tf = [h.value for h in client.get_metric_history(rid, "train_tf")]
    assert tf[0] > tf[1]  # teacher forcing fades
    names = {Path(a.path).name for f in ("predictions", "tokenizer") for a in client.list_artifacts(rid, f)}
    assert {"translations.tsv", "attention_0.png", "attention_1.png", "src.model", "tgt.model"} <= names
    table = Path(client.download_artifacts(rid, "predictions/translations.tsv", str(workdir)))
    rows = table.read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["source", "reference", "greedy", "beam2"] and len(rows) == 9
    assert all(r.split("\t")[1].startswith("Wh") for r in rows[1:])

    # translating lines with the run: a file, stdin, greedy and beam
    src = workdir / "in.fr"
    src.write_text("Où sont les trente chats ?\n\nQui a acheté deux billets ?\n", encoding="utf-8")
    import argparse

    args = argparse.Namespace(run_id=rid, file=src, beam=1, tracking_uri=None)
    out = cmd_translate(args)
    printed = capsys.readouterr().out.splitlines()
    assert out["lines"] == 3 and len(out["translations"]) == 3 and out["translations"][1] == "" and out["beam"] == 1
    assert printed == out["translations"]
    assert translate_lines(rid, ["Où sont les trente chats ?"], beam=1) == out["translations"][:1]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Qui a acheté deux billets ?\n".encode())))
    out2 = cmd_translate(argparse.Namespace(run_id=rid, file=None, beam=None, tracking_uri=None))
    assert out2["lines"] == 1 and isinstance(out2["translations"][0], str)
    assert out2["beam"] == 2  # the run's own beam size, said (it was null)
    out3 = cmd_translate(argparse.Namespace(run_id="t", file=src, beam=1, tracking_uri=None))  # the run by its --name
    assert out3["run_id"] == rid and out3["translations"] == out["translations"]
    # stdin that is not UTF-8: the line --file gives, not a traceback from SentencePiece
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe bad\n")))
    with pytest.raises(ValueError, match="stdin: not UTF-8 text"):
        cmd_translate(argparse.Namespace(run_id=rid, file=None, beam=1, tracking_uri=None))
    with pytest.raises(IsADirectoryError, match="a folder, not a file of sentences"):
        cmd_translate(argparse.Namespace(run_id=rid, file=workdir, beam=1, tracking_uri=None))
    with pytest.raises(ValueError, match="no MLflow run '0{32}' in .* \\(neither a run id nor the --name of any translate run\\)"):
        translate_lines("0" * 32, ["x"])
    # a store that is not there: said, and not made (MLflow would create an empty one)
    with pytest.raises(FileNotFoundError, match="none.db: no MLflow store there"):
        translate_lines(rid, ["x"], f"sqlite:///{workdir / 'none.db'}")
    assert not (workdir / "none.db").exists()
    with pytest.raises(FileNotFoundError, match="no such file"):
        cmd_translate(argparse.Namespace(run_id=rid, file=workdir / "none.fr", beam=1, tracking_uri=None))


def _train_here(cfg: Config, cache_dir: Path, manifest: dict) -> dict:
    """One run through the engine's loop and the pipeline's hooks in this process (no Ray
    Train): the last epoch's metrics."""
    from preprocessing.cache import Cache

    pipe = registry.get("translate")
    # one torch thread: these small GRUs gain little from two, and lose much when the cores are shared
    spec = RunSpec("translate", cfg, "here", 1, 1, False, pipe.steps_per_epoch(cfg, manifest, 1), "", "", "",
                   manifest=manifest)
    session = LocalSession({k: v.materialize() for k, v in pipe.datasets(cfg, Cache(cache_dir), manifest).items()})
    threads = torch.get_num_threads()
    try:
        run_loop(spec, session, pipe)
    finally:
        torch.set_num_threads(threads)  # the loop sets this process's, as a worker's
    assert [r["epoch"] for r in session.reports] == list(range(1, cfg.epochs + 1))
    return session.reports[-1]


def test_sample_config_learns_with_attention_and_less_without(tmp_path, ray_session):
    """The acceptance run: sacreBLEU >= 60 on held-out numbers with the sample config and
    its 3,000-pair sample, lower without attention (same data, schedule and seed; greedy
    only, as beam search changes no training), beam search no worse than greedy by more than
    a point. Not "at least as good": the beam keeps the sentence of the highest
    length-normalised likelihood, not of the highest BLEU, and on one host it scored 94.36
    against greedy's 94.42 (the search itself: test_beam_search_escapes_greedys_garden_path
    and the tests around it)."""
    from preprocessing.cache import Cache

    data = tmp_path / "giga-fren"
    giga_fren_samples.giga_fren(data, size=3000)
    cfg = CONFIGS["sample"]
    manifest, _ = registry.get("translate").preprocess(cfg, data, Cache(tmp_path / "cache"))
    a = _train_here(cfg, tmp_path / "cache", manifest)
    p = _train_here(replace(cfg, attention=False, beam=1), tmp_path / "cache", manifest)
    print(f"sample: attention bleu {a['bleu']:.1f} (beam {a['valid_bleu_beam']:.1f}); no attention bleu {p['bleu']:.1f}")
    assert a["bleu"] >= 60
    assert p["bleu"] < a["bleu"]
    assert a["valid_bleu_beam"] >= a["bleu"] - 1.0
