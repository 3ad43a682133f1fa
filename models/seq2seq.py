"""Sequence to sequence with attention, as in fast.ai Part 2 lesson 11 (French to English).

Encoder: embedding -> dropout -> GRU (n_layers, optionally bidirectional) over the padded
source (packed, so the final state is each sentence's own); the final state of every layer
(both directions concatenated) -> Linear -> the decoder's initial state.
Decoder, one token at a time: embedding -> dropout; with attention (additive, Bahdanau's,
as in the lesson) the top layer's state queries the encoder outputs, and the context is
joined to the embedding by a Linear; -> GRU -> dropout -> Linear over the target vocabulary.
Teacher forcing: during training the next input is the reference token with probability
`tf` (the pipeline lowers it over training), else the model's own prediction.

Decoding: ``greedy`` and ``beam_search`` (batched; the beams of every sentence advance
together, scored by log probability / length ** alpha; a sentence stops at end of
sentence), both stopping when every sentence has ended or at max_len tokens.
``load_vectors`` fills an embedding from word vectors in fastText's ``.vec`` text format.

Shapes: B sentences, S source tokens, T target tokens, V vocabulary, H = n_hid,
E = encoder output size (H, or 2H when bidirectional), L = n_layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class Seq2SeqConfig:
    src_vocab: int              # source vocabulary size (embedding rows)
    tgt_vocab: int              # target vocabulary size (embedding rows, output classes)
    emb_sz: int = 300           # embedding size (fastText vectors: 300)
    n_hid: int = 256            # GRU hidden size, encoder (each direction) and decoder
    n_layers: int = 2           # stacked GRU layers, encoder and decoder
    bidir: bool = True          # bidirectional encoder
    attention: bool = True      # additive attention over the encoder outputs
    att_sz: int = 0             # attention's hidden size (0: emb_sz)
    emb_drop: float = 0.15      # dropout on the embeddings (encoder and decoder)
    rnn_drop: float = 0.25      # dropout between stacked GRU layers
    out_drop: float = 0.35      # dropout before the output Linear
    pad_id: int = 1             # padding token (both vocabularies)
    bos_id: int = 2             # start of sentence: the decoder's first input
    eos_id: int = 3             # end of sentence: decoding stops here

    def __post_init__(self):
        if min(self.src_vocab, self.tgt_vocab) <= max(self.pad_id, self.bos_id, self.eos_id):
            raise ValueError(f"vocabularies ({self.src_vocab}, {self.tgt_vocab}) must hold the special ids")
        if self.emb_sz < 1 or self.n_hid < 1 or self.n_layers < 1:
            raise ValueError(f"need emb_sz, n_hid, n_layers >= 1 (got {self.emb_sz}, {self.n_hid}, {self.n_layers})")
        for k in ("emb_drop", "rnn_drop", "out_drop"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")

    @property
    def enc_out(self) -> int:
        return self.n_hid * (2 if self.bidir else 1)


class _Embedded(nn.Module):
    """Tokens -> embeddings with dropout (lesson 11's emb and emb_drop), for Encoder and Decoder."""

    def __init__(self, cfg: Seq2SeqConfig, vocab: int):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(vocab, cfg.emb_sz, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.emb_drop)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.drop(self.emb(tokens))


class Encoder(_Embedded):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__(cfg, cfg.src_vocab)
        self.rnn = nn.GRU(cfg.emb_sz, cfg.n_hid, cfg.n_layers, batch_first=True, bidirectional=cfg.bidir,
                          dropout=cfg.rnn_drop if cfg.n_layers > 1 else 0.0)
        self.to_dec = nn.Linear(cfg.enc_out, cfg.n_hid, bias=False)  # lesson 11's out_enc

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) padded at the end, src_len (B,) -> outputs (B, S, E), decoder state (L, B, H)."""
        B, S = src.shape
        x = self.embed(src)  # (B, S, C)
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)  # h: (L * dirs, B, H)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, E), zeros past the end
        dirs = 2 if self.cfg.bidir else 1
        h = h.view(self.cfg.n_layers, dirs, B, self.cfg.n_hid).permute(0, 2, 1, 3).reshape(self.cfg.n_layers, B, -1)
        return out, self.to_dec(h)  # (L, B, E) -> (L, B, H)


class AdditiveAttention(nn.Module):
    """score(h, e_s) = v . tanh(W1 e_s + W2 h): lesson 11's attention (Bahdanau et al. 2015)."""

    def __init__(self, enc_dim: int, dec_dim: int, att_dim: int):
        super().__init__()
        self.w1 = nn.Linear(enc_dim, att_dim, bias=False)
        self.w2 = nn.Linear(dec_dim, att_dim)
        self.v = nn.Linear(att_dim, 1, bias=False)

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.w1(enc)  # (B, S, A): once per sentence, not per step

    def forward(self, keys: torch.Tensor, enc: torch.Tensor, query: torch.Tensor, mask: torch.Tensor):
        """keys (B, S, A), enc (B, S, E), query (B, H), mask (B, S) True on real tokens ->
        context (B, E), weights (B, S)."""
        u = torch.tanh(keys + self.w2(query).unsqueeze(1))  # (B, S, A)
        scores = self.v(u).squeeze(2).float().masked_fill(~mask, float("-inf"))  # (B, S)
        a = torch.softmax(scores, dim=1)
        ctx = torch.bmm(a.unsqueeze(1).to(enc.dtype), enc).squeeze(1)  # (B, E)
        return ctx, a


