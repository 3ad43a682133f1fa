"""Lesson 10: ULMFiT on IMDb. An AWD-LSTM language model fine-tuned on the reviews (imdb-lm),
then a classifier on its encoder (imdb-clas) trained with gradual unfreezing, discriminative
learning rates (each layer group lr / 2.6 below the next) and 1cycle per stage.

Data: the reviews tokenized with SentencePiece (one tokenizer and cache for both pipelines:
the same corpus and vocab_size give the same cache key, so the LM's vocabulary is the
classifier's), cached as rows of ids. The LM trains on train + unsup and is validated on
the test reviews; the classifier trains on train and is validated on test.

The machinery is written once here for any corpus: `LanguageModel` and `Classifier` take
their documents from `tokens()` (IMDb's folders here; a user's labelled table in
text_clas.py: text-lm and text-clas), the LM trains on every split but "valid", and the
classifier's targets, loss and metrics are hooks. `backwards=true` reads every document
from its end (fastai's backward LM); a classifier refuses an encoder of the other direction.
"""
from __future__ import annotations

import logging
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.awd_lstm import AWDLSTMConfig, ar_tar, encoder_state, language_model, layer_groups, load_encoder, text_classifier
from preprocessing import text
from preprocessing.text import batching, corpus, encoding, readers
from preprocessing.text.subwords import CASES

from ..core.batching import cycle_batches
from ..core.contract import Pipeline, RunContext, TrainConfig, unwrap
from ..core.metrics import classification_metrics
from ..core.phases import TrainingPhase, discriminative, gradual_unfreeze, one_cycle, with_frozen

ENCODER_ARTIFACT = "encoder/encoder.pt"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
logger = logging.getLogger("fastray")


@dataclass(frozen=True)
class _Common(TrainConfig):
    vocab_size: int = 30000     # SentencePiece pieces (same in LM and classifier: the cache key)
    sample_docs: int = 10000    # documents SentencePiece learns from
    case: str = "markers"       # "markers": lower case behind xxmaj / xxup pieces (lesson 10's rules); "keep": as written
    emb_sz: int = 400           # embedding size = last LSTM's size
    n_hid: int = 1152           # inner LSTMs' hidden size
    n_layers: int = 3           # stacked LSTMs
    drop_mult: float = 0.7      # scales every AWD-LSTM dropout (tuned)
    bptt: int = 70              # tokens per LM step / classifier encoder chunk
    bs: int = 52                # examples per optimizer step over all workers (each gets bs // workers)
    lr: float = 1e-3            # peak LR of each 1cycle (the last layer group's)
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.8, 0.7)  # 1cycle Adam beta1: max, min
    beta2: float = 0.99         # Adam beta2 (lesson 10: 0.99)
    wd: float = 1e-7            # weight decay (lesson 10: 1e-7)
    clip: float = 0.25          # max global gradient norm per optimizer step (0: no clipping)
    bf16: bool = False          # autocast the forward and the loss to bfloat16 on a GPU (off: LSTMs in fp32)
    backwards: bool = False     # read every document from its last token to its first (fastai's backward LM);
                                # the classifier must read as its encoder's LM did

    def __post_init__(self):
        super().__post_init__()
        if self.lr <= 0 or self.bptt < 2 or self.vocab_size < 8:
            raise ValueError(f"need lr > 0, bptt >= 2, vocab_size >= 8 (got lr={self.lr}, "
                             f"bptt={self.bptt}, vocab_size={self.vocab_size})")
        if len(self.moms) != 2:
            raise ValueError(f"moms needs two values (max, min), got {self.moms}")
        if self.case not in CASES:
            raise ValueError(f"case must be one of {CASES}, got {self.case!r}")

    def awd(self, **kw) -> AWDLSTMConfig:
        return AWDLSTMConfig(vocab_size=self.vocab_size, emb_sz=self.emb_sz, n_hid=self.n_hid, n_layers=self.n_layers,
                             drop_mult=self.drop_mult, bptt=self.bptt, pad_idx=text.PAD_ID, **kw)


