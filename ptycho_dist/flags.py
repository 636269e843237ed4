"""The one place that declares the Ray flags of `ptycho-dist` commands (each sets a RayConfig field).

Every command takes the session flags (where Ray runs: `--address`, `--num-cpus`,
`--worker-start-timeout`); `train` adds the run flags (storage, name, restarts, worker resources,
placement, autoscaling). Parsed values land in `args` as `ray:<field>` and `ray_overrides(args)`
collects the ones given (plus `-v`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ptycho_dist.config import RayConfig

# flag -> (RayConfig field, argparse type)
SESSION_FLAGS: dict[str, tuple[str, Any]] = {
    "--address": ("address", str),
    "--num-cpus": ("num_cpus", int),
    "--worker-start-timeout": ("worker_start_timeout_s", float),
}
RUN_FLAGS: dict[str, tuple[str, Any]] = {
    "--storage-path": ("storage_path", str),
    "--name": ("name", str),
    "--max-failures": ("max_failures", int),
    "--min-workers": ("min_workers", int),
    "--cpus-per-worker": ("cpus_per_worker", float),
    "--gpus-per-worker": ("gpus_per_worker", float),
    "--placement-strategy": ("placement_strategy", str.upper),
    "--autoscaling": ("autoscaling", str),  # true/false, checked by RayConfig
    "--ingest": ("ingest", str),
    "--poll-interval": ("poll_interval_s", float),
}
RAY_FLAGS = {**SESSION_FLAGS, **RUN_FLAGS}


def add_ray_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, Any]] = SESSION_FLAGS) -> None:
    """Add `flags` in a "Ray" group, each documented with its RayConfig field and default."""
    group = parser.add_argument_group("Ray (the `ray:` section of a run config)")
    docs, defaults = RayConfig.field_docs(), RayConfig().to_dict()
    for flag, (name, kind) in flags.items():
        group.add_argument(flag, dest="ray:" + name, type=kind, default=None, metavar=name.upper(),
                           help=f"{docs[name]} (sets ray.{name}; default: {defaults[name]!r})")


def ray_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The RayConfig fields given on the command line (and verbose from -v)."""
    out = {k[len("ray:"):]: v for k, v in vars(args).items() if k.startswith("ray:") and v is not None}
    if getattr(args, "verbose", False):
        out["verbose"] = True
    return out


def ray_config_from_args(args: argparse.Namespace) -> RayConfig:
    return RayConfig.from_dict(ray_overrides(args))
