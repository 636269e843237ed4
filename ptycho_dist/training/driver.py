"""Distributed training: the same LightningModule and DataModule as `ptycho-torch train`, run by a Ray
Train `TorchTrainer` (Train V2) with one worker per device.

Run directory = `storage_path/name/` (a local or shared path, or a URI such as s3://…). It holds Ray's
files (checkpoint_*/checkpoint.ckpt, checkpoint_manager_snapshot.json) next to the files of a
`ptycho-torch train` run: config.yaml, ray.yaml (the `ray:` section used), logs/, model.pt,
manifest.json, metrics.json and loss.png. So `ptycho-torch reconstruct --model storage_path/name` works
unchanged.

Checkpointing decision: Lightning's own ModelCheckpoint is switched off under Ray; Ray's checkpoints
(`RayTrainReportCallback`: a full Lightning checkpoint.ckpt after every training epoch, with optimizer,
scheduler, epoch counter, the History callback and the hyperparameters incl. the normalisation factor)
replace it. Ray keeps `checkpoint.save_top_k` of them ranked by the monitored metric, plus always the
latest, and only Ray's checkpoints survive a worker-group restart or can be found by `--resume`. Writing
a second copy from rank 0 would double the I/O and would not work on object-store URIs.

Resuming: a restarted worker group (`max_failures`) and `--resume NAME` both reach
`ray.train.get_checkpoint()` (Ray restores its checkpoint list from the run directory) and continue
from its checkpoint.ckpt; the epoch counter and the loss history continue, never restart at 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from ptycho_dist.cluster.run_files import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RAY_FILE,
    clean_unregistered_checkpoints,
    is_uri,
    newest_checkpoint_name,
    read_run_file,
    registered_checkpoint,
    run_location,
    storage_path,
    upload,
    write_run_file,
)
from ptycho_dist.cluster.scaling import (
    check_request,
    lightning_strategy,
    plan_for_cluster,
    release_autoscaler_request,
    run_config,
    run_name,
    set_controller_env,
)
from ptycho_dist.cluster.session import ray_session
from ptycho_dist.config import RayConfig
from ptycho_dist.training.ingest import check_read_room, group_datasets, shard_loaders, use_ray_data
from ptycho_torch.config import ConfigError, RunConfig
from ptycho_torch.data.dataset import split_rows
from ptycho_torch.safe_output import hold_run_lock
from ptycho_torch.training.launcher import StartEpoch, gather, state_checksum, with_absolute_data_path

log = logging.getLogger("ptycho_dist")


@dataclass
class DistTrainResult:
    """What a distributed run produced. `run_dir` is a local path or a URI."""

    run_dir: str
    bundle_path: str
    metrics: dict[str, float]  # final epoch-level metrics (rank 0)
    history: list[dict[str, float]]  # one row per epoch: {'epoch', 'train_loss', 'val_loss', 'lr', ...}
    epochs_completed: int
    start_epoch: int  # epoch the last worker group started at (> 0 after a restart or --resume)
    fit_seconds: float  # Trainer.fit of the last worker group (s)
    wall_seconds: float  # driver time incl. worker start-up and teardown (s)
    world_size: int
    replica_checksums: list[str] = field(default_factory=list)  # sha256 of each rank's final weights
    replica_nodes: list[str] = field(default_factory=list)  # Ray node id of each rank
    ray_result: Any = None  # ray.train.Result


# ------------------------------------------------------------------ worker side

# Harmless warnings every worker would print each run (kept with verbose=True)
_WORKER_WARNINGS = (
    ".*LeafSpec.*is deprecated.*",  # lightning 2.6 x torch 2.13
    ".*smaller than the logging interval.*",  # small datasets
    ".*when logging on epoch level in distributed setting.*",  # 'lr' is the same on every rank
)


def _quiet_worker(verbose: bool) -> None:
    """Our progress lines on stderr (forwarded to the driver by Ray); Ray's and Lightning's INFO chatter
    off unless verbose. Root at WARNING also silences Ray Train's per-report INFO line, which is logged
    under a file-path logger name that LoggingConfig(log_level) does not filter (Ray 2.60)."""
    from ptycho_torch.logging_setup import setup_logging

    setup_logging(verbose)
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
        for pattern in _WORKER_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Body of every Ray Train worker: `ptycho_torch.training.train.train` with what Ray adds.

    `loop_config` (built once by the driver): config (the resolved RunConfig),
    norm_factor (r from the driver's validation pass), run_dir (path or URI), strategy, accelerator,
    threads (torch intra-op threads), verbose, callbacks (extra Lightning callbacks, pickled by the
    driver: as bytes, Ray's controller passes them on without importing Lightning to unpickle them,
    which would delay the start of the workers by the ~2 s that import takes), ingest
    (True: batches come from this worker's shards of the Ray Datasets, ptycho_dist.training.ingest).
    Returns a summary on rank 0.
    """
    import ray.train
    from ray import cloudpickle
    from ray.train.lightning import RayLightningEnvironment, RayTrainReportCallback

    from ptycho_torch.training.train import Launch, train

    _quiet_worker(bool(loop_config.get("verbose")))
    os.environ["OMP_NUM_THREADS"] = str(loop_config["threads"])  # train() sets torch's threads from it
    config: RunConfig = loop_config["config"]  # the driver's resolved RunConfig, pickled as it is
    target = str(loop_config["run_dir"])
    staging = Path(tempfile.mkdtemp(prefix="ptycho-dist-run-")) if is_uri(target) else None
    start = StartEpoch()
    # Ray's checkpoints replace Lightning's ModelCheckpoint (module docstring)
    report = RayTrainReportCallback() if config.trainer.enable_checkpointing else _MetricsReport()

    replicas: dict[str, Any] = {}

    def after_fit(trainer: L.Trainer, module: torch.nn.Module) -> dict[str, Any]:
        ranks = gather({"checksum": state_checksum(module), "node_id": ray.get_runtime_context().get_node_id()})
        replicas.update(replica_checksums=[r["checksum"] for r in ranks], replica_nodes=[r["node_id"] for r in ranks])
        return {"ray": {"world_size": trainer.world_size, "start_epoch": start.epoch, **replicas,
                        "ingest": "ray_data" if loop_config.get("ingest") else "sampler"}}

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as ckpt_dir:
        # a damaged latest checkpoint falls back to an older intact one; an unsafe one is refused
        ckpt = intact_ray_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, target) if ckpt_dir else None
        launch = Launch(trainer={"strategy": lightning_strategy(loop_config["strategy"]), "devices": "auto",
                                 "num_nodes": 1, "accelerator": loop_config["accelerator"],
                                 "plugins": [RayLightningEnvironment()], "enable_checkpointing": False},
                        checkpoint=ckpt, norm_factor=loop_config["norm_factor"], after_fit=after_fit,
                        loaders=shard_loaders if loop_config.get("ingest") else None)
        result = train(config, staging or Path(target), callbacks=[start, report, *cloudpickle.loads(loop_config["callbacks"])],
                       launch=launch)
    rank = ray.train.get_context().get_world_rank()
    if staging is not None:
        if rank == 0:
            upload(staging, target)
        shutil.rmtree(staging, ignore_errors=True)
    if rank != 0:
        return None
    return {"metrics": result.metrics, "history": result.history, "epochs_completed": result.epochs_completed,
            "start_epoch": start.epoch, "fit_seconds": result.seconds, "world_size": result.trainer.world_size,
            **replicas}