@dataclass(frozen=True)
class LMConfig(_Common):
    epochs: int = 15            # epochs the whole run trains: one 1cycle (lesson 10: 15)
    alpha: float = 2.0          # AR penalty
    beta: float = 1.0           # TAR penalty
    pretrained: str = ""        # a WikiText-103 LM state dict file ("" = random init)


@dataclass(frozen=True)
class ClasConfig(_Common):
    epochs: int = 16            # epochs the whole run trains, every unfreezing stage together (lesson 10: 1 + 1 + 14)
    unfreeze_epochs: tuple[int, ...] = (1, 1)  # 1cycle epochs of the first stages (last group, last two ...); the rest trains all
    lr_factor: float = 2.6      # discriminative LRs: each group lr / lr_factor below the next
    max_len: int = 1400         # encoder outputs pooled from the end of a review
    lin_ftrs: tuple[int, ...] = (50,)  # hidden sizes of the classifier head
    encoder: str = ""           # an imdb-lm run (its MLflow run id or --name) or an encoder file (a '/' or '.' in it; "" = random init)
    clip: float = 25.0          # max global gradient norm per optimizer step (lesson 10's classifier: 25)
    cut_div: float = 0.0        # > 0: each stage a slanted triangular LR (lesson 10's use_clr=(div, cut_div)): lr / div
                                # up to lr over 1 / cut_div of the stage, down to lr / div, Adam beta1 moms[0]; 0: 1cycle
    stage_lrs: tuple[float, ...] = ()  # LR multiplier of each stage (the unfreezing stages, then the last); () = all 1

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "unfreeze_epochs", tuple(int(e) for e in self.unfreeze_epochs))
        object.__setattr__(self, "lin_ftrs", tuple(int(e) for e in self.lin_ftrs))
        object.__setattr__(self, "stage_lrs", tuple(float(m) for m in self.stage_lrs))
        if any(e < 1 for e in self.unfreeze_epochs):
            raise ValueError(f"unfreeze_epochs must be epochs >= 1 per stage, got {self.unfreeze_epochs}")
        if self.cut_div != 0 and self.cut_div <= 1:
            raise ValueError(f"cut_div must be 0 (1cycle) or > 1, got {self.cut_div}")
        if self.stage_lrs and (len(self.stage_lrs) != len(self.unfreeze_epochs) + 1 or min(self.stage_lrs) <= 0):
            raise ValueError(f"stage_lrs needs one multiplier > 0 per stage ({len(self.unfreeze_epochs) + 1}: "
                             f"unfreeze_epochs, then the last), got {self.stage_lrs}")


_SMALL = dict(vocab_size=1000, sample_docs=2000, emb_sz=64, n_hid=128, n_layers=2, bptt=40)
LM_CONFIGS = {
    "tiny": LMConfig(**{**_SMALL, "vocab_size": 300, "sample_docs": 300, "emb_sz": 16, "n_hid": 32},
                     bs=16, epochs=1, lr=3e-3),
    "sample": LMConfig(**_SMALL, bs=64, epochs=3, lr=5e-3, drop_mult=0.3),
    "default": LMConfig(lr=1e-3, epochs=15),  # lesson 10 (GPU)
}
CLAS_CONFIGS = {
    "tiny": ClasConfig(**{**_SMALL, "vocab_size": 300, "sample_docs": 300, "emb_sz": 16, "n_hid": 32},
                       bs=16, epochs=3, unfreeze_epochs=(1, 1), lr=1e-2, max_len=120, lin_ftrs=(16,)),
    # stages of 1, 1 and 18 epochs; drop_mult 0.8 (0.3 and 10 epochs before: 85.4 % -> 89.2 %, README).
    # lr_factor 1: one LR for every group. The sample's LM cannot tell a positive adjective
    # from a negative one (they fill the same slots; their embeddings' cosine is 0.97), so the
    # classifier must learn them in the embedding, which lesson 10's lr / 2.6**3 starved:
    # 90.1 % -> 99.2 % (README, benchmarks/ulmfit_vs_ngrams.py)
    "sample": ClasConfig(**_SMALL, bs=32, epochs=20, unfreeze_epochs=(1, 1), lr=1e-2, drop_mult=0.8, max_len=400,
                         lin_ftrs=(32,), lr_factor=1.0),
    "default": ClasConfig(bs=48, lr=3e-3, drop_mult=0.5, epochs=16, unfreeze_epochs=(1, 1)),  # lesson 10 (GPU): 1, 1, 14
}


