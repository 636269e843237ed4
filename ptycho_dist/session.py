"""Start or join Ray, quietly, and always let go of what we started.

`ray_session(config)` is a context manager: with `address` None (and no RAY_ADDRESS) it starts an
embedded local Ray with this machine's CPUs, dashboard on 127.0.0.1; otherwise it connects to the
cluster. On exit it shuts Ray down only if it started or connected it (an already initialised Ray,
e.g. a test fixture's, is left alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from ptycho_dist.config import RayConfig

log = logging.getLogger("ptycho_dist")


def quiet_ray_environment(verbose: bool = False) -> None:
    """Environment defaults that keep Ray's console output readable (set before ray.init)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


@contextlib.contextmanager
def ray_session(config: RayConfig, **init_kwargs: Any) -> Iterator[dict[str, Any]]:
    """Yield Ray's cluster resources inside an initialised Ray."""
    import ray

    quiet_ray_environment(config.verbose)
    if ray.is_initialized():
        yield cluster_resources()
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if config.verbose else logging.WARNING,
        "log_to_driver": True,
        "configure_logging": True,
    }
    if address:
        kwargs["address"] = address
        where = f"cluster at {address}"
    else:
        dashboard = True if config.include_dashboard is None else config.include_dashboard
        kwargs.update(num_cpus=config.num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1")
        where = "embedded local Ray"
    kwargs.update(init_kwargs)
    ray.init(**kwargs)
    try:
        resources = cluster_resources()
        log.info("%s: %g CPUs, %g GPUs", where, resources.get("CPU", 0), resources.get("GPU", 0))
        yield resources
    finally:
        ray.shutdown()
