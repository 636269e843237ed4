"""How a run executes, one section per concern, each field named as the library that consumes it names it.

    trainer     `lightning.Trainer`'s own keywords (max_epochs, max_time, accumulate_grad_batches, devices, ...)
    optimizer   Adam's learning rate and the learning-rate schedule
    dataloader  `torch.utils.data.DataLoader`'s keywords: num_workers here is DataLoader processes, never
                Ray workers (those are trainer.devices x trainer.num_nodes under ptycho-dist)
    checkpoint  `ModelCheckpoint` / `EarlyStopping`: which checkpoints are kept, on which metric
    logging     which metrics logger, and how often reconstructions are logged as images

These five replaced the single `execution` section (and training.nepochs / training.max_minutes); old files
and run directories are read through `config.renamed`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Optional, Union

from ptycho_torch.config.typed_fields import ConfigSection, config_field

SchedulerName = Literal["Default", "Exponential", "MultiStage", "WarmupCosine", "ReduceLROnPlateau"]
PrecisionName = Literal["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true", "64"]
LoggerName = Optional[Literal["csv", "tensorboard", "mlflow", "none"]]

_DURATION_KEYS = ("days", "hours", "minutes", "seconds")
_DHMS = re.compile(r"^\s*(\d+):(\d+):(\d+):(\d+)\s*$")


def max_time_delta(value: Any, name: str = "trainer.max_time") -> timedelta | None:
    """trainer.max_time as a timedelta: Lightning's "DD:HH:MM:SS" string or its mapping of duration parts
    ({minutes: 30}), or a plain number of minutes (what --max-minutes gives); None = no budget."""
    from ptycho_torch.errors import ConfigError

    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{name}: got {value!r}; expected \"DD:HH:MM:SS\", {{minutes: M}} or a number of minutes")
    if isinstance(value, (int, float)):
        value = {"minutes": value}
    if isinstance(value, str):
        match = _DHMS.match(value)
        if not match:
            raise ConfigError(f"{name}: got {value!r}; expected Lightning's \"DD:HH:MM:SS\" (e.g. \"00:02:30:00\"), "
                              "{minutes: M} or a number of minutes")
        value = dict(zip(_DURATION_KEYS, (int(g) for g in match.groups())))
    if not isinstance(value, dict) or not value or set(value) - set(_DURATION_KEYS):
        raise ConfigError(f"{name}: got {value!r}; expected \"DD:HH:MM:SS\" or a mapping of "
                          f"{', '.join(_DURATION_KEYS)} (e.g. {{hours: 2, minutes: 30}})")
    parts = {}
    for key, part in value.items():
        if isinstance(part, bool) or not isinstance(part, (int, float)) or part < 0 or part != part:
            raise ConfigError(f"{name}.{key}: got {part!r}; expected a number >= 0")
        parts[key] = float(part)
    delta = timedelta(**parts)
    if delta.total_seconds() <= 0:
        raise ConfigError(f"{name}: got {value!r}; a wall-clock budget must be > 0 (or null = none)")
    return delta


@dataclass(frozen=True)
class TrainerConfig(ConfigSection):
    """`lightning.Trainer`'s keywords, by the Trainer's names; `build_trainer` passes them on as they are
    (max_time as a timedelta). Under ptycho-dist, devices x num_nodes is the number of Ray workers and each
    worker's Trainer runs on its one device (ray.yaml's `scaling:` records what Ray made of them)."""

    section: typing.ClassVar[str] = "trainer"

    max_epochs: int = config_field(10, "training epochs")
    max_time: Union[str, dict, float, None] = config_field(
        None, "wall-clock budget, as Lightning takes it (\"DD:HH:MM:SS\" or {hours: H, minutes: M}) or a number of "
        "minutes (--max-minutes): training stops when it is spent, even before max_epochs (resumed runs count the "
        "time already spent); WarmupCosine then anneals over the budget")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = config_field(
        "auto", "'auto' = cuda if available else cpu")
    devices: Union[int, Literal["auto"]] = config_field(1, "devices per node (Ray: workers per node)")
    num_nodes: int = config_field(1, "nodes (Ray: workers = devices * num_nodes)")
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = config_field("auto", "distribution strategy")
    deterministic: bool = config_field(True, "deterministic algorithms; same seed -> same losses")
    precision: PrecisionName = config_field("32-true", "Lightning precision")
    gradient_clip_val: Optional[float] = config_field(None, "clip gradients at this value (None = off)")
    gradient_clip_algorithm: Literal["norm", "value"] = config_field("norm", "how gradients are clipped")
    accumulate_grad_batches: int = config_field(1, "accumulate gradients over this many batches per optimiser step")
    log_every_n_steps: int = config_field(10, "how often step-level metrics are logged")
    enable_checkpointing: bool = config_field(True, "save checkpoints (ModelCheckpoint, plus last.ckpt)")
    enable_progress_bar: Optional[bool] = config_field(None, "progress bar (None = only on a terminal)")

    @property
    def max_time_delta(self) -> timedelta | None:
        """max_time as a timedelta (None = no wall-clock budget)."""
        return max_time_delta(self.max_time)

    def _check(self) -> None:
        if self.max_epochs < 1:
            self._fail("max_epochs", f"got {self.max_epochs}; must be >= 1")
        if isinstance(self.max_time, (int, float)) and not isinstance(self.max_time, bool):
            object.__setattr__(self, "max_time", {"minutes": float(self.max_time)})  # as Lightning's mapping
        self.max_time_delta  # noqa: B018 - checks the value, one line naming trainer.max_time
        if self.devices != "auto" and self.devices < 1:
            self._fail("devices", f"got {self.devices}; must be >= 1 or 'auto'")
        if self.num_nodes < 1:
            self._fail("num_nodes", f"got {self.num_nodes}; must be >= 1")
        if self.accumulate_grad_batches < 1:
            self._fail("accumulate_grad_batches", f"got {self.accumulate_grad_batches}; must be >= 1 (1 = no "
                       "accumulation)")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            self._fail("gradient_clip_val", f"got {self.gradient_clip_val}; must be > 0 or null (off)")
        if self.log_every_n_steps < 1:
            self._fail("log_every_n_steps", f"got {self.log_every_n_steps}; must be >= 1")


@dataclass(frozen=True)
class OptimizerConfig(ConfigSection):
    """Adam and its learning-rate schedule (`PtychoPINNModule.configure_optimizers`)."""

    section: typing.ClassVar[str] = "optimizer"

    learning_rate: float = config_field(2e-3, "Adam learning rate (2e-3 with batch 4: the benchmarks' setting)")
    scheduler: SchedulerName = config_field(
        "WarmupCosine", "learning-rate schedule ('Default' = constant; WarmupCosine: warm-up, then cosine decay to "
        "the last epoch, or over trainer.max_time when set)")
    scheduler_gamma: float = config_field(0.9, "Exponential: lr *= gamma each epoch; MultiStage: lr *= gamma at each milestone")
    scheduler_milestones: list[int] = config_field([5, 8], "MultiStage: epochs at which lr is multiplied by scheduler_gamma")
    warmup_epochs: int = config_field(1, "WarmupCosine: linear warm-up epochs before the cosine decay")
    min_lr_ratio: float = config_field(0.01, "WarmupCosine: final lr as a fraction of learning_rate")
    plateau_factor: float = config_field(0.5, "ReduceLROnPlateau: lr *= factor when the monitored metric stalls")
    plateau_patience: int = config_field(2, "ReduceLROnPlateau: epochs without improvement before reducing")

    def _check(self) -> None:
        if self.learning_rate <= 0:
            self._fail("learning_rate", f"got {self.learning_rate}; must be > 0")
        if not 0 < self.scheduler_gamma <= 1:
            self._fail("scheduler_gamma", f"got {self.scheduler_gamma}; must be in (0, 1]")
        if any(m < 1 for m in self.scheduler_milestones) or list(self.scheduler_milestones) != sorted(
                set(self.scheduler_milestones)):
            self._fail("scheduler_milestones", f"got {self.scheduler_milestones}; must be increasing epochs >= 1")
        if self.warmup_epochs < 0:
            self._fail("warmup_epochs", f"got {self.warmup_epochs}; must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            self._fail("min_lr_ratio", f"got {self.min_lr_ratio}; must be in [0, 1]")
        if not 0 < self.plateau_factor < 1:
            self._fail("plateau_factor", f"got {self.plateau_factor}; must be in (0, 1)")
        if self.plateau_patience < 0:
            self._fail("plateau_patience", f"got {self.plateau_patience}; must be >= 0")


@dataclass(frozen=True)
class DataLoaderConfig(ConfigSection):
    """`torch.utils.data.DataLoader`'s keywords for the train, validation and inference loaders. These are
    DataLoader processes inside each training process, not Ray workers (`--dataloader-workers`)."""

    section: typing.ClassVar[str] = "dataloader"

    num_workers: int = config_field(0, "DataLoader worker processes per training process (not Ray workers)")
    pin_memory: bool = config_field(False, "DataLoader pin_memory")
    persistent_workers: bool = config_field(False, "keep DataLoader workers alive between epochs (needs num_workers > 0)")
    prefetch_factor: Optional[int] = config_field(None, "batches prefetched per worker (needs num_workers > 0)")

    def _check(self) -> None:
        if self.num_workers < 0:
            self._fail("num_workers", f"got {self.num_workers}; must be >= 0")
        if self.num_workers == 0 and self.persistent_workers:
            self._fail("persistent_workers", "needs num_workers > 0 (torch refuses persistent "
                       "workers without worker processes); set --dataloader-workers or drop persistent_workers")
        if self.num_workers == 0 and self.prefetch_factor is not None:
            self._fail("prefetch_factor", "needs num_workers > 0 (torch refuses prefetch_factor "
                       "without worker processes); set --dataloader-workers or leave prefetch_factor null")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            self._fail("prefetch_factor", f"got {self.prefetch_factor}; must be >= 1 or null")


@dataclass(frozen=True)
class CheckpointConfig(ConfigSection):
    """`ModelCheckpoint` and `EarlyStopping`, by their names (last.ckpt is always written when
    trainer.enable_checkpointing)."""

    section: typing.ClassVar[str] = "checkpoint"

    save_top_k: int = config_field(1, "best checkpoints kept (-1 = all)")
    monitor: str = config_field("val_loss", "metric ranking checkpoints, early stopping, plateau")
    mode: Literal["min", "max"] = config_field("min", "whether the monitored metric should go down or up")
    early_stop_patience: Optional[int] = config_field(None, "stop after this many epochs without improvement (None = off)")

    def _check(self) -> None:
        if self.save_top_k < -1:
            self._fail("save_top_k", f"got {self.save_top_k}; must be >= -1")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            self._fail("early_stop_patience", f"got {self.early_stop_patience}; must be >= 1 or null (off)")


@dataclass(frozen=True)
class LoggingConfig(ConfigSection):
    """The metrics logger and the reconstructions it receives as images."""

    section: typing.ClassVar[str] = "logging"

    logger: LoggerName = config_field("csv", "metrics logger: csv, tensorboard, mlflow or none")
    log_images_every_n_epochs: int = config_field(
        5, "every this many epochs (and after the last) the logger gets the current reconstruction of a fixed "
        "validation region, amplitude and phase (TensorBoard/MLflow images, PNGs under logs/ for csv); 0 = off")

    def _check(self) -> None:
        if self.log_images_every_n_epochs < 0:
            self._fail("log_images_every_n_epochs", f"got {self.log_images_every_n_epochs}; must be >= 0 (0 = off)")
        if self.logger == "none":
            object.__setattr__(self, "logger", None)
