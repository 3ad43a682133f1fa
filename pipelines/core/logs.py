"""fastray's one logger, `logging.getLogger("fastray")`: what a user reads on stderr.

On the driver it writes plain lines to stderr. A Ray Train worker sends its records to the
driver through a Ray queue (not through Ray's log forwarding, which prefixes every line
and brings every internal line along); the driver prints them, and draws the epoch's
progress bar when stderr is a terminal. Ray's, Ray Data's, Ray Train's and MLflow's own
lines go to the run folder's log file (`internals_to`), or stay on stderr with -v.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("fastray")

_sink: Any = None  # the run's Ray queue, in a worker that sends its records to the driver


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


class _ToQueue(logging.Handler):
    """A worker's records, formatted, put on the driver's queue (dropped if it is gone)."""

    def __init__(self, queue: Any):
        super().__init__()
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait((record.levelno, self.format(record), getattr(record, "progress", None)))
        except Exception:  # the driver ended: nothing to tell
            pass


def setup(level: int = logging.INFO, queue: Any = None) -> logging.Logger:
    """Plain messages on stderr, or on `queue` to the driver (a Ray Train worker)."""
    global _sink
    logger.handlers = [h for h in logger.handlers if not isinstance(h, (_Stderr, _ToQueue))]
    handler: logging.Handler = _ToQueue(queue) if queue is not None else _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    _sink = queue
    logger.setLevel(level)
    logger.propagate = False
    return logger


def progress(**fields: Any) -> None:
    """A progress update for the driver's bar (only where the driver listens)."""
    if _sink is not None:
        logger.info("", extra={"progress": fields})


def verbose() -> bool:
    return os.environ.get("FASTRAY_VERBOSE") == "1"


@contextlib.contextmanager
def internals_to(path: Path | None, mlflow: bool = True):
    """Within it, Ray's, Ray Data's, Ray Train's, Tune's and MLflow's own lines (and the
    workers' output) go to the file `path`, not the terminal; with -v they stay."""
    from preprocessing.runtime import LOG_FILE_ENV, route_logs

    if path is None or verbose():
        yield
        return
    if mlflow:
        import mlflow  # noqa: F401  (configures its loggers on import: route them too)
    before = os.environ.get(LOG_FILE_ENV)
    os.environ[LOG_FILE_ENV] = str(path)
    route_logs(str(path))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOG_FILE_ENV, None)
        else:
            os.environ[LOG_FILE_ENV] = before


class Relay:
    """On the driver, while the workers train: a Ray queue the workers log to, and a thread
    that prints what arrives (the bar redraws in place on a terminal, plain lines elsewhere)."""

    def __init__(self):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.tty = sys.stderr.isatty()
        self._bar = ""
        self._thread = threading.Thread(target=self._pump, name="fastray-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:  # one call that waits for the next line: no polling (close() sends None)
            try:
                item = self.queue.get(block=True)
            except Exception:  # the queue is gone
                return
            if item is None:
                return
            self._show(*item)

    def _show(self, level: int, msg: str, prog: dict | None) -> None:
        if prog is not None:
            if self.tty:
                self._bar = bar(**prog)
                sys.stderr.write("\r" + self._bar + "\x1b[K")
                sys.stderr.flush()
            return
        if self._bar:  # a line under the bar: clear it first
            sys.stderr.write("\r\x1b[K")
            self._bar = ""
        logger.log(level, msg)

    def close(self) -> None:
        """Print what the workers sent, then end the thread and the queue. A worker's put
        returns once the line is queued, so every line of a finished run is ahead of None."""
        with contextlib.suppress(Exception):
            self.queue.put(None)
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # a pump that ended early (the queue failed) left these
            while (item := self.queue.get_nowait()) is not None:
                self._show(*item)
        if self._bar:
            sys.stderr.write("\r\x1b[K")
        with contextlib.suppress(Exception):
            self.queue.shutdown()


def bar(name: str, epoch: int, epochs: int, batch: int, batches: int, seen: int, seconds: float,
        loss: float | None = None, width: int = 24) -> str:
    """[name] epoch 3/12 [#########---------------] 120/250 410 ex/s loss 1.234 ETA 0:12"""
    done = int(width * batch / max(1, batches))
    rate = seen / max(seconds, 1e-9)
    eta = seconds / max(batch, 1) * (batches - batch)
    loss_s = f" loss {loss:.4f}" if loss is not None else ""
    return (f"[{name}] epoch {epoch}/{epochs} [{'#' * done}{'-' * (width - done)}] {batch}/{batches} "
            f"{rate:.0f} ex/s{loss_s} ETA {int(eta // 60)}:{int(eta % 60):02d}")


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{seconds:.1f} s"


