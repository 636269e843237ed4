"""Torch Dataset of grouped diffraction patterns, and the Lightning DataModule for training.

One item is one group (C = gridsize**2 patterns):
    x          (C, N, N) float32  network input r * X (normalised amplitude)
    amp        (C, N, N) float32  measured amplitude X = sqrt(counts)
    positions  (C, 2)    float32  scan positions (x, y) in object pixels
    offsets    (C, 2)    float32  positions relative to the group centroid (pixels)
    index      ()        int64    group index in the dataset
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ptycho_torch.config import ConfigError, PyTorchExecutionConfig, RunConfig
from ptycho_torch.data.grouping import Groups, make_groups
from ptycho_torch.data.scan_files import Scan, read_scans
from ptycho_torch.physics import normalization_factor


class GroupDataset(Dataset):
    """Groups of patterns from one scan; reads the diffraction rows of a group on access (lazy for
    HDF5), so it pickles cheaply to DataLoader workers."""

    def __init__(self, scan: Scan, groups: Groups, norm_factor: float) -> None:
        self.scan = scan
        self.groups = groups
        self.norm_factor = float(norm_factor)
        self._positions = scan.positions.astype(np.float32)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._sample(i, self.scan.diffraction_rows(self.groups.indices[i]))

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A whole batch from one read of its rows (the DataLoader calls this when it exists): one
        HDF5 call per batch instead of one per pattern."""
        rows = self.scan.diffraction_rows(self.groups.indices[np.asarray(indices, dtype=np.int64)])  # (B, C, N, N)
        return [self._sample(i, amp) for i, amp in zip(indices, rows)]

    def _sample(self, i: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Group i from its amplitudes rows (C, N, N)."""
        members = self.groups.indices[i]  # (C,)
        amp = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        pos = torch.from_numpy(self._positions[members])  # (C, 2)
        return {
            "x": amp * self.norm_factor,
            "amp": amp,
            "positions": pos,
            "offsets": pos - pos.mean(dim=0, keepdim=True),
            "index": torch.tensor(i, dtype=torch.int64),
        }


def dataloader_kwargs(execution: PyTorchExecutionConfig) -> dict[str, Any]:
    """The DataLoader knobs of the execution config, for train, val and inference loaders alike."""
    kwargs: dict[str, Any] = {
        "num_workers": execution.num_workers,
        "pin_memory": execution.pin_memory,
        "persistent_workers": execution.persistent_workers,
    }
    if execution.prefetch_factor is not None:
        kwargs["prefetch_factor"] = execution.prefetch_factor
    return kwargs


def resolve_model_size(config: RunConfig, scan: Scan) -> RunConfig:
    """`config` with model.N taken from the scan when it is None; an explicit N that disagrees with
    the scan, or a scan size no network takes, is a ConfigError naming the fix."""
    from ptycho_torch.model import N_BLOCKS

    if config.model.N is None:
        if scan.N not in N_BLOCKS:
            raise ConfigError(f"model.N: the scan {scan.path or ''} holds {scan.N}x{scan.N} patterns but the "
                              f"network takes only {', '.join(map(str, sorted(N_BLOCKS)))}; crop or bin the "
                              "patterns to one of these sizes")
        return config.replace(model=dataclasses.replace(config.model, N=scan.N))
    if scan.N != config.model.N:
        raise ConfigError(f"model.N: the model expects {config.model.N}x{config.model.N} patterns "
                          f"but the scan has {scan.N}x{scan.N}; set --N {scan.N} or leave N unset "
                          "(it then comes from the data)")
    return config


def dataset_norm_factor(scan: Scan) -> float:
    """The normalisation factor r of a scan (SPEC 4.1), from a streaming pass over its patterns."""
    return normalization_factor(scan.mean_energy(), scan.N)


class PtychoDataModule(L.LightningDataModule):
    """Train/val split of the groups of one scan.

    The split is a seeded permutation of the groups (`execution.seed`), so every process of a
    distributed run sees the same split; each rank then reads its shard (DistributedSampler).
    """

    def __init__(self, config: RunConfig, scan: Scan | None = None, norm_factor: float | None = None,
                 validate: bool = True) -> None:
        """`scan` defaults to `read_scans(config.data.path)` (a file, a glob or several files), validated
        unless `validate` is False (a Ray worker reading what its driver validated)."""
        super().__init__()
        self.config = config
        if scan is None:
            if not config.data.path:
                raise ConfigError("data.path: no scan file given; pass --data SCAN.npz")
            scan = read_scans(config.data.path, validate=validate)
        if config.data.max_patterns is not None and config.data.max_patterns < scan.n_patterns:
            scan = scan.subset(np.arange(config.data.max_patterns))
        config = resolve_model_size(config, scan)
        self.config = config
        self.scan = scan
        self.norm_factor = float(norm_factor) if norm_factor is not None else dataset_norm_factor(scan)
        rng = np.random.default_rng(config.execution.seed)
        groups = make_groups(scan.positions, config.model.gridsize,
                             neighbor_count=config.data.neighbor_count,
                             n_groups=config.data.n_groups,
                             rng=rng if config.model.gridsize > 1 else None)
        order = rng.permutation(len(groups))
        n_val = int(round(config.data.val_fraction * len(groups)))
        if config.data.val_fraction > 0 and n_val == 0:
            n_val = 1
        if len(groups) - n_val < 1:
            raise ConfigError(f"data.val_fraction: {config.data.val_fraction} leaves no training groups "
                              f"out of {len(groups)}; lower it")
        self.train_groups = groups.take(np.sort(order[n_val:]))
        self.val_groups = groups.take(np.sort(order[:n_val])) if n_val else None

    @property
    def has_validation(self) -> bool:
        return self.val_groups is not None

    def _loader(self, groups: Groups, shuffle: bool) -> DataLoader:
        """A loader whose order depends only on (seed, epoch, rank, world size).

        The sampler is always a DistributedSampler (one replica on a single device), so a run on
        one process, a 1-worker Ray run and a resumed run see the same batches: Lightning calls
        `set_epoch` on it each epoch, and the permutation is drawn from seed + epoch.
        """
        dataset = GroupDataset(self.scan, groups, self.norm_factor)
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                     seed=self.config.execution.seed, drop_last=False)
        return DataLoader(
            dataset,
            batch_size=self.config.training.batch_size,
            sampler=sampler,
            drop_last=False,
            **dataloader_kwargs(self.config.execution),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_groups, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_groups, shuffle=False) if self.val_groups is not None else []
