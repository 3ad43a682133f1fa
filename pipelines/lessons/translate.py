"""Lesson 11: translation with a sequence-to-sequence GRU and attention, scored by BLEU.

Data: the giga-fren line files (or tab-separated pairs) read by preprocessing.pairs, by
default through lesson 11's question filter, tokenized with SentencePiece (one model per
language, or a joint one) through preprocessing/text's cached Ray Data path, joined back into pairs
and cached. Training: per-token cross entropy with teacher forcing whose probability falls
over training; each epoch, corpus BLEU (sacrebleu, on detokenized text against the real
references) of greedy decoding, and of beam search, on the validation set. The lesson
reported only a loss. The references are scored as written: the SentencePiece models keep
every character (no NFKC folding; byte pieces for rare or unseen characters, see
preprocessing.text.subwords.SpmSettings), so a model that writes the reference scores 100.

Artifacts: the model, its two SentencePiece models (``tokenizer/``), a table of source,
reference and outputs for validation sentences and attention heatmaps (``predictions/``).
``fastray translate RUN_ID`` (``add_parser`` / ``cmd_translate``) translates lines with them.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.seq2seq import Seq2Seq, Seq2SeqConfig, load_vectors, read_vec_header, strip_tokens
from preprocessing import pairs, text
from preprocessing.text import batching, documents, subwords

from ..core import plots
from ..core.batching import cycle_batches
from ..core.contract import Pipeline, RunContext, TrainConfig, unwrap
from ..core.phases import TrainingPhase

TOKENIZER_DIR = "tokenizer"
MODEL_ARTIFACT = "model/model.pt"

logger = logging.getLogger("fastray")


@dataclass(frozen=True)
class Config(TrainConfig):
    # data
    src_lang: str = "fr"        # source language: the line file suffix / a tsv_langs entry
    tgt_lang: str = "en"        # target language
    questions: bool = True      # lesson 11's filter: English "Wh...?" questions and their translations
    valid_stem: str = "valid"   # held-out pair <valid_stem>.<lang> beside the line files = validation set
    valid_pct: float = 0.1      # without one: this fraction of the pairs, drawn at random (seed)
    tsv_langs: tuple[str, ...] = ("en", "fr")  # languages of a TSV file's first two columns (Anki: en, fr)
    joint_vocab: bool = False   # one SentencePiece model for both languages (else one each)
    vocab_size: int = 8000      # SentencePiece pieces per model (an upper bound; embedding rows)
    sample_docs: int = 50000    # sentences SentencePiece learns from
    max_len: int = 30           # pairs longer than this many tokens (BOS, EOS included) on a side are dropped
    # model
    emb_sz: int = 300           # embedding size (fastText vectors: 300)
    n_hid: int = 256            # GRU hidden size (lesson 11: 256)
    n_layers: int = 2           # GRU layers, encoder and decoder
    bidir: bool = True          # bidirectional encoder
    attention: bool = True      # additive attention (off: lesson 11's first model)
    emb_drop: float = 0.15      # dropout on embeddings (lesson 11: 0.15)
    rnn_drop: float = 0.25      # dropout between GRU layers (lesson 11: 0.25)
    out_drop: float = 0.35      # dropout before the output layer (lesson 11: 0.35)
    src_vectors: str = ""       # fastText .vec file for the source embedding ("" = random init)
    tgt_vectors: str = ""       # fastText .vec file for the target embedding
    vec_scale: float = 3.0      # word vectors are multiplied by this (lesson 11: 3)
    # training
    tf_start: float = 1.0       # teacher forcing probability at the start
    tf_end: float = 0.0         # ... falling linearly to this
    tf_decay: float = 0.67      # ... over this fraction of training, then flat (lesson 11: 10 of 15 epochs)
    bs: int = 125               # examples per optimizer step over all workers (lesson 11: 125)
    epochs: int = 15            # epochs the whole run trains (lesson 11: 15)
    lr: float = 3e-3            # peak LR (lesson 11: Adam 3e-3)
    div: float = 20.0           # lesson 11's use_clr=(div, cut_div): the LR starts and ends at lr / div,
    cut_div: float = 10.0       # ... rises to lr over the first 1/cut_div of training, then falls
    beta1: float = 0.8          # Adam betas (lesson 11: (0.8, 0.99))
    beta2: float = 0.99
    wd: float = 0.0             # weight decay
    clip: float = 1.0           # max global gradient norm per optimizer step (0: no clipping)
    # evaluation
    beam: int = 5               # beam size of the per-epoch beam-search BLEU (1: greedy only)
    len_alpha: float = 1.0      # beam length normalisation: log p / length ** len_alpha
    gen_len: int = 0            # most tokens a decoder writes (0: max_len)
    show: int = 20              # validation sentences in the translations table
    heatmaps: int = 4           # ... of which attention heatmaps are drawn
    bf16: bool = False          # autocast the forward and the loss to bfloat16 on a GPU (off: GRUs in fp32)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "tsv_langs", tuple(self.tsv_langs))
        if not self.src_lang or self.src_lang == self.tgt_lang:
            raise ValueError(f"src_lang and tgt_lang must differ, got {self.src_lang!r} and {self.tgt_lang!r}")
        if self.lr <= 0 or self.vocab_size < 8 or self.max_len < 3:
            raise ValueError(f"need lr > 0, vocab_size >= 8, max_len >= 3 (got lr={self.lr}, "
                             f"vocab_size={self.vocab_size}, max_len={self.max_len})")
        if not (0 <= self.tf_end <= 1 and 0 <= self.tf_start <= 1 and 0 <= self.tf_decay <= 1):
            raise ValueError(f"tf_start, tf_end and tf_decay must be in [0, 1] (got {self.tf_start}, {self.tf_end}, "
                             f"{self.tf_decay})")
        if self.beam < 1 or self.gen_len < 0:
            raise ValueError(f"need beam >= 1 and gen_len >= 0 (got {self.beam}, {self.gen_len})")
        if len(self.tsv_langs) != 2:
            raise ValueError(f"tsv_langs needs two languages, got {self.tsv_langs}")
        if self.div <= 0 or self.cut_div <= 1:
            raise ValueError(f"need div > 0 and cut_div > 1 (got {self.div}, {self.cut_div})")

    def model_config(self) -> Seq2SeqConfig:
        return Seq2SeqConfig(
            src_vocab=self.vocab_size, tgt_vocab=self.vocab_size, emb_sz=self.emb_sz, n_hid=self.n_hid,
            n_layers=self.n_layers, bidir=self.bidir, attention=self.attention, emb_drop=self.emb_drop,
            rnn_drop=self.rnn_drop, out_drop=self.out_drop, pad_id=text.PAD_ID, bos_id=text.BOS_ID, eos_id=text.EOS_ID,
        )

    @property
    def decode_len(self) -> int:
        return self.gen_len or self.max_len


CONFIGS = {
    # seconds: a smoke run through every mechanism
    "tiny": Config(vocab_size=80, sample_docs=400, max_len=48, emb_sz=16, n_hid=32, n_layers=1, bs=16, epochs=2,
                   lr=5e-3, div=10, cut_div=4, beam=2, show=8, heatmaps=2, emb_drop=0.0, rnn_drop=0.0, out_drop=0.1),
    # about 20 s of training on 2 CPU cores (268 steps): sacreBLEU about 94 on the sample's held-out
    # numbers with attention, about 50 without (5 epochs of bs 64 stopped at 37: too few steps)
    "sample": Config(vocab_size=120, sample_docs=5000, max_len=48, emb_sz=64, n_hid=128, n_layers=1, bs=32,
                     epochs=4, lr=1e-2, div=20, cut_div=4, tf_decay=0.5, emb_drop=0.1, rnn_drop=0.1, out_drop=0.2,
                     beam=5, show=20, heatmaps=4),
    # lesson 11 on giga-fren's questions (GPU)
    "default": Config(),
}


# ---------------------------------------------------------------- metric


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenization, exponential smoothing) of
    detokenized hypotheses against one reference each; 0 for no sentences."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def teacher_forcing(cfg: Config, progress: float) -> float:
    """The probability of feeding the reference token at training progress in [0, 1]."""
    if cfg.tf_decay <= 0:
        return cfg.tf_end
    f = min(1.0, max(0.0, progress) / cfg.tf_decay)
    return cfg.tf_start + (cfg.tf_end - cfg.tf_start) * f


# ---------------------------------------------------------------- batches


@dataclass
class PairArrays:
    """A worker's shard in memory: both sides' ids back to back with offsets, the texts."""

    src: np.ndarray
    src_off: np.ndarray
    tgt: np.ndarray
    tgt_off: np.ndarray
    src_text: list[str]
    ref: list[str]

    def __len__(self) -> int:
        return len(self.ref)


def _flat(col) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    col = col.combine_chunks()
    lens = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.int64), off


def read_shard(shard) -> PairArrays:
    import pyarrow as pa

    tables = list(shard.iter_batches(batch_size=4096, batch_format="pyarrow", prefetch_batches=1))
    if not tables:
        return PairArrays(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64),
                          [], [])
    t = pa.concat_tables(tables)
    src, src_off = _flat(t.column("src"))
    tgt, tgt_off = _flat(t.column("tgt"))
    return PairArrays(src, src_off, tgt, tgt_off, t.column("src_text").to_pylist(), t.column("tgt_text").to_pylist())


def _pad(ids: np.ndarray, off: np.ndarray, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows idx -> (B, T) int64 padded at the end with PAD_ID, and their lengths (B,)."""
    lens = off[np.asarray(idx) + 1] - off[np.asarray(idx)]
    out = np.full((len(idx), int(lens.max())), text.PAD_ID, np.int64)
    for r, i in enumerate(idx):
        out[r, : lens[r]] = ids[off[i] : off[i + 1]]
    return torch.from_numpy(out), torch.from_numpy(lens.astype(np.int64))


