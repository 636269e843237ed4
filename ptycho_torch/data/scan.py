"""The scan type every reader returns: `ScanData` (one scan, diffraction read lazily where the file
allows it) and the canvas its positions imply (`canvas_shape`). Readers: contract.py (NPZ / HDF5 contract
files), beamline.py (CXI, NeXus, any HDF5 layout), tike_files.py; the entry point is scan_files.read_scans."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ptycho_torch.data.detector import FrameMap, MappedFrames
from ptycho_torch.data.npz_files import npz_memmap
from ptycho_torch.data.validation import H5_SUFFIXES


def canvas_shape(xcoords: np.ndarray, ycoords: np.ndarray, N: int) -> tuple[int, int]:
    """(H, W) of the smallest canvas holding every N x N patch at positions (x, y) object pixels:
    H = floor(max y) + N/2 (physics.place_patches needs floor(y) - N/2 + N <= H)."""
    half = N // 2
    return (int(np.floor(ycoords.max())) + half, int(np.floor(xcoords.max())) + half)



@dataclass(eq=False)
class ScanData:
    """One scan: everything in memory except lazily read diffraction (`lazy_key` set).

    probe (P, N, N) complex64; xcoords, ycoords (M,) float64 object pixels; object_guess (H, W)
    complex64 or None; scan_index (M,) int64 or None; diffraction (M, N, N) float32 amplitudes (or
    integer photon counts) or None when lazy (then `path` + `lazy_key` name the HDF5 dataset or the
    uncompressed NPZ member). `frame_map` (detector.FrameMap) turns stored frames into amplitudes as
    rows are read: counts -> sqrt, a crop / binning to N x N, masked pixels -> 0; integer
    `diffraction` gets a counts map by itself. Every read (`diffraction_block`, `diffraction_rows`)
    returns (k, N, N) float32 amplitudes in photon units (`photon_scale`).
    """

    path: Path | None
    probe: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    object_guess: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    diffraction: np.ndarray | None = field(default=None, repr=False)
    lazy_key: str | None = None
    photon_scale: float = 1.0  # stored amplitudes x photon_scale = sqrt(photon counts) (see photon_units)
    frame_map: FrameMap | None = None
    _shape: tuple[int, int, int] = field(init=False, repr=False, default=(0, 0, 0))
    _handle: Any = field(init=False, repr=False, default=None)  # (open file or None, dataset / memmap)
    _handle_pid: int | None = field(init=False, repr=False, default=None)
    _energy: float | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.path = Path(self.path) if self.path is not None else None
        probe = np.asarray(self.probe).astype(np.complex64, copy=False)
        self.probe = probe[None] if probe.ndim == 2 else probe
        self.xcoords = np.asarray(self.xcoords, dtype=np.float64)
        self.ycoords = np.asarray(self.ycoords, dtype=np.float64)
        if self.object_guess is not None:
            self.object_guess = np.asarray(self.object_guess).astype(np.complex64, copy=False)
        if self.scan_index is not None:
            self.scan_index = np.asarray(self.scan_index).astype(np.int64, copy=False)
        self.metadata = dict(self.metadata or {})
        if self.diffraction is not None:
            self.diffraction = np.asarray(self.diffraction)
            if self.diffraction.dtype.kind in "iu" and self.frame_map is None:
                self.frame_map = FrameMap(counts=True)  # photon counts: sqrt per row as rows are read
            elif self.diffraction.dtype.kind not in "iu":
                self.diffraction = self.diffraction.astype(np.float32, copy=False)
            self._shape = tuple(self._frames().shape)
        elif self.lazy_key is not None and self.path is not None:
            self._shape = tuple(self._frames().shape)
        else:
            raise ValueError("ScanData needs `diffraction` (an array) or `path` + `lazy_key` (HDF5 dataset "
                             "or uncompressed NPZ member)")

    # -- pickling: never ship an open file or a memory map (it would pickle as a full copy)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"] = None, None
        return state

    def _dataset(self) -> Any:
        """The lazy diffraction of this process: an h5py dataset or an np.memmap (opened once per pid)."""
        if self._handle is None or self._handle_pid != os.getpid():
            if Path(self.path).suffix.lower() in H5_SUFFIXES:
                import h5py
                f = h5py.File(self.path, "r")
                self._handle = (f, f[self.lazy_key])
            else:
                self._handle = (None, npz_memmap(self.path, self.lazy_key))
            self._handle_pid = os.getpid()
        return self._handle[1]

    def _frames(self) -> Any:
        """What rows are read from: the stored frames, seen through `frame_map` when there is one."""
        stored = self.diffraction if self.diffraction is not None else self._dataset()
        return stored if self.frame_map is None else MappedFrames(stored, self.frame_map)

    @property
    def mask(self) -> np.ndarray | None:
        """(N, N) bool detector mask, True = excluded pixel (read as 0, left out of the loss), or None."""
        return None if self.frame_map is None else self.frame_map.mask

    def close(self) -> None:
        """Close this process's file handle or memory map (reads reopen it)."""
        if self._handle is not None and self._handle_pid == os.getpid() and self._handle[0] is not None:
            self._handle[0].close()
        self._handle, self._handle_pid = None, None

    def without_object(self) -> "ScanData":
        """The same scan without objectGuess: what a reading process needs (light to pickle when lazy)."""
        return dataclasses.replace(self, object_guess=None)

    @property
    def is_lazy(self) -> bool:
        return self.diffraction is None

    @property
    def n_patterns(self) -> int:
        return int(self._shape[0])

    @property
    def N(self) -> int:
        return int(self._shape[-1])

    @property
    def positions(self) -> np.ndarray:
        """(M, 2) float64 scan positions as (x, y) object pixels."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    @property
    def object_shape(self) -> tuple[int, int]:
        """(H, W): objectGuess's shape, else the smallest canvas holding every patch,
        H = floor(max y) + N/2 (physics.place_patches needs floor(y) - N/2 + N <= H)."""
        if self.object_guess is not None:
            return tuple(self.object_guess.shape)
        return canvas_shape(self.xcoords, self.ycoords, self.N)

    def diffraction_block(self, start: int, stop: int) -> np.ndarray:
        """Patterns start..stop-1 as (k, N, N) float32 (a view for in-memory data)."""
        if self.diffraction is not None and self.frame_map is None:
            return self._photons(self.diffraction[start:stop])
        return self._photons(np.asarray(self._frames()[start:stop], dtype=np.float32))

    def _photons(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.photon_scale == 1.0 else rows * np.float32(self.photon_scale)

    def diffraction_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patterns at `indices` (any shape and order, repeats allowed) as (*indices.shape, N, N)
        float32. HDF5 reads one contiguous span when the rows are dense, else the sorted unique rows
        (what h5py fancy indexing needs)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.diffraction is not None and self.frame_map is None:
            return self._photons(self.diffraction[idx])
        flat = idx.reshape(-1)
        if flat.size == 0:
            return np.zeros((*idx.shape, self.N, self.N), np.float32)
        uniq, inverse = np.unique(flat, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        frames = self._frames()
        if hi - lo <= 2 * uniq.size:
            rows = np.asarray(frames[lo:hi], dtype=np.float32)[flat - lo]
        else:
            rows = np.asarray(frames[uniq], dtype=np.float32)[inverse.reshape(-1)]
        return self._photons(rows.reshape(*idx.shape, self.N, self.N))

    def mean_energy(self, block: int | None = None) -> float:
        """Mean over patterns of sum_xy X**2 (photons), streamed block-wise (float64 sums); cached."""
        if self._energy is None:
            rows, total = block or max(1, 2 ** 24 // max(1, self.N * self.N)), 0.0
            for start in range(0, self.n_patterns, rows):
                x = self.diffraction_block(start, start + rows)
                total += float(np.sum(x * x, dtype=np.float64))
            self._energy = total / max(self.n_patterns, 1)
        return self._energy

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ScanData":
        """An in-memory ScanData holding the patterns at `indices` (same probe, object, metadata)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ScanData(
            path=self.path, probe=self.probe, xcoords=self.xcoords[idx], ycoords=self.ycoords[idx],
            object_guess=self.object_guess,
            scan_index=None if self.scan_index is None else self.scan_index[idx],
            metadata=self.metadata, diffraction=self.diffraction_rows(idx),  # already in photon units
            frame_map=None if self.mask is None else FrameMap(mask=self.mask))

    def arrays(self) -> dict[str, Any]:
        """Keyword arguments for `write_scan` (loads all diffraction into memory)."""
        return dict(diffraction=self.diffraction_block(0, self.n_patterns), probe=self.probe,
                    xcoords=self.xcoords, ycoords=self.ycoords, object_guess=self.object_guess,
                    scan_index=self.scan_index, metadata=self.metadata)

    def _as_mapping(self) -> dict[str, Any]:
        d = self._frames()
        return {"diffraction": d, "probeGuess": self.probe, "xcoords": self.xcoords,
                "ycoords": self.ycoords, "objectGuess": self.object_guess,
                "scan_index": self.scan_index, "metadata": self.metadata}