class Decoder(_Embedded):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__(cfg, cfg.tgt_vocab)
        if cfg.attention:
            self.attn = AdditiveAttention(cfg.enc_out, cfg.n_hid, cfg.att_sz or cfg.emb_sz)
            self.join = nn.Linear(cfg.emb_sz + cfg.enc_out, cfg.emb_sz)  # lesson 11's l3: [emb, context] -> input
        self.rnn = nn.GRU(cfg.emb_sz, cfg.n_hid, cfg.n_layers, batch_first=True,
                          dropout=cfg.rnn_drop if cfg.n_layers > 1 else 0.0)
        self.out_drop = nn.Dropout(cfg.out_drop)
        self.out = nn.Linear(cfg.n_hid, cfg.tgt_vocab)

    def step(self, tok: torch.Tensor, h: torch.Tensor, ctx: "Memory") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """tok (B,), h (L, B, H) -> logits (B, V), new h, attention weights (B, S) or None."""
        x = self.embed(tok)  # (B, C)
        a = None
        if self.cfg.attention:
            c, a = self.attn(ctx.keys, ctx.enc, h[-1], ctx.mask)
            x = self.join(torch.cat([x, c], dim=1))  # (B, C)
        out, h = self.rnn(x.unsqueeze(1), h)  # (B, 1, H)
        return self.out(self.out_drop(out.squeeze(1))), h, a


