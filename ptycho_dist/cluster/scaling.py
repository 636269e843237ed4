"""The trainer section + RayConfig -> Ray Train's ScalingConfig, RunConfig, CheckpointConfig, FailureConfig.

Pure functions of plain data (no worker is started), so a bad request fails in the driver with one
message before Ray reserves anything: `plan_scaling` checks the request against the cluster's
resources (`ClusterResources.from_ray()`, or a hand-written one in tests) and collects every problem.

Mapping (SPEC 6):
    workers             = trainer.devices * trainer.num_nodes   (one process per GPU or CPU slot)
    use_gpu             = accelerator gpu/cuda, or 'auto' on a cluster that has GPUs
    resources_per_worker = {CPU: ray.cpus_per_worker, GPU: ray.gpus_per_worker if use_gpu}
    placement_strategy  = ray.placement_strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)
    strategy            'auto' with 1 worker -> Lightning's single-device strategy (no DDP wrapper),
                        'auto' with more, or 'ddp' -> RayDDPStrategy, 'fsdp' -> RayFSDPStrategy,
                        'deepspeed' -> RayDeepSpeedStrategy (needs the deepspeed package)
    CheckpointConfig    num_to_keep = checkpoint.save_top_k (-1 -> keep all), scored by the monitored
                        metric in checkpoint.mode order; Ray always keeps the latest one as well
    FailureConfig       max_failures = ray.max_failures, controller_failure_limit = 0
    elastic             ray.min_workers set -> ScalingConfig(num_workers=(min_workers, workers)): Ray Train
                        starts as many workers as fit (at least min), and after a node leaves restarts the
                        group on the nodes left from the latest checkpoint (each restart counts against
                        max_failures); the per-worker batch stays, so the global batch follows the workers
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ptycho_dist.cluster.run_files import storage_path
from ptycho_dist.config import RayConfig
from ptycho_torch.config import ConfigError, RunConfig, TrainerConfig

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
_EPS = 1e-9  # resource arithmetic tolerance (Ray resources are floats)


@dataclass(frozen=True)
class ClusterResources:
    """Logical resources Ray can schedule: totals and one mapping per alive node ({'CPU': 2.0, ...})."""

    total: Mapping[str, float]
    nodes: tuple[Mapping[str, float], ...]

    @classmethod
    def from_ray(cls) -> "ClusterResources":
        """Read the connected Ray cluster (`ray.cluster_resources()` and `ray.nodes()`)."""
        import ray

        nodes = tuple(dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", False))
        return cls(dict(ray.cluster_resources()), nodes)

    @classmethod
    def single_node(cls, cpus: float, gpus: float = 0.0) -> "ClusterResources":
        node = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
        return cls(dict(node), (node,))

    @property
    def cpus(self) -> float:
        return float(self.total.get("CPU", 0.0))

    @property
    def gpus(self) -> float:
        return float(self.total.get("GPU", 0.0))


@dataclass(frozen=True)
class ScalingPlan:
    """What the Ray run will reserve and how each worker's Trainer is set up."""

    num_workers: int
    use_gpu: bool
    accelerator: str  # 'gpu' or 'cpu': the Lightning accelerator inside each worker
    strategy: str  # 'single' (one worker, no DDP wrapper), 'ddp', 'fsdp' or 'deepspeed'
    cpus_per_worker: float
    gpus_per_worker: float
    placement_strategy: str
    min_workers: int | None = None  # elastic: the fewest workers to train on (None = exactly num_workers)

    @property
    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res

    def summary(self) -> dict[str, Any]:
        """What Ray made of the trainer section (ray.yaml's `scaling:`, for reading only): trainer.devices x
        num_nodes became this many Ray workers, each a Lightning Trainer on one device (devices=1 per worker)."""
        return {"workers": self.num_workers, "min_workers": self.min_workers, "trainer_devices_per_worker": 1,
                "accelerator": self.accelerator, "strategy": self.strategy,
                "resources_per_worker": dict(self.resources_per_worker), "placement_strategy": self.placement_strategy}

    @property
    def torch_threads(self) -> int:
        """Intra-op threads per worker: the CPUs it reserved (at least 1)."""
        return max(1, int(self.cpus_per_worker + _EPS))

    def scaling_config(self) -> Any:
        from ray.train import ScalingConfig

        workers = (self.min_workers, self.num_workers) if self.min_workers is not None else self.num_workers
        return ScalingConfig(num_workers=workers, use_gpu=self.use_gpu,
                             resources_per_worker=self.resources_per_worker,
                             placement_strategy=self.placement_strategy)


