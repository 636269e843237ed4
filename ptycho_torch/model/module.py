"""The LightningModule: network + differentiable physics + Poisson loss, optimiser and schedules.

The module knows nothing about Ray: distributed training wraps it from outside (ptycho_dist).
Hyperparameters saved in checkpoints are the run's config as a plain dict (`RunConfig.to_dict()`), the
number of probe modes and the normalisation factor r; the probe itself lives in the state dict (as a
real view).

Several scans (`set_scans`): a batch's `scan` ids (B,) pick each sample's probe, input scale and
normalisation factor from per-scan tables (not saved: they belong to the training data, the module's
own probe and r are those of scan 0). One log_scale is learned, the scale of scan 0; scan k's scale
is log_scale + log s0_k - log s0_0 with s0 the start `initial_log_scale` gives each scan's probe, so
scans of different doses (or probe units) share it. One scan takes the plain path, unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import torch
from torch import nn

from ptycho_torch.config import RunConfig
from ptycho_torch.model.network import PtychoNet
from ptycho_torch.physics.forward import (
    TYPICAL_AMPLITUDE,
    backpropagate,
    initial_log_scale,
    overlap_constraint,
    partner_frames,
    poisson_nll,
    predicted_amplitude,
    total_variation,
)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """The `WarmupCosine` schedule, stepped once per epoch, from torch's own schedulers: a linear
    warm-up (LinearLR) whose epoch e < warmup has lr * (e + 1) / (warmup + 1), then cosine decay
    (CosineAnnealingLR) from lr to min_ratio * lr over the remaining max(1, total - warmup - 1) epochs,
    reaching it at the last epoch; joined by SequentialLR at epoch `warmup`."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    base = [group["lr"] for group in optimizer.param_groups]
    if len(set(base)) != 1:
        raise ValueError("warmup_cosine: expects one learning rate for every parameter group")
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup - 1), eta_min=min_ratio * base[0])
    if warmup <= 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def budget_cosine(optimizer: torch.optim.Optimizer, trainer: Any, warmup_steps: int, min_ratio: float,
                  total_steps: float = math.inf) -> torch.optim.lr_scheduler.LambdaLR:
    """The `WarmupCosine` schedule of a wall-clock budget (trainer.max_time), stepped every
    optimiser step: lr * min(1, (s + 1) / (warmup_steps + 1)) * (min_ratio + (1 - min_ratio) *
    (1 + cos(pi * f)) / 2), with s the step and f the larger of the fraction of the budget spent
    (Lightning's Timer, which a resumed run restores; rank 0's value on every rank, so DDP replicas keep
    one lr) and s / total_steps (the epochs' steps, for a run whose epochs end before its budget)."""
    from lightning.pytorch.callbacks import Timer

    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb.time_remaining() is not None)

    def factor(step: int) -> float:
        elapsed = timer.time_elapsed()
        spent = trainer.strategy.broadcast(min(1.0, elapsed / max(elapsed + timer.time_remaining(), 1e-9)))
        spent = max(spent, min(1.0, step / max(total_steps, 1.0)))
        warm = min(1.0, (step + 1) / (warmup_steps + 1))
        return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * spent)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class PtychoPINNModule(L.LightningModule):
    """PtychoPINN. Batches are dicts from `GroupDataset` (x, amp, positions, offsets, index)."""

    def __init__(
        self,
        config: RunConfig,
        norm_factor: float,
        probe_modes: int = 1,
        probe: torch.Tensor | None = None,
        monitor: str | None = None,
        scan_probes: torch.Tensor | None = None,
        scan_norm_factors: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        # plain data only: checkpoints load with weights_only=True
        self.save_hyperparameters({"config": config.to_dict(), "norm_factor": float(norm_factor),
                                   "probe_modes": probe_modes, "monitor": monitor})
        self.config = config
        self.model_config = config.model
        self.training_config = config.training
        self.monitor = monitor or config.checkpoint.monitor
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
        for name in ("scan_probes_ri", "scan_input_scale", "scan_log_offset", "scan_norm"):
            self.register_buffer(name, None, persistent=False)  # per-scan tables (set_scans)
        if scan_probes is not None:
            self.set_scans(scan_probes, scan_norm_factors)

    def _typical_amplitude(self) -> float:
        return 1.0 if self.model_config.intensity_scale_start == "unit" else TYPICAL_AMPLITUDE

    def set_scans(self, probes: torch.Tensor, norm_factors: Sequence[float] | None) -> None:
        """Train on several scans: probes (S, P, N, N) complex, one per scan (scan 0 = the module's own
        probe), norm_factors (S,) their r. Samples then select theirs by `batch['scan']`."""
        from ptycho_torch.config import ConfigError

        probes = probes.to(torch.complex64)
        if norm_factors is None or len(norm_factors) != probes.shape[0]:
            raise ValueError(f"set_scans needs one normalisation factor per probe ({probes.shape[0]})")
        if self.model_config.probe_trainable:
            raise ConfigError(f"model.probe_trainable: refines one probe, but the training data are "
                              f"{probes.shape[0]} scans with probes of their own; set --model.probe_trainable "
                              "false, or train on one scan")
        log_s0 = torch.tensor([initial_log_scale(p, self._typical_amplitude()) for p in probes], dtype=torch.float64)
        self.scan_probes_ri = torch.view_as_real(probes).clone()  # (S, P, N, N, 2)
        self.scan_input_scale = torch.exp(log_s0).float()  # (S,)
        self.scan_log_offset = (log_s0 - log_s0[0]).float()  # (S,)
        self.scan_norm = torch.tensor([float(r) for r in norm_factors], dtype=torch.float32)  # (S,)

    def adopt_probe(self, probe: torch.Tensor) -> None:
        """Use `probe` (P, N, N) complex (another scan's) as the module's own, for inference: the
        input scale becomes its s0 and log_scale moves by the change of s0 (so the scale s / r of the
        forward model follows the probe's units). The same probe leaves everything as it was."""
        N = self.model_config.N
        probe = torch.as_tensor(probe).to(torch.complex64).reshape(-1, N, N).to(self.probe_ri.device)
        old = initial_log_scale(self.probe.detach().cpu(), self._typical_amplitude())
        new = initial_log_scale(probe.cpu(), self._typical_amplitude())
        with torch.no_grad():
            self.probe_ri = nn.Parameter(torch.view_as_real(probe).clone(), requires_grad=False) \
                if isinstance(self.probe_ri, nn.Parameter) else torch.view_as_real(probe).clone()
            if new != old:
                self.log_scale.add_(new - old)
            self.input_scale.fill_(math.exp(new))

    def scan_physics(self, scan: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | torch.Tensor]:
        """(probe, input scale, log scale, r) of a batch: the module's own (probe (P, N, N), scalars)
        for one scan, else per sample from the scan ids (B,): (B, P, N, N), (B,), (B,), (B,)."""
        if scan is None or self.scan_probes_ri is None:
            return self.probe, self.input_scale, self.log_scale, float(self.norm_factor)
        probe = torch.view_as_complex(self.scan_probes_ri[scan].contiguous())
        return probe, self.scan_input_scale[scan], self.log_scale + self.scan_log_offset[scan], self.scan_norm[scan]

    # ------------------------------------------------------------------ forward model
    @property
    def probe(self) -> torch.Tensor:
        """(P, N, N) complex64."""
        return torch.view_as_complex(self.probe_ri)

    def network_input(self, x: torch.Tensor, probe: torch.Tensor | None = None,
                      input_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> what the network reads, (B, C_in, N, N) float32:
        x itself, or the back-propagated estimate as (real, imaginary) channel pairs (with the
        module's probe, or per-sample probes (B, P, N, N) and input scales (B,))."""
        if self.model_config.network_input == "amplitude":
            return x
        probe = self.probe if probe is None else probe
        scale = self.input_scale if input_scale is None else input_scale
        est = backpropagate(x.float(), probe.detach(), scale)  # a tensor: no device sync  # (B, C, N, N)
        B, C, N, _ = est.shape
        return torch.stack([est.real, est.imag], dim=2).reshape(B, 2 * C, N, N)

    def partner_input(self, x: torch.Tensor, offsets: torch.Tensor, probe: torch.Tensor | None = None,
                      input_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) of groups at offsets (B, C, 2) -> (B * C, 2C, N, N): for
        each pattern, its own back-propagated estimate followed by its C - 1 partners' estimates
        translated into its frame (physics.partner_frames), as (real, imaginary) pairs."""
        B, C, N, _ = x.shape
        probe = self.probe if probe is None else probe
        scale = self.input_scale if input_scale is None else input_scale
        est = backpropagate(x.float(), probe.detach(), scale)  # (B, C, N, N)
        frames = partner_frames(est, offsets.float())  # (B, C, C, N, N)
        return torch.stack([frames.real, frames.imag], dim=3).reshape(B * C, 2 * C, N, N)

    def raw_patches(self, x: torch.Tensor, offsets: torch.Tensor | None = None, probe: torch.Tensor | None = None,
                    input_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> the network's own patches (B, C, N, N) complex64,
        before any overlap constraint. 'per_pattern' runs the network on each pattern alone (reading
        its partners too with `model.partner_input`, which needs the group's offsets (B, C, 2)).
        `probe` (B, P, N, N) and `input_scale` (B,) give each group its scan's (scan_physics)."""
        B, C, N, _ = x.shape
        if self.net_channels == 1 and C > 1:
            if self.model_config.reads_partners:
                if offsets is None:
                    raise ValueError("model.partner_input needs the group offsets: call module(x, offsets)")
                return self.net(self.partner_input(x, offsets, probe, input_scale)).reshape(B, C, N, N)
            if probe is not None and probe.dim() == 4:  # one probe per group -> one per pattern
                probe, input_scale = probe.repeat_interleave(C, 0), input_scale.repeat_interleave(C, 0)
            return self.net(self.network_input(x.reshape(B * C, 1, N, N), probe, input_scale)).reshape(B, C, N, N)
        return self.net(self.network_input(x, probe, input_scale))

    def merge_weight(self, probe: torch.Tensor | None = None) -> torch.Tensor | None:
        """(N, N) weight of the overlap merge (or (B, 1, N, N) for per-sample probes (B, P, N, N)),
        or None for all ones."""
        if self.model_config.merge_weight == "ones":
            return None
        if probe is not None and probe.dim() == 4:
            w = probe.detach().abs().square().sum(1, keepdim=True)  # (B, 1, N, N)
            return w / w.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        w = (self.probe if probe is None else probe).detach().abs().square().sum(0)
        return w / w.max().clamp_min(1e-30)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor | None = None, scan: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> object patches (B, C, N, N) complex64; for a group
        (C > 1, offsets (B, C, 2) given) the overlap-constrained patches the loss trains. `scan` (B,)
        int64 names each group's scan when the module trains on several (set_scans)."""
        probe, input_scale, _, _ = self.scan_physics(scan)
        return self._patches(x, offsets, probe, input_scale)

    def _patches(self, x: torch.Tensor, offsets: torch.Tensor | None, probe: torch.Tensor,
                 input_scale: torch.Tensor) -> torch.Tensor:
        per_sample = probe.dim() == 4
        obj = self.raw_patches(x, offsets, probe if per_sample else None, input_scale if per_sample else None)
        if obj.shape[1] > 1 and offsets is not None and self.model_config.overlap_constraint:
            obj = overlap_constraint(obj, offsets, self.merge_weight(probe if per_sample else None))
        return obj

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.training_config
        probe, input_scale, log_scale, r = self.scan_physics(batch.get("scan"))
        obj = self._patches(batch["x"], batch["offsets"], probe, input_scale)  # (B, C, N, N) complex64
        pred = predicted_amplitude(obj, probe, log_scale)  # (B, C, N, N), normalised
        parts = {"nll": poisson_nll(pred, batch["amp"], r, cfg.eps, mask=batch.get("mask"))}  # mask: detector
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

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        ex = self.config.optimizer
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=ex.learning_rate)
        epochs = self.config.trainer.max_epochs
        sched = ex.scheduler
        if sched == "Default":
            return optimizer
        if sched == "Exponential":
            scheduler: Any = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=ex.scheduler_gamma)
        elif sched == "MultiStage":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=list(ex.scheduler_milestones), gamma=ex.scheduler_gamma)
        elif sched == "WarmupCosine" and self.config.trainer.max_time is not None:
            total = float(self.trainer.estimated_stepping_batches)  # optimiser steps of all epochs
            per_epoch = total / max(1, epochs)
            warmup = round(ex.warmup_epochs * per_epoch) if math.isfinite(per_epoch) else 0
            scheduler = budget_cosine(optimizer, self.trainer, warmup, ex.min_lr_ratio, total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        elif sched == "WarmupCosine":
            scheduler = warmup_cosine(optimizer, ex.warmup_epochs, epochs, ex.min_lr_ratio)
        else:  # ReduceLROnPlateau
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=self.config.checkpoint.mode, factor=ex.plateau_factor, patience=ex.plateau_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
