"""Stitch object patches into the full object (SPEC 4.7), vectorised and streaming-friendly.

The canvas is in the scan's pixel frame: object[y, x] is the object at scan coordinate (x, y), the
frame of `objectGuess`. Each patch is placed at its absolute position (sub-pixel by a Fourier shift)
with weight w (|probe|^2 by default, or a central disk), accumulating sum(w * O) and sum(w); the
object is their ratio where sum(w) exceeds `threshold * max(sum(w))`. Partial accumulators over
disjoint sets of patches add up (`StitchAccumulator.add_partial`), so patches can stream in batches.
"""

from __future__ import annotations

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
