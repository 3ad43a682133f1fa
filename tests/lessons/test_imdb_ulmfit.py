"""ULMFiT (lesson 10) through the command line: imdb-lm, then imdb-clas on its encoder."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from models.awd_lstm import encoder_state
from pipelines.__main__ import main
from pipelines.core import registry
from pipelines.core.engine import plan
from pipelines.core.loop import RunSpec, run_loop
from pipelines.core.phases import Schedule
from pipelines.core.sessions import LocalSession
from preprocessing import samples
from preprocessing.samples import imdb as imdb_samples
from preprocessing.cache import Cache


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


@pytest.fixture(scope="module")
def imdb_small(tmp_path_factory) -> Path:
    """600 labelled reviews (300 train, 300 test) and 600 unlabelled ones."""
    out = tmp_path_factory.mktemp("data") / "aclImdb"
    imdb_samples.imdb(out, size=600, seed=1)
    return out


def test_registered_with_phases_of_gradual_unfreezing():
    lm, clas = registry.get("imdb-lm"), registry.get("imdb-clas")
    assert (lm.dataset, lm.metric, lm.mode) == ("imdb", "perplexity", "min")
    assert (clas.dataset, clas.metric, clas.mode) == ("imdb", "accuracy", "max")
    cfg = clas.configs["tiny"]
    phases = clas.phases(cfg)
    n = cfg.n_layers + 2
    sched = Schedule(phases, 10)
    frozen = [sched.phase_for_epoch(e).frozen for e in range(sched.total_epochs)]
    assert frozen == [tuple(range(n - 1)), tuple(range(n - 2)), ()]
    mults = phases[0].lr_mults
    assert len(mults) == n and all(abs(mults[i + 1] / mults[i] - 2.6) < 1e-9 for i in range(n - 1))
    assert set(clas.search_space(cfg)) >= {"drop_mult", "lr", "div", "pct", "lr_factor"}
    assert set(lm.search_space(lm.configs["tiny"])) >= {"drop_mult", "lr", "div", "pct"}
    # `epochs` is the whole run's: every named config trains what it says, and --epochs N
    # cuts the unfreezing stages that no longer fit (one epoch: the head alone)
    for pipe in (lm, clas):
        for name, c in pipe.configs.items():
            for epochs in (1, 2, c.epochs):
                plan(pipe, dataclasses.replace(c, epochs=epochs), 10)
    assert [p.frozen for p in clas.phases(dataclasses.replace(cfg, epochs=1))] == [tuple(range(n - 1))] * 3
    assert clas.configs["sample"].epochs == 20 and clas.configs["sample"].unfreeze_epochs == (1, 1)  # 1, 1, 18


def test_slanted_triangles_and_stage_lrs():
    """cut_div: lesson 10's use_clr=(div, cut_div) per stage (up over 1/cut_div of it, then
    down, beta1 constant); stage_lrs: each stage's peak; without them, gradual_unfreeze's 1cycles."""
    clas = registry.get("imdb-clas")
    base = dataclasses.replace(clas.configs["tiny"], epochs=5, unfreeze_epochs=(1, 1))
    assert clas.phases(dataclasses.replace(base, stage_lrs=(1, 1, 1))) == clas.phases(base)
    cfg = dataclasses.replace(base, cut_div=10, div=32, stage_lrs=(2, 1, 0.5))
    phases = clas.phases(cfg)
    n = cfg.n_layers + 2
    assert [(round(p.epochs, 6), p.lr, p.frozen) for p in phases] == [
        (0.1, (2 * cfg.lr / 32, 2 * cfg.lr), tuple(range(n - 1))), (0.9, (2 * cfg.lr, 2 * cfg.lr / 32), tuple(range(n - 1))),
        (0.1, (cfg.lr / 32, cfg.lr), tuple(range(n - 2))), (0.9, (cfg.lr, cfg.lr / 32), tuple(range(n - 2))),
        (0.3, (cfg.lr / 64, cfg.lr / 2), ()), (2.7, (cfg.lr / 2, cfg.lr / 64), ())]
    assert {p.momentum for p in phases} == {cfg.moms[0]} and {p.lr_decay for p in phases} == {"linear"}
    assert [p.frozen for p in clas.phases(dataclasses.replace(cfg, epochs=1))] == [tuple(range(n - 1))] * 2
    plan(clas, cfg, 10)
    with pytest.raises(ValueError, match="stage_lrs needs one multiplier"):
        dataclasses.replace(cfg, stage_lrs=(1, 1))
    with pytest.raises(ValueError, match="cut_div"):
        dataclasses.replace(cfg, cut_div=0.5)
    assert cfg.case == "markers"  # lesson 10's case rule by default
    with pytest.raises(ValueError, match="case must be one of"):
        dataclasses.replace(cfg, case="lower")


def test_sample_data_by_dataset_name(capsys, tmp_path):
    code, obj, _ = run_cli(capsys, "sample-data", "imdb", "--out", str(tmp_path / "a"), "--size", "20")
    assert code == 0 and obj["dataset"] == "imdb" and obj["train"] + obj["test"] == 20
    assert (tmp_path / "a" / "train" / "unsup").is_dir()


def test_bad_encoder_is_one_line_and_exit_1(capsys, imdb_small, workdir):
    code, _, err = run_cli(capsys, "run", "imdb-clas", "--data", str(imdb_small), "--config", "tiny",
                           "--set", "encoder=/no/such/encoder.pt")
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "encoder /no/such/encoder.pt: no such file" in lines[0], err
    assert "Traceback" not in err
    code, _, err = run_cli(capsys, "run", "imdb-lm", "--data", str(imdb_small), "--config", "tiny",
                           "--set", "pretrained=/no/wt103.pt")
    assert code == 1 and "pretrained /no/wt103.pt: no such file" in err and "Traceback" not in err
    # the id of another pipeline's run: which pipeline it is, not MLflow's download error
    from pipelines.core import tracking

    uri = tracking.resolve_uri(None)
    other, _ = tracking.start_run(uri, "cifar10-darknet", "not-an-lm", params={}, tags={"fastray.pipeline": "cifar10-darknet"})
    code, _, err = run_cli(capsys, "run", "imdb-clas", "--data", str(imdb_small), "--config", "tiny", "--set", f"encoder={other}")
    assert code == 1 and (f"encoder {other}: run {other} is a cifar10-darknet run, with no encoder/encoder.pt "
                          "(an encoder comes from an imdb-lm run)") in err, err


def test_classifier_shares_the_lm_tokens_and_checks_an_encoder_file_first(capsys, imdb_small, workdir, tmp_path):
    """The LM and the classifier tokenize once between them; an encoder file of another
    vocabulary fails before any work. (What the two train, from the command line: the
    ulmfit flow test in tests/core/test_flows.py.)"""
    code, p1, _ = run_cli(capsys, "preprocess", "imdb-lm", "--data", str(imdb_small), "--config", "tiny")
    assert code == 0 and p1["cache"] == "miss" and set(p1["rows"]) == {"train", "valid", "unsup"}
    code, p2, _ = run_cli(capsys, "preprocess", "imdb-clas", "--data", str(imdb_small), "--config", "tiny")
    assert code == 0 and p2["cache"] == "hit" and p2["key"] == p1["key"]

    lm = registry.get("imdb-lm")
    enc = tmp_path / "encoder.pt"
    torch.save(encoder_state(lm.build_model(lm.configs["tiny"])), enc)  # vocab_size 300
    code, _, err = run_cli(capsys, "run", "imdb-clas", "--data", str(imdb_small), "--config", "tiny",
                           "--set", f"encoder={enc}", "--set", "vocab_size=200", "--set", "sample_docs=200")
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "vocabulary has 300 tokens" in lines[0], err
    assert "Traceback" not in err and not any(workdir.glob("runs/*"))


def test_an_lm_run_of_other_tokenizer_settings_is_named_in_the_warning(tmp_path, caplog):
    """An encoder from an LM run that tokenized otherwise (here: case) loads, with a warning
    that names the setting to --set."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("imdb-lm"), tags={
        "fastray.cache_key": "lm-key", "fastray.pipeline": "imdb-lm", "fastray.name": "mylm"})
    lm, clas = registry.get("imdb-lm"), registry.get("imdb-clas")
    (tmp_path / "encoder").mkdir()
    torch.save(encoder_state(lm.build_model(lm.configs["tiny"])), tmp_path / "encoder" / "encoder.pt")
    client.log_artifact(run.info.run_id, str(tmp_path / "encoder" / "encoder.pt"), "encoder")
    for f, v in (("vocab_size", 300), ("sample_docs", 300), ("case", "markers"), ("seed", 0)):
        client.log_param(run.info.run_id, f"config.{f}", v)
    cfg = dataclasses.replace(clas.configs["tiny"], encoder=run.info.run_id, case="keep")
    with caplog.at_level("WARNING", logger="fastray"):
        clas.init_source(cfg, {"key": "clas-key"}, uri)
    warned = [r.getMessage() for r in caplog.records if "tokenized" in r.getMessage()]
    assert len(warned) == 1 and "tokenized with case=markers (--set them here too)" in warned[0], warned
    # the LM run by its --name (`fastray run imdb-lm --name mylm`, then `--set encoder=mylm`): the same
    # run, recorded by its id
    by_name = clas.init_source(dataclasses.replace(cfg, encoder="mylm"), {"key": "clas-key"}, uri)
    assert by_name == {"fastray.init": f"encoder:run:{run.info.run_id}"}
    with pytest.raises(FileNotFoundError, match="encoder nolm: no such file, and no imdb-lm run of that --name in"):
        clas.init_source(dataclasses.replace(cfg, encoder="nolm"), {"key": "clas-key"}, uri)
    # a source with a '.' or a '/' is a file: a missing one fails before tokenizing, as it did
    with pytest.raises(FileNotFoundError, match="encoder myenc.bin: no such file"):
        clas.preprocess(dataclasses.replace(cfg, encoder="myenc.bin"), tmp_path, None)


