"""The LightningModule: network + differentiable physics + Poisson loss, optimiser and schedules.

The module knows nothing about Ray: distributed training wraps it from outside (ptycho_dist).
Hyperparameters saved in checkpoints are plain dicts of the config sections, the number of probe
modes and the normalisation factor r; the probe itself lives in the state dict (as a real view).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.model import PtychoNet
from ptycho_torch.physics import (
    TYPICAL_AMPLITUDE,
    backpropagate,
    initial_log_scale,
    overlap_constraint,
    partner_frames,
    poisson_nll,
    predicted_amplitude,
    total_variation,
)


class WarmupCosine:
    """lr factor: linear warm-up over `warmup` epochs, then cosine decay to `min_ratio` at `total`."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup - 1)
        progress = min(1.0, (epoch - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PtychoPINNModule(L.LightningModule):
    """PtychoPINN. Batches are dicts from `GroupDataset` (x, amp, positions, offsets, index)."""

    def __init__(
        self,
        model: dict[str, Any],
        training: dict[str, Any],
        execution: dict[str, Any],
        norm_factor: float,
        probe_modes: int = 1,
        probe: torch.Tensor | None = None,
        monitor: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["probe"])
        self.model_config = ModelConfig.from_dict(model)
        self.training_config = TrainingConfig.from_dict(training)
        self.execution_config = PyTorchExecutionConfig.from_dict(execution)
        self.monitor = monitor or self.execution_config.checkpoint_monitor_metric
        N = self.model_config.N
        cfg = self.model_config
        self.net_channels = 1 if cfg.group_network == "per_pattern" else cfg.channels
        in_per_pattern = 2 if cfg.network_input == "backprop" else 1
        if cfg.reads_partners:
            in_per_pattern *= cfg.channels  # its own estimate and its C - 1 partners' (see partner_input)
        self.net = PtychoNet(N, self.net_channels, cfg.n_filters_scale,
                             in_channels=in_per_pattern * self.net_channels, skips=cfg.decoder == "unet")
        if probe is None:
            probe = torch.ones(probe_modes, N, N, dtype=torch.complex64)
        probe = probe.to(torch.complex64).reshape(-1, N, N)
        probe_ri = torch.view_as_real(probe).clone()  # (P, N, N, 2) float32: DDP-friendly real view
        if self.model_config.probe_trainable:
            self.probe_ri = nn.Parameter(probe_ri)
        else:
            self.register_buffer("probe_ri", probe_ri)
        log_s0 = initial_log_scale(probe, typical_amplitude=1.0 if cfg.intensity_scale_start == "unit"
                                   else TYPICAL_AMPLITUDE)
        self.log_scale = nn.Parameter(torch.tensor(log_s0, dtype=torch.float32),
                                      requires_grad=self.model_config.intensity_scale_trainable)
        # fixed scale of the back-propagated input (the start of log_scale), so the input of a trained
        # network does not drift with the learned scale
        self.register_buffer("input_scale", torch.tensor(math.exp(log_s0), dtype=torch.float32))
        self.register_buffer("norm_factor", torch.tensor(float(norm_factor), dtype=torch.float64))

    # ------------------------------------------------------------------ forward model
    @property
    def probe(self) -> torch.Tensor:
        """(P, N, N) complex64."""
        return torch.view_as_complex(self.probe_ri)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> what the network reads, (B, C_in, N, N) float32:
        x itself, or the back-propagated estimate as (real, imaginary) channel pairs."""
        if self.model_config.network_input == "amplitude":
            return x
        est = backpropagate(x.float(), self.probe.detach(), self.input_scale)  # a tensor: no device sync  # (B, C, N, N)
        B, C, N, _ = est.shape
        return torch.stack([est.real, est.imag], dim=2).reshape(B, 2 * C, N, N)

    def partner_input(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) of groups at offsets (B, C, 2) -> (B * C, 2C, N, N): for
        each pattern, its own back-propagated estimate followed by its C - 1 partners' estimates
        translated into its frame (physics.partner_frames), as (real, imaginary) pairs."""
        B, C, N, _ = x.shape
        est = backpropagate(x.float(), self.probe.detach(), self.input_scale)  # (B, C, N, N)
        frames = partner_frames(est, offsets.float())  # (B, C, C, N, N)
        return torch.stack([frames.real, frames.imag], dim=3).reshape(B * C, 2 * C, N, N)

    def raw_patches(self, x: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> the network's own patches (B, C, N, N) complex64,
        before any overlap constraint. 'per_pattern' runs the network on each pattern alone (reading
        its partners too with `model.partner_input`, which needs the group's offsets (B, C, 2))."""
        B, C, N, _ = x.shape
        if self.net_channels == 1 and C > 1:
            if self.model_config.reads_partners:
                if offsets is None:
                    raise ValueError("model.partner_input needs the group offsets: call module(x, offsets)")
                return self.net(self.partner_input(x, offsets)).reshape(B, C, N, N)
            return self.net(self.network_input(x.reshape(B * C, 1, N, N))).reshape(B, C, N, N)
        return self.net(self.network_input(x))

    def merge_weight(self) -> torch.Tensor | None:
        """(N, N) weight of the overlap merge, or None for all ones."""
        if self.model_config.merge_weight == "ones":
            return None
        w = self.probe.detach().abs().square().sum(0)
        return w / w.max().clamp_min(1e-30)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> object patches (B, C, N, N) complex64; for a group
        (C > 1, offsets (B, C, 2) given) the overlap-constrained patches the loss trains."""
        obj = self.raw_patches(x, offsets)
        if obj.shape[1] > 1 and offsets is not None and self.model_config.overlap_constraint:
            obj = overlap_constraint(obj, offsets, self.merge_weight())
        return obj

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.training_config
        obj = self(batch["x"], batch["offsets"])  # (B, C, N, N) complex64
        pred = predicted_amplitude(obj, self.probe, self.log_scale)  # (B, C, N, N), normalised
        r = float(self.norm_factor)
        parts = {"nll": poisson_nll(pred, batch["amp"], r, cfg.eps)}
        loss = cfg.nll_weight * parts["nll"]
        if cfg.mae_weight:
            parts["mae"] = (pred - batch["x"]).abs().mean()
            loss = loss + cfg.mae_weight * parts["mae"]
        if cfg.tv_weight:
            parts["tv"] = total_variation(obj)
            loss = loss + cfg.tv_weight * parts["tv"]
        parts["loss"] = loss
        return parts

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self._losses(batch)
        if not torch.isfinite(parts["loss"]):
            raise FloatingPointError(
                f"training loss became {parts['loss'].item()} at epoch {self.current_epoch}, batch "
                f"{batch_idx}; lower --learning-rate or set --gradient-clip-val")
        bs = batch["x"].shape[0]
        for name, value in parts.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True,
                     prog_bar=name == "loss")
        return parts["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        parts = self._losses(batch)
        bs = batch["x"].shape[0]
        for name, value in parts.items():
            self.log(f"val_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True,
                     prog_bar=name == "loss")

    def on_train_epoch_start(self) -> None:
        optimizer = self.optimizers()
        optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self.log("lr", optimizer.param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        ex = self.execution_config
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=ex.learning_rate)
        epochs = self.training_config.nepochs
        sched = ex.scheduler
        if sched == "Default":
            return optimizer
        if sched == "Exponential":
            scheduler: Any = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=ex.scheduler_gamma)
        elif sched == "MultiStage":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=list(ex.scheduler_milestones), gamma=ex.scheduler_gamma)
        elif sched == "WarmupCosine":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, WarmupCosine(ex.warmup_epochs, epochs, ex.min_lr_ratio))
        else:  # ReduceLROnPlateau
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=ex.checkpoint_mode, factor=ex.plateau_factor, patience=ex.plateau_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
