"""Ray Data ingestion for `ptycho-dist train`: the training groups streamed to the Train workers.

With `ray.ingest: ray_data` (the default, `auto`, for a corpus of several scans) the driver builds
one Ray Dataset per split ("train", "val") whose rows are the groups of its `PtychoDataModule`,
exactly as `GroupDataset` makes them (x = r_k X, amp, positions, offsets, index, scan, and mask
when the data have one): the dataset starts as blocks of group indices and read tasks anywhere in the
cluster turn each block into rows, reading only those patterns from the files. `TorchTrainer(datasets=)`
splits each dataset into one disjoint, equal shard per worker (Ray Train's default: a streaming
split, the last G mod world_size groups of an epoch left out), and each worker iterates its shard
(`ShardBatches`, re-read every epoch, shuffled in a local buffer seeded by execution.seed + epoch)
instead of its DistributedSampler shard of the whole corpus. No worker holds more than its batches,
and more nodes read in parallel. With `sampler` (and `auto` for one scan) nothing changes.

Read tasks take READ_CPUS each: the workers must leave at least that much CPU free on the cluster
(a Train worker group that holds every CPU starves its own dataset; measured: it hangs), which
`check_read_room` asks for before anything starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ptycho_torch.config import ConfigError
from ptycho_torch.data.dataset import GroupDataset, PtychoDataModule

READ_CPUS = 0.25  # CPUs of one Ray Data read task
BLOCK_BYTES = 16 * 2**20  # target size of one block of rows (x and amp)
SHUFFLE_BUFFER = 256  # groups in each worker's local shuffle buffer
SPLITS = ("train", "val")


def use_ray_data(ingest: str, datamodule: PtychoDataModule) -> bool:
    """Whether this run streams through Ray Data: 'ray_data', or 'auto' with several scans."""
    from ptycho_torch.data.corpus import ScanCorpus

    return ingest == "ray_data" or (ingest == "auto" and isinstance(datamodule.scan, ScanCorpus))


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
    """Ray Data `map_batches` function: a block of group indices (column "data") -> its rows."""
    return rows.rows(batch["data"])


def split_rows(datamodule: PtychoDataModule) -> dict[str, GroupRows]:
    """What the read tasks of each split need, built on the driver from its validated datamodule."""
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


def group_datasets(rows: dict[str, GroupRows], workers: int, verbose: bool = False) -> dict[str, Any]:
    """One Ray Dataset per split: `block_count` blocks of group indices (from_numpy: one block each, so
    reads run in parallel) mapped to rows by read tasks of READ_CPUS. Needs a Ray session. Ray Data's
    progress bars and execution banners (printed by every epoch's split) only with `verbose`."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()  # captured by the datasets made below
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    out = {}
    for name, split in rows.items():
        n = len(split)
        groups = split.dataset.groups.indices
        step = max(1, math.ceil(n / block_count(n, groups.shape[1], split.dataset.scan.N, workers)))
        ids = ray.data.from_numpy([np.arange(s, min(s + step, n), dtype=np.int64) for s in range(0, n, step)])
        out[name] = ids.map_batches(read_groups, batch_size=None, fn_kwargs={"rows": split}, num_cpus=READ_CPUS)
    return out


def check_read_room(free_cpus: float, workers: int, cpus_per_worker: float) -> None:
    """ConfigError when the worker group would leave the cluster less than READ_CPUS for reading."""
    left = free_cpus - workers * cpus_per_worker
    if left < READ_CPUS - 1e-9:
        raise ConfigError(
            f"ray.ingest: streaming the corpus through Ray Data needs {READ_CPUS:g} CPU free for reading, but "
            f"{workers} worker(s) x {cpus_per_worker:g} CPU leave {max(left, 0):g} of the cluster's {free_cpus:g}; "
            f"lower --cpus-per-worker (e.g. {max((free_cpus - READ_CPUS) / max(workers, 1), 0.05):.2g}), add a node, "
            "or use --ingest sampler (every worker reads its own share of the files)")


class ShardBatches:
    """This worker's shard of a split as an iterable of batches for Lightning: dicts of tensors like
    a DataLoader over GroupDataset yields, re-read from the start each time it is iterated."""

    def __init__(self, split: str, batch_size: int, seed: int | None = None) -> None:
        self.split, self.batch_size, self.seed = split, int(batch_size), seed
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import ray.train

        shard = ray.train.get_dataset_shard(self.split)
        shuffle = {} if self.seed is None else {"local_shuffle_buffer_size": SHUFFLE_BUFFER,
                                                "local_shuffle_seed": self.seed + self.epoch}
        self.epoch += 1
        yield from shard.iter_torch_batches(batch_size=self.batch_size, drop_last=False, **shuffle)


def shard_loaders(datamodule: PtychoDataModule) -> tuple[ShardBatches, ShardBatches | None]:
    """The (train, val) iterables of a worker (Launch.loaders): training shuffled, validation in order."""
    config = datamodule.config
    val = ShardBatches("val", config.training.batch_size) if datamodule.has_validation else None
    return ShardBatches("train", config.training.batch_size, config.execution.seed), val
