"""Lesson 10: ULMFiT on IMDb. An AWD-LSTM language model fine-tuned on the reviews (imdb-lm),
then a classifier on its encoder (imdb-clas) trained with gradual unfreezing, discriminative
learning rates (each layer group lr / 2.6 below the next) and 1cycle per stage.

Data: the reviews tokenized with SentencePiece (one tokenizer and cache for both pipelines:
the same corpus and vocab_size give the same cache key, so the LM's vocabulary is the
classifier's), cached as rows of ids. The LM trains on train + unsup and is validated on
the test reviews; the classifier trains on train and is validated on test.
"""
from __future__ import annotations

import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.awd_lstm import AWDLSTMConfig, ar_tar, encoder_state, language_model, layer_groups, load_encoder, text_classifier
from preprocessing import samples, text

from ..core.phases import discriminative, one_cycle, with_frozen
from ..core.contract import Pipeline, RunContext, TrainConfig
from ..core.batching import cycle_batches
from ..core.metrics import classification_metrics

ENCODER_ARTIFACT = "encoder/encoder.pt"
# `fastray sample-data imdb`: reviews of 30 to 200 words (~200 SentencePiece tokens on average)
# whose sentiment sentences agree with the label 4 times in 5; the rest say the opposite
# (negated, contrasted with 'but'/'although', or plain), so only their weighted sum decides
SAMPLE_KW = dict(max_words=200, agree=0.8)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Common:
    vocab_size: int = 30000     # SentencePiece pieces (same in LM and classifier: the cache key)
    sample_docs: int = 10000    # documents SentencePiece learns from
    emb_sz: int = 400           # embedding size = last LSTM's size
    n_hid: int = 1152           # inner LSTMs' hidden size
    n_layers: int = 3           # stacked LSTMs
    drop_mult: float = 0.7      # scales every AWD-LSTM dropout (tuned)
    bptt: int = 70              # tokens per LM step / classifier encoder chunk
    bs: int = 52                # global batch size, split evenly across workers
    lr: float = 1e-3            # peak LR of each 1cycle (the last layer group's)
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.8, 0.7)  # 1cycle Adam beta1: max, min
    beta2: float = 0.99         # Adam beta2 (lesson 10: 0.99)
    wd: float = 1e-7            # weight decay (lesson 10: 1e-7)
    clip: float = 0.25          # gradient norm clipping (0: none)
    seed: int = 0               # init, tokenizer sample and batch order
    max_failures: int = 1       # Ray Train restarts of the worker group after a failure
    bf16: bool = False          # autocast to bfloat16 on a GPU (off: LSTMs in fp32)

    def __post_init__(self):
        if self.bs < 1 or self.lr <= 0 or self.bptt < 2 or self.vocab_size < 8:
            raise ValueError(f"need bs >= 1, lr > 0, bptt >= 2, vocab_size >= 8 (got bs={self.bs}, lr={self.lr}, "
                             f"bptt={self.bptt}, vocab_size={self.vocab_size})")
        if len(self.moms) != 2:
            raise ValueError(f"moms needs two values (max, min), got {self.moms}")

    def awd(self, **kw) -> AWDLSTMConfig:
        return AWDLSTMConfig(vocab_size=self.vocab_size, emb_sz=self.emb_sz, n_hid=self.n_hid, n_layers=self.n_layers,
                             drop_mult=self.drop_mult, bptt=self.bptt, pad_idx=text.PAD_ID, **kw)


@dataclass(frozen=True)
class LMConfig(_Common):
    epochs: int = 15            # of the LM's 1cycle (lesson 10: 15)
    alpha: float = 2.0          # AR penalty
    beta: float = 1.0           # TAR penalty
    pretrained: str = ""        # a WikiText-103 LM state dict file ("" = random init)

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class ClasConfig(_Common):
    stage_epochs: tuple[int, ...] = (1, 1, 14)  # 1cycle epochs per unfreezing stage: last group, last two, all
    lr_factor: float = 2.6      # discriminative LRs: each group lr / lr_factor below the next
    max_len: int = 1400         # encoder outputs pooled from the end of a review
    lin_ftrs: tuple[int, ...] = (50,)  # hidden sizes of the classifier head
    encoder: str = ""           # an imdb-lm MLflow run id or an encoder.pt path ("" = random init)
    clip: float = 25.0          # gradient norm clipping (lesson 10's classifier: 25)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "stage_epochs", tuple(int(e) for e in self.stage_epochs))
        object.__setattr__(self, "lin_ftrs", tuple(int(e) for e in self.lin_ftrs))
        if not self.stage_epochs or min(self.stage_epochs) < 1:
            raise ValueError(f"stage_epochs must be epochs >= 1 per stage, got {self.stage_epochs}")


