"""Training checkpoints: safe loading, intact-checkpoint selection for resume, atomic saving.

Every checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only; a
checkpoint carrying other Python objects, e.g. a planted pickle payload, is refused before anything
in it runs). `resume_checkpoint` picks `checkpoints/last.ckpt` when it is intact, otherwise the newest
intact `*.ckpt` of the run (saying so), and fails with one line when none is left.
`AtomicCheckpointIO` makes Lightning write checkpoints as temp file + rename, so an interruption
mid-write can no longer leave a truncated last.ckpt. `LastEveryEpoch` writes `last.ckpt` at the end of
every training epoch, whatever the monitored metric did (Lightning 2.6's `ModelCheckpoint(save_last=True)`
with a monitor rewrites it only in epochs that entered the top k), so a SIGKILL, an OOM kill or a power
loss costs at most the epoch in flight.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ptycho_torch.config import ConfigError
from ptycho_torch.errors import UserError

log = logging.getLogger("ptycho_torch")

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
REQUIRED_KEYS = ("state_dict", "epoch", "loops")
LOW_DISK_BYTES = 64 << 20  # a failed checkpoint write with less free space than this is reported as a full disk


class UnsafeCheckpointError(ConfigError):
    """A checkpoint holds Python objects that `weights_only=True` loading refuses to build."""


def torch_load_problem(error: BaseException) -> str:
    """What torch.load complained about, on one line without terminal colours: the refused global of
    a weights_only load, else the first sentence."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return f"unsupported global {refused.group(1)}"
    first = " ".join(text.split()).split(". ")[0]
    return first[:160]


def load_checkpoint_safely(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict, loaded with weights_only=True on the CPU.

    Raises UnsafeCheckpointError for a checkpoint with non-tensor Python objects (nothing of it is
    executed) and ValueError for a missing, empty, truncated or otherwise damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e).lower() or "weights only" in str(e).lower():
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it holds Python objects beyond tensors ({torch_load_problem(e)}); nothing "
                "in it was run. If you did not write this file, delete it; checkpoints written by "
                "ptycho-torch never contain such objects") from None
        raise UserError(f"{path}: damaged ({torch_load_problem(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"{path}: damaged or truncated ({torch_load_problem(e)})") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        raise UserError(f"{path}: not a Lightning training checkpoint (needs keys {list(REQUIRED_KEYS)})")
    return data


def resume_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a resumed run continues from: last.ckpt if intact, else the newest intact one.

    Raises FileNotFoundError when the run has no checkpoint, UnsafeCheckpointError for a checkpoint
    that may not be loaded safely (never skipped silently), and ConfigError when every checkpoint is
    damaged.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    last = folder / LAST_CHECKPOINT
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != LAST_CHECKPOINT),
                    key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    candidates = ([last] if last.is_file() else []) + others
    if not candidates:
        raise FileNotFoundError(f"cannot resume: {last} does not exist (was the run trained with "
                                "checkpointing enabled?)")
    return first_intact(candidates, f"cannot resume {run_dir}", "start a new run with --overwrite or another --out")


def first_intact(candidates: Sequence[Path], where: str, fix: str) -> Path:
    """The first of `candidates` (newest first) that loads safely, logging the damaged ones skipped.
    An unsafe checkpoint raises UnsafeCheckpointError at once (never skipped); none intact is a
    ConfigError '<where>: no intact checkpoint left (...); <fix>'."""
    damaged: list[str] = []
    for path in candidates:
        try:
            load_checkpoint_safely(path)
        except UnsafeCheckpointError:
            raise
        except ValueError as e:
            damaged.append(str(e))
            continue
        if damaged:
            log.warning("%s; resuming from the newest intact checkpoint %s instead", "; ".join(damaged),
                        path.name if path.name != "checkpoint.ckpt" else path.parent.name)
        return path
    raise ConfigError(f"{where}: no intact checkpoint left ({'; '.join(damaged)}); {fix}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing through a temporary file and an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, target)
        except (OSError, RuntimeError) as e:  # a full disk: torch's writer says 'unexpected pos' or 'write failed'
            tmp.unlink(missing_ok=True)
            free = shutil.disk_usage(target.parent).free
            raise OSError(errno.ENOSPC if free < LOW_DISK_BYTES else getattr(e, "errno", None) or errno.EIO,
                          f"could not write the checkpoint ({torch_load_problem(e)}; {free / 2**20:.0f} MiB free on "
                          "its disk); the previous checkpoint is kept: free space, then resume the run",
                          str(target)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Always weights_only=True, whatever the caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD say."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location or (lambda storage, loc: storage), weights_only=True)


class LastEveryEpoch(Checkpoint):
    """Writes `path` (a run's checkpoints/last.ckpt) at the end of every training epoch.

    A `Checkpoint` subclass, so Lightning runs it with the monitoring callbacks, after the module's
    and the other callbacks' epoch-end hooks (History has recorded the epoch, so a resume keeps its
    row). Written through the Trainer's checkpoint IO (AtomicCheckpointIO: temp file + rename), on
    every rank (the save is collective under DDP; rank 0 writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or bool(trainer.fast_dev_run):
            return
        trainer.save_checkpoint(str(self.path))
