"""fastray's one logger: `logging.getLogger("fastray")`, plain lines on stderr."""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("fastray")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest swaps it per test)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(level: int = logging.INFO) -> logging.Logger:
    """Plain messages on stderr, once per process (the CLI, each Ray Train worker, each trial)."""
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
