"""The main job as typed: `fastray run cifar10-darknet` with no data reaches its target."""
import json

from mlflow.tracking import MlflowClient

from pipelines.__main__ import main


def test_main_job_as_typed_reaches_90_percent(capsys, workdir, ray_session):
    code = main(["run", "cifar10-darknet"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "no cifar10 data in data/cifar10/: using generated sample data" in err
    assert "using the 'sample' config" in err
    obj = json.loads(out.strip().splitlines()[-1])
    assert obj["metrics"]["accuracy"] >= 0.90, obj
    run = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}").get_run(obj["run_id"])
    assert run.data.tags["fastray.config"] == "sample"
    assert run.data.metrics["accuracy"] == obj["metrics"]["accuracy"]
    # the sample data was generated in the real layout, where the next run finds it again
    assert (workdir / "data" / "samples" / "cifar10" / "train" / "airplane").is_dir()