def intact_ray_checkpoint(latest: Path, run_dir: str) -> Path:
    """`latest` (the checkpoint.ckpt Ray hands to a resumed worker) when it loads safely; when it is
    damaged, the newest intact `checkpoint_*/checkpoint.ckpt` of a local run directory (saying so).
    A checkpoint with Python objects beyond tensors is refused (UnsafeCheckpointError: never run);
    none intact is a ConfigError."""
    from ptycho_torch.model.checkpoints import first_intact

    older = [] if is_uri(run_dir) else sorted(Path(run_dir).glob(f"checkpoint_*/{CHECKPOINT_FILE}"), reverse=True)
    return first_intact([latest, *(c for c in older if c.parent.name != latest.parent.name)],  # names sort by time
                        "cannot resume", f"the run {run_dir} holds no usable Ray checkpoint; start a new run "
                        "(--overwrite or another --name)")


class _MetricsReport(Callback):
    """Reports epoch metrics to Ray without a checkpoint (trainer.enable_checkpointing false)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import ray.train

        from ptycho_torch.training.callbacks import scalar_metrics

        ray.train.report({**scalar_metrics(trainer), "epoch": trainer.current_epoch})


# ------------------------------------------------------------------ driver side

def _user_error(error: BaseException) -> BaseException | None:
    """The first user error (ptycho_torch.logging_setup.USER_ERRORS) inside a Ray training failure."""
    from ptycho_torch.errors import USER_ERRORS

    failures = getattr(error, "worker_failures", None) or {}
    for failure in [*failures.values(), getattr(error, "controller_failure", None)]:
        seen = 0
        while failure is not None and seen < 10:
            if isinstance(failure, USER_ERRORS):
                return failure
            failure = getattr(failure, "cause", None) or failure.__cause__
            seen += 1
    return None


def _drop_untrained_run(location: str) -> None:
    """Remove a new local run directory that holds no checkpoint (only config.yaml, ray.yaml and Ray's
    marker files): nothing trained is in it."""
    run = Path(location)
    if run.is_dir() and not any(run.glob(f"checkpoint_*/{CHECKPOINT_FILE}")):
        shutil.rmtree(run, ignore_errors=True)


REGISTER_GRACE_S = 15.0  # on a signal, how long to wait for Ray to register a checkpoint being written


def _registered_since(location: str, name: str | None) -> bool:
    """Whether Ray's snapshot has caught up with checkpoint directory `name` (True when there is none)."""
    registered = registered_checkpoint(location)
    return name is None or (registered is not None and registered[0] >= name)


