"""The running reconstruction of a scan still being acquired: network patches stitched onto a canvas that
grows with the positions, and the frames kept for the final pass.

Positions are (x, y) object pixels of the data contract (the patch of (x, y) starts at floor(x) - N/2); the
canvas grows towards larger x and y, and `move` shifts it when positions further up or left arrive. It is sized exactly to the positions so far (each batch's
placement costs in proportion to the canvas area), grown once per catch-up by `reserve`.
"""

from __future__ import annotations

import numpy as np
import torch

from ptycho_torch.data.scan import canvas_shape
from ptycho_torch.physics.stitching import StitchAccumulator


class RunningCanvas:
    """Sums of w*O and w (physics.stitching.StitchAccumulator) on a canvas that grows to hold every patch
    added; `snapshot()` is the object and weight so far, on the canvas the positions so far imply."""

    def __init__(self, N: int, weight: torch.Tensor) -> None:
        self.N = N
        self.weight = weight
        self.acc: StitchAccumulator | None = None
        self.extent = (0, 0)  # (H, W) the positions so far need

    def reserve(self, positions: np.ndarray) -> None:
        """Grow the canvas (copying the sums) to hold every patch at positions (K, 2) (x, y) object pixels."""
        need = canvas_shape(positions[:, 0], positions[:, 1], self.N)
        self.extent = (max(self.extent[0], need[0]), max(self.extent[1], need[1]))
        if self.acc is not None and all(n <= h for n, h in zip(self.extent, self.acc.canvas_hw)):
            return
        old = self.acc
        self.acc = StitchAccumulator(self.extent, self.weight)
        if old is not None:
            self.acc.add_partial(0, 0, old.obj_sum, old.w_sum, old.count)

    def move(self, dy: int, dx: int) -> None:
        """Move everything added so far by (dy, dx) >= 0 whole pixels (positions further up or left arrived)."""
        self.extent = (self.extent[0] + dy, self.extent[1] + dx) if self.extent != (0, 0) else self.extent
        if self.acc is None:
            return
        old = self.acc
        self.acc = StitchAccumulator((old.canvas_hw[0] + dy, old.canvas_hw[1] + dx), self.weight)
        self.acc.add_partial(dy, dx, old.obj_sum, old.w_sum, old.count)

    def add(self, patches: torch.Tensor, positions: np.ndarray) -> None:
        """patches (K, N, N) complex at positions (K, 2) (x, y) object pixels."""
        if len(patches) == 0:
            return
        self.reserve(positions)
        self.acc.add(patches, torch.from_numpy(np.asarray(positions, np.float64)))

    @property
    def count(self) -> int:
        return 0 if self.acc is None else self.acc.count

    def snapshot(self, threshold: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(object (H, W) complex64, weight (H, W) float32) so far; empty before the first patch."""
        if self.acc is None:
            return np.zeros((0, 0), np.complex64), np.zeros((0, 0), np.float32)
        return self.acc.result(threshold)


class FrameStore:
    """Every frame received, in order: amplitudes (M, N, N) float32 and positions (M, 2), grown in blocks."""

    def __init__(self, N: int) -> None:
        self.N = N
        self.amplitudes = np.zeros((0, N, N), np.float32)
        self.positions = np.zeros((0, 2), np.float64)
        self.n = 0

    def append(self, amplitudes: np.ndarray, positions: np.ndarray) -> None:
        k = len(amplitudes)
        if self.n + k > len(self.amplitudes):
            grow = max(self.n + k, 2 * len(self.amplitudes), 256)
            amp = np.zeros((grow, self.N, self.N), np.float32)
            pos = np.zeros((grow, 2), np.float64)
            amp[:self.n], pos[:self.n] = self.amplitudes[:self.n], self.positions[:self.n]
            self.amplitudes, self.positions = amp, pos
        self.amplitudes[self.n:self.n + k] = amplitudes
        self.positions[self.n:self.n + k] = positions
        self.n += k

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        return self.amplitudes[:self.n], self.positions[:self.n]