# ---------------------------------------------------------------- the pipeline


class Translate(Pipeline):
    Config = Config
    configs = CONFIGS

    # ---- data
    def preprocess(self, cfg: Config, data_dir: Path, cache, on_bad: str = "skip"):
        for what in ("src_vectors", "tgt_vectors"):
            path = getattr(cfg, what)
            if path:
                _check_vectors(path, what, cfg.emb_sz)  # fail before tokenizing
        source = pairs.find_pairs(data_dir, cfg.src_lang, cfg.tgt_lang, valid_stem=cfg.valid_stem,
                                  tsv_langs=cfg.tsv_langs)
        return pairs.prepare(source, cache, questions=cfg.questions, valid_pct=cfg.valid_pct, joint=cfg.joint_vocab,
                             vocab_size=cfg.vocab_size, sample_docs=cfg.sample_docs, max_len=cfg.max_len,
                             seed=cfg.seed, on_bad=on_bad)

    def datasets(self, cfg: Config, cache, manifest: dict) -> dict[str, Any]:
        # the SentencePiece models' paths travel in the manifest (ctx.manifest on the workers)
        return {s: pairs.read_pairs(cache, manifest, s) for s in ("train", "valid")}

    def batches(self, shard, ctx: RunContext, train: bool):
        cfg, bs, device = ctx.cfg, ctx.bs, ctx.device
        data = read_shard(shard)
        src_len = np.diff(data.src_off)

        def batch(idx: list[int]) -> dict:
            src, lens = _pad(data.src, data.src_off, idx)
            tgt, _ = _pad(data.tgt, data.tgt_off, idx)
            return {"src": src.to(device), "src_len": lens.to(device), "tgt": tgt.to(device),
                    "src_text": [data.src_text[i] for i in idx], "ref": [data.ref[i] for i in idx]}

        if train:
            epoch = ctx.epoch

            def make(k: int):
                return (b for b in batching.sortish_batches(src_len, bs, seed=cfg.seed * 1000 + epoch * 10 + k) if len(b) == bs)

            for idx in cycle_batches(make, ctx.steps_per_epoch):
                yield batch(idx)
        else:
            for idx in batching.sorted_batches(src_len, bs):
                yield batch(idx)

    # ---- model
    def build_model(self, cfg: Config) -> nn.Module:
        return Seq2Seq(cfg.model_config())

    def init_source(self, cfg: Config, manifest: dict, tracking_uri: str) -> dict[str, str]:
        tags = {}
        for side, lang in (("src", cfg.src_lang), ("tgt", cfg.tgt_lang)):
            path = getattr(cfg, f"{side}_vectors")
            if not path:
                continue
            _check_vectors(path, f"{side}_vectors", cfg.emb_sz)
            rows = manifest["vocab_size"][lang]
            itos = _itos(manifest["spm"][lang])
            probe = nn.Embedding(rows, cfg.emb_sz)
            found = load_vectors(probe, path, itos, cfg.vec_scale)
            logger.info(f"translate: {side} ({lang}) embedding from {path}: {found} of {rows} pieces have a vector")
            tags[f"fastray.{side}_vectors"] = f"{path} ({found}/{rows})"
        if not tags:
            logger.info("translate: no word vectors given (--set src_vectors=FILE.vec tgt_vectors=FILE.vec): random init")
        return tags or {"fastray.init": "random"}

    def init_model(self, model: nn.Module, ctx: RunContext) -> None:
        """Fill the embeddings from word vectors (before a checkpoint, if any, is loaded over
        them), through the tokenizers named in the manifest."""
        cfg = ctx.cfg
        for path, emb, lang in ((cfg.src_vectors, model.encoder.emb, cfg.src_lang),
                                (cfg.tgt_vectors, model.decoder.emb, cfg.tgt_lang)):
            if path:
                load_vectors(emb, path, _itos(ctx.manifest["spm"][lang]), cfg.vec_scale)

    def phases(self, cfg: Config) -> list:
        """Lesson 11's schedule, fastai 0.7's use_clr=(div, cut_div): Adam, the LR linear from
        lr / div up to lr over 1/cut_div of the epochs, then linear back down to lr / div."""
        kw = dict(momentum=cfg.beta1, opt="adam", opt_kwargs={"betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.wd},
                  data="train")
        up = cfg.epochs / cfg.cut_div
        return [TrainingPhase(up, (cfg.lr / cfg.div, cfg.lr), "linear", **kw),
                TrainingPhase(cfg.epochs - up, (cfg.lr, cfg.lr / cfg.div), "linear", **kw)]

    # ---- steps
    def train_step(self, model, batch: dict, ctx: RunContext) -> dict[str, torch.Tensor]:
        tf = teacher_forcing(ctx.cfg, ctx.progress)
        tgt = batch["tgt"]
        logits = model(batch["src"], batch["src_len"], tgt, tf=tf)  # (B, T-1, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1),
                               ignore_index=text.PAD_ID)
        return {"loss": loss, "tf": loss.new_tensor(tf)}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict:
        """Teacher-forced loss per token, and the detokenized greedy (and beam) outputs with
        their references: corpus BLEU needs every sentence, so combine() scores them."""
        m, cfg = unwrap(model), ctx.cfg
        spm_tgt = ctx.manifest["spm"][cfg.tgt_lang]
        loss_sum, n_tok = torch.zeros(()), 0
        hyps, beam_hyps, refs = [], [], []
        for b in batches:
            src, src_len, tgt = b["src"], b["src_len"], b["tgt"]
            logits = m(src, src_len, tgt, tf=1.0)
            y = tgt[:, 1:]
            loss_sum = loss_sum + F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                  ignore_index=text.PAD_ID, reduction="sum").cpu()
            n_tok += int((y != text.PAD_ID).sum())
            out, _ = m.greedy(src, src_len, cfg.decode_len)
            hyps += _detok(out, spm_tgt)
            if cfg.beam > 1:
                beam_hyps += _detok(m.beam_search(src, src_len, cfg.beam, cfg.decode_len, cfg.len_alpha), spm_tgt)
            refs += b["ref"]
        return {"loss_sum": float(loss_sum), "tokens": n_tok, "hyps": hyps, "beam_hyps": beam_hyps, "refs": refs,
                "n": len(refs)}

    def combine(self, results: list[dict]) -> dict[str, float]:
        """Every worker's sentences concatenated, then one corpus BLEU: BLEU is not a mean
        of per-shard BLEUs (its n-gram counts and brevity penalty are corpus sums)."""
        hyps = [h for r in results for h in r["hyps"]]
        refs = [h for r in results for h in r["refs"]]
        tokens = sum(r["tokens"] for r in results)
        out = {"loss": sum(r["loss_sum"] for r in results) / max(tokens, 1), "bleu": bleu(hyps, refs)}
        beam_hyps = [h for r in results for h in r["beam_hyps"]]
        if beam_hyps:
            out["bleu_beam"] = bleu(beam_hyps, refs)
        return out

    def on_epoch_end(self, model, ctx: RunContext) -> dict[str, list[Path]]:
        """After the last epoch: the predictions, and the two SentencePiece models that
        `fastray translate RUN_ID` loads with the model (``tokenizer/``)."""
        if not ctx.is_last_epoch:
            return {}
        out = {}
        if ctx.valid_batch is not None:
            out["predictions"] = self.predictions(model, ctx.valid_batch, ctx)
        tok = ctx.out_dir / TOKENIZER_DIR
        tok.mkdir(exist_ok=True)
        spm = ctx.manifest["spm"]
        for side, lang in (("src", ctx.cfg.src_lang), ("tgt", ctx.cfg.tgt_lang)):
            shutil.copyfile(spm[lang], tok / f"{side}.model")
        out[TOKENIZER_DIR] = [tok / "src.model", tok / "tgt.model"]
        return out

    def predictions(self, model, batch: dict, ctx: RunContext) -> list[Path]:
        """The first validation batch: a table of source, reference and outputs, attention
        heatmaps of a few sentences."""
        cfg, out_dir = ctx.cfg, ctx.out_dir
        spm_src, spm_tgt = ctx.manifest["spm"][cfg.src_lang], ctx.manifest["spm"][cfg.tgt_lang]
        n = min(cfg.show, len(batch["ref"]))
        src, src_len = batch["src"][:n], batch["src_len"][:n]
        model.eval()
        with torch.no_grad():
            greedy, attn = model.greedy(src, src_len, cfg.decode_len)
            beam = model.beam_search(src, src_len, cfg.beam, cfg.decode_len, cfg.len_alpha) if cfg.beam > 1 else None
        outs = {"greedy": _detok(greedy, spm_tgt)}
        if beam is not None:
            outs[f"beam{cfg.beam}"] = _detok(beam, spm_tgt)
        table = out_dir / "translations.tsv"
        with open(table, "w", encoding="utf-8") as f:
            f.write("\t".join(["source", "reference", *outs]) + "\n")
            for i in range(n):
                row = [batch["src_text"][i], batch["ref"][i], *(o[i] for o in outs.values())]
                f.write("\t".join(c.replace("\t", " ") for c in row) + "\n")
        files = [table]
        if attn is not None:
            for i in range(min(cfg.heatmaps, n)):
                files.append(plot_attention(
                    attn[i].float().cpu(), _pieces(src[i, : int(src_len[i])], spm_src),
                    _pieces(greedy[i], spm_tgt, stop_at_eos=True), out_dir / f"attention_{i}.png",
                    reference=batch["ref"][i], output=outs["greedy"][i],
                    right=outs["greedy"][i] == subwords.normalize(batch["ref"][i], spm_tgt)))
        return files

    def search_space(self, cfg: Config) -> dict[str, Any]:
        """Lesson 11's dropouts, the LR, how fast teacher forcing fades."""
        from ray import tune

        return {
            "out_drop": tune.uniform(0.1, 0.5),
            "emb_drop": tune.uniform(0.0, 0.3),
            "lr": tune.loguniform(cfg.lr / 3, cfg.lr * 3),
            "tf_decay": tune.uniform(0.3, 1.0),
        }