# ---------------------------------------------------------------- shared data


def reverse_docs(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every document's tokens in reverse order (documents stay where they are): what a
    backward LM and its classifier read. ids back to back, offsets as in corpus.Ragged."""
    lengths = np.diff(offsets)
    if not len(ids):
        return ids
    doc = np.repeat(np.arange(len(lengths)), lengths)                # the document of each position
    return ids[offsets[doc] + offsets[doc + 1] - 1 - np.arange(len(ids))]


def _read_shard(shard, backwards: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, offsets, labels) of a worker's shard of token rows (each document reversed
    with `backwards`)."""
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
    flat = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    return (reverse_docs(flat, offsets) if backwards else flat, offsets,
            np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64))


def _a_path(spec: str) -> bool:
    """Whether an encoder/state source can only be a file: one with a '/' or a '.' (enc.pt,
    ./enc) is taken for a file; a run id is 32 hex digits, a --name anything else."""
    return not _RUN_ID.fullmatch(spec) and ("/" in spec or "." in spec)


def _run_of(spec: str, tracking_uri: str, lm_name: str, what: str = "encoder") -> str:
    """The run id of an encoder source that is a run: its id, or the newest lm_name run of
    that --name; FileNotFoundError naming both readings when neither is there."""
    from ..core import tracking

    if _RUN_ID.fullmatch(spec):
        return spec
    try:
        return tracking.run_by_id_or_name(tracking_uri, spec, lm_name).info.run_id
    except ValueError:
        raise FileNotFoundError(f"{what} {spec}: no such file, and no {lm_name} run of that --name in "
                                f"{tracking_uri}") from None


def _resolve(spec: str, what: str, tracking_uri: str | None, dst: Path, lm_name: str = "imdb-lm") -> Path:
    """An encoder/state source (a file, an MLflow run id, or an lm_name run's --name) -> a local file."""
    p = Path(spec)
    if p.is_file():
        return p
    if not _a_path(spec) and tracking_uri:
        from mlflow.tracking import MlflowClient

        spec = _run_of(spec, tracking_uri, lm_name, what)

        client = MlflowClient(tracking_uri=tracking_uri)
        try:
            return Path(client.download_artifacts(spec, ENCODER_ARTIFACT, str(dst)))
        except Exception as e:
            try:  # a run of another pipeline has no encoder: say which it is
                pipeline = client.get_run(spec).data.tags.get("fastray.pipeline", "")
            except Exception:
                pipeline = lm_name  # no such run: the download's reason says so
            if what == "encoder" and pipeline != lm_name:
                raise FileNotFoundError(f"encoder {spec}: run {spec} is a {pipeline or 'non-fastray'} run, with no "
                                        f"{ENCODER_ARTIFACT} (an encoder comes from an {lm_name} run)") from None
            raise FileNotFoundError(f"{what} {spec}: cannot get {ENCODER_ARTIFACT} of MLflow run {spec} in "
                                    f"{tracking_uri} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    raise FileNotFoundError(f"{what} {spec}: no such file" + (
        f" (expected an encoder.pt, or the MLflow run id or --name of an {lm_name} run)" if what == "encoder" else ""))


def _load(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} {path}: not a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: not a state dict")
    return state


BACKWARDS_KEY = "fastray.backwards"  # in an LM's encoder.pt: 1 when the LM read backwards (absent: forwards)


def _load_encoder(path: Path) -> tuple[dict, bool]:
    """An encoder.pt -> (its weights, whether its LM read backwards)."""
    state = _load(path, "encoder")
    flag = state.pop(BACKWARDS_KEY, None)
    return state, bool(flag.item()) if torch.is_tensor(flag) else bool(flag)


