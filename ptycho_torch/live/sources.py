"""Where live frames come from: one small interface, and the sources behind it.

A `FrameSource` hands out the frames that are complete *and* have their positions, in acquisition order:

    source.header(timeout_s)  -> SourceHeader   the probe, the pattern size, metadata (waits for the source)
    source.poll(max_frames)   -> Frames         the next complete frames (maybe none), never one twice
    source.finished           -> bool           the writer said the scan is over (its end mark)
    source.writer_gone()                        no frame for the idle time: the last frame counts as whole,
                                                frames that never arrived are given up
    source.close()

`poll` never returns a frame whose bytes may still be changing: an HDF5 frame counts once the writer's
frame counter passed it (or, for writers without a counter, once a later frame exists or the scan is
marked over); a frame without its position waits for it. An adaptor for a stream (ZMQ, EPICS PVA) is the
same four calls over its messages. Sources whose frames may arrive out of order (files, messages) keep
them in a `FrameBuffer`, which hands them out in scan order without a gap; when the writer is gone, the
frames that never arrived are given up and the rest handed out (`Frames.indices` then says which).

Sources (`open_source(watch)` picks one from `--watch`):
    H5FrameSource         SCAN.h5: a growing HDF5 scan in the data contract's layout, written in SWMR mode
                          (what `ptycho_torch.live.acquisition` and `ptycho-torch simulate --acquire-hz` write;
                          the layout a detector writes with a position dataset beside it)
    DirectoryFrameSource  DIR/: a header file and one file per frame or block of frames, each renamed into
                          place when whole (directory_source.py)
    ZmqFrameSource        tcp://host:port, ipc://path: a ZMQ PUSH stream of JSON + raw-bytes messages
                          (zmq_source.py; needs pyzmq)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.live.frames import Frames, SourceHeader, open_swmr

__all__ = ["STATUS_KEY", "TIME_KEY", "FrameSource", "Frames", "H5FrameSource", "SourceHeader", "open_source"]

STATUS_KEY = "acquisition"  # int64 (2,): [frames complete, scan over (0/1)], written by the acquisition writer
TIME_KEY = "frame_time"  # float64 (M,): when each frame was written (Unix seconds), optional


class FrameSource(Protocol):
    @property
    def finished(self) -> bool: ...

    def header(self, timeout_s: float) -> SourceHeader: ...

    def poll(self, max_frames: int) -> Frames: ...

    def writer_gone(self) -> None: ...

    def close(self) -> None: ...


class H5FrameSource:
    """A contract-layout HDF5 scan that grows while it is read (SWMR): diffraction (M, N, N), xcoords and
    ycoords (M,), probeGuess, optional objectGuess / metadata, and optionally the writer's status dataset
    `acquisition` = [frames complete, scan over]. Integer diffraction is photon counts (sqrt taken),
    float is amplitudes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: Any = None
        self._next = 0
        self._counts = False
        self._gone = False
        self._total: int | None = None  # the frame count the writer's end mark gave

    def _open(self) -> bool:
        self._file = open_swmr(self.path)
        return self._file is not None

    def header(self, timeout_s: float = 60.0) -> SourceHeader:
        deadline = time.monotonic() + timeout_s
        while not self._open():
            if time.monotonic() > deadline:
                raise UserError(f"--watch {self.path}: no readable HDF5 file appeared within {timeout_s:g} s; "
                                "start the acquisition (written in SWMR mode), or check the path")
            time.sleep(0.2)
        f = self._file
        missing = [k for k in ("diffraction", "probeGuess", "xcoords", "ycoords") if k not in f]
        if missing:
            raise UserError(f"--watch {self.path}: no {', '.join(missing)} dataset at the root; a live source "
                            "holds the data contract's datasets (docs/live.md), created before the first frame")
        d = f["diffraction"]
        if d.ndim != 3 or d.shape[1] != d.shape[2]:
            raise UserError(f"--watch {self.path}: diffraction has shape {d.shape}; expected (frames, N, N)")
        self._counts = np.issubdtype(d.dtype, np.integer)
        probe = np.asarray(f["probeGuess"][()], dtype=np.complex64)
        probe = probe[None] if probe.ndim == 2 else probe
        metadata: dict[str, Any] = {}
        if "metadata" in f:
            raw = f["metadata"][()]
            try:
                metadata = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            except (ValueError, AttributeError):
                metadata = {}
        truth = np.asarray(f["objectGuess"][()], dtype=np.complex64) if "objectGuess" in f else None
        return SourceHeader(probe, int(d.shape[-1]), metadata, truth, str(self.path))

    @property
    def finished(self) -> bool:
        """The writer marked the scan over and every frame it wrote has been handed out."""
        return self._total is not None and self._next >= self._total

    def _complete(self) -> int:
        """How many frames are whole and have positions. The writer's status is read first, so the frames and
        positions read after it are at least as new (an end mark never hides the last frames)."""
        f = self._file
        status = None
        if STATUS_KEY in f:
            f[STATUS_KEY].refresh()
            status = np.array(f[STATUS_KEY][:2])
        for key in ("diffraction", "xcoords", "ycoords"):
            f[key].refresh()
        n_pos = min(f["xcoords"].shape[0], f["ycoords"].shape[0])
        if status is not None:
            done, over = int(status[0]), bool(status[1])
            self._total = done if over else None
            return min(done, n_pos)
        # no writer's counter: the last frame of the dataset may still be written
        n = f["diffraction"].shape[0]
        return min(n if self._gone else max(n - 1, 0), n_pos)

    def poll(self, max_frames: int = 256) -> Frames:
        if self._file is None:
            raise RuntimeError("header() first")
        stop = min(self._complete(), self._next + max_frames)
        start = self._next
        if stop <= start:
            return Frames(start, np.zeros((0, 0, 0), np.float32), np.zeros((0, 2)))
        f = self._file
        raw = f["diffraction"][start:stop]
        amp = np.sqrt(raw.astype(np.float32)) if self._counts else raw.astype(np.float32, copy=False)
        positions = np.stack([f["xcoords"][start:stop], f["ycoords"][start:stop]], axis=1).astype(np.float64)
        written = None
        if TIME_KEY in f:
            f[TIME_KEY].refresh()
            if f[TIME_KEY].shape[0] >= stop:
                written = np.asarray(f[TIME_KEY][start:stop], np.float64)
        self._next = stop
        return Frames(start, amp, positions, written)

    def writer_gone(self) -> None:
        """The writer went quiet for good: its last frame counts as whole (for writers without a counter)."""
        self._gone = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


