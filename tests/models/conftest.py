"""What the model tests share: a few optimizer steps that should make a loss fall."""
from __future__ import annotations

from typing import Callable

import pytest
import torch


def _step_losses(opt: torch.optim.Optimizer, steps: int, step_loss: Callable) -> list[float]:
    """`steps` optimizer steps, each on step_loss() (a forward pass): the loss of each step.
    step_loss may return (loss, penalty): the penalty (a regularizer) is minimised with the
    loss but not recorded."""
    losses = []
    for _ in range(steps):
        out = step_loss()
        loss, penalty = out if isinstance(out, tuple) else (out, None)
        opt.zero_grad()
        (loss if penalty is None else loss + penalty).backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def step_losses() -> Callable[..., list[float]]:
    """step_losses(opt, steps, step_loss) -> [loss of each step]."""
    return _step_losses
