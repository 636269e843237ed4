"""Streamed reconstruction without Ray: a scan's rows by global index (`RowReader`) and batches of
rows -> partial canvases (`BatchPredictor`). ptycho_dist.inference runs both on Ray Data (read tasks
and an actor pool); neither needs Ray.

A row (one per pattern, columns of a batch dict of numpy arrays, B rows):

    index         ()          int64    global pattern index (file order, then row order)
    x, y          ()          float64  the pattern's scan position, object pixels (column, row)
    seed_channel  ()          int64    channel of the pattern inside its group
    offsets       (C, 2)      float32  group members' positions relative to the group centroid (px)
    amp           (C, N, N)   float32  measured amplitudes sqrt(counts) of the group, C = gridsize**2

BatchPredictor also takes amp (B, N, N) and no seed_channel / offsets when C = 1.
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
from ptycho_torch.stitching import compact_subsets, partial_canvas, stitch_weight
from ptycho_torch.workflows.reconstruct import PatchPredictor

DEFAULT_BLOCK_BYTES = 16 * 2**20  # target size of one read block of amplitudes


@dataclass(eq=False)
class RowReader:
    """Rows (module docstring) of a scan by global index; picklable in a few bytes per pattern when
    the scan is read lazily and without its objectGuess (`scan.without_object()`)."""

    scan: Scan
    groups: Groups  # one group per pattern, global indices (workflows.reconstruct.inference_groups)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of the patterns `ids` (k,), sorted by global index."""
        ids = np.sort(np.asarray(ids, dtype=np.int64).reshape(-1))
        members = self.groups.indices[ids]  # (k, C)
        positions = self.scan.positions
        member_pos = positions[members].astype(np.float32)  # (k, C, 2), as GroupDataset computes it
        return {"index": ids, "x": positions[ids, 0], "y": positions[ids, 1],
                "seed_channel": self.groups.seed_channel[ids].astype(np.int64),
                "offsets": member_pos - member_pos.mean(axis=1, keepdims=True),
                "amp": self.scan.diffraction_rows(members)}  # (k, C, N, N)


def read_ids(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """A block of global ids (column "data") -> its rows (a Ray Data `map_batches` function)."""
    return reader.rows(batch["data"])


def id_energies(batch: dict[str, np.ndarray], reader: RowReader) -> dict[str, np.ndarray]:
    """A block of global ids (column "data") -> sum_m sum_xy X_m**2 (float64, photons) and its
    pattern count: the pieces of the scan's normalisation factor r (`--renormalize`)."""
    x = reader.scan.diffraction_rows(np.asarray(batch["data"], np.int64)).astype(np.float64)
    return {"energy": np.array([float(np.square(x).sum())]), "count": np.array([len(x)], np.int64)}


def default_block_size(n_patterns: int, channels: int, N: int, actors: int = 1) -> int:
    """Patterns per read block: ~DEFAULT_BLOCK_BYTES of amplitudes, and at least 4 blocks per actor
    when the scan is large enough."""
    by_bytes = max(1, DEFAULT_BLOCK_BYTES // (4 * channels * N * N))
    by_count = max(1, math.ceil(n_patterns / (4 * max(actors, 1))))
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
            from ptycho_torch.workflows.train import configure_threads

            configure_threads()  # OMP_NUM_THREADS when set (Ray sets it for its workers)
        self.predictor = PatchPredictor(model, device=device, dtype=dtype, norm_factor=norm_factor, probe=probe)
        config = self.predictor.config
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.weight = stitch_weight(self.predictor.probe, config.inference.stitch_weight)  # (N, N)

    def predict(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """Object patches of the batch's own patterns (the seed channel of each group, overlap-
        constrained with the group's `offsets` when given): (B, N, N) complex64, exactly what the
        local loop stitches."""
        amp = np.asarray(batch["amp"], dtype=np.float32)
        if amp.ndim == 3:
            amp = amp[:, None]  # (B, 1, N, N)
        if not amp.flags.writeable:  # Ray hands out read-only zero-copy batches
            amp = amp.copy()
        offsets = batch.get("offsets")
        offsets = None if offsets is None or amp.shape[1] == 1 else np.array(offsets, np.float32)
        patches = self.predictor(torch.from_numpy(amp), offsets)  # (B, C, N, N)
        seed = batch.get("seed_channel")
        seed_t = torch.zeros(len(amp), dtype=torch.long) if seed is None else torch.from_numpy(np.array(seed, np.int64))
        return patches[torch.arange(len(amp)), seed_t]

    def partial_canvas(self, patches: torch.Tensor, positions: np.ndarray) -> tuple[int, int, np.ndarray]:
        """`partial_canvas` with this predictor's canvas and stitching weight."""
        return partial_canvas(patches, positions, self.canvas_hw, self.weight)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Partial canvases of the batch, one output row per spatially compact subset (usually one):
        y0, x0, count (int64), canvas (3, h, w) float32, index (count,) int64, and t0, t1 (float64
        epoch seconds when this batch's work started and the row was done). Ragged columns are
        object arrays of arrays."""
        t0 = time.time()
        patches = self.predict(batch)  # (B, N, N)
        positions = np.stack([batch["x"], batch["y"]], axis=1)  # (B, 2) float64
        index = np.asarray(batch["index"], np.int64)
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
