"""Starting (or joining) Ray, once, the same way for every command."""
from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray. Idempotent."""
    import ray

    if ray.is_initialized():
        return
    # Ray Train V2 copies worker prints into its own log as well: each line came twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict = dict(logging_level=logging.WARNING, configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # the dashboard stays on: Ray Train's placement-group cleaner asks its State API
        # whether a killed driver's controller is gone
        ray.init(num_cpus=num_cpus, **kwargs)
    # progress bars stay (stderr); Ray Data's per-operator log lines do not help a user
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = True
    DataContext.get_current().print_on_execution_start = False


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
