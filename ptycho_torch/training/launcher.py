"""What a launcher that runs `training.train.train` in processes of its own needs (ptycho_dist's Ray
Train workers and sweep trials), none of it tied to the launcher.

`with_absolute_data_path` resolves data.path and training.init_from once on the driver, so every
worker process (whatever its working directory) reads the same files; `StartEpoch` records the epoch
a fit starts at (> 0 when it continues from a checkpoint); `state_checksum` and `gather` let rank 0
record every replica's final weights (equal after a DDP run) in manifest.json.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ptycho_torch.config import ConfigError, RunConfig, apply_overrides


def with_absolute_data_path(config: RunConfig) -> RunConfig:
    """config with data.path (and training.init_from) made absolute (every worker process resolves
    them the same way); the file (or, for a glob, at least one file) and the bundle must exist."""
    from ptycho_torch.data.scan_files import resolve_scan_paths

    if not config.data.path:
        raise ConfigError("data.path: no scan file given; pass --data SCAN (or data.path in --config)")
    resolve_scan_paths(config.data.path)
    paths = [os.path.abspath(os.path.expanduser(p)) for p in (config.data.path if isinstance(config.data.path, list)
                                                             else [config.data.path])]
    changes: dict[str, Any] = {"data.path": paths[0] if len(paths) == 1 else paths}
    if config.training.init_from:  # a warm start's bundle, found by every worker the same way
        from ptycho_torch.training.warm_start import init_source

        init_source(config.training.init_from)
        changes["training.init_from"] = os.path.abspath(os.path.expanduser(config.training.init_from))
    return apply_overrides(config, changes)


class StartEpoch(Callback):
    """Remembers the epoch the fit starts at (non-zero when resumed from a checkpoint)."""

    def __init__(self) -> None:
        self.epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = int(trainer.current_epoch)


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over every (name, bytes) of the state dict, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather(value: Any) -> list[Any]:
    """`value` (picklable) of every rank, in rank order; [value] outside a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