def num_workers(trainer: TrainerConfig) -> int:
    """Ray workers = devices per node x nodes; 'auto' devices is refused (Ray needs a number)."""
    if trainer.devices == "auto":
        raise ConfigError("trainer.devices: 'auto' cannot be used with Ray (it would mean one worker per "
                          "visible device of the driver); give an explicit --devices (workers per node)")
    return int(trainer.devices) * trainer.num_nodes


def fit_count(available: Mapping[str, float], need: Mapping[str, float]) -> int:
    """How many units needing `need` ({'CPU': 1, 'GPU': 0.5}) fit in `available` (a node's or the
    cluster's resources): the one cluster-fit calculation of train workers, sweep trials and
    inference actors. A unit that needs nothing fits without bound (a large number)."""
    counts = [math.floor(available.get(k, 0.0) / v + _EPS) for k, v in need.items() if v > 0]
    return min(counts) if counts else 10**6


GpuRequest = Any  # float >= 0 GPUs per actor, or the string "auto"


def gpus_per_actor(asked: GpuRequest, resources: ClusterResources) -> float:
    """GPUs per inference actor: 'auto' = one GPU each when the cluster has a whole GPU (the network on
    CUDA), else 0 (CPU); a number is taken as given (checked >= 0, and against the cluster by
    `actor_pool_size`)."""
    if isinstance(asked, str):
        if asked.strip().lower() != "auto":
            try:
                asked = float(asked)
            except ValueError:
                raise ConfigError(f"--num-gpus-per-actor: got {asked!r}; give auto or a number >= 0") from None
        else:
            return 1.0 if resources.gpus >= 1 else 0.0
    value = float(asked)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--num-gpus-per-actor: got {asked!r}; give auto or a number >= 0 (0 = CPU)")
    return value


def actor_pool_size(resources: ClusterResources, asked: int | None, cpus: float, gpus: float) -> int:
    """Inference actors of (cpus, gpus) each: `asked`, checked against the nodes, or as many as fit
    (an actor pool that cannot be placed waits forever in Ray, so it is refused here)."""
    if gpus > 0 and resources.gpus < gpus:
        raise ConfigError(f"--num-gpus-per-actor {gpus:g}: the Ray cluster has {resources.gpus:g} GPUs; use 0 on CPU")
    fits = sum(fit_count(node, {"CPU": cpus, "GPU": gpus}) for node in resources.nodes)
    if asked is None:
        return max(1, min(fits, 10**6))
    if asked < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {asked}")
    if asked > fits:
        raise ConfigError(f"--concurrency {asked} actors x ({cpus:g} CPU, {gpus:g} GPU) do not fit the Ray "
                          f"cluster ({resources.cpus:g} CPUs, {resources.gpus:g} GPUs); lower --concurrency "
                          "or --num-cpus-per-actor")
    return asked


