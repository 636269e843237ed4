"""Streamed reconstruction without Ray: a scan's groups by group id (`RowReader`) and batches of
rows -> partial canvases (`BatchPredictor`). ptycho_dist.inference runs both on Ray Data (read tasks
and an actor pool); neither needs Ray.

A row (one per group of reconstruction.reconstruct.inference_groups, columns of a batch dict of numpy
arrays, B rows; C = gridsize**2):

    index      ()          int64    group id (groups follow file order)
    members    (C,)        int64    global pattern indices of the group (file order, then row order)
    positions  (C, 2)      float64  the members' scan positions, object pixels (x = column, y = row)
    stitched   (C,)        bool     the channels this group stitches (Groups.stitch_mask): over all
                                    groups every pattern is stitched exactly once
    offsets    (C, 2)      float32  members' positions relative to the group centroid (px)
    amp        (C, N, N)   float32  measured amplitudes sqrt(counts) of the group
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycho_torch.data.grouping import Groups
from ptycho_torch.data.scan_files import Scan
from ptycho_torch.physics.stitching import compact_subsets, partial_canvas, stitch_weight
from ptycho_torch.reconstruction.reconstruct import PatchPredictor

DEFAULT_BLOCK_BYTES = 16 * 2**20  # target size of one read block of amplitudes


@dataclass(eq=False)
class RowReader:
    """Rows (module docstring) of a scan by global index; picklable in a few bytes per pattern when
    the scan is read lazily and without its objectGuess (`scan.without_object()`)."""

    scan: Scan
    groups: Groups  # global indices, `stitched` set (reconstruction.reconstruct.inference_groups)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of the groups `ids` (k,), sorted by group id."""
        ids = np.sort(np.asarray(ids, dtype=np.int64).reshape(-1))
        members = self.groups.indices[ids]  # (k, C)
        member_pos = self.scan.positions[members]  # (k, C, 2) float64
        pos32 = member_pos.astype(np.float32)  # offsets as GroupDataset computes them
        return {"index": ids, "members": members, "positions": member_pos,
                "stitched": self.groups.stitch_mask()[ids],
                "offsets": pos32 - pos32.mean(axis=1, keepdims=True),
                "amp": self.scan.diffraction_rows(members)}  # (k, C, N, N)


def read_ids(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """A block of group ids (column "data") -> their rows (a Ray Data `map_batches` function)."""
    return reader.rows(batch["data"])


def id_energies(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """A block of global pattern ids (column "data") -> sum_m sum_xy X_m**2 (float64, photons) and its
    pattern count: the pieces of the scan's normalisation factor r (`--renormalize`)."""
    x = reader.scan.diffraction_rows(np.asarray(batch["data"], np.int64)).astype(np.float64)
    return {"energy": np.array([float(np.square(x).sum())]), "count": np.array([len(x)], np.int64)}


def default_block_size(n_groups: int, channels: int, N: int, actors: int = 1) -> int:
    """Groups (rows) per read block: ~DEFAULT_BLOCK_BYTES of amplitudes, and at least 4 blocks per
    actor when the scan is large enough."""
    by_bytes = max(1, DEFAULT_BLOCK_BYTES // (4 * channels * N * N))
    by_count = max(1, math.ceil(n_groups / (4 * max(actors, 1))))
    return int(min(by_bytes, by_count))


class BatchPredictor:
    """A callable class: a batch of rows (module docstring) -> its partial canvases.

    Loads the bundle once (PatchPredictor, inference mode, float32 or bfloat16) in `__init__`;
    `num_threads` sets torch's intra-op threads (the actor's CPUs), None keeps OMP_NUM_THREADS;
    `probe` (P, N, N) complex, when given, replaces the model's (PatchPredictor.use_probe).
    """

    def __init__(self, model: str | Path, *, canvas_hw: tuple[int, int], norm_factor: float | None = None,
                 dtype: str | None = None, device: str = "cpu", num_threads: int | None = None,
                 probe: np.ndarray | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        else:
            from ptycho_torch.torch_threads import configure_threads

            configure_threads()  # OMP_NUM_THREADS when set (Ray sets it for its workers)
        self.predictor = PatchPredictor(model, device=device, dtype=dtype, norm_factor=norm_factor, probe=probe)
        config = self.predictor.config
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.weight = stitch_weight(self.predictor.probe, config.inference.stitch_weight)  # (N, N)

    def predict(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The batch's stitched patches (K, N, N) complex64 (overlap-constrained with the groups'
        `offsets` when C > 1), exactly what the local loop stitches, with their positions (K, 2)
        float64 and global pattern indices (K,) int64."""
        amp = np.asarray(batch["amp"], dtype=np.float32)  # (B, C, N, N)
        if not amp.flags.writeable:  # Ray hands out read-only zero-copy batches
            amp = amp.copy()
        offsets = None if amp.shape[1] == 1 else np.array(batch["offsets"], np.float32)
        patches = self.predictor(torch.from_numpy(amp), offsets)  # (B, C, N, N)
        mask = np.asarray(batch["stitched"], dtype=bool)  # (B, C)
        positions = np.asarray(batch["positions"], np.float64)[mask]
        return patches[torch.from_numpy(mask)], positions, np.asarray(batch["members"], np.int64)[mask]

    def partial_canvas(self, patches: torch.Tensor, positions: np.ndarray) -> tuple[int, int, np.ndarray]:
        """`partial_canvas` with this predictor's canvas and stitching weight."""
        return partial_canvas(patches, positions, self.canvas_hw, self.weight)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Partial canvases of the batch, one output row per spatially compact subset (usually one):
        y0, x0, count (int64), canvas (3, h, w) float32, index (count,) int64, and t0, t1 (float64
        epoch seconds when this batch's work started and the row was done). Ragged columns are
        object arrays of arrays."""
        t0 = time.time()
        patches, positions, index = self.predict(batch)  # (K, N, N), (K, 2), (K,)
        parts = compact_subsets(positions.astype(np.float32), patches.shape[-1])
        rows: dict[str, list[Any]] = {k: [] for k in ("y0", "x0", "count", "canvas", "index", "t0", "t1")}
        for sel in parts:
            y0, x0, canvas = self.partial_canvas(patches[torch.from_numpy(sel)], positions[sel])
            for key, value in (("y0", y0), ("x0", x0), ("count", len(sel)), ("canvas", canvas),
                               ("index", index[sel]), ("t0", t0), ("t1", time.time())):
                rows[key].append(value)
        out = {k: np.array(rows[k]) for k in ("y0", "x0", "count", "t0", "t1")}
        for key in ("canvas", "index"):  # ragged: object arrays of arrays
            out[key] = np.empty(len(parts), dtype=object)
            for i, value in enumerate(rows[key]):
                out[key][i] = value
        return out