def _detok(tokens: torch.Tensor, spm_path: str, sp=None) -> list[str]:
    """Decoder output -> detokenized sentences (SentencePiece decode, specials dropped; a
    lone word-start piece at the end left no trailing space)."""
    ids = strip_tokens(tokens, text.EOS_ID, text.PAD_ID)
    if sp is not None:
        return [sp.decode(subwords.piece_ids(row, sp)).strip() for row in ids]
    return [subwords.decode(row, spm_path).strip() for row in ids]


@lru_cache(maxsize=4)
def _sp(path: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def _pieces(ids: torch.Tensor, spm_path: str, stop_at_eos: bool = False) -> list[str]:
    sp = _sp(str(spm_path))
    out = []
    for i in ids.tolist():
        out.append(sp.id_to_piece(int(i)))
        if stop_at_eos and i == text.EOS_ID:
            break
    return out


def _itos(spm_path: str) -> list[str]:
    sp = _sp(str(spm_path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def _check_vectors(path: str, what: str, emb_sz: int) -> None:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file (expected a fastText .vec text file)")
    _, dim = read_vec_header(p)
    if dim != emb_sz:
        raise ValueError(f"{what} {path}: vectors of dimension {dim}, but emb_sz is {emb_sz} (--set emb_sz={dim})")


def plot_attention(weights: torch.Tensor, src: list[str], out: list[str], path: Path, reference: str = "",
                   output: str = "", right: bool | None = None) -> Path:
    """A heatmap of attention weights (output pieces x source pieces), titled with the
    reference and the output, the output in red when it is not the reference."""
    w = weights[: len(out), : len(src)].numpy()
    fig = plots.figure((max(4.0, 0.35 * len(src) + 1.5), max(3.0, 0.3 * len(out) + 1.8)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(src)), src, rotation=90, fontsize=7)
    ax.set_yticks(range(len(out)), out, fontsize=7)
    ax.set_xlabel("source piece")
    ax.set_ylabel("output piece (greedy)")
    if output:
        ax.set_title(f"output: {output}", fontsize=8, color={None: "black", True: "green", False: "red"}[right])
    fig.colorbar(im, ax=ax, fraction=0.04, label="attention weight")
    return plots.save(fig, path, dpi=90, title=f"reference: {reference}" if reference else "")


# ---------------------------------------------------------------- trying a trained model


def _download(client, run_id: str, artifact: str, dst: str) -> Path:
    try:
        return Path(client.download_artifacts(run_id, artifact, dst))
    except Exception as e:
        raise FileNotFoundError(f"run {run_id}: no artifact {artifact} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                f"was the run trained to its end?") from None


def load_run(run_id: str, tracking_uri: str | None = None) -> tuple[Seq2Seq, Config, str, str, str, str]:
    """A finished translate run's model (eval mode, CPU), config, SentencePiece models (kept
    in a temporary folder, the fifth item, that the caller removes) and run id. `run_id`:
    its id, or its --name (the newest translate run of that name)."""
    from mlflow.tracking import MlflowClient

    from ..core import config as configs
    from ..core import tracking

    uri = tracking.resolve_uri(tracking_uri)
    tracking.require_runs(uri)
    client = MlflowClient(tracking_uri=uri)
    run = tracking.run_by_id_or_name(uri, run_id, "translate")
    run_id = run.info.run_id
    pipeline = run.data.tags.get("fastray.pipeline", "")
    if pipeline != "translate":
        raise ValueError(f"run {run_id} is a {pipeline or 'non-fastray'} run, not a translate run")
    d = tempfile.mkdtemp(prefix="fastray-translate-")
    try:
        cfg_data = json.loads(_download(client, run_id, "config.json", d).read_text())
        cfg = configs.apply(Config(), cfg_data, source=f"run {run_id} config.json")
        state = torch.load(_download(client, run_id, MODEL_ARTIFACT, d), map_location="cpu", weights_only=True)
        spm_src = str(_download(client, run_id, f"{TOKENIZER_DIR}/src.model", d))
        spm_tgt = str(_download(client, run_id, f"{TOKENIZER_DIR}/tgt.model", d))
        model = Seq2Seq(cfg.model_config())
        model.load_state_dict(state)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return model.eval(), cfg, spm_src, spm_tgt, d, run_id


def translate_lines(run_id: str, lines: list[str], tracking_uri: str | None = None, beam: int | None = None,
                    bs: int = 64) -> list[str]:
    """Translate sentences with the model and tokenizers of a translate run (its MLflow run
    id or its --name). beam: the beam size (None: the run's config; 1: greedy). An empty
    line gives ''."""
    return _translate(run_id, lines, tracking_uri, beam, bs)["translations"]


def _translate(run_id: str, lines: list[str], tracking_uri: str | None, beam: int | None, bs: int = 64) -> dict:
    """translate_lines' translations, the run's id and the beam size used."""
    model, cfg, spm_src, spm_tgt, d, run_id = load_run(run_id, tracking_uri)
    try:
        beam = cfg.beam if beam is None else int(beam)
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        import sentencepiece as spm

        sp, sp_tgt = spm.SentencePieceProcessor(model_file=spm_src), spm.SentencePieceProcessor(model_file=spm_tgt)
        todo = [(i, sp.encode(documents.fixup(line.strip()), add_bos=True, add_eos=True))
                for i, line in enumerate(lines) if line.strip()]
        out = [""] * len(lines)
        todo.sort(key=lambda t: -len(t[1]))
        with torch.no_grad():
            for k in range(0, len(todo), bs):
                chunk = todo[k : k + bs]
                ids = np.concatenate([np.asarray(c[1], np.int64) for c in chunk])
                off = np.zeros(len(chunk) + 1, np.int64)
                np.cumsum([len(c[1]) for c in chunk], out=off[1:])
                src, src_len = _pad(ids, off, list(range(len(chunk))))
                n = max(cfg.decode_len, 2 * int(src_len.max()) + 2)
                toks = model.greedy(src, src_len, n)[0] if beam == 1 else model.beam_search(src, src_len, beam, n, cfg.len_alpha)
                for (i, _), hyp in zip(chunk, _detok(toks, spm_tgt, sp_tgt)):
                    out[i] = hyp
        return {"run_id": run_id, "beam": beam, "translations": out}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cmd_translate(args) -> dict:
    """Each translation on a line of stdout, then the JSON summary (the CLI's last line)."""
    t0 = time.perf_counter()
    if args.file is not None:
        if args.file.is_dir():
            raise IsADirectoryError(f"{args.file}: a folder, not a file of sentences")
        if not args.file.is_file():
            raise FileNotFoundError(f"{args.file}: no such file")
        raw, where = args.file.read_bytes(), str(args.file)
    else:
        raw, where = sys.stdin.buffer.read(), "stdin"
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    done = _translate(args.run_id, lines, args.tracking_uri, args.beam)
    for line in done["translations"]:
        print(line)
    return {"run_id": done["run_id"], "lines": len(lines), "beam": done["beam"], "translations": done["translations"],
            "seconds": round(time.perf_counter() - t0, 2)}