def _request(trainer: TrainerConfig, ray_config: RayConfig,
             resources: ClusterResources | None) -> tuple[ScalingPlan, list[str]]:
    """The plan and the problems that do not depend on where workers go (None = cluster unknown)."""
    problems: list[str] = []
    try:
        workers = num_workers(trainer)
    except ConfigError as e:
        problems.append(str(e))
        workers = trainer.num_nodes
    acc = trainer.accelerator
    if acc == "mps":
        problems.append("trainer.accelerator: 'mps' is not supported with Ray; use --accelerator cpu")
    wants_gpu = acc in ("gpu", "cuda")
    gpus = resources.gpus if resources is not None else 0.0
    if wants_gpu and resources is not None and gpus <= 0:
        problems.append(f"trainer.accelerator: {acc!r} requested but the Ray cluster has no GPUs "
                        f"({resources.cpus:g} CPUs, 0 GPUs); use --accelerator cpu (or auto)")
    use_gpu = wants_gpu or (acc == "auto" and gpus > 0)
    if use_gpu and ray_config.gpus_per_worker <= 0:
        problems.append(f"ray.gpus_per_worker: {ray_config.gpus_per_worker:g} with a GPU accelerator; "
                        "set --gpus-per-worker > 0 (e.g. 1) or use --accelerator cpu")
    strategy = trainer.strategy if trainer.strategy != "auto" else "single" if workers == 1 else "ddp"
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append("trainer.strategy: 'deepspeed' needs the deepspeed package on the driver and "
                        "every worker (pip install deepspeed); or use --strategy ddp or fsdp")
    if ray_config.min_workers is not None and ray_config.min_workers > workers:
        problems.append(f"ray.min_workers: {ray_config.min_workers} is more than the {workers} workers asked "
                        f"(--devices {trainer.devices} x --num-nodes {trainer.num_nodes}); give at most {workers}")
    plan = ScalingPlan(workers, use_gpu, "gpu" if use_gpu else "cpu", strategy,
                       float(ray_config.cpus_per_worker), float(ray_config.gpus_per_worker),
                       ray_config.placement_strategy, ray_config.min_workers)
    return plan, problems


def check_request(trainer: TrainerConfig, ray_config: RayConfig) -> None:
    """The checks that need no cluster (devices='auto', mps, deepspeed missing): run them before
    starting Ray, so such mistakes fail in well under a second."""
    _, problems = _request(trainer, ray_config, None)
    if problems:
        raise ConfigError("; ".join(problems))


def plan_scaling(trainer: TrainerConfig, ray_config: RayConfig,
                 resources: ClusterResources) -> ScalingPlan:
    """Validate the request against `resources` and return the plan; raise ConfigError listing every
    problem (which flag to change, what was asked, what the cluster has)."""
    plan, problems = _request(trainer, ray_config, resources)
    if not problems:
        problems = _placement_problems(plan, trainer, resources)
    if problems:
        raise ConfigError("; ".join(problems))
    return plan


def _placement_problems(plan: ScalingPlan, trainer: TrainerConfig,
                        resources: ClusterResources) -> list[str]:
    n = plan.num_workers if plan.min_workers is None else plan.min_workers  # elastic: the fewest must fit now
    ask = (f"{n} workers (--devices {trainer.devices} x --num-nodes {trainer.num_nodes})" if plan.min_workers is None
           else f"{n} workers (--min-workers)")
    problems = []
    need_cpu = n * plan.cpus_per_worker
    if need_cpu > resources.cpus + _EPS:
        problems.append(f"{ask} x {plan.cpus_per_worker:g} CPUs each (--cpus-per-worker) = {need_cpu:g} CPUs, "
                        f"but the Ray cluster has {resources.cpus:g} CPUs; lower --devices, --num-nodes or "
                        "--cpus-per-worker (or give the embedded Ray more with --num-cpus)")
    if plan.use_gpu:
        need_gpu = n * plan.gpus_per_worker
        if need_gpu > resources.gpus + _EPS:
            problems.append(f"{ask} x {plan.gpus_per_worker:g} GPUs each = {need_gpu:g} GPUs, but the Ray "
                            f"cluster has {resources.gpus:g} GPUs; lower --devices or --num-nodes")
    if problems:
        return problems
    slots = [min(fit_count(node, plan.resources_per_worker), n) for node in resources.nodes]
    fits = {"PACK": sum(slots), "SPREAD": sum(slots), "STRICT_PACK": max(slots, default=0),
            "STRICT_SPREAD": sum(1 for s in slots if s > 0)}[plan.placement_strategy]
    if fits < n:
        per_node = ", ".join(f"{{{', '.join(f'{k}: {node.get(k, 0):g}' for k in plan.resources_per_worker)}}}"
                             for node in resources.nodes)
        problems.append(f"{ask} with {plan.resources_per_worker} each cannot be placed "
                        f"({plan.placement_strategy}): only {fits} fit on the nodes [{per_node}]; "
                        "lower --devices/--num-nodes or --cpus-per-worker, or change --placement-strategy")
    return problems


