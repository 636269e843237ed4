"""Stitch object patches into the full object (SPEC 4.7), vectorised and streaming-friendly.

The canvas is in the scan's pixel frame: object[y, x] is the object at scan coordinate (x, y), the
frame of `objectGuess`. Each patch is placed at its absolute position (sub-pixel by a Fourier shift)
with weight w (|probe|^2 by default, or a central disk), accumulating sum(w * O) and sum(w); the
object is their ratio where sum(w) exceeds `threshold * max(sum(w))`. Partial accumulators over
disjoint sets of patches add up (`StitchAccumulator.add_partial`), so patches can stream in batches.

Streaming pieces (used by the Ray Data path, usable anywhere): `compact_subsets` splits a batch into
spatially compact subsets, `partial_canvas` stitches one subset onto its bounding box (float32
(3, h, w) = Re sum(w*O), Im sum(w*O), sum(w)), and `CanvasSum` adds partial canvases into the full
canvas in any order, checking that every pattern arrives exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ptycho_torch.physics import place_patches


def stitch_weight(probe: torch.Tensor | np.ndarray, kind: str = "probe") -> torch.Tensor:
    """(N, N) float32 weight in the patch frame: normalised sum_p |P_p|^2, or a disk of radius N/4."""
    probe = torch.as_tensor(probe)
    N = probe.shape[-1]
    if kind == "probe":
        w = probe.reshape(-1, N, N).abs().square().sum(0).float()
        return w / w.max().clamp_min(1e-30)
    if kind == "mask":
        yy, xx = torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2, indexing="ij")
        return ((yy**2 + xx**2) <= (N / 4) ** 2).float()
    raise ValueError(f"stitch weight must be 'probe' or 'mask', got {kind!r}")


class StitchAccumulator:
    """Running sums of w*O and w on an (H, W) canvas. `add` batches of patches, then `result`."""

    def __init__(self, canvas_hw: tuple[int, int], weight: torch.Tensor) -> None:
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.weight = weight.float()
        self.obj_sum = torch.zeros(self.canvas_hw, dtype=torch.complex64)
        self.w_sum = torch.zeros(self.canvas_hw, dtype=torch.float32)
        self.count = 0

    def add(self, patches: torch.Tensor, positions: torch.Tensor) -> None:
        """patches (K, N, N) complex; positions (K, 2) (x, y) pixels."""
        if len(patches) == 0:
            return
        o, w = place_patches(patches[None].to(torch.complex64), torch.as_tensor(positions)[None].float(),
                             self.canvas_hw, self.weight.to(patches.device))
        self.obj_sum += o[0].cpu()
        self.w_sum += w[0].cpu()
        self.count += len(patches)

    def add_partial(self, y0: int, x0: int, obj_sum: torch.Tensor, w_sum: torch.Tensor, count: int) -> None:
        """Add the sums of a partial canvas (h, w) whose pixel (0, 0) is canvas pixel (y0, x0):
        obj_sum complex, w_sum real, over `count` patches (e.g. from another worker)."""
        h, w = obj_sum.shape[-2:]
        if y0 < 0 or x0 < 0 or y0 + h > self.canvas_hw[0] or x0 + w > self.canvas_hw[1]:
            raise ValueError(f"a {h}x{w} partial canvas at (y0={y0}, x0={x0}) does not fit the "
                             f"{self.canvas_hw[0]}x{self.canvas_hw[1]} canvas")
        self.obj_sum[y0:y0 + h, x0:x0 + w] += obj_sum
        self.w_sum[y0:y0 + h, x0:x0 + w] += w_sum
        self.count += count

    def result(self, threshold: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(object (H, W) complex64, weight (H, W) float32); object is 0 where weight is too small."""
        w = self.w_sum
        valid = w > threshold * float(w.max()) if self.count else torch.zeros_like(w, dtype=torch.bool)
        obj = torch.where(valid, self.obj_sum / w.clamp_min(1e-30), torch.zeros_like(self.obj_sum))
        weight = torch.where(valid, w, torch.zeros_like(w))
        return obj.numpy().astype(np.complex64), weight.numpy().astype(np.float32)


