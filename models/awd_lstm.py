"""AWD-LSTM (Merity et al. 2017) and the ULMFiT classifier, as in fast.ai Part 2 lesson 10.

Language model: embedding -> embedding dropout -> input dropout -> n_layers single-layer LSTMs
(DropConnect on each hidden-to-hidden weight, locked dropout between layers) -> output dropout
-> a linear decoder whose weight is the embedding's (tied).
Classifier: the same encoder over a long document in bptt-sized chunks -> concat pooling
[last, max, mean] -> blocks of BatchNorm -> Dropout -> Linear.
ULMFiT: train the LM, copy its encoder into the classifier (encoder_state / load_encoder),
fine-tune with discriminative learning rates and gradual unfreezing over layer_groups.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def dropout_mask(x: torch.Tensor, size: tuple[int, ...], p: float) -> torch.Tensor:
    """Bernoulli(1 - p) of `size`, like x, scaled by 1 / (1 - p): expectations match eval mode."""
    return x.new_empty(size).bernoulli_(1 - p).div_(1 - p)


class RNNDropout(nn.Module):
    """Locked (variational) dropout: one mask per sequence and channel, shared over time."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        B, _, C = x.shape  # (B, T, C)
        return x * dropout_mask(x, (B, 1, C), self.p)  # (B, 1, C) broadcast over T

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EmbeddingDropout(nn.Module):
    """An embedding that drops whole words: zeroes random rows of the matrix and scales the rest.
    A dropped word is dropped at every position of the batch (Gal & Ghahramani's word dropout)."""

    def __init__(self, emb: nn.Embedding, embed_p: float):
        super().__init__()
        self.emb = emb
        self.p = embed_p

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.emb.weight  # (V, C)
        if self.training and self.p > 0.0:
            w = w * dropout_mask(w, (w.shape[0], 1), self.p)  # (V, 1): one draw per word
        e = self.emb
        return F.embedding(ids, w, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class WeightDropout(nn.Module):
    """DropConnect on named weights of a wrapped module (AWD-LSTM: an nn.LSTM's `weight_hh_l0`).

    The trainable weight is `<name>_raw`, a parameter of this wrapper; the wrapped module loses
    that parameter and, before each forward, gets a plain tensor: the raw weight with a fresh
    dropout mask in training (one mask for every time step of the call), the raw weight itself
    in eval. After the call the attribute is reset to a detached tensor, so the module never
    holds an autograd graph (deepcopy and pickling keep working).
    state_dict keys: `<name>_raw` plus the module's other parameters under `module.`.
    """

    def __init__(self, module: nn.Module, weight_p: float, layer_names: tuple[str, ...] = ("weight_hh_l0",)):
        super().__init__()
        self.module = module
        self.p = weight_p
        self.layer_names = tuple(layer_names)
        for name in self.layer_names:
            w = getattr(module, name, None)
            if not isinstance(w, nn.Parameter):
                raise ValueError(f"{type(module).__name__} has no parameter {name!r} to drop")
            del module._parameters[name]
            self.register_parameter(f"{name}_raw", nn.Parameter(w.detach().clone()))
            setattr(module, name, w.detach())  # a plain tensor: nn.LSTM keeps a weight list by name

    def _set_weights(self, detach: bool) -> None:
        for name in self.layer_names:
            raw = getattr(self, f"{name}_raw")
            if detach:
                w = raw.detach()
            elif self.training and self.p > 0.0:
                w = F.dropout(raw, self.p, training=True)
            else:
                w = raw.view_as(raw)  # a plain tensor: assigning the Parameter itself would re-register it
            setattr(self.module, name, w)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._set_weights(detach=False)
        try:
            with warnings.catch_warnings():
                # cuDNN may warn that the new weight is not in the flattened buffer; nn.LSTM
                # re-flattens when a weight changes, so the warning is noise here
                warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
                return self.module(*args, **kwargs)
        finally:
            self._set_weights(detach=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, layer_names={self.layer_names}"


@dataclass(frozen=True)
class AWDLSTMConfig:
    vocab_size: int                            # tokens, padding included (fastai: itos length, e.g. 60,000 for IMDb)
    emb_sz: int = 400                          # embedding size = last LSTM's hidden size (tied to the decoder)
    n_hid: int = 1152                          # hidden size of the inner LSTMs (lesson 10: 1150; fastai 1.0: 1152)
    n_layers: int = 3                          # stacked single-layer LSTMs
    pad_idx: int = 1                           # fastai's xxpad; classifier batches are padded at the START
    input_p: float = 0.25                      # locked dropout on the embedded input
    output_p: float = 0.1                      # locked dropout on the last LSTM's output, before the decoder
    weight_p: float = 0.2                      # DropConnect on each LSTM's hidden-to-hidden weight
    embed_p: float = 0.02                      # drops whole words (rows of the embedding)
    hidden_p: float = 0.15                     # locked dropout between LSTM layers
    drop_mult: float = 1.0                     # scales every dropout above and clas_ps (lesson 10's one knob)
    bptt: int = 70                             # tokens per chunk (LM batches and the classifier's encoder steps)
    max_len: int = 1400                        # classifier: outputs kept from the end of a document (20 * bptt)
    n_classes: int = 2                         # classifier outputs (IMDb sentiment: 2)
    lin_ftrs: tuple[int, ...] = (50,)          # hidden sizes of the classifier head (lesson 10: one of 50)
    clas_ps: tuple[float, ...] = (0.4, 0.1)    # head dropouts, one per Linear (fastai 1.0: output_p 0.4, then 0.1)
    alpha: float = 2.0                         # AR: penalty on the size of the last layer's (dropped) output
    beta: float = 1.0                          # TAR: penalty on the step-to-step change of its raw output

    def __post_init__(self):
        # tuples from lists too (JSON and Tune give lists); frozen, hence object.__setattr__
        object.__setattr__(self, "lin_ftrs", tuple(int(n) for n in self.lin_ftrs))
        object.__setattr__(self, "clas_ps", tuple(float(p) for p in self.clas_ps))
        if self.vocab_size < 1 or not 0 <= self.pad_idx < self.vocab_size:
            raise ValueError(f"need vocab_size >= 1 and 0 <= pad_idx < vocab_size, "
                             f"got vocab_size={self.vocab_size}, pad_idx={self.pad_idx}")
        if min(self.emb_sz, self.n_hid, self.n_layers, self.bptt, self.max_len, self.n_classes) < 1:
            raise ValueError("emb_sz, n_hid, n_layers, bptt, max_len and n_classes must all be >= 1")
        if any(n < 1 for n in self.lin_ftrs):
            raise ValueError(f"lin_ftrs must be sizes >= 1, got {self.lin_ftrs}")
        if len(self.clas_ps) != len(self.lin_ftrs) + 1:
            raise ValueError(f"clas_ps needs one dropout per Linear of the head, len(lin_ftrs) + 1 = "
                             f"{len(self.lin_ftrs) + 1}, got {len(self.clas_ps)}")
        if self.drop_mult < 0:
            raise ValueError(f"drop_mult must be >= 0, got {self.drop_mult}")
        ps = dict(input_p=self.input_p, output_p=self.output_p, weight_p=self.weight_p,
                  embed_p=self.embed_p, hidden_p=self.hidden_p, clas_ps=max(self.clas_ps))
        bad = {k: v for k, v in ps.items() if not 0.0 <= v * self.drop_mult < 1.0}
        if bad:
            raise ValueError(f"every dropout times drop_mult={self.drop_mult} must be in [0, 1), not {bad}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")

    def p(self, name: str) -> float:
        """A dropout after drop_mult: cfg.p('hidden_p')."""
        return getattr(self, name) * self.drop_mult


Hidden = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (h, c), each (1, B, H)


class AWDLSTM(nn.Module):
    """The encoder. Keeps its hidden state between calls (detached: truncated BPTT), so
    consecutive bptt chunks of the same streams continue each other; call reset() at the start
    of an epoch or of new streams. A change of batch size resets it by itself.
    forward(ids (B, T)) -> (raw_outputs, outputs): per layer, (B, T, H); outputs are after the
    hidden dropout, except the last layer's (its dropout, output_p, belongs to the decoder)."""

    def __init__(self, cfg: AWDLSTMConfig):
        super().__init__()
        self.cfg = cfg
        emb = nn.Embedding(cfg.vocab_size, cfg.emb_sz, padding_idx=cfg.pad_idx)
        with torch.no_grad():
            emb.weight.uniform_(-0.1, 0.1)  # as in Merity's and fastai's code
            emb.weight[cfg.pad_idx].zero_()
        self.embed = EmbeddingDropout(emb, cfg.p("embed_p"))
        self.input_dp = RNNDropout(cfg.p("input_p"))
        sizes = [cfg.emb_sz] + [cfg.n_hid] * (cfg.n_layers - 1) + [cfg.emb_sz]
        self.rnns = nn.ModuleList(
            WeightDropout(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True), cfg.p("weight_p"))
            for i in range(cfg.n_layers)
        )
        self.hidden_dps = nn.ModuleList(RNNDropout(cfg.p("hidden_p")) for _ in range(cfg.n_layers - 1))
        self.hidden: Hidden | None = None  # not a buffer: not in state_dict, not synced by DDP

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the hidden state: all of it, or (rows: (B,) bool) those rows' only."""
        if rows is None or self.hidden is None:
            self.hidden = None
            return
        keep = (~rows).to(self.hidden[0][0].dtype)[None, :, None]  # (1, B, 1)
        self.hidden = [(h * keep, c * keep) for h, c in self.hidden]

    def _zero_hidden(self, B: int) -> Hidden:
        w = self.embed.emb.weight
        return [(w.new_zeros(1, B, r.module.hidden_size), w.new_zeros(1, B, r.module.hidden_size)) for r in self.rnns]

    def forward(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if ids.dim() != 2:
            raise ValueError(f"AWDLSTM expects token ids of shape (B, T), got {tuple(ids.shape)}")
        B = ids.shape[0]
        if self.hidden is None or self.hidden[0][0].shape[1] != B:
            self.hidden = self._zero_hidden(B)
        x = self.input_dp(self.embed(ids))  # (B, T, emb_sz)
        raw_outputs, outputs, new_hidden = [], [], []
        for i, rnn in enumerate(self.rnns):
            x, h = rnn(x, self.hidden[i])  # (B, T, H), ((1, B, H), (1, B, H))
            new_hidden.append(h)
            raw_outputs.append(x)
            if i < len(self.hidden_dps):
                x = self.hidden_dps[i](x)
            outputs.append(x)
        self.hidden = [(h.detach(), c.detach()) for h, c in new_hidden]  # truncated BPTT
        return raw_outputs, outputs


class LinearDecoder(nn.Module):
    """Output dropout then Linear(n_in, vocab), its weight tied to an embedding when given."""

    def __init__(self, n_in: int, vocab_size: int, output_p: float, tie_to: nn.Embedding | None = None):
        super().__init__()
        self.output_dp = RNNDropout(output_p)
        self.decoder = nn.Linear(n_in, vocab_size)
        with torch.no_grad():
            self.decoder.weight.uniform_(-0.1, 0.1)
            self.decoder.bias.zero_()
        if tie_to is not None:
            if tie_to.weight.shape != self.decoder.weight.shape:
                raise ValueError(f"cannot tie: embedding {tuple(tie_to.weight.shape)} vs decoder "
                                 f"{tuple(self.decoder.weight.shape)}")
            self.decoder.weight = tie_to.weight  # one Parameter, one storage

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dropped = self.output_dp(x)  # (B, T, C)
        return self.decoder(dropped), dropped  # (B, T, vocab), and what AR penalises


class LanguageModel(nn.Module):
    """AWDLSTM -> LinearDecoder. forward(ids (B, T)) -> logits (B, T, vocab)."""

    def __init__(self, cfg: AWDLSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = AWDLSTM(cfg)
        self.decoder = LinearDecoder(cfg.emb_sz, cfg.vocab_size, cfg.p("output_p"), tie_to=self.encoder.embed.emb)

    def reset(self) -> None:
        self.encoder.reset()

    def forward(self, ids: torch.Tensor, return_activations: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (B, T, vocab); with return_activations, (logits, raw, dropped): the last layer's
        output before and after output dropout, (B, T, emb_sz) each, for ar_tar()."""
        raw_outputs, outputs = self.encoder(ids)
        logits, dropped = self.decoder(outputs[-1])
        return (logits, raw_outputs[-1], dropped) if return_activations else logits


def ar_tar(raw: torch.Tensor, dropped: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Merity's activation regularisation: alpha * mean(dropped ** 2) (AR) plus
    beta * mean((raw[t] - raw[t-1]) ** 2) (TAR, temporal smoothness). Add it to the LM loss in training."""
    ar = dropped.float().pow(2).mean()
    tar = (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean() if raw.shape[1] > 1 else raw.new_zeros(())
    return alpha * ar + beta * tar


class MultiBatchEncoder(nn.Module):
    """Runs an AWDLSTM over whole documents in bptt-sized chunks (state carried, detached, between
    chunks) and keeps the last max_len positions. Input: (B, T) ids padded at the START (fastai's
    pad_first). Output: (out (B, M, emb_sz), mask (B, M)) with M = min(max_len, T), still padded at
    the start, mask True at padding (out is 0 there), so out[:, -1] is each document's last token.

    Padding never reaches the text's state: each row is shifted left by (its padding % bptt), so
    its text starts a chunk, and rows whose chunk was all padding are reset to a zero state. A
    padded document hence gives the same outputs as the document alone (same chunking from its
    first token). Chunks before the kept window run without autograd (their outputs are dropped
    and the state is detached anyway)."""

    def __init__(self, encoder: AWDLSTM, bptt: int, max_len: int, pad_idx: int):
        super().__init__()
        self.encoder = encoder
        self.bptt, self.max_len, self.pad_idx = bptt, max_len, pad_idx

    def reset(self) -> None:
        self.encoder.reset()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.dim() != 2:
            raise ValueError(f"MultiBatchEncoder expects token ids of shape (B, T), got {tuple(ids.shape)}")
        B, T = ids.shape
        bptt, dev = self.bptt, ids.device
        n_pad = (ids != self.pad_idx).long().cumsum(1).eq(0).sum(1)  # (B,) leading padding only
        shift = n_pad % bptt                                       # (B,)
        pos = torch.arange(T, device=dev)[None] + shift[:, None]   # (B, T)
        x = ids.gather(1, pos.clamp(max=T - 1)).masked_fill(pos >= T, self.pad_idx)  # padding: bptt multiples, then text, then < bptt
        start = n_pad - shift  # (B,) first text position in x: a multiple of bptt
        end = T - shift        # (B,) one past the last
        grad_from = T - self.max_len - bptt + 1  # no kept position before this (end >= T - bptt + 1)
        self.encoder.reset()
        outs, kept_from = [], 0
        for i in range(0, T, bptt):
            j = min(i + bptt, T)
            keep = j > grad_from
            with torch.set_grad_enabled(torch.is_grad_enabled() and keep):
                _, outputs = self.encoder(x[:, i:j])
            if keep:
                if not outs:
                    kept_from = i
                outs.append(outputs[-1])  # (B, j - i, C)
            self.encoder.reset(rows=start >= j)  # still in padding: the text will start from zeros
        out = torch.cat(outs, dim=1)  # (B, T - kept_from, C)
        M = min(self.max_len, T)
        src = end[:, None] - M + torch.arange(M, device=dev)[None]  # (B, M) position in x of output q
        mask = src < start[:, None]                                   # (B, M) before the text: padding
        idx = (src - kept_from).clamp(min=0)[..., None].expand(-1, -1, out.shape[-1])
        out = out.gather(1, idx).masked_fill(mask[..., None], 0.0)  # (B, M, C)
        return out, mask


class PoolingLinearClassifier(nn.Module):
    """Concat pooling [last, max over time, mean over time] ignoring padding, then per Linear:
    BatchNorm1d -> Dropout -> Linear (-> ReLU but for the last)."""

    def __init__(self, n_in: int, lin_ftrs: tuple[int, ...], n_classes: int, ps: tuple[float, ...]):
        super().__init__()
        if len(ps) != len(lin_ftrs) + 1:
            raise ValueError(f"need one dropout per Linear ({len(lin_ftrs) + 1}), got {len(ps)}")
        sizes = [3 * n_in, *lin_ftrs, n_classes]
        layers: list[nn.Module] = []
        for k, p in enumerate(ps):
            layers += [nn.BatchNorm1d(sizes[k]), nn.Dropout(p), nn.Linear(sizes[k], sizes[k + 1])]
            if k < len(ps) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    @staticmethod
    def pool(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, M, C), (B, M) True at padding (padding first) -> (B, 3C)."""
        valid = (~mask)[..., None]                                   # (B, M, 1)
        n = valid.sum(1).clamp(min=1).to(out.dtype)                  # (B, 1)
        avg = (out * valid).sum(1) / n                               # (B, C)
        mx = out.masked_fill(mask[..., None], float("-inf")).max(1).values
        mx = mx.masked_fill(mask.all(1)[:, None], 0.0)               # a row of padding only: 0, not -inf
        return torch.cat([out[:, -1], mx, avg], dim=1)               # padding first: -1 is the last token

    def forward(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layers(self.pool(out, mask))  # (B, n_classes)


class TextClassifier(nn.Module):
    """MultiBatchEncoder -> PoolingLinearClassifier. forward(ids (B, T), padded at the start)
    -> logits (B, n_classes). Each forward starts every document from a zero state."""

    def __init__(self, cfg: AWDLSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MultiBatchEncoder(AWDLSTM(cfg), cfg.bptt, cfg.max_len, cfg.pad_idx)
        self.head = PoolingLinearClassifier(cfg.emb_sz, cfg.lin_ftrs, cfg.n_classes,
                                            tuple(p * cfg.drop_mult for p in cfg.clas_ps))

    def reset(self) -> None:
        self.encoder.reset()

    def set_n_classes(self, n: int) -> None:
        """A new head of n outputs (a user's table says how many labels only after the model
        is built); the encoder is kept."""
        if n != self.cfg.n_classes:
            self.cfg = replace(self.cfg, n_classes=n)
            self.head = PoolingLinearClassifier(self.cfg.emb_sz, self.cfg.lin_ftrs, n,
                                                tuple(p * self.cfg.drop_mult for p in self.cfg.clas_ps))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(*self.encoder(ids))


def language_model(cfg: AWDLSTMConfig) -> LanguageModel:
    return LanguageModel(cfg)


def text_classifier(cfg: AWDLSTMConfig) -> TextClassifier:
    return TextClassifier(cfg)


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _awd(model: nn.Module) -> AWDLSTM:
    m = _unwrap(model)
    if isinstance(m, (LanguageModel, TextClassifier)):
        m = m.encoder
    if isinstance(m, MultiBatchEncoder):
        m = m.encoder
    if not isinstance(m, AWDLSTM):
        raise TypeError(f"expected a LanguageModel, TextClassifier or AWDLSTM, got {type(m).__name__}")
    return m


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the encoder's weights (keys relative to the AWDLSTM), for load_encoder."""
    return {k: v.detach().clone() for k, v in _awd(model).state_dict().items()}


def load_encoder(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load encoder_state() of another model (LM -> classifier: ULMFiT's transfer) and reset its state.
    ValueError when the architectures differ (vocab size, emb_sz, n_hid, n_layers)."""
    enc = _awd(model)
    own = enc.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"encoder state does not fit (different n_layers?): missing {missing}, unexpected {unexpected}")
    emb_key = "embed.emb.weight"
    if state[emb_key].shape != own[emb_key].shape:
        (v1, c1), (v0, c0) = state[emb_key].shape, own[emb_key].shape
        raise ValueError(f"embedding mismatch: the state has vocab_size={v1}, emb_sz={c1}; this model "
                         f"vocab_size={v0}, emb_sz={c0}. Build the classifier with the LM's vocabulary")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"encoder shapes differ (state vs model; n_hid?): {'; '.join(bad)}")
    enc.load_state_dict(state)
    enc.reset()


def _dedup(groups: list[list[nn.Parameter]]) -> list[list[nn.Parameter]]:
    """Drop repeated parameters (a tied weight), keeping the first."""
    seen: set[int] = set()
    out = []
    for g in groups:
        group = []
        for p in g:
            if id(p) not in seen:
                seen.add(id(p))
                group.append(p)
        out.append(group)
    return out


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups, first to last, for discriminative LRs and gradual unfreezing (fastai's splits);
    every parameter exactly once.
    TextClassifier: [embedding], [rnn 0], ..., [rnn n-1], [head]            (n_layers + 2 groups)
    LanguageModel:  [rnn 0], ..., [rnn n-1], [embedding = decoder weight, decoder bias]  (n_layers + 1):
    the tied embedding is the decoder's weight, so it sits in the last group, as in fastai 0.7 and 1.0
    (freeze_to(-1) trains embedding and decoder: new words first)."""
    m = _unwrap(model)
    if isinstance(m, LanguageModel):
        rnns = [list(r.parameters()) for r in m.encoder.rnns]
        return _dedup(rnns + [list(m.encoder.embed.parameters()) + list(m.decoder.parameters())])
    if isinstance(m, TextClassifier):
        enc = m.encoder.encoder
        return _dedup([list(enc.embed.parameters())] + [list(r.parameters()) for r in enc.rnns]
                      + [list(m.head.parameters())])
    raise TypeError(f"layer_groups expects a LanguageModel or TextClassifier, got {type(m).__name__}")
