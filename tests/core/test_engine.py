"""The engine's checkpoints: loaded without pickled code, and refused when they do not fit."""
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines.core.storage import CHECKPOINT_FILE, EPOCH_FILE, check_resumable, load_state


def _save(folder: Path, state: dict, epoch: int) -> None:
    folder.mkdir(parents=True)
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / EPOCH_FILE).write_text(str(epoch))


def test_checkpoint_of_another_pipeline_or_shape_is_refused(tmp_path):
    model = nn.Linear(4, 2)
    run = tmp_path / "runs" / "r"
    _save(run / "checkpoint_a", {"pipeline": "imdb-lm", "model": model.state_dict(), "epoch": 1}, 1)
    with pytest.raises(ValueError, match="from pipeline 'imdb-lm', not 'cifar10-darknet'"):
        check_resumable("cifar10-darknet", model, run, "r")
    check_resumable("imdb-lm", model, run, "r")  # the same pipeline and shapes: fine

    # the newest epoch decides: a wider layer no longer fits
    _save(run / "checkpoint_b", {"pipeline": "imdb-lm", "model": nn.Linear(4, 3).state_dict(), "epoch": 2}, 2)
    with pytest.raises(ValueError, match=r"does not fit this config .*weight \(3, 4\) in the checkpoint, \(2, 4\) now"):
        check_resumable("imdb-lm", model, run, "r")
    check_resumable("imdb-lm", model, tmp_path / "runs" / "none", "none")  # no run yet: nothing to check


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    torch.save({"model": {}, "x": _Evil()}, folder / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_state(folder)