_SMALL = dict(vocab_size=1000, sample_docs=2000, emb_sz=64, n_hid=128, n_layers=2, bptt=40)
LM_CONFIGS = {
    "tiny": LMConfig(**{**_SMALL, "vocab_size": 300, "sample_docs": 300, "emb_sz": 16, "n_hid": 32},
                     bs=16, epochs=1, lr=3e-3),
    "sample": LMConfig(**_SMALL, bs=64, epochs=3, lr=5e-3, drop_mult=0.3),
    "default": LMConfig(lr=1e-3, epochs=15),  # lesson 10 (GPU)
}
CLAS_CONFIGS = {
    "tiny": ClasConfig(**{**_SMALL, "vocab_size": 300, "sample_docs": 300, "emb_sz": 16, "n_hid": 32},
                       bs=16, stage_epochs=(1, 1, 1), lr=1e-2, max_len=120, lin_ftrs=(16,)),
    "sample": ClasConfig(**_SMALL, bs=32, stage_epochs=(1, 1, 8), lr=1e-2, drop_mult=0.3, max_len=400,
                         lin_ftrs=(32,)),
    "default": ClasConfig(bs=48, lr=3e-3, drop_mult=0.5, stage_epochs=(1, 1, 14)),  # lesson 10 (GPU)
}


# ---------------------------------------------------------------- shared data


def _read_shard(shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, offsets, labels) of a worker's shard of token rows."""
    import pyarrow.compute as pc

    ids, lens, labels = [], [], []
    for t in shard.iter_batches(batch_size=4096, batch_format="pyarrow", prefetch_batches=1):
        col = t.column("ids").combine_chunks()
        ids.append(col.flatten().to_numpy(zero_copy_only=False))
        lens.append(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        labels.append(t.column("label").to_numpy())
    lengths = np.concatenate(lens).astype(np.int64) if lens else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return (np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64), offsets,
            np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64))


def _resolve(pipe: "_ImdbBase", spec: str, what: str, tracking_uri: str | None, dst: Path) -> Path:
    """An encoder/state source (a file, or an MLflow run id) -> a local file."""
    p = Path(spec)
    if p.is_file():
        return p
    if _RUN_ID.fullmatch(spec) and tracking_uri:
        from mlflow.tracking import MlflowClient

        try:
            return Path(MlflowClient(tracking_uri=tracking_uri).download_artifacts(spec, ENCODER_ARTIFACT, str(dst)))
        except Exception as e:
            raise FileNotFoundError(f"{what} {spec}: cannot get {ENCODER_ARTIFACT} of MLflow run {spec} in "
                                    f"{tracking_uri} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    raise FileNotFoundError(f"{what} {spec}: no such file" + (
        " (expected an encoder.pt or the MLflow run id of an imdb-lm run)" if what == "encoder" else ""))


def _load(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} {path}: not a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: not a state dict")
    return state


def _emb_rows(state: dict, key: str, what: str, path: Path) -> int:
    if key not in state:
        raise ValueError(f"{what} {path}: no {key!r} in the state dict (not an AWD-LSTM {what}?)")
    return int(state[key].shape[0])


