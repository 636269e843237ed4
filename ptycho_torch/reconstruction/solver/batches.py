"""Batches of scan positions for the iterative solver.

A *sparse* batch takes one position from each of several spatial clusters, so the patterns of a batch
rarely share object pixels and their simultaneous updates behave like sequential ones (an update
averaged over overlapping positions converges slower: they correct the same pixels against each other).
"""

from __future__ import annotations

import numpy as np


def spatial_clusters(positions: np.ndarray, n_clusters: int, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """Cluster label (M,) int64 of each position (M, 2): k-means (Lloyd) from a farthest-point start,
    so clusters are compact regions of the scan of about M / n_clusters positions each."""
    pos = np.asarray(positions, np.float64)
    M = len(pos)
    n = max(1, min(n_clusters, M))
    rng = np.random.default_rng(seed)
    centres = [pos[rng.integers(M)]]
    dist = np.full(M, np.inf)
    for _ in range(n - 1):
        dist = np.minimum(dist, np.sum((pos - centres[-1]) ** 2, axis=1))
        centres.append(pos[int(np.argmax(dist))])
    c = np.array(centres)
    for _ in range(iterations):
        labels = np.argmin(np.sum((pos[:, None] - c[None]) ** 2, axis=2), axis=1)
        for j in range(n):
            members = pos[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return np.argmin(np.sum((pos[:, None] - c[None]) ** 2, axis=2), axis=1)


def sparse_batches(positions: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches (each (<= batch,) int64, every position exactly once, in random order):
    positions are grouped into `batch` spatial clusters and batch j takes the j-th member of each
    cluster (members shuffled every call), so a batch spans the scan."""
    pos = np.asarray(positions)
    M = len(pos)
    if batch >= M:
        return [rng.permutation(M)]
    labels = _cached_clusters(pos, batch)
    members = [rng.permutation(np.flatnonzero(labels == j)) for j in range(labels.max() + 1)]
    longest = max(len(m) for m in members)
    batches = [np.array([m[i] for m in members if i < len(m)], np.int64) for i in range(longest)]
    return [batches[i] for i in rng.permutation(len(batches)) if len(batches[i])]


_CLUSTERS: dict[tuple[int, int, bytes], np.ndarray] = {}


def _cached_clusters(pos: np.ndarray, batch: int) -> np.ndarray:
    """Cluster labels, computed once per (positions rounded to a pixel, batch) in this process."""
    key = (len(pos), batch, np.round(pos).astype(np.int32).tobytes())
    if key not in _CLUSTERS:
        if len(_CLUSTERS) > 8:
            _CLUSTERS.clear()
        _CLUSTERS[key] = spatial_clusters(pos, batch)
    return _CLUSTERS[key]
