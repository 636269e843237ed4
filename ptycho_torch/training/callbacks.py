"""Lightning callbacks of every run: per-epoch history (kept in checkpoints), a one-line epoch
summary with throughput printed on rank 0, and the learning rate (Lightning's LearningRateMonitor).
The reconstruction images logged while training are progress_images.ReconstructionImages."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

log = logging.getLogger("ptycho_torch")


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's current epoch-level scalar metrics as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


class History(Callback):
    """Records {epoch, metrics...} after every training epoch. Its state is saved in checkpoints, so
    a resumed run keeps the epochs it did before the interruption."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {"epoch": float(trainer.current_epoch), **scalar_metrics(trainer)}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]


class EpochSummary(Callback):
    """Logs 'epoch 3/10 train_loss=... val_loss=... lr=... 812 samples/s' at the end of each epoch."""

    def __init__(self) -> None:
        self._start = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._samples += int(batch["x"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = max(time.perf_counter() - self._start, 1e-9)
        shown = {k: v for k, v in scalar_metrics(trainer).items()
                 if k in ("train_loss", "val_loss", "lr") and math.isfinite(v)}
        text = " ".join(f"{k}={v:.5g}" for k, v in shown.items())
        log.info("epoch %d/%d %s %.0f samples/s", trainer.current_epoch + 1, trainer.max_epochs, text,
                 self._samples / seconds)


class LearningRate(LearningRateMonitor):
    """Lightning's LearningRateMonitor once per epoch: every optimiser's learning rate goes to the
    run's loggers under Lightning's names (`lr-Adam`). It also keeps the first optimiser's rate as
    the epoch metric `lr` (History, the epoch line, Ray Train / Tune reports), and runs without a
    logger too (then only that metric)."""

    def __init__(self) -> None:
        super().__init__(logging_interval="epoch")

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
        if trainer.optimizers:
            rate = float(trainer.optimizers[0].param_groups[0]["lr"])
            trainer.callback_metrics["lr"] = torch.tensor(rate, device=trainer.strategy.root_device)
