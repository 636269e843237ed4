"""Torch Dataset of grouped diffraction patterns, and the Lightning DataModule for training.

One item is one group (C = gridsize**2 patterns):
    x          (C, N, N) float32  network input r * X (normalised amplitude)
    amp        (C, N, N) float32  measured amplitude X = sqrt(counts)
    positions  (C, 2)    float32  scan positions (x, y) in object pixels
    offsets    (C, 2)    float32  positions relative to the group centroid (pixels)
    index      ()        int64    group index in the dataset
    scan       ()        int64    the scan the group belongs to (0 for one scan; see data.corpus)
    mask       (1, N, N) bool     only with a detector mask: True = excluded pixel (not in the loss)

Training reads `data.path` through `data.corpus.read_training_scans`: one scan, or several scans
(a ScanCorpus) each normalised by its own factor r, grouped on its own and tagged with its scan id.

`GroupRows` / `split_rows` give the groups of a datamodule's splits as columns of numpy arrays by
group index, in blocks (`block_count`): what ptycho_dist.training.ingest streams to Ray Train workers through
Ray Data (`read_groups` is its read function); nothing here needs Ray.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ptycho_torch.config import MODEL_SIZES, ConfigError, DataLoaderConfig, RunConfig
from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.corpus import ScanCorpus, TrainingScans, corpus_scans, read_training_scans
from ptycho_torch.data.file_watch import FileWatch
from ptycho_torch.data.grouping import Groups, make_groups, make_groups_per_scan
from ptycho_torch.data.plausibility import check_canvas, energy_problem
from ptycho_torch.data.scan_files import Scan
from ptycho_torch.errors import UserError
from ptycho_torch.physics.forward import normalization_factor

BLOCK_BYTES = 16 * 2**20  # target size of one block of group rows (x and amp)


class GroupDataset(Dataset):
    """Groups of patterns from one scan (or a ScanCorpus of several, `norm_factor` then one r per
    scan); reads the diffraction rows of a group on access (lazy for HDF5), so it pickles cheaply to
    DataLoader workers."""

    def __init__(self, scan: TrainingScans, groups: Groups, norm_factor: float | Sequence[float]) -> None:
        self.scan = scan
        self.groups = groups
        factors = [float(r) for r in np.atleast_1d(np.asarray(norm_factor, dtype=np.float64))]
        self.norm_factor = factors[0]
        self._positions = scan.positions.astype(np.float32)
        mask = getattr(scan, "mask", None)  # (N, N) bool detector mask, True = excluded pixel
        self._mask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None]
        if isinstance(scan, ScanCorpus):
            if len(factors) == 1:
                factors = factors * scan.n_scans
            if len(factors) != scan.n_scans:
                raise ValueError(f"{len(factors)} normalisation factors for {scan.n_scans} scans")
            self._group_scan = scan.pattern_scan[groups.indices[:, 0]]  # (G,) int64
        else:
            self._group_scan = np.zeros(len(groups), np.int64)
        self._factors = factors  # r of each scan (python floats: x = amp * r as for one scan)
        self._watch = FileWatch(scan)  # a file truncated or rewritten under the run: one line, never zeros

    def __len__(self) -> int:
        return len(self.groups)

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        """Diffraction rows of the groups' members, after checking that no lazily read file changed."""
        self._watch.check()
        try:
            return self.scan.diffraction_rows(indices)
        except (OSError, KeyError, ValueError) as e:
            self._watch.explain(e)
            raise

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._sample(i, self._rows(self.groups.indices[i]))

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A whole batch from one read of its rows (the DataLoader calls this when it exists): one
        HDF5 call per batch instead of one per pattern."""
        rows = self._rows(self.groups.indices[np.asarray(indices, dtype=np.int64)])  # (B, C, N, N)
        return [self._sample(i, amp) for i, amp in zip(indices, rows)]

    def _sample(self, i: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Group i from its amplitudes rows (C, N, N)."""
        members = self.groups.indices[i]  # (C,)
        amp = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        pos = torch.from_numpy(self._positions[members])  # (C, 2)
        k = int(self._group_scan[i])
        sample = {
            "x": amp * self._factors[k],
            "amp": amp,
            "positions": pos,
            "offsets": pos - pos.mean(dim=0, keepdim=True),
            "index": torch.tensor(i, dtype=torch.int64),
            "scan": torch.tensor(k, dtype=torch.int64),
        }
        if self._mask is not None:
            sample["mask"] = self._mask  # (1, N, N): left out of the Poisson loss
        return sample


