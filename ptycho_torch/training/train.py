"""Single-machine training: build the Lightning Trainer from the run config, fit, save.

`build_trainer` is the one place where the trainer section becomes Trainer arguments, callbacks
and loggers, and `train` is the one training path: the Ray Train worker (ptycho_dist.training.driver) calls it
with a `Launch` holding what Ray adds (strategy, cluster environment, report callback, the
checkpoint to continue from, the normalisation factor its driver computed while validating the
scan), so there is no second copy of the training logic.

A run directory holds:
    config.yaml      the resolved RunConfig (itself a valid --config, data paths absolute), written before training
    data_files.json  the scan files the run is bound to (path, size, mtime, sha256) and every deliberate switch
    .ptycho-claim.json  the claim of the directory by the process that created the run
    checkpoints/     ModelCheckpoint output (best top-k) and last.ckpt (rewritten at every epoch end)
    logs/version_k/  logger output (metrics.csv for the csv backend; one version per (re)start)
    model.pt         the model bundle (see bundle.py)
    manifest.json    versions, seed, hardware, data checksum (and the data_files / data_changes), git revision, timings
    loss.png         train / val loss per epoch (as multiples of the loss of the truth when the scan holds it)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from ptycho_torch.config import ConfigError, RunConfig, save_run_config
from ptycho_torch.data.dataset import PtychoDataModule
from ptycho_torch.logging_setup import show_progress
from ptycho_torch.model.bundle import BUNDLE_NAME, save_bundle
from ptycho_torch.model.checkpoints import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    LastEveryEpoch,
    resume_checkpoint,
)
from ptycho_torch.model.module import PtychoPINNModule
from ptycho_torch.safe_output import (
    atomic_write_text,
    await_claim,
    check_output_dir,
    claim_run_dir,
    hold_run_lock,
)
from ptycho_torch.torch_threads import configure_threads
from ptycho_torch.training.callbacks import EpochSummary, History, LearningRate, scalar_metrics
from ptycho_torch.training.data_binding import absolute_data_paths, bind_run_to_data, check_resume_data
from ptycho_torch.training.interrupt import SaveOnInterrupt, TrainingInterrupted, interruptible
from ptycho_torch.training.manifest import write_manifest
from ptycho_torch.training.warm_start import apply_warm_start

log = logging.getLogger("ptycho_torch")

__all__ = ["CHECKPOINT_DIR", "LAST_CHECKPOINT", "Launch", "TrainResult", "build_trainer", "check_local_execution",
           "finish_run", "train"]


def resolve_accelerator(accelerator: str) -> str:
    """'auto' -> 'gpu' when CUDA is visible, else 'cpu'; a requested GPU that is absent is an error."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: {accelerator!r} requested but no CUDA device is "
                          "visible on this machine; use --accelerator cpu (or auto)")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator: 'mps' requested but MPS is not available; use --accelerator cpu")
    return "gpu" if accelerator == "cuda" else accelerator


def monitored_metric(config: RunConfig) -> str:
    """The monitored metric; a val_* metric falls back to train_* when validation is off."""
    metric = config.checkpoint.monitor
    if config.data.val_fraction == 0 and metric.startswith("val_"):
        return "train_" + metric[len("val_"):]
    return metric


def check_logger_backend(backend: str | None) -> None:
    """Fail with one line when the package of a logger backend is missing."""
    for name, package, extra in (("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow")):
        if backend == name:
            try:
                importlib.import_module(package)
            except ImportError:
                raise ConfigError(f"logging.logger: {name!r} needs the {package} package; "
                                  f"pip install 'ptycho-dist[{extra}]' or use --logger csv") from None


def build_logger(config: RunConfig, run_dir: Path) -> Any:
    """The Lightning logger for `logging.logger` (False when None). MLflow logs to
    MLFLOW_TRACKING_URI (experiment MLFLOW_EXPERIMENT_NAME, default 'ptycho-dist') when set, else to a
    SQLite store in run_dir/mlruns."""
    backend = config.logging.logger
    check_logger_backend(backend)
    if backend is None:
        return False
    if backend == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs")
    if backend == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="logs")
    from lightning.pytorch.loggers import MLFlowLogger

    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ptycho-dist"
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:  # the team's tracking server or store; it decides where artifacts go
        return MLFlowLogger(experiment_name=experiment, run_name=run_dir.name, tracking_uri=uri)
    # none set: a local SQLite store under the run directory (recent MLflow refuses new file stores)
    store = (run_dir / "mlruns").resolve()
    store.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(experiment_name=experiment, run_name=run_dir.name,
                        tracking_uri=f"sqlite:///{store / 'mlflow.db'}", artifact_location=store.as_uri())


