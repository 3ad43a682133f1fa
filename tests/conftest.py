"""One Ray instance for the whole session, and generated sample data shared by tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
# Ray, Ray Data and Ray Train make their log handlers when first imported, and those handlers
# keep the sys.stderr of that moment: imported inside a test that captures output (capsys),
# they would write to that test's closed buffer ever after ("--- Logging error ---").
import ray  # noqa: F401,E402
import ray.data  # noqa: F401,E402
import ray.train  # noqa: F401,E402

from preprocessing.samples import cifar10 as cifar10_samples


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray, shared; subprocesses join it through RAY_ADDRESS."""
    import ray

    from preprocessing.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """1,200 images (1,000 train, 200 test) in fast.ai's PNG layout. Read-only for tests."""
    out = tmp_path_factory.mktemp("data") / "cifar10"
    cifar10_samples.cifar10(out, size=1200, seed=1)
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh current folder: the default cache, runs and mlruns.db land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