def dataloader_kwargs(dataloader: DataLoaderConfig) -> dict[str, Any]:
    """The dataloader section as DataLoader keywords, for train, val and inference loaders alike."""
    kwargs: dict[str, Any] = {
        "num_workers": dataloader.num_workers,
        "pin_memory": dataloader.pin_memory,
        "persistent_workers": dataloader.persistent_workers,
    }
    if dataloader.prefetch_factor is not None:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
    return kwargs


def resolve_model_size(config: RunConfig, scan: Scan) -> RunConfig:
    """`config` with model.N taken from the scan when it is None; an explicit N that disagrees with
    the scan, or a scan size no network takes, is a ConfigError naming the fix."""
    if config.model.N is None:
        if scan.N not in MODEL_SIZES:
            raise ConfigError(f"model.N: the scan {scan.path or ''} holds {scan.N}x{scan.N} patterns but the "
                              f"network takes only {', '.join(map(str, sorted(MODEL_SIZES)))}; {size_advice(scan)}")
        return config.replace(model=dataclasses.replace(config.model, N=scan.N))
    if scan.N != config.model.N:
        fix = (f"set --N {scan.N} or leave N unset (it then comes from the data)" if scan.N in MODEL_SIZES
               else size_advice(scan))
        raise ConfigError(f"model.N: the model expects {config.model.N}x{config.model.N} patterns "
                          f"but the scan has {scan.N}x{scan.N}; {fix}")
    return config


def size_advice(scan: Scan) -> str:
    """One choice that works for a scan whose pattern size no network takes: a beamline (HDF5) file
    is cropped or binned at read time (data.frame_fit), so name the --N (and frame_fit) that fits; the
    patterns of a contract file are used as stored, so they must be cropped in the file."""
    sizes = sorted(MODEL_SIZES)
    fitting = [n for n in sizes if n <= scan.N]
    beamline = "format" in (getattr(scan, "metadata", None) or {})
    if not fitting:
        return f"pad the patterns to {sizes[0]}x{sizes[0]} in the file (no network takes fewer pixels)"
    if beamline:
        n = fitting[-1]
        if scan.N >= 2 * n:
            return (f"set --N {n} --data.frame_fit bin (the frames binned {scan.N // n}x{scan.N // n}, then the "
                    f"central {n}x{n} kept)")
        return f"set --N {n} (the central {n}x{n} pixels around the beam are kept, data.frame_fit crop)"
    n = fitting[-1]
    lo = (scan.N - n) // 2
    return (f"crop the patterns in the file to {n}x{n} (diffraction[:, {lo}:{lo + n}, {lo}:{lo + n}]) and resample "
            f"the probe to match (ptycho_torch.data.detector.fit_probe(probe, ({scan.N}, {scan.N}), {n}, 1))")