def _check_direction(cfg, backwards: bool, spec: str) -> None:
    """A backward LM's encoder knows text read from its end: a forward classifier (or the
    other way round) would read it in the order it never saw."""
    if backwards != cfg.backwards:
        way = lambda b: "backward (backwards=true)" if b else "forward (backwards=false)"  # noqa: E731
        raise ValueError(f"encoder {spec}: its LM read {way(backwards)}, this classifier reads "
                         f"{way(cfg.backwards)}: set backwards={str(backwards).lower()} or use an LM of this direction")


def _emb_rows(state: dict, key: str, what: str, path: Path) -> int:
    if key not in state:
        raise ValueError(f"{what} {path}: no {key!r} in the state dict (not an AWD-LSTM {what}?)")
    return int(state[key].shape[0])


class _UlmfitBase(Pipeline):
    lm_name = "imdb-lm"  # the language model pipeline whose encoder a classifier takes

    def tokens(self, cfg, data_dir: Path, cache, on_bad: str) -> tuple[dict, bool]:
        """The corpus tokenized and cached: (manifest, hit). IMDb's aclImdb/ here."""
        source = readers.find_imdb(data_dir)
        return encoding.tokenize(source, cache, vocab_size=cfg.vocab_size, sample_docs=cfg.sample_docs, seed=cfg.seed,
                                 case=cfg.case, on_bad=on_bad)

    def preprocess(self, cfg, data_dir: Path, cache, on_bad: str = "skip"):
        src = getattr(cfg, self._init_field)
        if src and not Path(src).is_file() and (_a_path(src) or self._init_field == "pretrained"):
            _resolve(src, self._init_what, None, Path("."), self.lm_name)  # raises: fail before tokenizing
        if src and Path(src).is_file():  # a file's vocabulary is known now: a mismatch fails before tokenizing too
            self._check_init(cfg, Path(src))
        return self.tokens(cfg, data_dir, cache, on_bad)

    def _check_init(self, cfg, path: Path) -> dict:
        state = _load(path, self._init_what)
        self._check_vocab(cfg, state, path)
        return state

    def _read(self, cache, manifest, split):
        return corpus.read_tokens(cache, manifest, split)

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

    def _check_vocab(self, cfg, state: dict, path: Path) -> None:
        """The initial weights' vocabulary must be this config's tokenizer's."""
        rows = _emb_rows(state, self._emb_key, self._init_what, path)
        if rows != cfg.vocab_size:
            raise ValueError(f"{self._init_what} {getattr(cfg, self._init_field)}: its vocabulary has {rows} tokens, "
                             f"this config's vocab_size is {cfg.vocab_size}: {self._vocab_hint}")


# ---------------------------------------------------------------- the language model