# ------------------------------------------------------------------ clusters that grow

AUTOSCALER_V1_STATUS_KEY = "__autoscaling_status"  # written by the v1 monitor every update (Ray 2.59, 2.60)


def autoscaler_running() -> bool:
    """Whether the connected cluster runs an autoscaler: the v1 monitor's status in the GCS key-value
    store, or the cluster config the v2 autoscaler publishes (KubeRay, the cluster launcher, fake
    clusters in tests).

    Ray (2.59, 2.60) has no public call for this: `ray status` reads the same key-value entry, and Ray
    Train and Ray Data ask `ray._private.state` for the cluster config themselves; `ray.autoscaler.sdk`
    only sends requests, and `ray.nodes()` / `ray.util.state` do not say whether nodes can be added.
    So these two private reads stay, guarded: when a Ray release drops them the answer is False (not
    known to grow), and `ray.autoscaling: true` still says that the cluster grows.
    """
    try:
        from ray.experimental.internal_kv import _internal_kv_get  # private: see above

        if _internal_kv_get(AUTOSCALER_V1_STATUS_KEY):
            return True
        from ray._private.state import state  # private: see above

        return state.get_cluster_config() is not None
    except Exception:  # noqa: BLE001 - an unreadable status (or a Ray without these) means: not known to grow
        return False


def cluster_can_grow(ray_config: RayConfig) -> bool:
    """`ray.autoscaling` when the user said so, else whether an autoscaler is running."""
    return ray_config.autoscaling if ray_config.autoscaling is not None else autoscaler_running()


def plan_for_cluster(trainer: TrainerConfig, ray_config: RayConfig,
                     poll_s: float = 1.0) -> tuple[ScalingPlan, bool]:
    """The pre-flight check against the connected cluster: `(plan, asked_autoscaler)`.

    When the nodes alive now cannot host the request but the cluster can grow (`cluster_can_grow`),
    the workers' resource bundles are handed to the autoscaler (`ray.autoscaler.sdk.request_resources`)
    and the check is repeated until they fit, for at most `ray.worker_start_timeout_s`; then it fails
    with one line. The caller clears the request (`release_autoscaler_request`) when training ends.
    """
    import time

    try:
        return plan_scaling(trainer, ray_config, ClusterResources.from_ray()), False
    except ConfigError as error:
        if not cluster_can_grow(ray_config):
            raise
        first = error
    # what the workers need, independent of what is alive now (a GPU request stays a GPU request)
    plan, problems = _request(trainer, ray_config, None)
    if problems:
        raise ConfigError("; ".join(problems))
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[plan.resources_per_worker] * plan.num_workers)
    deadline = time.monotonic() + ray_config.worker_start_timeout_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        try:
            return plan_scaling(trainer, ray_config, ClusterResources.from_ray()), True
        except ConfigError:
            continue
    release_autoscaler_request()
    raise ConfigError(
        f"the cluster's autoscaler did not provide {plan.num_workers} workers x {plan.resources_per_worker} within "
        f"{ray_config.worker_start_timeout_s:g} s (--worker-start-timeout): no node type it may add has these "
        f"resources, or it is at max_workers (now: {first}); check the cluster's node types or lower the request")