def check_extensions(callbacks: Sequence[Any], loggers: Sequence[Any]) -> None:
    """One line when `callbacks` are not Lightning Callback objects or `loggers` not Lightning Logger
    objects (a class instead of an instance, a string, a logger among the callbacks)."""
    from lightning.pytorch.loggers import Logger

    for label, items, kind, where in (("callbacks", callbacks, Callback, "lightning.pytorch.callbacks"),
                                      ("loggers", loggers, Logger, "lightning.pytorch.loggers")):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ConfigError(f"{label}: expected a list of {kind.__name__} objects ({where}), got "
                              f"{type(items).__name__}")
        for item in items:
            if not isinstance(item, kind):
                what = f"the class {item.__name__} (instantiate it)" if isinstance(item, type) else \
                    f"a {type(item).__name__}"
                raise ConfigError(f"{label}: expected {kind.__name__} objects ({where}.*), got {what}")


def build_callbacks(config: RunConfig, run_dir: Path) -> list[Callback]:
    """LearningRate (Lightning's LearningRateMonitor), History, EpochSummary, ReconstructionImages
    (every logging.log_images_every_n_epochs, with a logger), ModelCheckpoint (top-k by the
    monitored metric), LastEveryEpoch (last.ckpt at every epoch end, whatever the metric did) and
    EarlyStopping."""
    from ptycho_torch.training.progress_images import ReconstructionImages

    logs, kept = config.logging, config.checkpoint
    monitor = monitored_metric(config)
    callbacks: list[Callback] = [LearningRate(), History(), EpochSummary()]
    if logs.log_images_every_n_epochs > 0 and logs.logger is not None:
        callbacks.append(ReconstructionImages(logs.log_images_every_n_epochs))
    if config.trainer.enable_checkpointing:
        callbacks.append(ModelCheckpoint(
            dirpath=str(run_dir / CHECKPOINT_DIR), monitor=monitor, mode=kept.mode,
            save_top_k=kept.save_top_k, save_last=False,
            filename="epoch{epoch:03d}-" + monitor.replace("/", "_") + "{" + monitor + ":.5g}",
            auto_insert_metric_name=False))
        callbacks.append(LastEveryEpoch(run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT))
    if kept.early_stop_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=kept.mode, patience=kept.early_stop_patience))
    return callbacks