def _train_here(name: str, cfg, cache: Cache, manifest: dict) -> LocalSession:
    """One run of `name` through the engine's loop and the pipeline's hooks, in this process."""
    pipe = registry.get(name)
    spec = RunSpec(name, cfg, name, 1, 1, False, pipe.steps_per_epoch(cfg, manifest, 1), "", "", "",
                   manifest=manifest)
    session = LocalSession(pipe.datasets(cfg, cache, manifest))
    threads = torch.get_num_threads()
    try:
        run_loop(spec, session, pipe)
    finally:
        torch.set_num_threads(threads)  # the loop sets this process's, as a worker's
    return session


def test_fine_tuned_encoder_beats_random_init(tmp_path, ray_session):
    """ULMFiT's claim on a small scale: the language model learns from 600 labelled and 1,400
    unlabelled reviews, then a classifier from its encoder and one from random weights train
    with the same config, seed and batches (600 reviews; 1, 1 and 2 epochs of the unfreezing stages).
    Measured on the test reviews (400), the fine-tuned one is clearly better."""
    data = tmp_path / "aclImdb"
    samples.generate("imdb", data, size=1000, unsup=1400, test_frac=0.4, seed=3)  # the sample's reviews
    cache = Cache(tmp_path / "cache")
    lm_pipe = registry.get("imdb-lm")
    lm_cfg = dataclasses.replace(lm_pipe.configs["sample"], epochs=3)
    manifest, _ = lm_pipe.preprocess(lm_cfg, data, cache)
    assert manifest["rows"] == {"train": 600, "valid": 400, "unsup": 1400}
    lm = _train_here("imdb-lm", lm_cfg, cache, manifest)
    assert lm.reports[-1]["perplexity"] < 5
    model = lm_pipe.build_model(lm_cfg)
    model.load_state_dict(lm.state["model"])
    enc = tmp_path / "encoder.pt"
    torch.save(encoder_state(model), enc)

    clas_cfg = dataclasses.replace(registry.get("imdb-clas").configs["sample"], epochs=4, unfreeze_epochs=(1, 1), bs=16,
                                   drop_mult=0.3)  # 4 epochs: the lighter dropout fits them
    acc = {}
    for init, src in (("fine-tuned", str(enc)), ("random", "")):
        run = _train_here("imdb-clas", dataclasses.replace(clas_cfg, encoder=src), cache, manifest)
        acc[init] = [round(r["accuracy"], 4) for r in run.reports]
    print(f"\nLM perplexity {lm.reports[-1]['perplexity']:.3f}; classifier accuracy on the 400 test reviews "
          f"after each epoch: fine-tuned encoder {acc['fine-tuned']}, random init {acc['random']}")
    assert acc["fine-tuned"][-1] >= acc["random"][-1] + 0.08, acc