def dataset_norm_factor(scan: Scan) -> float:
    """The normalisation factor r of a scan (SPEC 4.1), from a streaming pass over its patterns; a
    scan whose energy is not positive and finite is one UserError line saying why (data.plausibility)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing squares: explained below, not warned
        energy = scan.mean_energy()
    if not math.isfinite(energy) or energy <= 0:
        raise UserError(energy_problem(scan, energy))
    return normalization_factor(energy, scan.N)


class PtychoDataModule(L.LightningDataModule):
    """Train/val split of the groups of one scan, or of several scans (each grouped on its own).

    The split is a seeded permutation of the groups (`training.seed`), so every process of a
    distributed run sees the same split; each rank then reads its shard (DistributedSampler).
    `norm_factor` is r of scan 0 (the reference a model keeps), `norm_factors` r of every scan.
    """

    def __init__(self, config: RunConfig, scan: TrainingScans | None = None,
                 norm_factor: float | Sequence[float] | None = None, validate: bool = True) -> None:
        """`scan` defaults to `read_training_scans(config.data.path)` (a file, a glob or several files:
        one scan or several, as data.scans says), validated unless `validate` is False (a Ray worker
        reading what its driver validated). `norm_factor`: r, or one r per scan (None = from the data)."""
        super().__init__()
        self.config = config
        if scan is None:
            if not config.data.path:
                raise ConfigError("data.path: no scan file given; pass --data SCAN.npz")
            scan = read_training_scans(config.data.path, scans=config.data.scans, validate=validate,
                                       options=ReadOptions.from_config(config))
        scans = corpus_scans(scan)
        limit = config.data.max_patterns
        if limit is not None and any(limit < s.n_patterns for s in scans):
            scans = [s.subset(np.arange(limit)) if limit < s.n_patterns else s for s in scans]
            scan = scans[0] if len(scans) == 1 else ScanCorpus(scans)
        config = resolve_model_size(config, scan)
        for one in scans:  # positions in the wrong unit: one line, not a 57 GB allocation later
            check_canvas(one)
        self.config = config
        self.scan = scan
        if norm_factor is None:
            self.norm_factors = [dataset_norm_factor(s) for s in scans]
        else:
            self.norm_factors = [float(r) for r in np.atleast_1d(np.asarray(norm_factor, dtype=np.float64))]
            if len(self.norm_factors) != len(scans):
                raise ValueError(f"{len(self.norm_factors)} normalisation factors given for {len(scans)} scans")
        self.norm_factor = self.norm_factors[0]
        rng = np.random.default_rng(config.training.seed)
        grouping = dict(neighbor_count=config.data.neighbor_count, n_groups=config.data.n_groups,
                        rng=rng if config.model.gridsize > 1 else None)
        if len(scans) == 1:
            groups = make_groups(scan.positions, config.model.gridsize, **grouping)
        else:
            groups = make_groups_per_scan([s.positions for s in scans], config.model.gridsize, **grouping)
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

    def use_loaders(self, train: Iterable, val: Iterable | None) -> None:
        """Serve these iterables of batches (dicts as GroupDataset's, collated) instead of the
        DataLoaders, e.g. a Ray Data shard of this process (ptycho_dist.training.ingest)."""
        self._external = (train, val)

    def _loader(self, groups: Groups, shuffle: bool) -> DataLoader:
        """A loader whose order depends only on (seed, epoch, rank, world size).

        The sampler is always a DistributedSampler (one replica on a single device), so a run on
        one process, a 1-worker Ray run and a resumed run see the same batches: Lightning calls
        `set_epoch` on it each epoch, and the permutation is drawn from seed + epoch.
        """
        dataset = GroupDataset(self.scan, groups, self.norm_factors)
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                     seed=self.config.training.seed, drop_last=False)
        return DataLoader(
            dataset,
            batch_size=self.config.training.batch_size,
            sampler=sampler,
            drop_last=False,
            **dataloader_kwargs(self.config.dataloader),
        )

    def train_dataloader(self) -> DataLoader | Iterable:
        external = getattr(self, "_external", None)
        return external[0] if external is not None else self._loader(self.train_groups, shuffle=True)

    def val_dataloader(self) -> DataLoader | Iterable | list:
        external = getattr(self, "_external", None)
        if external is not None:
            return external[1] if external[1] is not None else []
        return self._loader(self.val_groups, shuffle=False) if self.val_groups is not None else []


@dataclass(eq=False)
class GroupRows:
    """Rows of one split by group index (picklable: the scans stay lazy, without their objects)."""

    dataset: GroupDataset

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The groups `ids` (k,) as columns: x, amp (k, C, N, N) float32, positions, offsets (k, C, 2),
        index, scan (k,) int64 (and mask (k, 1, N, N) bool with a detector mask)."""
        items = self.dataset.__getitems__([int(i) for i in np.asarray(ids).reshape(-1)])
        return {key: np.stack([item[key].numpy() for item in items]) for key in items[0]}

    def __len__(self) -> int:
        return len(self.dataset)


def read_groups(batch: dict[str, np.ndarray], rows: GroupRows) -> dict[str, np.ndarray]:
    """A block of group indices (column "data") -> its rows (a Ray Data `map_batches` function)."""
    return rows.rows(batch["data"])


def split_rows(datamodule: PtychoDataModule) -> dict[str, GroupRows]:
    """What the read tasks of each split need ({'train': ..., 'val': ...} when there is validation),
    built on the driver from its validated datamodule."""
    scan = datamodule.scan.without_object()
    out = {"train": GroupRows(GroupDataset(scan, datamodule.train_groups, datamodule.norm_factors))}
    if datamodule.val_groups is not None:
        out["val"] = GroupRows(GroupDataset(scan, datamodule.val_groups, datamodule.norm_factors))
    return out


def block_count(n_groups: int, channels: int, N: int, workers: int) -> int:
    """Blocks of a split: about BLOCK_BYTES of rows each, and at least two per worker (read tasks are
    Ray's unit of parallel reading; each costs a task launch)."""
    by_bytes = math.ceil(n_groups * 2 * channels * N * N * 4 / BLOCK_BYTES)
    return int(max(1, min(n_groups, max(by_bytes, 2 * workers))))
