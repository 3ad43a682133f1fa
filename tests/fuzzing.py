"""What the property-based tests share: hypothesis settings, a scratch folder, a file writer.

Runs are derandomized (the same examples every run, so CI is repeatable); set
FASTRAY_FUZZ_EXAMPLES=500 to explore that many fresh random examples per test.

`scratch` is a fixture: a test module imports it by name to use it (module-scoped, as
hypothesis runs a test's examples inside one call of the test function)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=int(os.environ.get("FASTRAY_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize="FASTRAY_FUZZ_EXAMPLES" not in os.environ, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_file(folder: Path, name: str, data: bytes) -> Path:
    """folder/name holding data (folder made if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(data)
    return p