def trainer_kwargs(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Every Trainer argument: the trainer section as it is (its fields are the Trainer's keywords; the
    accelerator resolved, max_time as a timedelta, the progress bar on a terminal when unset), plus the
    logger and callbacks of the logging and checkpoint sections."""
    t = config.trainer
    return {
        **t.to_dict(),
        "accelerator": resolve_accelerator(t.accelerator),
        "max_time": t.max_time_delta,
        "enable_progress_bar": show_progress(t.enable_progress_bar),
        "logger": build_logger(config, run_dir),
        "callbacks": build_callbacks(config, run_dir),
        "default_root_dir": str(run_dir),
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "plugins": [AtomicCheckpointIO()],
    }


def build_trainer(config: RunConfig, run_dir: Path, **overrides: Any) -> L.Trainer:
    """The Lightning Trainer of a run. `overrides` replace derived arguments (the Ray adapter passes
    its strategy, plugins and devices); `extra_callbacks` are appended to the derived callbacks and
    `extra_loggers` to the configured logger (which stays first: trainer.logger and logs/ keep it)."""
    if os.environ.get("PTYCHO_QUIET_LIGHTNING") == "1":
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    kwargs = trainer_kwargs(config, Path(run_dir))
    kwargs["callbacks"] = kwargs["callbacks"] + list(overrides.pop("extra_callbacks", []))
    extra_loggers = list(overrides.pop("extra_loggers", []))
    if extra_loggers:
        kwargs["logger"] = ([kwargs["logger"]] if kwargs["logger"] else []) + extra_loggers
    if "plugins" in overrides:  # e.g. Ray's cluster environment: keep the atomic checkpoint writer
        overrides["plugins"] = list(overrides["plugins"]) + kwargs["plugins"]
    kwargs.update(overrides)
    if not kwargs["enable_checkpointing"]:  # e.g. under Ray, whose report callback checkpoints instead
        kwargs["callbacks"] = [cb for cb in kwargs["callbacks"] if not isinstance(cb, (ModelCheckpoint, LastEveryEpoch))]
    if config.trainer.strategy == "deepspeed" and "strategy" not in overrides:
        raise ConfigError("trainer.strategy: 'deepspeed' is only supported under ptycho-dist "
                          "(Ray) with deepspeed installed; use auto, ddp or fsdp")
    return L.Trainer(**kwargs)


def build_module(config: RunConfig, datamodule: PtychoDataModule) -> PtychoPINNModule:
    """A fresh module for the scan of `datamodule` (probe from the file, r from the data); for
    several scans, scan 0's probe and r are the module's own and every scan's are its tables."""
    from ptycho_torch.data.corpus import ScanCorpus

    scan = datamodule.scan
    probe = torch.from_numpy(scan.probe)
    tables = {}
    if isinstance(scan, ScanCorpus):
        tables = {"scan_probes": torch.from_numpy(scan.probes()), "scan_norm_factors": datamodule.norm_factors}
    return PtychoPINNModule(config, datamodule.norm_factor, probe.shape[0], probe, monitor=monitored_metric(config),
                            **tables)


@dataclass
class TrainResult:
    run_dir: Path
    bundle_path: Path
    metrics: dict[str, float]
    epochs_completed: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    trainer: L.Trainer | None = None  # the Trainer that ran (for inspection; None when not kept)


def last_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
    return path if path.is_file() else None


def check_local_execution(config: RunConfig, cpu_count: int | None = None, gpu_count: int | None = None) -> None:
    """Refuse a single-machine request the machine cannot serve, before anything starts: more CPU
    processes than cores, more GPUs than visible, or several nodes (that is ptycho-dist's job). Under
    a launcher that provides the processes itself (SLURM srun, torchrun: WORLD_SIZE/SLURM_NTASKS set),
    Lightning takes the counts from it and nothing is checked."""
    if os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS"):
        return
    ex = config.trainer
    if ex.num_nodes > 1:
        raise ConfigError(f"trainer.num_nodes: {ex.num_nodes} nodes, but ptycho-torch trains on this machine "
                          f"only; use ptycho-dist train --num-nodes {ex.num_nodes} on a Ray cluster "
                          "(cluster/README.md), or --num-nodes 1")
    if ex.devices == "auto":
        return
    accelerator = resolve_accelerator(ex.accelerator)
    if accelerator == "cpu":
        cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        if int(ex.devices) > cores:
            raise ConfigError(f"trainer.devices: {ex.devices} CPU processes requested but this machine has "
                              f"{cores} cores; use --devices {cores} or fewer (ptycho-dist spreads more "
                              "workers over several machines)")
    elif accelerator == "gpu":
        gpus = gpu_count if gpu_count is not None else torch.cuda.device_count()
        if int(ex.devices) > gpus:
            raise ConfigError(f"trainer.devices: {ex.devices} GPUs requested but {gpus} are visible; use "
                              f"--devices {gpus} or fewer")


LAUNCH_ID_VAR = "PTYCHO_LAUNCH_ID"  # set by rank 0 for the processes it starts (Lightning's DDP subprocesses)


def launched_world_size() -> int:
    """Processes of this launch: WORLD_SIZE (Lightning, torchrun) or SLURM_NTASKS (srun); 1 otherwise."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's global rank when a launcher started several (Lightning's DDP subprocesses set
    LOCAL_RANK, torchrun RANK, srun SLURM_PROCID, each with WORLD_SIZE / SLURM_NTASKS > 1); 0
    otherwise, whatever a RANK variable left in a shell says. Only rank 0 claims, writes or cleans up
    the run directory."""
    if launched_world_size() == 1:
        return 0
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def launch_id(lead: bool) -> str | None:
    """What identifies this launch to all its processes: rank 0's PTYCHO_LAUNCH_ID for the DDP
    subprocesses it starts, torchrun's TORCHELASTIC_RUN_ID, srun's job and step; a lead process
    without a launcher makes a fresh one."""
    slurm = os.environ.get("SLURM_JOB_ID")
    external = (os.environ.get("TORCHELASTIC_RUN_ID")
                or (f"slurm-{slurm}.{os.environ.get('SLURM_STEP_ID', '')}" if slurm else None))
    if lead:
        return external or uuid.uuid4().hex
    return os.environ.get(LAUNCH_ID_VAR) or external


def resume_hint(run_dir: Path) -> str:
    return f"ptycho-torch train --resume {run_dir}"


@dataclass
class Launch:
    """What a launcher that owns the processes and the run directory (Ray Train) hands to `train`.

    The run directory exists already (the launcher wrote its config files), the scan was validated by
    the launcher's driver, and this machine's devices are not checked (the launcher placed the
    process). `trainer` replaces derived Trainer arguments (strategy, plugins, devices, num_nodes,
    accelerator, enable_checkpointing); `checkpoint` is the Lightning checkpoint to continue from
    (None = from scratch); `norm_factor` is r as computed by the driver, a list of one r per scan
    when training on several (None = from the data);
    `after_fit(trainer, module)` runs on every rank after the fit and returns extra manifest.json
    entries (it may use collectives); `loaders(datamodule)` gives (train, val) iterables of batches
    that replace the datamodule's DataLoaders (Ray Data shards).
    """

    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    norm_factor: float | list[float] | None = None
    loaders: Callable[[PtychoDataModule], tuple[Any, Any]] | None = None  # (train, val) iterables instead of DataLoaders
    after_fit: Callable[[L.Trainer, PtychoPINNModule], dict[str, Any]] | None = None


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callback] = (), loggers: Sequence[Any] = (), launch: Launch | None = None,
          allow_other_data: bool = False) -> TrainResult:
    """Train on `config.data.path`, writing everything into `run_dir` (see module docstring).

    Everything is validated (config against this machine, the scan file, the output directory)
    before `run_dir` is created. A directory that already holds files is refused unless `resume`
    (continue from its newest intact checkpoint, optimizer, scheduler and epoch counter restored, up
    to `config.trainer.max_epochs`) or `overwrite` (the old run is moved aside, never deleted).
    SIGTERM/SIGINT save a resumable checkpoint and raise `TrainingInterrupted`. `callbacks` are extra
    Lightning callbacks (e.g. benchmark timers), appended after the derived ones; `loggers` extra
    Lightning loggers (W&B, Comet, a custom one) that receive the same metrics as the configured
    logging.logger (check_extensions says in one line when an object is neither). With `launch`, a
    launcher owns the processes and `run_dir` (see Launch); `resume` and `overwrite` are then unused.
    The data paths are made absolute, a new run records its scan files (data_files.json) and a resume on
    other files is refused unless `allow_other_data` (training.data_binding).
    """
    run_dir = Path(run_dir)
    check_extensions(callbacks, loggers)
    with interruptible() as signals:
        if launch is None:
            check_local_execution(config)
        check_logger_backend(config.logging.logger)
        ckpt_path = launch.checkpoint if launch is not None else resume_checkpoint(run_dir) if resume else None
        if launch is None:
            check_output_dir(run_dir, "--resume" if resume else "--out")
            config = absolute_data_paths(config)
            if resume:
                check_resume_data(run_dir, config, allow_other_data)
        configure_threads()
        L.seed_everything(config.training.seed, workers=True, verbose=False)
        datamodule = PtychoDataModule(config, validate=launch is None,
                                      norm_factor=launch.norm_factor if launch is not None else None)
        config = datamodule.config  # model.N resolved from the scan when it was left unset
        if launch is not None and launch.loaders is not None:
            datamodule.use_loaders(*launch.loaders(datamodule))  # e.g. this worker's Ray Data shard
        module = build_module(config, datamodule)
        warm = apply_warm_start(module, config, resuming=ckpt_path is not None)  # --init-from, --freeze
        # only rank 0 of our own processes claims, writes and cleans up the directory (DDP subprocesses
        # use the one rank 0 prepared; a launcher prepared it itself)
        lead = launch is None and launched_rank() == 0
        created = lead and not run_dir.exists()
        if not resume and lead:
            this_launch = launch_id(lead=True)
            moved = claim_run_dir(run_dir, overwrite=overwrite, launch_id=this_launch)
            os.environ[LAUNCH_ID_VAR] = this_launch  # inherited by the DDP subprocesses Lightning starts
            if moved is not None:
                log.warning("moved the previous contents of %s to %s", run_dir, moved)
        elif not resume and launch is None:
            await_claim(run_dir, launch_id(lead=False), launched_rank())
        lock = hold_run_lock(run_dir, "--resume" if resume else "--out") if lead else None
        try:
            if lead:
                save_run_config(config, run_dir / "config.yaml")
                if not resume:
                    bind_run_to_data(run_dir, config)
            saver = SaveOnInterrupt(signals, run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, resume_hint(run_dir))
            trainer = build_trainer(config, run_dir, extra_callbacks=[*callbacks, *([saver] if launch is None else [])],
                                    extra_loggers=list(loggers), **(launch.trainer if launch is not None else {}))
            log.info("training on %d groups (%d for validation), r = %.4g, %s x %s on %s",
                     len(datamodule.train_groups), len(datamodule.val_groups or []), datamodule.norm_factor,
                     trainer.num_devices, trainer.num_nodes, trainer.accelerator.__class__.__name__)
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                        weights_only=True)
            seconds = time.perf_counter() - start
            signals.saving = True  # the run is complete: a late signal waits for the files below
            extra = launch.after_fit(trainer, module) if launch is not None and launch.after_fit else None
            return finish_run(config, run_dir, module, trainer, datamodule, seconds, extra={**warm, **(extra or {})})
        except TrainingInterrupted as e:
            if e.checkpoint is None and last_checkpoint(run_dir) is not None:
                e = TrainingInterrupted(e.signum, None, resume_hint(run_dir))
            _drop_if_nothing_trained(run_dir, created, resume or not lead)
            raise e from None
        except BaseException:
            _drop_if_nothing_trained(run_dir, created, resume or not lead)
            raise
        finally:
            if lock is not None:
                lock.release()