def resume_command(ray_config: RayConfig) -> str:
    return f"ptycho-dist train --resume {ray_config.name} --storage-path {storage_path(ray_config)}"


def _fit_interruptibly(trainer: Any, location: str, ray_config: RayConfig) -> Any:
    """`trainer.fit()` under ptycho_torch.training.interrupt.run_interruptibly (Ray's own SIGINT handler,
    installed only on the main thread, would exit with status 0). On a signal, wait up to
    REGISTER_GRACE_S for Ray to register the checkpoint being written, then raise TrainingInterrupted
    naming the latest checkpoint and the resume command; leaving `ray_session` then shuts the embedded
    Ray down, or disconnects, which ends the controller and workers this driver owns."""
    from ptycho_torch.training.interrupt import BackgroundCall, TrainingInterrupted, run_interruptibly

    def on_signal(e: TrainingInterrupted, call: BackgroundCall) -> Any:
        deadline = time.monotonic() + REGISTER_GRACE_S
        pending = newest_checkpoint_name(location)  # written when the signal came; wait for Ray to register it
        while not _registered_since(location, pending) and not call.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
        if call.succeeded:
            log.warning("training finished before the %s took effect", signal.Signals(e.signum).name)
            return call.get()
        latest = registered_checkpoint(location)
        if latest:
            log.warning("stopping: the run continues after epoch %d on resume", latest[1] + 1)
        detail = None if latest else "no epoch had finished, so no checkpoint exists yet (a resume starts at epoch 1)"
        raise TrainingInterrupted(e.signum, Path(location, latest[0]) if latest else None,
                                  resume_command(ray_config), detail) from None

    return run_interruptibly(trainer.fit, on_signal, name="ray-train-fit")


def claim_ray_run(location: str, name: str, resume: bool, overwrite: bool, move: bool = False) -> None:
    """Refuse a new run where one exists (unless `overwrite`), a resume where none does, and a local run
    directory that cannot be written; nothing is created. With `move` (once the request is known to
    fit), an existing run is moved aside."""
    from ptycho_torch.safe_output import aside_name, check_output_dir

    exists = read_run_file(location, CONFIG_FILE) is not None
    if resume and not exists:
        raise FileNotFoundError(f"cannot resume: no run {name!r} at {location} ({CONFIG_FILE} does not exist); "
                                "check --resume/--name and --storage-path")
    if overwrite and resume:
        raise ConfigError("--overwrite starts a new run and --resume continues one; give only one")
    if not is_uri(location):
        check_output_dir(location, "--storage-path/--name")
    if exists and not resume:
        if not overwrite:
            raise ConfigError(f"ray.name: a run {name!r} already exists at {location}; continue it with "
                              f"--resume {name}, pass --overwrite to move it aside ({name}.replaced-<time>, "
                              "nothing is deleted), or choose another --name")
        if is_uri(location):
            raise ConfigError(f"--overwrite: {location} is on object storage, where a run cannot be moved "
                              "aside; choose another --name")
        if not move:
            return
        moved = aside_name(Path(location))
        Path(location).rename(moved)
        log.warning("moved the previous run %s to %s", location, moved)


