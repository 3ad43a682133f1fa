"""What an experiment carries for MLflow's UI: the model-training view, and a runs-table
view that shows and sorts by the pipeline's headline metric."""
import json

from pipelines.core import tracking


def test_a_new_experiment_opens_on_its_headline_metric(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = tracking._client(uri)
    for name, metric, ascending in (("cifar10-darknet", "accuracy", False), ("imdb-lm", "perplexity", True)):
        tags = client.get_experiment(tracking.experiment_id(uri, name)).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        view = json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
        assert view["orderByKey"] == f"metrics.`{metric}`" and view["orderByAsc"] is ascending
        assert view["selectedColumns"][0] == f"metrics.`{metric}`"


def test_an_older_experiment_gets_the_view_and_keeps_its_own_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = tracking._client(uri)
    exp = client.create_experiment("pascal-ssd", tags={"team": "vision"})  # as fastray before the view made it
    assert tracking.experiment_id(uri, "pascal-ssd") == exp
    tags = client.get_experiment(exp).tags
    assert tags["team"] == "vision" and json.loads(tags["mlflow.sharedViewState.fastray"])["orderByKey"] == "metrics.`mAP`"


def test_a_run_stopped_inside_ends_if_stopped_is_killed_or_failed_never_running(tmp_path):
    """Ctrl-C anywhere between a run's creation and its end (the MLflow run, the header, Ray
    Train's start) leaves it KILLED, an error FAILED: a RUNNING run would stay so forever."""
    import pytest

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = tracking._client(uri)
    for stop, status in ((KeyboardInterrupt, "KILLED"), (ValueError, "FAILED")):
        run_id, _ = tracking.start_run(uri, "cifar10-darknet", f"r-{status}", params={}, tags={})
        run_log = tracking.RunLogger(uri, run_id)
        with pytest.raises(stop):
            with run_log.ends_if_stopped():
                raise stop()
        assert client.get_run(run_id).info.status == status
    run_id, _ = tracking.start_run(uri, "cifar10-darknet", "done", params={}, tags={})
    with tracking.RunLogger(uri, run_id).ends_if_stopped():
        pass
    assert client.get_run(run_id).info.status == "RUNNING"  # the caller finishes a run that went through


def test_curves_on_different_scales_get_panels_of_their_own(tmp_path, monkeypatch):
    """super-res logs its MSE (hundredths) beside its PSNR (tens of dB): on one axis the MSE
    curves were flat lines at 0. Each panel now holds curves within 30x of each other."""
    from pipelines.core import plots

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id, _ = tracking.start_run(uri, "super-res", "r", params={}, tags={})
    log = tracking.RunLogger(uri, run_id)
    for step, (mse, psnr, gain, loss) in enumerate([(0.03, 11.6, -11.2, 0.031), (0.02, 17.1, -5.9, 0.066)], 1):
        log.metrics({"valid_mse_x2": mse, "valid_mse_x4": mse * 2, "psnr": psnr, "valid_psnr_gain": gain,
                     "train_loss": loss, "sched_lr": 1e-4}, step=step)
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path, title="": drawn.setdefault("fig", fig) and path)
    assert tracking.plot_curves(log, tmp_path / "curves.png") is not None
    panels = [sorted(t for t in ax.get_legend_handles_labels()[1]) for ax in drawn["fig"].axes]
    assert panels == [["train_loss"], ["valid_mse_x2", "valid_mse_x4"], ["psnr", "valid_psnr_gain"]]
    assert [ax.get_ylabel() for ax in drawn["fig"].axes] == ["loss", "metric", "metric"]
    # within [0, 1] is one axis however small (text-clas's per-label thresholds, 0.002 to 0.5),
    # the rest by magnitude (perplexity 900 apart from a loss of 4)
    assert tracking.scale_groups({"auc": [0.4, 0.97], "thr": [0.002, 0.02], "f1": [float("nan"), 0.5]}) == [
        ["auc", "thr", "f1"]]
    assert tracking.scale_groups({"ppl": [900.0, 40.0], "acc": [0.3], "gain": [-2.0, -6.0], "big": [5e4]}) == [
        ["acc"], ["big"], ["ppl"], ["gain"]]
    # losses by magnitude only: a train loss above 1 keeps its validation loss below 1 beside it;
    # a diverged (all-NaN) curve joins the first panel, not one of its own
    nan = float("nan")
    assert tracking.scale_groups({"train_loss": [1.5, 0.6], "valid_loss": [0.9, nan], "x_loss": [nan]}, unit=False) == [
        ["train_loss", "valid_loss", "x_loss"]]
    # only states logged (frozen_groups, total_seconds): no plot, no error
    run2, _ = tracking.start_run(uri, "super-res", "r2", params={}, tags={})
    tracking.RunLogger(uri, run2).metrics({"frozen_groups": 3, "total_seconds": 9.0}, step=1)
    assert tracking.plot_curves(tracking.RunLogger(uri, run2), tmp_path / "none.png") is None


def test_a_run_is_found_by_its_id_or_its_name(tmp_path):
    """What `fastray translate RUN` takes: the run id, or the --name (its pipeline's newest
    run of that name)."""
    import pytest

    from pipelines.__main__ import main

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ids = {}
    for name in ("plain", "dé jà vu", "x%_y"):
        ids[name], _ = tracking.start_run(uri, "translate", name, params={},
                                          tags={"fastray.pipeline": "translate", "fastray.name": name})
    other, _ = tracking.start_run(uri, "cifar10-darknet", "plain", params={},
                                  tags={"fastray.pipeline": "cifar10-darknet", "fastray.name": "plain"})
    for name, run_id in ids.items():
        assert tracking.run_by_id_or_name(uri, name, "translate").info.run_id == run_id
        assert tracking.run_by_id_or_name(uri, run_id, "translate").info.run_id == run_id
    assert tracking.run_by_id_or_name(uri, "plain", "cifar10-darknet").info.run_id == other
    for ref in ("nope", "it's"):
        with pytest.raises(ValueError, match="neither a run id nor the --name of any translate run"):
            tracking.run_by_id_or_name(uri, ref, "translate")
    # such a name is refused where runs get their names: a quote broke MLflow's filter with a
    # traceback, '/' or '..' put the run folder elsewhere
    for bad in ("it's", 'say "hi"', "a/b", "..", ""):
        with pytest.raises(SystemExit) as usage:
            main(["run", "cifar10-darknet", "--name", bad])
        assert usage.value.code == 2
