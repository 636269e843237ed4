"""Ray Data ingestion for `ptycho-dist train`: the training groups streamed to the Train workers.

With `ray.ingest: ray_data` (the default, `auto`, for a corpus of several scans) the driver builds
one Ray Dataset per split ("train", "val") whose rows are the groups of its `PtychoDataModule`,
exactly as `GroupDataset` makes them (x = r_k X, amp, positions, offsets, index, scan, and mask
when the data have one): the dataset starts as blocks of group indices and read tasks anywhere in the
cluster turn each block into rows, reading only those patterns from the files. `TorchTrainer(datasets=)`
splits each dataset into one disjoint, equal shard per worker (Ray Train's default: a streaming
split, the last G mod world_size groups of an epoch left out), and each worker iterates its shard
(`ShardBatches`, re-read every epoch, shuffled in a local buffer seeded by training.seed + epoch)
instead of its DistributedSampler shard of the whole corpus. No worker holds more than its batches,
and more nodes read in parallel. With `sampler` (and `auto` for one scan) nothing changes. The rows
come from ptycho_torch.data.dataset (`split_rows`, `GroupRows`, `read_groups`, `block_count`).

Read tasks take READ_CPUS each: the workers must leave at least that much CPU free on the cluster
(a Train worker group that holds every CPU starves its own dataset; measured: it hangs), which
`check_read_room` asks for before anything starts.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ptycho_torch.config import ConfigError
from ptycho_torch.data.dataset import GroupRows, PtychoDataModule, block_count, read_groups

READ_CPUS = 0.25  # CPUs of one Ray Data read task
SHUFFLE_BUFFER = 256  # groups in each worker's local shuffle buffer


def use_ray_data(ingest: str, datamodule: PtychoDataModule) -> bool:
    """Whether this run streams through Ray Data: 'ray_data', or 'auto' with several scans."""
    from ptycho_torch.data.corpus import ScanCorpus

    return ingest == "ray_data" or (ingest == "auto" and isinstance(datamodule.scan, ScanCorpus))


def pattern_ids(n_patterns: int, block_size: int) -> Any:
    """A Ray Dataset of the indices 0 .. n_patterns - 1 (column "data", int64) in blocks of `block_size`:
    the group ids of `ptycho-dist reconstruct` (and the global pattern ids of its normalisation pass),
    the group ids of a training split.

    Built from in-memory blocks (8 bytes per pattern) rather than from block descriptors or
    `ray.data.range`, for two measured reasons: Ray Data fuses the read into the actors and bundles
    >= batch_size input rows per actor task, so one descriptor row per block would put many blocks on
    a single actor; and `range` runs as separate 1-CPU read tasks that deadlock when the actors hold
    every CPU.
    """
    import ray.data

    return ray.data.from_numpy([np.arange(s, min(s + block_size, n_patterns), dtype=np.int64)
                                for s in range(0, n_patterns, block_size)])


def group_datasets(rows: dict[str, GroupRows], workers: int, verbose: bool = False) -> dict[str, Any]:
    """One Ray Dataset per split: `block_count` blocks of group indices (from_numpy: one block each, so
    reads run in parallel) mapped to rows by read tasks of READ_CPUS. Needs a Ray session. Ray Data's
    progress bars and execution banners (printed by every epoch's split) only with `verbose`."""
    from ptycho_dist.cluster.session import quiet_ray_data

    quiet_ray_data(verbose)
    out = {}
    for name, split in rows.items():
        n = len(split)
        groups = split.dataset.groups.indices
        step = max(1, math.ceil(n / block_count(n, groups.shape[1], split.dataset.scan.N, workers)))
        out[name] = pattern_ids(n, step).map_batches(read_groups, batch_size=None, fn_kwargs={"rows": split},
                                                     num_cpus=READ_CPUS)
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
    return ShardBatches("train", config.training.batch_size, config.training.seed), val