def release_autoscaler_request() -> None:
    """Withdraw the resource request of `plan_for_cluster` (idle nodes may then be scaled down)."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception:  # noqa: BLE001 - best effort at the end of a run
        pass


def lightning_strategy(name: str) -> Any:
    """The Trainer's strategy for a plan's strategy name: 'auto' for 'single' (Lightning then runs
    the one worker's model unwrapped), else an instance of Ray's Lightning strategy class."""
    return "auto" if name == "single" else strategy_class(name)()


def strategy_class(name: str) -> type:
    """The Ray Lightning strategy class for 'ddp', 'fsdp' or 'deepspeed' (imported lazily)."""
    from ray.train import lightning as rl

    classes = {"ddp": "RayDDPStrategy", "fsdp": "RayFSDPStrategy", "deepspeed": "RayDeepSpeedStrategy"}
    if name not in classes:
        raise ConfigError(f"trainer.strategy: {name!r} has no Ray equivalent; use ddp, fsdp or deepspeed")
    return getattr(rl, classes[name])


# ------------------------------------------------------------------ run names

def run_name(ray_config: RayConfig, now: datetime | None = None) -> str:
    """`ray.name`, or train-YYYYmmdd-HHMMSS."""
    if ray_config.name:
        if "/" in ray_config.name or ray_config.name in (".", ".."):
            raise ConfigError(f"ray.name: {ray_config.name!r} must be a plain directory name (no '/')")
        return ray_config.name
    return (now or datetime.now()).strftime("train-%Y%m%d-%H%M%S")


# ------------------------------------------------------------------ Ray configs

def checkpoint_config(config: RunConfig) -> Any:
    """Ray's checkpoint retention from the checkpoint section (top-k by the monitored metric)."""
    from ray.train import CheckpointConfig

    from ptycho_torch.training.train import monitored_metric

    kept = config.checkpoint
    keep = None if kept.save_top_k == -1 else max(1, kept.save_top_k)
    return CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=monitored_metric(config),
                            checkpoint_score_order=kept.mode)


def failure_config(ray_config: RayConfig) -> Any:
    """Worker-group restarts = max_failures. The controller itself never retries (an infeasible request
    fails fast), except in elastic training: after a node leaves, Ray may first try to restart the full
    group on resources it still believes alive, time out after --worker-start-timeout, and then go on
    with the workers that fit, so there the controller gets the same number of retries."""
    from ray.train import FailureConfig

    controller_retries = 0 if ray_config.min_workers is None else ray_config.max_failures
    return FailureConfig(max_failures=ray_config.max_failures, controller_failure_limit=controller_retries)


def run_config(config: RunConfig, ray_config: RayConfig, name: str) -> Any:
    """Ray Train RunConfig: storage_path (absolute) / name, checkpoints, failures, log level."""
    from ray.train import LoggingConfig
    from ray.train import RunConfig as RayRunConfig

    if ray_config.max_failures != 0 and not config.trainer.enable_checkpointing:
        raise ConfigError("ray.max_failures: restarts resume from the latest checkpoint, but "
                          "trainer.enable_checkpointing is false; enable checkpointing or set --max-failures 0")
    return RayRunConfig(name=name, storage_path=storage_path(ray_config),
                        checkpoint_config=checkpoint_config(config), failure_config=failure_config(ray_config),
                        logging_config=LoggingConfig(log_level="INFO" if ray_config.verbose else "WARNING"))


def set_controller_env(ray_config: RayConfig) -> None:
    """Settings Ray Train's controller reads from the environment (Ray propagates these variables from
    the driver to the controller): an unplaceable worker group raises (ControllerError) after
    worker_start_timeout_s instead of retrying forever, and workers are polled every
    poll_interval_s (Ray's default, 2 s, adds up to two intervals after the last epoch's report)."""
    os.environ[START_TIMEOUT_ENV] = f"{ray_config.worker_start_timeout_s:g}"
    os.environ[POLL_INTERVAL_ENV] = f"{ray_config.poll_interval_s:g}"