class _ImdbBase(Pipeline):
    dataset = "imdb"

    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples.imdb(out, size=size or 5000, **SAMPLE_KW)

    def preprocess(self, cfg, data_dir: Path, cache, on_bad: str = "skip"):
        src = getattr(cfg, self._init_field)
        if src and not _RUN_ID.fullmatch(src) and not Path(src).is_file():
            _resolve(self, src, self._init_what, None, Path("."))  # raises: fail before tokenizing
        source = text.find_imdb(data_dir)
        return text.tokenize(source, cache, vocab_size=cfg.vocab_size, sample_docs=cfg.sample_docs, seed=cfg.seed,
                             on_bad=on_bad)

    def _read(self, cache, manifest, split):
        return text.read_tokens(cache, manifest, split)

    def search_space(self, cfg) -> dict[str, Any]:
        """Lesson 10's one dropout knob, the LR, the 1cycle shape."""
        from ray import tune

        hi = max(1.0, cfg.drop_mult)
        return {
            "drop_mult": tune.uniform(0.2, hi),
            "lr": tune.loguniform(cfg.lr / 4, cfg.lr * 3),
            "div": tune.uniform(5.0, 30.0),
            "pct": tune.uniform(0.05, 0.3),
        }

    def _opt_kwargs(self, cfg) -> dict:
        return {"weight_decay": cfg.wd, "betas": (cfg.moms[0], cfg.beta2)}

    @staticmethod
    def _core(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------- the language model


class ImdbLM(_ImdbBase):
    Config = LMConfig
    configs = LM_CONFIGS
    metric = "perplexity"
    mode = "min"
    _init_field, _init_what = "pretrained", "pretrained"

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        train = self._read(cache, manifest, "train")
        if "unsup" in manifest["rows"]:
            train = train.union(self._read(cache, manifest, "unsup"))
        return {"train": train, "valid": self._read(cache, manifest, "valid")}

    def train_rows(self, manifest: dict) -> int:
        return int(manifest["rows"]["train"]) + int(manifest["rows"].get("unsup", 0))

    def steps_per_epoch(self, cfg, manifest: dict, world: int) -> int:
        tokens = int(manifest["tokens"]["train"]) + int(manifest["tokens"].get("unsup", 0))
        return int((tokens // world) // ((cfg.bs // world) * cfg.bptt))

    def batches(self, cfg, shard, bs, device, train, steps=None, epoch=0):
        ids, offsets, _ = _read_shard(shard)
        if train:
            def make(k: int):  # documents shuffled every pass, then one stream
                rng = np.random.default_rng([cfg.seed, epoch, k])
                order = rng.permutation(len(offsets) - 1)
                stream = np.concatenate([ids[offsets[i]:offsets[i + 1]] for i in order]) if len(order) else ids
                return text.LMStream(stream, bs, cfg.bptt, seed=cfg.seed * 1000 + epoch * 10 + k)
            for x, y in cycle_batches(make, steps):
                yield x.to(device), y.to(device)
        else:
            for x, y in text.LMStream(ids, bs, cfg.bptt, seed=cfg.seed):
                yield x.to(device), y.to(device)

    def build_model(self, cfg: LMConfig) -> nn.Module:
        return language_model(cfg.awd(alpha=cfg.alpha, beta=cfg.beta))

    def init_source(self, cfg: LMConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
        if not cfg.pretrained:
            say("imdb-lm: no pretrained LM given (--set pretrained=FILE): random init")
            return {"fastray.init": "random"}
        path = _resolve(self, cfg.pretrained, "pretrained", None, Path("."))
        state = _load(path, "pretrained")
        rows = _emb_rows(state, "encoder.embed.emb.weight", "pretrained", path)
        if rows != cfg.vocab_size:
            raise ValueError(f"pretrained {path}: its vocabulary has {rows} tokens, this config's vocab_size is "
                             f"{cfg.vocab_size}: the LM must use this tokenizer's vocabulary")
        try:
            self.build_model(cfg).load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"pretrained {path}: does not fit this LM: {str(e).splitlines()[0]}") from None
        say(f"imdb-lm: starting from the pretrained LM {path}")
        return {"fastray.init": f"pretrained:{path}"}

    def init_model(self, model, cfg: LMConfig, tracking_uri: str) -> None:
        if cfg.pretrained:
            model.load_state_dict(_load(Path(cfg.pretrained), "pretrained"))

    def phases(self, cfg: LMConfig) -> list:
        return one_cycle(cfg.epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                         opt_kwargs=self._opt_kwargs(cfg), data="train")

    def train_step(self, model, batch, opt, cfg: LMConfig) -> dict[str, torch.Tensor]:
        x, y = batch
        logits, raw, dropped = model(x, return_activations=True)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer_step(opt, ce + ar_tar(raw, dropped, cfg.alpha, cfg.beta), cfg.clip)
        return {"loss": ce.detach()}

    def evaluate(self, model, batches: Iterable, cfg) -> dict[str, float]:
        m = self._core(model)
        m.reset()
        res = classification_metrics((m(x).reshape(-1, m.cfg.vocab_size), y.reshape(-1)) for x, y in batches)
        return {**res, "perplexity": math.exp(min(res["loss"], 50))}

    def combine(self, results: list[dict[str, float]]) -> dict[str, float]:
        out = super().combine(results)
        out["perplexity"] = math.exp(min(out["loss"], 50))  # of the mean loss, not a mean of perplexities
        return out

    def final_artifacts(self, model, cfg, out_dir: Path) -> dict[str, list[Path]]:
        path = out_dir / "encoder.pt"
        torch.save(encoder_state(model), path)
        return {"encoder": [path]}


# ---------------------------------------------------------------- the classifier


class ImdbClas(_ImdbBase):
    Config = ClasConfig
    configs = CLAS_CONFIGS
    metric = "accuracy"
    mode = "max"
    _init_field, _init_what = "encoder", "encoder"

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        return {"train": self._read(cache, manifest, "train"), "valid": self._read(cache, manifest, "valid")}

    def batches(self, cfg, shard, bs, device, train, steps=None, epoch=0):
        ids, offsets, labels = _read_shard(shard)
        lengths = np.diff(offsets)
        keep = cfg.max_len + cfg.bptt  # the encoder keeps max_len outputs: older tokens only warm the state

        def batch(idx: list[int]):
            docs = [ids[max(offsets[i], offsets[i + 1] - keep):offsets[i + 1]] for i in idx]
            return text.pad_batch(docs, text.PAD_ID).to(device), torch.from_numpy(labels[idx]).to(device)

        if train:
            def make(k: int):
                return (batch(b) for b in text.sortish_batches(lengths, bs, seed=cfg.seed * 1000 + epoch * 10 + k)
                        if len(b) == bs)
            yield from cycle_batches(make, steps)
        else:
            for b in text.sorted_batches(lengths, bs):
                yield batch(b)

    def build_model(self, cfg: ClasConfig) -> nn.Module:
        return text_classifier(cfg.awd(max_len=cfg.max_len, lin_ftrs=cfg.lin_ftrs, n_classes=2,
                                       clas_ps=(0.4,) + (0.1,) * len(cfg.lin_ftrs)))

    def param_groups(self, model) -> list[list[nn.Parameter]]:
        return layer_groups(model)  # [embedding], [rnn 0], ..., [rnn n-1], [head]

    def init_source(self, cfg: ClasConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
        if not cfg.encoder:
            say("imdb-clas: no encoder given (--set encoder=RUN_ID|FILE): random init")
            return {"fastray.init": "random"}
        with tempfile.TemporaryDirectory() as d:
            path = _resolve(self, cfg.encoder, "encoder", tracking_uri, Path(d))
            state = _load(path, "encoder")
            rows = _emb_rows(state, "embed.emb.weight", "encoder", path)
            if rows != cfg.vocab_size:
                raise ValueError(f"encoder {cfg.encoder}: its vocabulary has {rows} tokens, this config's vocab_size "
                                 f"is {cfg.vocab_size}: train the LM with the same vocab_size and data")
            load_encoder(self.build_model(cfg), state)  # ValueError when the architecture differs
        if _RUN_ID.fullmatch(cfg.encoder) and not Path(cfg.encoder).is_file():
            from mlflow.tracking import MlflowClient

            key = MlflowClient(tracking_uri=tracking_uri).get_run(cfg.encoder).data.tags.get("fastray.cache_key")
            if key and key != manifest["key"]:
                say(f"imdb-clas: warning: the LM run {cfg.encoder} tokenized other data or settings "
                    f"(cache key {key}, here {manifest['key']}): its token ids may mean other pieces")
            say(f"imdb-clas: encoder loaded from the imdb-lm run {cfg.encoder}")
            return {"fastray.init": f"encoder:run:{cfg.encoder}"}
        say(f"imdb-clas: encoder loaded from {cfg.encoder}")
        return {"fastray.init": f"encoder:file:{cfg.encoder}"}

    def init_model(self, model, cfg: ClasConfig, tracking_uri: str) -> None:
        if cfg.encoder:
            with tempfile.TemporaryDirectory() as d:
                load_encoder(model, _load(_resolve(self, cfg.encoder, "encoder", tracking_uri, Path(d)), "encoder"))

    def phases(self, cfg: ClasConfig) -> list:
        n = cfg.n_layers + 2
        mults = discriminative(n, cfg.lr_factor)
        out = []
        for k, epochs in enumerate(cfg.stage_epochs):
            trainable = min(n, k + 1) if k < len(cfg.stage_epochs) - 1 else n  # the last stage: all
            cycle = one_cycle(epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                              opt_kwargs=self._opt_kwargs(cfg), lr_mults=mults, data="train")
            out += with_frozen(cycle, tuple(range(n - trainable)))
        return out

    def train_step(self, model, batch, opt, cfg: ClasConfig) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = F.cross_entropy(model(x).float(), y)
        optimizer_step(opt, loss, cfg.clip)
        return {"loss": loss.detach()}

    def evaluate(self, model, batches: Iterable, cfg) -> dict[str, float]:
        m = self._core(model)
        return classification_metrics((m(x), y) for x, y in batches)
