import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.awd_lstm import (
    AWDLSTMConfig,
    EmbeddingDropout,
    RNNDropout,
    WeightDropout,
    ar_tar,
    encoder_state,
    language_model,
    layer_groups,
    load_encoder,
    text_classifier,
)

PAD = 1


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny LSTMs: one thread is many times faster than two on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> AWDLSTMConfig:
    base = dict(vocab_size=20, emb_sz=8, n_hid=12, n_layers=2, bptt=5, max_len=12, lin_ftrs=(6,))
    return AWDLSTMConfig(**{**base, **kw})


def ids(B: int, T: int, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (B, T), generator=g)  # never PAD


def pad_first(seqs: list[torch.Tensor]) -> torch.Tensor:
    T = max(len(s) for s in seqs)
    return torch.stack([torch.cat([torch.full((T - len(s),), PAD), s]) for s in seqs])


def test_lesson_defaults():
    cfg = AWDLSTMConfig(vocab_size=100)
    assert (cfg.emb_sz, cfg.n_hid, cfg.n_layers, cfg.pad_idx, cfg.bptt, cfg.max_len) == (400, 1152, 3, 1, 70, 1400)
    assert (cfg.input_p, cfg.output_p, cfg.weight_p, cfg.embed_p, cfg.hidden_p) == (0.25, 0.1, 0.2, 0.02, 0.15)
    assert AWDLSTMConfig(vocab_size=5, lin_ftrs=[4], clas_ps=[0.1, 0.2]).lin_ftrs == (4,)  # lists become tuples


@pytest.mark.parametrize("kw", [dict(vocab_size=0), dict(pad_idx=20), dict(n_layers=0), dict(bptt=0),
                                dict(clas_ps=(0.1,)), dict(drop_mult=-1.0), dict(weight_p=0.6, drop_mult=2.0),
                                dict(lin_ftrs=(0,), clas_ps=(0.1, 0.1))])