def stitch(patches: torch.Tensor, positions: torch.Tensor, canvas_hw: tuple[int, int],
           weight: torch.Tensor, threshold: float = 1e-3, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Stitch all patches (M, N, N) at positions (M, 2) in chunks; returns (object, weight)."""
    acc = StitchAccumulator(canvas_hw, weight)
    for start in range(0, len(patches), chunk):
        acc.add(patches[start:start + chunk], positions[start:start + chunk])
    return acc.result(threshold)


def partial_canvas(patches: torch.Tensor, positions: np.ndarray, canvas_hw: tuple[int, int],
                   weight: torch.Tensor) -> tuple[int, int, np.ndarray]:
    """Stitch patches (B, N, N) complex at positions (B, 2) (x, y) pixels onto their bounding box.

    Returns (y0, x0, canvas (3, h, w) float32 = Re sum(w*O), Im sum(w*O), sum(w)) whose pixel (0, 0)
    is pixel (y0, x0) of the full (H, W) canvas. Positions are cast to float32 (as `stitch` does) and
    shifted by the integer box corner, so the sub-pixel shifts are exactly those of the full canvas.
    """
    N = patches.shape[-1]
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))  # (B, 2)
    corner = torch.floor(pos).long() - N // 2  # (B, 2) top-left (x, y) of each patch
    x0, y0 = int(corner[:, 0].min()), int(corner[:, 1].min())
    x1, y1 = int(corner[:, 0].max()) + N, int(corner[:, 1].max()) + N
    H, W = canvas_hw
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise ValueError(f"patch positions fall outside the {H}x{W} canvas (box x {x0}..{x1}, y {y0}..{y1})")
    local = pos - torch.tensor([x0, y0], dtype=torch.float32)  # exact: an integer shift
    obj_sum, w_sum = place_patches(patches[None].to(torch.complex64), local[None], (y1 - y0, x1 - x0), weight)
    return y0, x0, torch.stack([obj_sum[0].real, obj_sum[0].imag, w_sum[0]]).numpy()


def compact_subsets(positions: np.ndarray, N: int, max_ratio: float = 1.0) -> list[np.ndarray]:
    """Split a batch into subsets whose patch bounding boxes hold at most `max_ratio` x (count x N^2)
    pixels, by recursive median cuts along the longer side; positions (B, 2) (x, y) pixels.

    Consecutive patterns of raster or spiral scans are close, so a batch is normally one subset;
    scattered positions (random scan order, a batch spanning two files) give several small partial
    canvases instead of one canvas-sized one (12 bytes per pixel vs 8 per patch pixel).
    """
    out: list[np.ndarray] = []
    stack = [np.arange(len(positions))]
    while stack:
        idx = stack.pop()
        p = np.floor(positions[idx])
        span = p.max(axis=0) - p.min(axis=0)  # (2,) x, y extent of the corners
        if len(idx) == 1 or (span[0] + N) * (span[1] + N) <= max_ratio * len(idx) * N * N:
            out.append(idx)
            continue
        axis = int(np.argmax(span))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        half = len(order) // 2
        stack += [order[:half], order[half:]]
    return out


class CanvasSum:
    """The full (H, W) stitching sums, fed with partial canvases in any order.

    Tracks which global pattern indices arrived (one byte per pattern), so that a lost or repeated
    batch is an error, not a silently wrong object; `first_start` / `last_end` collect the batch
    timestamps (epoch seconds) that producers report.
    """

    def __init__(self, canvas_hw: tuple[int, int], weight: torch.Tensor, n_patterns: int) -> None:
        self.acc = StitchAccumulator(canvas_hw, weight)
        self.seen = np.zeros(n_patterns, dtype=bool)
        self.first_start, self.last_end = math.inf, -math.inf

    def add(self, y0: int, x0: int, canvas: np.ndarray, index: np.ndarray) -> int:
        """Add one partial canvas (3, h, w) of the patterns `index`; returns their number."""
        index = np.asarray(index, dtype=np.int64)
        if self.seen[index].any():
            raise RuntimeError(f"patterns {index[self.seen[index]][:5].tolist()} arrived twice; a "
                               "retried task produced duplicate output")
        self.seen[index] = True
        c = torch.from_numpy(np.array(canvas, dtype=np.float32))  # a writable copy of a shared buffer
        self.acc.add_partial(y0, x0, torch.complex(c[0], c[1]), c[2], len(index))
        return len(index)

    def add_batch(self, batch: dict[str, np.ndarray]) -> int:
        """Add every row of a batch with columns y0, x0, canvas, index (ragged: object arrays) and
        optionally t0, t1; returns the number of patterns added."""
        if "t0" in batch and len(batch["t0"]):
            self.first_start = min(self.first_start, float(np.min(batch["t0"])))
            self.last_end = max(self.last_end, float(np.max(batch["t1"])))
        return sum(self.add(int(batch["y0"][i]), int(batch["x0"][i]), batch["canvas"][i], batch["index"][i])
                   for i in range(len(batch["y0"])))

    @property
    def compute_seconds(self) -> float:
        """From the first batch's start to the last batch's end (0 if unknown)."""
        return max(self.last_end - self.first_start, 0.0) if math.isfinite(self.first_start) else 0.0

    def result(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        missing = np.flatnonzero(~self.seen)
        if missing.size:
            raise RuntimeError(f"{missing.size} patterns never came back (first {missing[:5].tolist()})")
        return self.acc.result(threshold)