HDF5_SUFFIXES = (".h5", ".hdf5", ".cxi", ".nxs", ".hdf")
STREAM_SCHEMES = ("tcp://", "ipc://")


def open_source(watch: str | Path, options: Any = None) -> FrameSource:
    """The source for `--watch`: tcp://host:port or ipc://path (a ZMQ stream), an existing directory or a path
    ending in '/' (a directory of frame files), an .h5 / .hdf5 / .cxi / .nxs file (growing in SWMR mode): in a
    beamline layout (CXI, NeXus, or dataset paths in `options`, the model's data.ReadOptions) read as the
    offline reader reads it (live.beamline_source), else in the data contract's layout."""
    text = str(watch)
    if text.startswith(STREAM_SCHEMES):
        from ptycho_torch.live.zmq_source import ZmqFrameSource

        return ZmqFrameSource(text)
    path = Path(watch)
    if text.endswith(("/", os.sep)) or path.is_dir():
        from ptycho_torch.live.directory_source import DirectoryFrameSource

        return DirectoryFrameSource(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        if options is not None and _beamline_file(path, options):
            from ptycho_torch.live.beamline_source import BeamlineFrameSource

            return BeamlineFrameSource(path, options)
        return H5FrameSource(path)
    if "://" in text:
        raise UserError(f"--watch {watch}: not a stream address this source reads; a ZMQ stream is tcp://host:port "
                        "or ipc://path (docs/live.md)")
    raise UserError(f"--watch {watch}: not an HDF5 file (.h5, .hdf5, .cxi, .nxs), a directory (DIR/) or a ZMQ "
                    "address (tcp://host:port); a live source is one of these (docs/live.md)")


def _beamline_file(path: Path, options: Any) -> bool:
    """Whether `path` is read in a beamline layout: dataset paths given, a .cxi / .nxs name, or (a file already
    there) a CXI / NeXus layout without the contract's root `diffraction`."""
    if options.explicit or path.suffix.lower() in (".cxi", ".nxs"):
        return True
    if not path.is_file():
        return False
    import h5py

    from ptycho_torch.data.beamline import beamline_layout

    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            return beamline_layout(f, options) is not None
    except OSError:
        return False