def test_bad_config_is_a_value_error(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


def test_lm_shapes_and_layers():
    torch.manual_seed(0)
    cfg = tiny(n_layers=3)
    lm = language_model(cfg)
    x = ids(3, 7)
    assert lm(x).shape == (3, 7, 20)
    raw, out = lm.encoder(x)
    assert [r.shape[-1] for r in raw] == [12, 12, 8] and len(out) == 3  # last layer = emb_sz, for tying
    logits, raw_last, dropped = lm(x, return_activations=True)
    assert raw_last.shape == dropped.shape == (3, 7, 8)
    assert ar_tar(raw_last, dropped, 2.0, 1.0) > 0
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        lm(x[0])


def test_classifier_shapes_and_window():
    torch.manual_seed(0)
    clf = text_classifier(tiny(n_classes=3)).eval()
    x = pad_first([ids(1, 17, seed=1)[0], ids(1, 9, seed=2)[0], ids(1, 3, seed=3)[0]])
    assert clf(x).shape == (3, 3)
    out, mask = clf.encoder(x)
    assert out.shape == (3, 12, 8)  # the last max_len positions
    assert mask.sum(1).tolist() == [0, 3, 9]
    assert (out[mask] == 0).all()


def test_multibatch_matches_the_encoder_run_chunk_by_chunk():
    torch.manual_seed(0)
    clf = text_classifier(tiny()).eval()
    x = ids(2, 17)
    enc = clf.encoder.encoder
    enc.reset()
    ref = torch.cat([enc(x[:, i:i + 5])[1][-1] for i in range(0, 17, 5)], dim=1)[:, -12:]
    out, mask = clf.encoder(x)
    assert not mask.any()
    torch.testing.assert_close(out, ref)


def test_padding_does_not_change_the_pooled_features():
    torch.manual_seed(0)
    clf = text_classifier(tiny()).eval()
    long, short, tiny_doc = ids(1, 16, seed=1)[0], ids(1, 8, seed=2)[0], ids(1, 2, seed=3)[0]
    batch = pad_first([long, short, tiny_doc])
    feats = clf.head.pool(*clf.encoder(batch))
    for row, doc in ((1, short), (2, tiny_doc)):
        alone = clf.head.pool(*clf.encoder(doc[None]))
        torch.testing.assert_close(feats[row], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clf(batch)[1], clf(short[None])[0], rtol=1e-5, atol=1e-6)


def dropouts(model: nn.Module) -> list[float]:
    kinds = (RNNDropout, EmbeddingDropout, WeightDropout, nn.Dropout)
    return [m.p for m in model.modules() if isinstance(m, kinds)]


def test_drop_mult_scales_every_dropout():
    base_lm, half_lm = language_model(tiny()), language_model(tiny(drop_mult=0.5))
    base_c, half_c = text_classifier(tiny()), text_classifier(tiny(drop_mult=0.5))
    for a, b in ((base_lm, half_lm), (base_c, half_c)):
        pa, pb = dropouts(a), dropouts(b)
        assert len(pa) == len(pb) > 0 and all(p > 0 for p in pa)
        assert pb == pytest.approx([0.5 * p for p in pa])


def test_drop_mult_zero_makes_training_mode_deterministic():
    torch.manual_seed(0)
    x = ids(2, 11)
    lm = language_model(tiny(drop_mult=0.0))
    lm.train(), lm.reset()
    a = lm(x)
    lm.eval(), lm.reset()
    torch.testing.assert_close(a, lm(x))
    clf = text_classifier(tiny(drop_mult=0.0))
    clf.train()
    for m in clf.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eval()  # the one layer that differs by design
    b = clf(x)
    torch.testing.assert_close(b, clf.eval()(x))


def test_weight_dropout_train_vs_eval_and_raw_gets_gradients():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstm = nn.LSTM(4, 6, batch_first=True)
        plain = copy.deepcopy(lstm)
        wd = WeightDropout(lstm, 0.5)
        assert "weight_hh_l0" not in dict(wd.named_parameters()) and "weight_hh_l0_raw" in dict(wd.named_parameters())
        x = torch.randn(2, 5, 4)
        wd.train()
        y1, y2 = wd(x)[0], wd(x)[0]
        assert not torch.allclose(y1, y2)  # a fresh mask each call
        y1.sum().backward()
        assert wd.weight_hh_l0_raw.grad is not None and wd.weight_hh_l0_raw.grad.abs().sum() > 0
        wd.eval()
        e1, e2 = wd(x)[0], wd(x)[0]
        torch.testing.assert_close(e1, e2)
        torch.testing.assert_close(e1, plain(x)[0])  # eval: the raw weight as is
        copy.deepcopy(wd)  # no autograd graph left on the module


def test_state_dict_round_trip_and_save():
    torch.manual_seed(0)
    lm = language_model(tiny())
    x = ids(2, 6)
    lm.train()
    lm(x).sum().backward()  # after a training step's forward
    sd = lm.state_dict()
    assert "encoder.rnns.0.weight_hh_l0_raw" in sd and "encoder.rnns.0.module.weight_hh_l0" not in sd
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = language_model(tiny())
    other.load_state_dict(torch.load(buf))  # strict: same keys
    lm.eval(), other.eval(), lm.reset(), other.reset()
    expected = lm(x)
    torch.testing.assert_close(expected, other(x))
    # DDP's keys carry a "module." prefix; stripping it loads the same
    ddp_sd = {f"module.{k}": v for k, v in sd.items()}
    third = language_model(tiny())
    third.load_state_dict({k.removeprefix("module."): v for k, v in ddp_sd.items()})
    third.eval()
    torch.testing.assert_close(expected, third(x))


def test_weights_are_tied():
    torch.manual_seed(0)
    lm = language_model(tiny())
    emb, dec = lm.encoder.embed.emb.weight, lm.decoder.decoder.weight
    assert emb is dec and emb.data_ptr() == dec.data_ptr()
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    lm(ids(2, 5)).sum().backward()
    opt.step()
    assert lm.encoder.embed.emb.weight is lm.decoder.decoder.weight


def test_hidden_state_persists_and_reset_clears_it():
    torch.manual_seed(0)
    lm = language_model(tiny()).eval()
    x = ids(2, 5)
    first = lm(x)
    assert all(not h.requires_grad for hc in lm.encoder.hidden for h in hc)  # detached
    second = lm(x)
    assert not torch.allclose(first, second)  # continued from the first call's state
    lm.reset()
    torch.testing.assert_close(lm(x), first)
    y = ids(3, 5, seed=1)
    fresh = lm(y)  # batch size changed: starts from zeros by itself
    lm.reset()
    torch.testing.assert_close(fresh, lm(y))


def test_encoder_transfer_lm_to_classifier():
    torch.manual_seed(0)
    lm, clf = language_model(tiny()), text_classifier(tiny())
    load_encoder(clf, encoder_state(lm))
    x = ids(2, 5)
    lm.eval(), clf.eval(), lm.reset()
    torch.testing.assert_close(lm.encoder(x)[1][-1], clf.encoder(x)[0])
    with pytest.raises(ValueError, match="vocab_size"):
        load_encoder(text_classifier(tiny(vocab_size=21)), encoder_state(lm))
    with pytest.raises(ValueError, match="n_layers"):
        load_encoder(text_classifier(tiny(n_layers=3)), encoder_state(lm))


def test_layer_groups_cover_every_parameter_once():
    for model, n in ((language_model(tiny(n_layers=3)), 4), (text_classifier(tiny(n_layers=3)), 5)):
        groups = layer_groups(model)
        assert len(groups) == n and all(groups)
        flat = [id(p) for g in groups for p in g]
        assert len(flat) == len(set(flat)) == len(list(model.parameters()))
    lm = language_model(tiny())
    assert lm.encoder.embed.emb.weight in layer_groups(lm)[-1]  # tied: with the decoder, as fastai


def test_lm_learns_a_repeated_sequence(step_losses):
    torch.manual_seed(0)
    lm = language_model(tiny(emb_sz=16, n_hid=24, drop_mult=0.1))
    seq = torch.arange(2, 10).repeat(4)                     # 2 3 ... 9 2 3 ... : next token is determined
    x, y = seq[:-1].view(1, -1).repeat(4, 1), seq[1:].view(1, -1).repeat(4, 1)

    def step():
        lm.reset()
        logits, raw, dropped = lm(x, return_activations=True)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), ar_tar(raw, dropped, 2.0, 1.0)

    losses = step_losses(torch.optim.Adam(lm.parameters(), lr=3e-2), 50, step)
    assert losses[-1] < 0.2 * losses[0]


def test_classifier_learns_two_classes(step_losses):
    torch.manual_seed(0)
    clf = text_classifier(tiny(drop_mult=0.2))
    g = torch.Generator().manual_seed(0)
    docs, labels = [], []
    for i in range(16):
        n = int(torch.randint(4, 14, (1,), generator=g))
        doc = torch.randint(4, 20, (n,), generator=g)
        doc[int(torch.randint(0, n, (1,), generator=g))] = 2 + i % 2  # the class's marker token
        docs.append(doc)
        labels.append(i % 2)
    x, y = pad_first(docs), torch.tensor(labels)
    losses = step_losses(torch.optim.Adam(clf.parameters(), lr=1e-2), 30, lambda: F.cross_entropy(clf(x), y))
    assert losses[-1] < 0.5 * losses[0]
