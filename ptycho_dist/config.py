"""Configuration of the Ray layer: where Ray runs and how runs are stored (RayConfig).

A plain frozen dataclass validated on creation with messages naming the field, like
ptycho_torch.config (it reuses its checking machinery); the flags that set its fields (RAY_FLAGS, the
command line's and the Python API's keywords); a run YAML with a `ray:` section next to the run's
sections (`read_dist_yaml`). The sweep file (SweepConfig) is plain data too and lives in
ptycho_dist.sweeps.sweep_config.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ptycho_torch.config import (
    ConfigError,
    ConfigSection,
    RunConfig,
    config_field,
    read_yaml_mapping,
)
from ptycho_torch.config.bounded_yaml import yaml_problem


@dataclass(frozen=True)
class RayConfig(ConfigSection):
    """Ray cluster, run storage and fault tolerance for `ptycho-dist` commands."""

    section: typing.ClassVar[str] = "ray"

    address: Optional[str] = config_field(None, "None = start an embedded local Ray; 'auto' or ray://... = join a cluster "
                                      "(RAY_ADDRESS is honoured when this is None)")
    num_cpus: Optional[int] = config_field(None, "CPUs of the embedded local Ray (None = all of this machine)")
    storage_path: Optional[str] = config_field(None, "where runs and checkpoints go: a local or shared path or "
                                           "s3:// / gs:// URI (None = ./ray_runs)")
    name: Optional[str] = config_field(None, "run name under storage_path (None = train-<timestamp>)")
    max_failures: int = config_field(0, "worker-group restarts allowed; a restart resumes from the last checkpoint")
    min_workers: Optional[int] = config_field(None, "elastic training: the fewest workers to go on with when nodes leave "
                                          "(preemptible / spot nodes); the group restarts from the last checkpoint on "
                                          "the nodes left, at most --devices x --num-nodes workers (needs "
                                          "max_failures != 0); None = a fixed worker count")
    cpus_per_worker: float = config_field(1.0, "CPUs reserved by each training worker")
    gpus_per_worker: float = config_field(1.0, "GPUs reserved by each worker when the accelerator is a GPU")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = config_field(
        "PACK", "how workers are placed on nodes")
    worker_start_timeout_s: float = config_field(60.0, "fail if the worker group cannot start within this time "
                                                 "(also the longest wait for an autoscaler to add nodes)")
    poll_interval_s: float = config_field(0.5, "how often Ray Train's controller polls the workers for reports "
                                          "and failures (Ray's default 2 s makes every run end 2-4 s late)")
    autoscaling: Optional[bool] = config_field(None, "whether the cluster can grow: then a request larger than the "
                                           "nodes alive now asks the autoscaler for nodes and waits up to "
                                           "worker_start_timeout_s (None = detect a running autoscaler)")
    include_dashboard: Optional[bool] = config_field(None, "dashboard of the embedded Ray (bound to 127.0.0.1); "
                                                 "None = on (Tune needs it for clean early stopping)")
    verbose: bool = config_field(False, "show Ray's own logs (default: kept quiet)")
    ingest: Literal["auto", "sampler", "ray_data"] = config_field(
        "auto", "how train workers get their groups: 'ray_data' = streamed shards of a Ray Dataset read across the "
        "cluster (ptycho_dist.training.ingest), 'sampler' = each worker reads its DistributedSampler share of the files, "
        "'auto' = ray_data for a corpus of several scans, else sampler")

    def _check(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            self._fail("num_cpus", f"got {self.num_cpus}; must be >= 1 or null")
        if self.max_failures < -1:
            self._fail("max_failures", f"got {self.max_failures}; must be >= 0 (or -1 = unlimited)")
        if self.min_workers is not None and self.min_workers < 1:
            self._fail("min_workers", f"got {self.min_workers}; must be >= 1 (or null for a fixed worker count)")
        if self.min_workers is not None and self.max_failures == 0:
            self._fail("min_workers", "elastic training goes on after a node leaves by restarting the worker group, "
                       "which max_failures 0 forbids; set --max-failures (e.g. 3, or -1 = unlimited)")
        if self.cpus_per_worker <= 0:
            self._fail("cpus_per_worker", f"got {self.cpus_per_worker}; must be > 0")
        if self.gpus_per_worker < 0:
            self._fail("gpus_per_worker", f"got {self.gpus_per_worker}; must be >= 0")
        if self.poll_interval_s <= 0:
            self._fail("poll_interval_s", f"got {self.poll_interval_s}; must be > 0")
        if self.worker_start_timeout_s <= 0:
            self._fail("worker_start_timeout_s", f"got {self.worker_start_timeout_s}; must be > 0")


# flag -> (RayConfig field, argparse type). Every command takes the session flags (where Ray runs);
# `train` adds the run flags (storage, name, restarts, worker resources, placement, autoscaling).
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


def ray_keywords(flags: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """Python keyword -> RayConfig field for the given Ray flags (--worker-start-timeout ->
    worker_start_timeout -> worker_start_timeout_s)."""
    return {flag.lstrip("-").replace("-", "_"): name for flag, (name, _) in flags.items()}


def split_ray_section(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run sections, `ray:` section) of a run mapping."""
    data = dict(data)
    ray = data.pop("ray", None) or {}
    if not isinstance(ray, dict):
        raise ConfigError(f"{where}: ray: expected a mapping of fields, got {ray!r}")
    return data, ray


def read_dist_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a run YAML; return (run sections, `ray:` section)."""
    return split_ray_section(read_yaml_mapping(path), str(path))


def load_dist_config(path: str | Path) -> tuple[RunConfig, RayConfig]:
    """A run YAML with an optional `ray:` section -> (RunConfig, RayConfig)."""
    run, ray = read_dist_yaml(path)
    try:
        return RunConfig.from_dict(run), RayConfig.from_dict(ray)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def stored_mapping(text: str | None, where: str) -> dict[str, Any]:
    """The mapping in a stored run file (config.yaml, ray.yaml); a damaged file is one line naming it
    and the fix."""
    from ptycho_torch.config.bounded_yaml import load_bounded

    if text is None:
        return {}
    try:
        data = load_bounded(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: is not valid YAML ({yaml_problem(e)}); restore it from a backup, or delete it to "
                          "resume with the settings of --config and the flags") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}; restore it "
                          "or delete it")
    return data
