"""Group scan positions into gridsize x gridsize neighbourhoods (SPEC 4.3).

A group is C = gridsize**2 pattern indices: a seed position and C - 1 of its nearest neighbours,
arranged so that channel c sits at row c // gridsize and column c % gridsize (rows by increasing y,
columns by increasing x). For gridsize 1 a group is a single pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ptycho_torch.errors import UserError


@dataclass(frozen=True)
class Groups:
    """indices (G, C) int64 pattern indices; seed_channel (G,) int64: the channel holding the seed."""

    indices: np.ndarray
    seed_channel: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, which: np.ndarray) -> "Groups":
        return Groups(self.indices[which], self.seed_channel[which])


def _arrange(members: np.ndarray, positions: np.ndarray, gridsize: int) -> np.ndarray:
    """Order C member indices row-major on a g x g grid: by y into rows, then by x in each row."""
    by_y = members[np.argsort(positions[members, 1], kind="stable")]
    rows = by_y.reshape(gridsize, gridsize)
    return np.stack([r[np.argsort(positions[r, 0], kind="stable")] for r in rows]).reshape(-1)


def make_groups(
    positions: np.ndarray,
    gridsize: int,
    *,
    neighbor_count: int = 6,
    n_groups: int | None = None,
    rng: np.random.Generator | None = None,
) -> Groups:
    """Build groups from scan positions (M, 2) as (x, y) pixels.

    Each group's seed is a scan position; with `rng` the C - 1 partners are drawn at random from the
    seed's `max(neighbor_count, C - 1)` nearest neighbours (training: more distinct groups), without
    `rng` they are the C - 1 nearest (reconstruction: deterministic). `n_groups` seeds are drawn
    from all positions (with replacement only when n_groups > M); None = one group per position.
    """
    positions = np.asarray(positions, dtype=np.float64)
    M = len(positions)
    C = gridsize * gridsize
    if n_groups is None:
        seeds = np.arange(M)
    else:
        generator = rng if rng is not None else np.random.default_rng(0)
        seeds = np.sort(generator.choice(M, size=n_groups, replace=n_groups > M))
    if C == 1:
        return Groups(seeds[:, None].astype(np.int64), np.zeros(len(seeds), dtype=np.int64))
    if M < C:
        raise UserError(f"gridsize {gridsize} needs at least {C} scan positions, the scan has {M}; "
                         "use --gridsize 1 or a larger scan")
    k = min(M, max(neighbor_count, C - 1) + 1)
    _, nbrs = cKDTree(positions).query(positions[seeds], k=k)  # (G, k), column 0 is the seed
    nbrs = np.atleast_2d(nbrs)
    indices = np.empty((len(seeds), C), dtype=np.int64)
    seed_channel = np.empty(len(seeds), dtype=np.int64)
    for g, (seed, row) in enumerate(zip(seeds, nbrs)):
        candidates = row[row != seed]
        partners = (rng.choice(candidates, size=C - 1, replace=False) if rng is not None
                    else candidates[: C - 1])
        arranged = _arrange(np.concatenate([[seed], partners]), positions, gridsize)
        indices[g] = arranged
        seed_channel[g] = int(np.flatnonzero(arranged == seed)[0])
    return Groups(indices, seed_channel)
