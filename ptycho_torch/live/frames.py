"""What a live source hands out, and the buffer that puts frames arriving in any order back in order.

    SourceHeader   the probe (P, N, N), N, the metadata, the ground truth when the source has one
    Frames         a run of frames: amplitudes (k, N, N) float32, positions (k, 2) (x, y) object pixels
    FrameBuffer    frames and positions by index, from files or messages in any order; handed out in scan
                   order without a gap (the directory and ZMQ sources keep theirs in one)
    open_swmr      an HDF5 file a writer may still be growing, opened for SWMR reading (both HDF5 sources)

The `FrameSource` interface and `open_source` are in sources.py (which re-exports SourceHeader and Frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import UserError

log = logging.getLogger("ptycho_torch")


@dataclass
class SourceHeader:
    """What is known before the frames: probe (P, N, N) complex64 (photon units, as the contract),
    the pattern size N, the scan's metadata, and the ground truth when the source carries one."""

    probe: np.ndarray
    N: int
    metadata: dict[str, Any] = field(default_factory=dict)
    object_guess: np.ndarray | None = None
    name: str = ""


@dataclass
class Frames:
    """Frames start .. start + k - 1 of the scan: amplitudes (k, N, N) float32 sqrt(photon counts) and
    positions (k, 2) float64 (x, y) object pixels. After a gap the writer never filled, `indices` (k,) int64
    holds each frame's index in the scan (else None: start .. start + k - 1)."""

    start: int
    amplitudes: np.ndarray
    positions: np.ndarray
    written_at: np.ndarray | None = None  # (k,) Unix seconds each frame was written, when the source says
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.amplitudes)


class FrameBuffer:
    """Frames and positions that arrive in any order (files, messages), handed out in scan order without a gap:
    frame i waits for its position and for every frame before it. A frame index seen twice is kept once."""

    def __init__(self, N: int, name: str) -> None:
        self.N, self.name = N, name
        self.next = 0  # frames [0, next) were handed out (or given up after the writer went)
        self._amp: dict[int, np.ndarray] = {}  # index -> (N, N) float32 amplitudes
        self._time: dict[int, float] = {}  # index -> Unix seconds written (else received)
        self._pos: dict[int, tuple[float, float]] = {}  # index -> (x, y) object pixels
        self._seen = 0  # 1 + the highest frame index known to exist
        self._total: int | None = None  # the frame count of the end mark, when it says one
        self.ended = False  # the end mark arrived
        self.duplicates = 0

    def add_frame(self, index: int, amplitude: np.ndarray, written_at: float) -> None:
        """Frame `index`, amplitudes (N, N) float32, written at `written_at` (Unix seconds)."""
        if index < 0:
            raise UserError(f"--watch {self.name}: frame index {index}; frames are numbered from 0")
        if index < self.next or index in self._amp:
            if not self.duplicates:
                log.warning("live: %s: frame %d arrived again; kept the first copy", self.name, index)
            self.duplicates += 1
            return
        self._amp[index] = amplitude
        self._time[index] = float(written_at)
        self.expect(index + 1)

    def add_position(self, index: int, x: float, y: float) -> None:
        """The position (x, y) object pixels of frame `index` (the first one given counts)."""
        if index >= self.next:
            self._pos.setdefault(index, (float(x), float(y)))

    def expect(self, stop: int) -> None:
        """Frames up to stop - 1 exist (e.g. a file named for them, not read yet)."""
        self._seen = max(self._seen, stop)

    def end(self, total: int | None) -> None:
        """The writer's end mark, with the scan's frame count when it says one."""
        self.ended = True
        if total is not None:
            self._total = int(total)

    @property
    def finished(self) -> bool:
        """The end mark arrived and every frame known (and counted by it) has been handed out."""
        return self.ended and self.next >= max(self._total or 0, self._seen)

    def _ready(self, i: int) -> bool:
        return i in self._amp and i in self._pos

    def take(self, max_frames: int, skip_gaps: bool = False) -> Frames:
        """The next frames, up to `max_frames`, in order. `skip_gaps` (the writer is gone): frames missing (or
        without a position) before later ready ones are given up, with a warning."""
        taken: list[int] = []
        i = self.next
        while len(taken) < max_frames:
            if self._ready(i):
                taken.append(i)
                i += 1
                continue
            later = [j for j in self._amp if j > i and self._ready(j)] if skip_gaps else []
            if not later:
                break
            j = min(later)
            log.warning("live: %s: frame(s) %d..%d never arrived whole with a position and the writer is gone; "
                        "going on without them", self.name, i, j - 1)
            for k in range(i, j):
                for held in (self._amp, self._pos, self._time):
                    held.pop(k, None)
            i = j
        if not taken:
            return Frames(self.next, np.zeros((0, self.N, self.N), np.float32), np.zeros((0, 2)))
        self.next = taken[-1] + 1
        amplitudes = np.stack([self._amp.pop(k) for k in taken])
        positions = np.array([self._pos.pop(k) for k in taken], np.float64)
        written = np.array([self._time.pop(k) for k in taken], np.float64)
        gaps = taken[-1] - taken[0] + 1 != len(taken)
        return Frames(taken[0], amplitudes, positions, written, np.array(taken, np.int64) if gaps else None)


def amplitudes_of(frames: np.ndarray) -> np.ndarray:
    """Detector frames (..., N, N) as amplitudes float32: integer photon counts -> sqrt, float taken as is."""
    if np.issubdtype(frames.dtype, np.integer):
        return np.sqrt(frames.astype(np.float32))
    return np.asarray(frames, np.float32)


def open_swmr(path: Path) -> Any:
    """The h5py File at `path` opened for SWMR reading, or None while it does not exist or cannot be opened yet
    (being created, or held by a writer that has not switched to SWMR mode)."""
    import h5py

    if not path.is_file():
        return None
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return None