def _drop_if_nothing_trained(run_dir: Path, created: bool, resume: bool) -> None:
    """After a failed fresh run: remove what this call wrote when no checkpoint exists (no orphan run
    directory; nothing trained is lost). Resumed runs and runs with a checkpoint are kept."""
    if resume or not run_dir.is_dir() or any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")):
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for entry in run_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def run_truth_loss(config: RunConfig, datamodule: PtychoDataModule) -> float | None:
    """The loss of the true object on the training scan when the scan holds one (simulations), else
    None; a failure here never costs the trained run, it only loses the relative loss plot."""
    from ptycho_torch.data.corpus import corpus_scans
    from ptycho_torch.evaluation.truth_loss import truth_loss

    try:
        losses = [truth_loss(s, config.model.gridsize, eps=config.training.eps) for s in corpus_scans(datamodule.scan)]
        return None if any(v is None for v in losses) else float(sum(losses) / len(losses))
    except Exception as exc:  # noqa: BLE001 - a diagnostic, not the run
        log.warning("loss of the truth not computed (%s); loss.png shows absolute losses", exc)
        return None


def finish_run(config: RunConfig, run_dir: Path, module: PtychoPINNModule, trainer: L.Trainer,
               datamodule: PtychoDataModule, seconds: float, extra: dict[str, Any] | None = None) -> TrainResult:
    """Write the bundle, manifest and loss plot of a finished fit (rank 0 only). `extra` entries are
    added to manifest.json (the Ray adapter records world size, start epoch and replica checksums)."""
    metrics = scalar_metrics(trainer)
    bundle_path = run_dir / BUNDLE_NAME
    history = next((cb.rows for cb in trainer.callbacks if isinstance(cb, History)), [])
    if trainer.is_global_zero:
        save_bundle(module, config, bundle_path, data_probe=torch.from_numpy(datamodule.scan.probe))
        write_manifest(run_dir, config, datamodule.scan, extra={
            "final_metrics": metrics, "epochs_completed": trainer.current_epoch,
            "fit_seconds": seconds, "norm_factor": datamodule.norm_factor,
            **({"norm_factors": datamodule.norm_factors} if len(datamodule.norm_factors) > 1 else {}),
            "world_size": trainer.world_size, **(extra or {})})
        floor = run_truth_loss(config, datamodule)
        if history:
            from ptycho_torch.evaluation.plots import save_loss_curves

            save_loss_curves(history, run_dir / "loss.png", truth_loss=floor)
        atomic_write_text(run_dir / "metrics.json", json.dumps(
            {"final": metrics, "history": history, "truth_loss": floor}, indent=2, default=float))
    return TrainResult(run_dir, bundle_path, metrics, trainer.current_epoch, seconds, history, trainer)
