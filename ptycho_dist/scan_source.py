"""Ray Data rows from a scan (ptycho_torch.data.scan_files): the read side of `ptycho-dist reconstruct`.

The driver reads the scan once (`read_scans`: one file, a glob or several files, validated there;
the patterns stay on disk) and groups it per file as the local loop does (`inference_groups`).
What a reading task needs is a `RowReader`: the scan without its objectGuess (lazy, so it pickles in
a few bytes per pattern) and the groups. The Ray Dataset starts as the global indices in blocks
(`pattern_ids`); `read_ids` turns each block into rows:

    index         ()          int64    global pattern index (file order, then row order)
    x, y          ()          float64  the pattern's scan position, object pixels (column, row)
    seed_channel  ()          int64    channel of the pattern inside its group
    offsets       (C, 2)      float32  group members' positions relative to the group centroid (px)
    amp           (C, N, N)   float32  measured amplitudes sqrt(counts) of the group, C = gridsize**2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho_torch.data.grouping import Groups
from ptycho_torch.data.scan_files import Scan

DEFAULT_BLOCK_BYTES = 16 * 2**20  # target size of one read block of amplitudes


@dataclass(eq=False)
class RowReader:
    """Rows of a scan by global index, for Ray Data tasks (picklable: the scan is read lazily)."""

    scan: Scan  # without objectGuess
    groups: Groups  # one group per pattern, global indices

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The rows (module docstring) of the patterns `ids` (k,)."""
        ids = np.sort(np.asarray(ids, dtype=np.int64).reshape(-1))
        members = self.groups.indices[ids]  # (k, C)
        positions = self.scan.positions
        member_pos = positions[members].astype(np.float32)  # (k, C, 2), as GroupDataset computes it
        return {"index": ids, "x": positions[ids, 0], "y": positions[ids, 1],
                "seed_channel": self.groups.seed_channel[ids].astype(np.int64),
                "offsets": member_pos - member_pos.mean(axis=1, keepdims=True),
                "amp": self.scan.diffraction_rows(members)}  # (k, C, N, N)


def read_ids(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: a block of global ids (column "data") -> its rows."""
    return reader.rows(batch["data"])


def id_energies(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function for `--renormalize`: sum_m sum_xy X_m**2 (float64, photons) and
    the pattern count of a block of ids."""
    x = reader.scan.diffraction_rows(np.asarray(batch["data"], np.int64)).astype(np.float64)
    return {"energy": np.array([float(np.square(x).sum())]), "count": np.array([len(x)], np.int64)}


def pattern_ids(n_patterns: int, block_size: int) -> Any:
    """A Ray Dataset of the global pattern indices (column "data", int64) in blocks of `block_size`.

    Built from in-memory blocks (8 bytes per pattern) rather than from block descriptors or
    `ray.data.range`, for two measured reasons: Ray Data fuses the read into the actors and bundles
    >= batch_size input rows per actor task, so one descriptor row per block would put many blocks on
    a single actor; and `range` runs as separate 1-CPU read tasks that deadlock when the actors hold
    every CPU.
    """
    import ray.data

    return ray.data.from_numpy([np.arange(s, min(s + block_size, n_patterns), dtype=np.int64)
                                for s in range(0, n_patterns, block_size)])


def default_block_size(n_patterns: int, channels: int, N: int, actors: int = 1) -> int:
    """Patterns per read block: ~DEFAULT_BLOCK_BYTES of amplitudes, and at least 4 blocks per actor
    when the scan is large enough."""
    by_bytes = max(1, DEFAULT_BLOCK_BYTES // (4 * channels * N * N))
    by_count = max(1, math.ceil(n_patterns / (4 * max(actors, 1))))
    return int(min(by_bytes, by_count))