def fit_distributed(config: RunConfig, ray_config: RayConfig, *, resume: bool = False, overwrite: bool = False,
                    callbacks: Sequence[Callback] = (), ray_callbacks: Sequence[Any] = (),
                    allow_other_data: bool = False) -> DistTrainResult:
    """Train with Ray Train on `ray_config`'s cluster (embedded local Ray when no address).

    The run directory is storage_path/name. `resume=True` continues the named run from its latest
    Ray checkpoint up to `config.trainer.max_epochs`; without it an existing run of that name is an
    error, unless `overwrite` (the old run is moved aside, never deleted). A new run that fails with
    a user error before its first checkpoint leaves no directory behind. SIGTERM / SIGINT raise
    TrainingInterrupted naming the latest checkpoint and the resume command. `callbacks` are extra
    picklable Lightning callbacks added on every worker; `ray_callbacks` are Ray Train callbacks added
    to the run (a sweep trial passes Tune's TuneReportCallback). Raises ConfigError before any worker
    starts when the request cannot fit the cluster (after asking its autoscaler, if it has one).
    The scan is validated here, once (workers trust it), before Ray starts. A local run records its
    scan files (data_files.json); its resume on other files is refused unless `allow_other_data`
    (ptycho_torch.training.data_binding). The process training a local run holds its lock
    (ptycho_torch.safe_output.hold_run_lock): a --resume while it trains is refused in one line.
    """
    config = with_absolute_data_path(config)
    check_request(config.trainer, ray_config)
    name = run_name(ray_config)
    location = run_location(storage_path(ray_config), name)
    ray_config = dataclasses.replace(ray_config, name=name)
    claim_ray_run(location, name, resume, overwrite)  # moving aside waits until the plan fits
    with contextlib.ExitStack() as held:
        if resume and not is_uri(location):  # before anything in it is cleaned or rewritten
            held.callback(hold_run_lock(location, "--resume").release)
        return _fit_claimed(config, ray_config, location, resume, overwrite, callbacks, ray_callbacks,
                            allow_other_data)


def _fit_claimed(config: RunConfig, ray_config: RayConfig, location: str, resume: bool, overwrite: bool,
                 callbacks: Sequence[Callback], ray_callbacks: Sequence[Any], allow_other_data: bool) -> DistTrainResult:
    """fit_distributed once the run directory is claimed (and, for a resume, locked)."""
    from ptycho_torch.data.dataset import PtychoDataModule
    from ptycho_torch.errors import USER_ERRORS
    from ptycho_torch.training.data_binding import check_resume_data

    if resume and not is_uri(location):
        check_resume_data(Path(location), config, allow_other_data)
        stale = clean_unregistered_checkpoints(location)
        if stale:
            log.warning("removed %d checkpoint director%s Ray never registered (left by an interrupted run): %s",
                        len(stale), "y" if len(stale) == 1 else "ies", ", ".join(stale))
    datamodule = PtychoDataModule(config)  # the one validation pass; also model.N and r from the data
    config = datamodule.config
    factors = datamodule.norm_factors  # one r per scan of a multi-scan corpus
    norm_factor = factors[0] if len(factors) == 1 else factors
    rows = split_rows(datamodule) if use_ray_data(ray_config.ingest, datamodule) else None  # Ray Data reads
    del datamodule
    ray_run_config = run_config(config, ray_config, str(ray_config.name))
    if ray_callbacks:
        ray_run_config.callbacks = [*(ray_run_config.callbacks or []), *ray_callbacks]
    set_controller_env(ray_config)
    wall = time.perf_counter()
    fresh = not resume and not is_uri(location) and not Path(location).exists()  # never an older run
    try:
        result, plan = _fit_on_cluster(config, norm_factor, ray_config, location, resume, overwrite, ray_run_config,
                                       callbacks, rows=rows)
    except USER_ERRORS:
        if fresh:
            _drop_untrained_run(location)
        raise
    summary = result.return_value or {}
    return DistTrainResult(
        run_dir=location, bundle_path=f"{location}/model.pt", metrics=summary.get("metrics", {}),
        history=summary.get("history", []), epochs_completed=int(summary.get("epochs_completed", 0)),
        start_epoch=int(summary.get("start_epoch", 0)), fit_seconds=float(summary.get("fit_seconds", 0.0)),
        wall_seconds=time.perf_counter() - wall, world_size=int(summary.get("world_size", plan.num_workers)),
        replica_checksums=list(summary.get("replica_checksums", [])),
        replica_nodes=list(summary.get("replica_nodes", [])), ray_result=result)


