"""Starting (or joining) Ray, once, the same way for every command."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


LOG_FILE_ENV = "FASTRAY_LOG_FILE"  # set: Ray's and MLflow's own lines go to this file, not the terminal
ROUTED = ("ray", "mlflow", "alembic", "py.warnings")  # the loggers whose lines are internals


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray. Idempotent. With
    $FASTRAY_LOG_FILE set, the workers' output and Ray's own log lines go to that file."""
    import ray

    if ray.is_initialized():
        return
    # Ray Train V2 copies worker prints into its own log as well: each line came twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Ray Train's controller polls its workers every 2 s, so a run's end was seen up to 2 s
    # late (a tiny run's tenth); each poll is one status call per worker
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    log_file = os.environ.get(LOG_FILE_ENV)
    if log_file:
        import ray.data  # noqa: F401  (configures its loggers on import: route them too)
    route_logs(log_file)
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict = dict(logging_level=logging.WARNING, configure_logging=not log_file, log_to_driver=not log_file)
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:  # something listens there, but not a Ray that lets us in
            raise ValueError(f"RAY_ADDRESS={address}: {str(e).splitlines()[0]}; {_NO_RAY_HINT}") from None
    else:
        # a Ray of this machine alone has no node to lose: no preemption watcher (an actor, so
        # a process that imports Ray Train, on every run)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # the dashboard stays on: Ray Train's placement-group cleaner asks its State API
        # whether a killed driver's controller is gone
        # num_cpus (the tests'): a Ray of its own, even where another one runs on this machine
        ray.init(address="local" if num_cpus else None, num_cpus=num_cpus, **kwargs)
    route_logs(log_file)
    # progress bars on the terminal unless quiet; Ray Data's per-operator log lines do not help a user
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = not log_file
    DataContext.get_current().print_on_execution_start = False


_NO_RAY_HINT = "start one (ray start --head) or unset RAY_ADDRESS for a local Ray"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A RAY_ADDRESS of host:port (or ray://host:port) that nothing listens on is a one-line
    error within seconds: ray.init retries each of its 20 attempts for as long as the network
    lets it (10 minutes and counting on 127.0.0.1:1), then ends in a traceback."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if not m:  # "auto" and the like: Ray resolves them
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({e.strerror or e}); "
                         f"{_NO_RAY_HINT}") from None


_handlers: dict[str, logging.Handler] = {}


class _LazyFileHandler(logging.FileHandler):
    """A log file (and its folder) made when the first line comes: a run refused before any
    work leaves nothing behind."""

    def __init__(self, path: str):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def route_logs(path: str | None) -> None:
    """Send the terminal lines of Ray's, Ray Data's, Ray Train's, Tune's and MLflow's loggers
    (and Python warnings) to the file `path` instead; None leaves them as they are."""
    if not path:
        return
    if path not in _handlers:
        handler = _LazyFileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _handlers[path] = handler
    handler = _handlers[path]
    logging.captureWarnings(True)
    loggers = [logging.getLogger(n) for n in ROUTED]
    loggers += [lg for n, lg in list(logging.root.manager.loggerDict.items())
                if isinstance(lg, logging.Logger) and n.startswith(tuple(f"{r}." for r in ROUTED))]
    for lg in loggers:  # each gets the file itself: ray.init() empties the "ray" logger's handlers
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):  # the terminal
                lg.removeHandler(h)
        if handler not in lg.handlers:
            lg.addHandler(handler)
        lg.propagate = False


def check_local_room(workers: int, gpus_each: float = 0.0, *, workers_flag: str = "--num-workers",
                     gpu_flag: str = "--use-gpu") -> None:
    """Workers that this machine's own Ray (no RAY_ADDRESS) cannot hold would wait for nodes
    that never come: refuse them in one line, before any work. On a cluster an autoscaler may
    add the nodes, so nothing is refused there."""
    if os.environ.get("RAY_ADDRESS"):
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        cpus, gpus = cluster_cpus(), cluster_gpus()
    else:  # the Ray that would start here
        cpus, gpus = os.cpu_count() or 1, 0
        if gpus_each > 0:
            import torch

            gpus = torch.cuda.device_count()
    if workers > cpus:
        raise ValueError(f"{workers_flag} {workers}: this machine's Ray has {cpus} CPU(s), one a worker at least; "
                         "use fewer workers, or a cluster (RAY_ADDRESS)")
    if gpus_each > 0 and gpus < workers * gpus_each:
        raise ValueError(f"{gpu_flag} with {workers} worker(s), but this machine has {gpus} GPU(s)")


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def worker_cpus(workers: int) -> int:
    """CPUs for each of `workers` workers: the most with which all of them fit on the nodes
    as they are, a worker on one node. A share of the cluster's total would ask one worker
    of a 2 + 1 CPU cluster for 3 CPUs, which no node has: Ray waits for it forever."""
    import ray

    nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    for cpus in range(max(1, sum(nodes) // max(1, workers)), 0, -1):
        if sum(c // cpus for c in nodes) >= workers:
            return cpus
    return 1  # not even one CPU each now: the workers wait for nodes (an autoscaler's)


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
