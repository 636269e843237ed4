"""Batches of rows -> partial canvases: the model side of streamed reconstruction (Ray Data actors
use it as their callable class; it needs no Ray).

Input batch (dict of numpy arrays, B rows, the columns of ptycho_dist.scan_source): amp (B, C, N, N)
or (B, N, N) float32 sqrt(counts); x, y (B,) float64 object pixels; seed_channel (B,) int64 and
offsets (B, C, 2) float32 (optional when C = 1); index (B,) int64 global pattern indices.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycho_torch.stitching import compact_subsets, partial_canvas, stitch_weight
from ptycho_torch.workflows.reconstruct import PatchPredictor


class BatchPredictor:
    """A callable class: a batch of rows (module docstring) -> its partial canvases.

    Loads the bundle once (PatchPredictor, inference mode, float32 or bfloat16) in `__init__`;
    `num_threads` sets torch's intra-op threads (the actor's CPUs), None keeps OMP_NUM_THREADS.
    """

    def __init__(self, model: str | Path, *, canvas_hw: tuple[int, int], norm_factor: float | None = None,
                 dtype: str | None = None, device: str = "cpu", num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        else:
            from ptycho_torch.workflows.train import configure_threads

            configure_threads()  # OMP_NUM_THREADS when set (Ray sets it for its workers)
        self.predictor = PatchPredictor(model, device=device, dtype=dtype, norm_factor=norm_factor)
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