@dataclass
class Memory:
    """What every decoder step reads: the encoder outputs, their attention keys, the mask."""

    enc: torch.Tensor  # (B, S, E)
    keys: torch.Tensor | None  # (B, S, A)
    mask: torch.Tensor  # (B, S) bool, True on real tokens

    def repeat(self, k: int) -> "Memory":
        return Memory(self.enc.repeat_interleave(k, 0), None if self.keys is None else self.keys.repeat_interleave(k, 0),
                      self.mask.repeat_interleave(k, 0))


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[Memory, torch.Tensor]:
        enc, h = self.encoder(src, src_len)
        keys = self.decoder.attn.keys(enc) if self.cfg.attention else None
        mask = torch.arange(src.shape[1], device=src.device).unsqueeze(0) < src_len.to(src.device).unsqueeze(1)
        return Memory(enc, keys, mask), h

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt: torch.Tensor, tf: float = 1.0,
                rand: Callable[[], float] | None = None) -> torch.Tensor:
        """Training: src (B, S), src_len (B,), tgt (B, T) starting with BOS -> logits (B, T-1, V)
        predicting tgt[:, 1:]. At each step the next input is the reference token with
        probability tf (one draw for the whole batch, as in the lesson), else the argmax."""
        mem, h = self.encode(src, src_len)
        rand = rand or (lambda: float(torch.rand(())))
        tok, outs = tgt[:, 0], []
        for t in range(tgt.shape[1] - 1):
            logits, h, _ = self.decoder.step(tok, h, mem)
            outs.append(logits)
            tok = tgt[:, t + 1] if tf >= 1.0 or (tf > 0.0 and rand() < tf) else logits.argmax(1)
        return torch.stack(outs, dim=1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, src_len: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> tokens (B, <= max_len) after BOS, EOS then PAD once a sentence ended; attention
        weights (B, steps, S) (None without attention)."""
        mem, h = self.encode(src, src_len)
        B = src.shape[0]
        tok = src.new_full((B,), self.cfg.bos_id)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        toks, attns = [], []
        for _ in range(max_len):
            logits, h, a = self.decoder.step(tok, h, mem)
            tok = logits.argmax(1).masked_fill(done, self.cfg.pad_id)
            toks.append(tok)
            if a is not None:
                attns.append(a)
            done = done | (tok == self.cfg.eos_id)
            if bool(done.all()):
                break
        return torch.stack(toks, 1), (torch.stack(attns, 1) if attns else None)

    @torch.no_grad()
    def beam_search(self, src: torch.Tensor, src_len: torch.Tensor, beam: int, max_len: int,
                    alpha: float = 1.0) -> torch.Tensor:
        """Batched beam search: every sentence keeps `beam` hypotheses, ranked by log
        probability / length ** alpha (length counts the EOS; alpha = 0: raw log probability).
        A hypothesis that emitted EOS stays in its beam, extended only by PAD at no cost,
        until every hypothesis of every sentence has ended or max_len steps.
        -> tokens (B, <= max_len) after BOS, as greedy() gives them."""
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        B, K = src.shape[0], beam
        mem, h = self.encode(src, src_len)
        mem, h = mem.repeat(K), h.repeat_interleave(K, 1)  # (B*K, ...), (L, B*K, H)
        dev = src.device
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
        scores = scores.view(-1)  # (B*K,)
        lengths = torch.zeros(B * K, device=dev)
        done = torch.zeros(B * K, dtype=torch.bool, device=dev)
        tok = src.new_full((B * K,), self.cfg.bos_id)
        hist = src.new_zeros((B * K, 0))
        base = (torch.arange(B, device=dev) * K).unsqueeze(1)  # (B, 1)
        for _ in range(max_len):
            logits, h, _ = self.decoder.step(tok, h, mem)
            logp = F.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            V = logp.shape[1]
            # an ended hypothesis: one continuation, PAD, that costs nothing and adds no length
            logp = torch.where(done.unsqueeze(1), torch.full_like(logp, float("-inf")), logp)
            logp[:, self.cfg.pad_id] = torch.where(done, 0.0, float("-inf"))
            cand = scores.unsqueeze(1) + logp  # (B*K, V)
            new_len = lengths + (~done).float()
            norm = cand / new_len.clamp(min=1).pow(alpha).unsqueeze(1)
            _, top = norm.view(B, K * V).topk(K, dim=1)  # (B, K)
            src_beam = (base + top // V).view(-1)  # (B*K,) which hypothesis each new one extends
            tok = (top % V).view(-1)
            scores = cand.view(B, K * V).gather(1, top).view(-1)
            lengths = new_len[src_beam]
            h = h[:, src_beam]
            hist = torch.cat([hist[src_beam], tok.unsqueeze(1)], 1)
            done = done[src_beam] | (tok == self.cfg.eos_id)
            if bool(done.all()):
                break
        final = (scores / lengths.clamp(min=1).pow(alpha)).view(B, K)
        best = (base.squeeze(1) + final.argmax(1))  # (B,)
        return hist[best]


def seq2seq(cfg: Seq2SeqConfig) -> Seq2Seq:
    return Seq2Seq(cfg)


def strip_tokens(tokens: torch.Tensor | list, eos_id: int = 3, pad_id: int = 1) -> list[list[int]]:
    """Decoder output (B, T) -> each sentence's ids before its first EOS, PAD removed."""
    out = []
    for row in (tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens):
        ids = []
        for t in row:
            if t == eos_id:
                break
            if t != pad_id:
                ids.append(int(t))
        out.append(ids)
    return out


# ---------------------------------------------------------------- word vectors


def read_vec_header(path: str | Path) -> tuple[int, int]:
    """(words, dimension) from a fastText .vec file's first line; ValueError if it is not one."""
    path = Path(path)
    with open(path, "rb") as f:
        first = f.readline().split()
    try:
        n, dim = int(first[0]), int(first[1])
        if len(first) != 2 or n < 0 or dim < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{path}: not a fastText .vec file (the first line must be '<words> <dimension>')") from None
    return n, dim


def load_vectors(emb: nn.Embedding, path: str | Path, itos: list[str], scale: float = 3.0) -> int:
    """Fill the rows of `emb` whose token (itos[i], SentencePiece's word-start mark '▁'
    removed; tried as it is, then lower-cased) has a vector in the .vec file, times `scale`
    (lesson 11: fastText vectors have a std near 0.3, a fresh embedding 1). Rows of other
    tokens keep their initialisation. Returns how many rows were filled."""
    path = Path(path)
    _, dim = read_vec_header(path)
    if dim != emb.embedding_dim:
        raise ValueError(f"{path}: vectors of dimension {dim}, the embedding has {emb.embedding_dim}")
    want: dict[str, list[int]] = {}
    for i, piece in enumerate(itos[: emb.num_embeddings]):
        word = piece.replace("\u2581", "")
        if word:
            want.setdefault(word, []).append(i)
    lower = {}
    for w, rows in want.items():
        lower.setdefault(w.lower(), []).extend(rows)
    filled: set[int] = set()
    exact: set[int] = set()
    with torch.no_grad(), open(path, "rb") as f:
        f.readline()
        for line in f:
            parts = line.rstrip().split(b" ")
            if len(parts) != dim + 1:
                continue  # fastText's files hold a few malformed lines (words with spaces)
            word = parts[0].decode("utf-8", errors="replace")
            rows = [r for r in want.get(word, ()) if r not in exact]
            if rows:
                exact.update(rows)
            else:
                rows = [r for r in lower.get(word.lower(), ()) if r not in filled]
            if not rows:
                continue
            vec = torch.tensor([float(x) for x in parts[1:]]) * scale
            for r in rows:
                emb.weight[r] = vec.to(emb.weight.dtype)
                filled.add(r)
    return len(filled)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Seq2SeqConfig", "Seq2Seq", "Encoder", "Decoder", "AdditiveAttention", "Memory", "seq2seq",
           "strip_tokens", "load_vectors", "read_vec_header", "count_params"]