class LanguageModel(_UlmfitBase):
    """The LM of a corpus: trains on every split but "valid" (labelled or not: train and
    unsup, or a table's train and test), validated on "valid"; its encoder is the artifact."""

    Config = LMConfig
    _init_field, _init_what = "pretrained", "pretrained"
    _emb_key, _vocab_hint = "encoder.embed.emb.weight", "the LM must use this tokenizer's vocabulary"

    @staticmethod
    def _splits(manifest: dict) -> list[str]:
        return [s for s in manifest["rows"] if s != "valid"]

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        parts = [self._read(cache, manifest, s) for s in self._splits(manifest)]
        train = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        return {"train": train, "valid": self._read(cache, manifest, "valid")}

    def train_rows(self, manifest: dict) -> int:
        return sum(int(manifest["rows"][s]) for s in self._splits(manifest))

    def steps_per_epoch(self, cfg, manifest: dict, world: int) -> int:
        tokens = sum(int(manifest["tokens"][s]) for s in self._splits(manifest))
        return int((tokens // world) // ((cfg.bs // world) * cfg.bptt))

    def batches(self, shard, ctx: RunContext, train: bool):
        cfg, bs, device, epoch = ctx.cfg, ctx.bs, ctx.device, ctx.epoch
        ids, offsets, _ = _read_shard(shard, cfg.backwards)
        if train:
            def make(k: int):  # documents shuffled every pass, then one stream
                rng = np.random.default_rng([cfg.seed, epoch, k])
                order = rng.permutation(len(offsets) - 1)
                stream = np.concatenate([ids[offsets[i]:offsets[i + 1]] for i in order]) if len(order) else ids
                return batching.LMStream(stream, bs, cfg.bptt, seed=cfg.seed * 1000 + epoch * 10 + k)
            for x, y in cycle_batches(make, ctx.steps_per_epoch):
                yield x.to(device), y.to(device)
        else:
            for x, y in batching.LMStream(ids, bs, cfg.bptt, seed=cfg.seed):
                yield x.to(device), y.to(device)

    def build_model(self, cfg: LMConfig) -> nn.Module:
        return language_model(cfg.awd(alpha=cfg.alpha, beta=cfg.beta))

    def init_source(self, cfg: LMConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
        if not cfg.pretrained:
            logger.info(f"{self.name}: no pretrained LM given (--set pretrained=FILE): random init")
            return {"fastray.init": "random"}
        path = _resolve(cfg.pretrained, "pretrained", None, Path("."))
        state = self._check_init(cfg, path)
        try:
            self.build_model(cfg).load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"pretrained {path}: does not fit this LM: {str(e).splitlines()[0]}") from None
        logger.info(f"{self.name}: starting from the pretrained LM {path}")
        return {"fastray.init": f"pretrained:{path}"}

    def init_model(self, model, ctx: RunContext) -> None:
        if ctx.cfg.pretrained:
            model.load_state_dict(_load(Path(ctx.cfg.pretrained), "pretrained"))

    def phases(self, cfg: LMConfig) -> list:
        return one_cycle(cfg.epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                         opt_kwargs=self._opt_kwargs(cfg), data="train")

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        """The loss optimised is the cross entropy plus AR and TAR; "ce" alone is comparable
        with the validation loss."""
        x, y = batch
        logits, raw, dropped = model(x, return_activations=True)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        return {"loss": ce + ar_tar(raw, dropped, ctx.cfg.alpha, ctx.cfg.beta), "ce": ce.detach()}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        m = unwrap(model)
        m.reset()
        res = classification_metrics((m(x).reshape(-1, m.cfg.vocab_size), y.reshape(-1)) for x, y in batches)
        return {**res, "perplexity": math.exp(min(res["loss"], 50))}

    def combine(self, results: list[dict[str, float]]) -> dict[str, float]:
        out = super().combine(results)
        out["perplexity"] = math.exp(min(out["loss"], 50))  # of the mean loss, not a mean of perplexities
        return out

    def on_epoch_end(self, model, ctx: RunContext) -> dict[str, list[Path]]:
        """The encoder (embedding + LSTMs) after the last epoch, for the classifier
        (`encoder=RUN_ID`), marked with the direction it read in."""
        if not ctx.is_last_epoch:
            return {}
        path = ctx.out_dir / "encoder.pt"
        torch.save({**encoder_state(model), BACKWARDS_KEY: torch.tensor(int(ctx.cfg.backwards))}, path)
        return {"encoder": [path]}


class ImdbLM(LanguageModel):
    configs = LM_CONFIGS


# ---------------------------------------------------------------- the classifier


class Classifier(_UlmfitBase):
    """A classifier on an LM's encoder: gradual unfreezing, discriminative LRs. Single-label
    softmax by default; a subclass gives other targets, loss and metrics (text_clas.py)."""

    Config = ClasConfig
    _init_field, _init_what = "encoder", "encoder"
    _emb_key, _vocab_hint = "embed.emb.weight", ("run the classifier with the --config (and any --set vocab_size) its LM ran with, on the same data")
    n_classes = 2  # the head's outputs

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        return {"train": self._read(cache, manifest, "train"), "valid": self._read(cache, manifest, "valid")}

    def targets(self, labels: np.ndarray, ctx: RunContext, train: bool) -> torch.Tensor:
        """A batch's targets from its rows' label column (IMDb: the class numbers themselves)."""
        return torch.from_numpy(labels)

    def _check_init(self, cfg, path: Path) -> dict:
        state, backwards = _load_encoder(path)
        _check_direction(cfg, backwards, cfg.encoder)
        self._check_vocab(cfg, state, path)
        return state

    def docs(self, ids: np.ndarray, offsets: np.ndarray, idx, keep: int) -> list[np.ndarray]:
        """The documents idx, each its last `keep` tokens."""
        return [ids[max(offsets[i], offsets[i + 1] - keep):offsets[i + 1]] for i in idx]

    def batches(self, shard, ctx: RunContext, train: bool):
        cfg, bs, device, epoch = ctx.cfg, ctx.bs, ctx.device, ctx.epoch
        ids, offsets, labels = _read_shard(shard, cfg.backwards)
        lengths = np.diff(offsets)
        keep = cfg.max_len + cfg.bptt  # the encoder keeps max_len outputs: older tokens only warm the state

        def batch(idx: list[int]):
            x = batching.pad_batch(self.docs(ids, offsets, idx, keep), text.PAD_ID)
            return x.to(device), self.targets(labels[idx], ctx, train).to(device)

        if train:
            def make(k: int):
                return (batch(b) for b in batching.sortish_batches(lengths, bs, seed=cfg.seed * 1000 + epoch * 10 + k)
                        if len(b) == bs)
            yield from cycle_batches(make, ctx.steps_per_epoch)
        else:
            for b in batching.sorted_batches(lengths, bs):
                yield batch(b)

    def build_model(self, cfg: ClasConfig) -> nn.Module:
        return text_classifier(cfg.awd(max_len=cfg.max_len, lin_ftrs=cfg.lin_ftrs, n_classes=self.n_classes,
                                       clas_ps=(0.4,) + (0.1,) * len(cfg.lin_ftrs)))

    def param_groups(self, model) -> list[list[nn.Parameter]]:
        return layer_groups(model)  # [embedding], [rnn 0], ..., [rnn n-1], [head]

    def init_source(self, cfg: ClasConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
        if not cfg.encoder:
            logger.info(f"{self.name}: no encoder given (--set encoder=RUN_ID|NAME|FILE): random init")
            return {"fastray.init": "random"}
        run_id = None if Path(cfg.encoder).is_file() or _a_path(cfg.encoder) else _run_of(cfg.encoder, tracking_uri, self.lm_name)
        with tempfile.TemporaryDirectory() as d:
            path = _resolve(run_id or cfg.encoder, "encoder", tracking_uri, Path(d), self.lm_name)
            state = self._check_init(cfg, path)
            load_encoder(self.build_model(cfg), state)  # ValueError when the architecture differs
        if run_id:
            from mlflow.tracking import MlflowClient

            data = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data
            key = data.tags.get("fastray.cache_key")
            if key and key != manifest["key"]:
                # the tokenizer's settings that differ (none: other data)
                lm = {f: data.params.get(f"config.{f}") for f in ("vocab_size", "sample_docs", "case", "seed")}
                differ = [f"{f}={v}" for f, v in lm.items() if v is not None and v != str(getattr(cfg, f))]
                logger.warning(f"{self.name}: warning: the LM run {run_id} tokenized "
                               + (f"with {', '.join(differ)} (--set them here too)" if differ else "other data")
                               + f" (cache key {key}, here {manifest['key']}): its token ids may mean other pieces")
            named = f" ({cfg.encoder})" if run_id != cfg.encoder else ""
            logger.info(f"{self.name}: encoder loaded from the {self.lm_name} run {run_id}{named}")
            return {"fastray.init": f"encoder:run:{run_id}"}
        logger.info(f"{self.name}: encoder loaded from {cfg.encoder}")
        return {"fastray.init": f"encoder:file:{cfg.encoder}"}

    def init_model(self, model, ctx: RunContext) -> None:
        if ctx.cfg.encoder:
            with tempfile.TemporaryDirectory() as d:
                path = _resolve(ctx.cfg.encoder, "encoder", ctx.tracking_uri, Path(d), self.lm_name)
                load_encoder(model, _load_encoder(path)[0])

    def phases(self, cfg: ClasConfig) -> list:
        """Gradual unfreezing: a cycle per stage (the head, then one more group each stage,
        unfreeze_epochs), then every group for the rest of `epochs`; discriminative LRs. A cycle
        is a 1cycle, or with cut_div a slanted triangle; stage k peaks at lr * stage_lrs[k]."""
        n = cfg.n_layers + 2
        kw = dict(opt="adam", opt_kwargs=self._opt_kwargs(cfg), lr_mults=discriminative(n, cfg.lr_factor), data="train")
        if not cfg.cut_div and not cfg.stage_lrs:
            return gradual_unfreeze(cfg.epochs, cfg.unfreeze_epochs, n, cfg.lr, div=cfg.div, pct=cfg.pct,
                                    moms=tuple(cfg.moms), **kw)
        out, left, last = [], cfg.epochs, len(cfg.unfreeze_epochs)
        for k, e in enumerate((*cfg.unfreeze_epochs, cfg.epochs)):  # as gradual_unfreeze: the last takes the rest
            e = min(e, left)
            if not e:
                break
            lr = cfg.lr * (cfg.stage_lrs[k] if cfg.stage_lrs else 1.0)
            if cfg.cut_div:
                up = e / cfg.cut_div
                cycle = [TrainingPhase(up, (lr / cfg.div, lr), "linear", cfg.moms[0], **kw),
                         TrainingPhase(e - up, (lr, lr / cfg.div), "linear", cfg.moms[0], **kw)]
            else:
                cycle = one_cycle(e, lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), **kw)
            out += with_frozen(cycle, () if k == last else tuple(range(max(0, n - k - 1))))
            left -= e
        return out

    def search_space(self, cfg) -> dict[str, Any]:
        """The dropout knob, the LR, the groups' LR ratio (lr_factor), and the shape of each
        stage's cycle: 1cycle's div and pct, or the slanted triangle's div and cut_div (with
        cut_div set)."""
        space = super().search_space(cfg)
        from ray import tune

        space["lr_factor"] = tune.uniform(1.0, 2.6)  # discriminative LRs: from one LR for all to lesson 10's
        if cfg.cut_div:
            del space["pct"]
            space["div"] = tune.uniform(8.0, 40.0)
            space["cut_div"] = tune.uniform(3.0, 12.0)
        return space

    def loss(self, out: torch.Tensor, y: torch.Tensor, manifest: dict, reduction: str = "mean") -> torch.Tensor:
        """The loss of the head's outputs (N, C) against targets() (cross entropy here; the
        sum of a row's losses is one row's worth, so that evaluate's sum over n rows is n of them)."""
        return F.cross_entropy(out, y, reduction=reduction)

    def activate(self, out: torch.Tensor, manifest: dict) -> torch.Tensor:
        """The head's outputs as probabilities (a softmax over the classes here)."""
        return out.softmax(1)

    def score(self, probs: np.ndarray, y: np.ndarray, result: dict) -> dict[str, float]:
        """The metrics of every validation row's probabilities (N, C) and targets at once
        (result: one worker's evaluate() output, for what it says of the data)."""
        return {"accuracy": float((probs.argmax(1) == y).mean()) if len(y) else 0.0}

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": self.loss(model(x).float(), y, ctx.manifest)}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, Any]:
        """This worker's probabilities and targets, row by row in batch order, and its summed
        loss: combine() scores every row at once (an AUC or a threshold needs them all), and
        an ensemble (ulmfit_ensemble.py) averages two runs' probabilities before it does."""
        m = unwrap(model)
        probs, ys, loss = [], [], 0.0
        for x, y in batches:
            out = m(x).float()
            loss += float(self.loss(out, y, ctx.manifest, "sum"))
            probs.append(self.activate(out, ctx.manifest).cpu().numpy())
            ys.append(y.cpu().numpy())
        return {"n": sum(len(y) for y in ys), "loss": loss,
                "probs": np.concatenate(probs) if probs else np.zeros((0, self.n_classes), np.float32),
                "targets": np.concatenate(ys) if ys else self.targets(np.zeros(0, np.int64), ctx, False).numpy()}

    def combine(self, results: list[dict[str, Any]]) -> dict[str, float]:
        n = sum(r["n"] for r in results)
        probs = np.concatenate([r["probs"] for r in results])
        y = np.concatenate([r["targets"] for r in results])
        return {"loss": sum(r["loss"] for r in results) / max(n, 1), **self.score(probs, y, results[0])}


class ImdbClas(Classifier):
    configs = CLAS_CONFIGS
