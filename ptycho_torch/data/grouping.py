"""Group scan positions into gridsize x gridsize neighbourhoods (SPEC 4.3).

A group is C = gridsize**2 pattern indices: a seed position and C - 1 of its nearest neighbours,
arranged so that channel c sits at row c // gridsize and column c % gridsize (rows by increasing y,
columns by increasing x). For gridsize 1 a group is a single pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from ptycho_torch.errors import UserError


@dataclass(frozen=True)
class Groups:
    """indices (G, C) int64 pattern indices; seed_channel (G,) int64: the channel holding the seed;
    stitched (G, C) bool or None: the channels a reconstruction stitches from each group (None = the
    seed channel only; cover_groups marks every pattern in exactly one group)."""

    indices: np.ndarray
    seed_channel: np.ndarray
    stitched: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, which: np.ndarray) -> "Groups":
        return Groups(self.indices[which], self.seed_channel[which],
                      None if self.stitched is None else self.stitched[which])

    def stitch_mask(self) -> np.ndarray:
        """(G, C) bool: `stitched`, or one-hot on the seed channel."""
        if self.stitched is not None:
            return self.stitched
        mask = np.zeros(self.indices.shape, dtype=bool)
        mask[np.arange(len(self.indices)), self.seed_channel] = True
        return mask


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


def cover_groups(positions: np.ndarray, gridsize: int, *, neighbor_count: int = 6,
                 rng: np.random.Generator | None = None) -> Groups:
    """Groups that together hold every pattern once as a stitched channel: about M / C groups
    instead of M, so a reconstruction runs the network on each pattern about once instead of C times.

    positions (M, 2) (x, y) pixels. Seeds are visited in scan order; a pattern not yet stitched by an
    earlier group seeds a group whose partners are drawn (with `rng`, else the nearest first) among
    its `max(neighbor_count, C - 1)` nearest neighbours, preferring patterns not yet stitched. When
    fewer than C - 1 of those are free, the group is completed with already stitched neighbours,
    which it reads but does not stitch again. So every group is of the kind training draws
    (make_groups), and `stitched` marks exactly one channel per pattern over all groups.
    """
    positions = np.asarray(positions, dtype=np.float64)
    M, C = len(positions), gridsize * gridsize
    if C == 1:
        return make_groups(positions, gridsize)
    if M < C:
        raise UserError(f"gridsize {gridsize} needs at least {C} scan positions, the scan has {M}; "
                         "use --gridsize 1 or a larger scan")
    k = min(M, max(neighbor_count, C - 1) + 1)
    _, nbrs = cKDTree(positions).query(positions, k=k)  # (M, k), column 0 is the pattern itself
    nbrs = np.atleast_2d(nbrs)
    taken = np.zeros(M, dtype=bool)
    indices, seed_channel, stitched = [], [], []
    for seed in range(M):
        if taken[seed]:
            continue
        candidates = nbrs[seed][nbrs[seed] != seed]
        free, used = candidates[~taken[candidates]], candidates[taken[candidates]]
        if rng is not None:
            free, used = rng.permutation(free), rng.permutation(used)
        partners = np.concatenate([free, used])[: C - 1]
        members = _arrange(np.concatenate([[seed], partners]), positions, gridsize)
        mask = ~taken[members]  # the seed and its free partners
        taken[members] = True
        indices.append(members)
        seed_channel.append(int(np.flatnonzero(members == seed)[0]))
        stitched.append(mask)
    return Groups(np.array(indices, dtype=np.int64), np.array(seed_channel, dtype=np.int64),
                  np.array(stitched, dtype=bool))


def share_out(total: int, sizes: Sequence[int]) -> list[int]:
    """`total` split over parts in proportion to `sizes` (largest remainders), summing to `total`."""
    sizes_a = np.asarray(sizes, dtype=np.float64)
    exact = total * sizes_a / sizes_a.sum()
    counts = np.floor(exact).astype(np.int64)
    for k in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[k] += 1
    return [int(c) for c in counts]


def make_groups_per_scan(
    positions: Sequence[np.ndarray],
    gridsize: int,
    *,
    neighbor_count: int = 6,
    n_groups: int | None = None,
    rng: np.random.Generator | None = None,
) -> Groups:
    """Groups of several scans, each scan grouped on its own, so a group never holds patterns of two
    scans. positions[k] (M_k, 2) (x, y) pixels in scan k's own frame; the returned indices are global
    (scan k's rows follow those of scans 0..k-1). `n_groups` is shared out over the scans in
    proportion to their patterns (None = one group per position); `rng` as in make_groups, drawn
    from scan by scan."""
    sizes = [len(p) for p in positions]
    counts = [None] * len(sizes) if n_groups is None else share_out(n_groups, sizes)
    indices, seed_channel, offset = [], [], 0
    C = gridsize * gridsize
    for pos, count in zip(positions, counts):
        if count != 0:
            groups = make_groups(pos, gridsize, neighbor_count=neighbor_count, n_groups=count, rng=rng)
            indices.append(groups.indices + offset)
            seed_channel.append(groups.seed_channel)
        offset += len(pos)
    if not indices:
        return Groups(np.zeros((0, C), np.int64), np.zeros(0, np.int64))
    return Groups(np.concatenate(indices), np.concatenate(seed_channel))
