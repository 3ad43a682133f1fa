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