def _fit_on_cluster(config: RunConfig, norm_factor: float | list[float], ray_config: RayConfig, location: str, resume: bool,
                    overwrite: bool, ray_run_config: Any, callbacks: Sequence[Callback],
                    rows: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """In a Ray session: the pre-flight check, the run files, the TorchTrainer fit; (Result, plan).
    With `rows` (ptycho_torch.data.dataset.split_rows) the groups reach the workers as Ray Datasets (ptycho_dist.training.ingest)."""
    from ray import cloudpickle
    from ray.train import ControllerError, TrainingFailedError
    from ray.train.torch import TorchTrainer

    name = str(ray_config.name)
    with ray_session(ray_config):
        plan, asked_autoscaler = plan_for_cluster(config.trainer, ray_config)
        datasets = None
        if rows is not None:
            import ray

            check_read_room(float(ray.cluster_resources().get("CPU", 0.0)), plan.num_workers,
                            float(plan.resources_per_worker.get("CPU", 0.0)))
            datasets = group_datasets(rows, plan.num_workers, verbose=ray_config.verbose)
        if overwrite:
            claim_ray_run(location, name, resume, overwrite, move=True)
        lock = None
        if not resume and not is_uri(location):  # a --resume of this run while it trains is refused
            Path(location).mkdir(parents=True, exist_ok=True)
            lock = hold_run_lock(location, "--name")
        write_run_file(location, CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_run_file(location, RAY_FILE, yaml.safe_dump({"ray": ray_config.to_dict(), "scaling": plan.summary()},
                                                          sort_keys=False))
        if not resume and not is_uri(location):
            from ptycho_torch.training.data_binding import bind_run_to_data

            bind_run_to_data(Path(location), config)
        workers = str(plan.num_workers) if plan.min_workers is None else f"{plan.min_workers}-{plan.num_workers} (elastic)"
        log.info("%s run %r: %s worker(s) x %s, %s on %s, storage %s", "resuming" if resume else "starting",
                 name, workers, plan.resources_per_worker, plan.strategy, plan.accelerator, location)
        loop_config = {"config": config, "norm_factor": norm_factor, "run_dir": location, "strategy": plan.strategy,
                       "accelerator": plan.accelerator, "threads": plan.torch_threads,
                       "verbose": ray_config.verbose, "callbacks": cloudpickle.dumps(list(callbacks)), "ingest": datasets is not None}
        trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config, datasets=datasets,
                               scaling_config=plan.scaling_config(), run_config=ray_run_config)
        try:
            return _fit_interruptibly(trainer, location, ray_config), plan
        except TrainingFailedError as e:
            user = _user_error(e)
            if user is not None:
                raise user from None
            failure = getattr(e, "controller_failure", None)
            if isinstance(e, ControllerError) and type(failure).__name__ == "WorkerGroupStartupTimeoutError":
                import ray

                free = ray.available_resources()
                raise ConfigError(
                    f"the Ray worker group ({plan.num_workers} workers x {plan.resources_per_worker}) did not "
                    f"start within {ray_config.worker_start_timeout_s:g} s (--worker-start-timeout): the cluster "
                    f"has {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs free now (other jobs hold "
                    "the rest); wait for them, or lower --devices, --num-nodes or --cpus-per-worker") from None
            raise
        finally:
            if asked_autoscaler:
                release_autoscaler_request()
            if lock is not None:
                lock.release()

