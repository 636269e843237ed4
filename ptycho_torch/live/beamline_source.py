"""A beamline HDF5 file read while the detector writes it: CXI, NeXus, or any layout by `data.datasets`, in
SWMR mode, with detector frames of any size and positions in metres.

The offline reader (ptycho_torch.data.beamline) turns a finished file into patterns: frames cropped or binned to
N x N around the beam centre, counts to sqrt(counts), positions in metres to object pixels of size
lambda z / (N b Delta) with the smallest position at N/2. Live, the file is not finished, so:

    header()  waits until the file holds a frame with its position, copies what is there (up to 16 first frames
              and their positions, the geometry, probe and mask: the same paths, units and attributes) into a
              temporary HDF5 file and reads that with the offline reader and the model's reading options: probe, N, the
              window (data.beam_center, else the centroid of those k frames), the pixel size, the origin
    poll()    reads each new frame through that window (only the window's pixels) and its position, converted with
              that pixel size and origin (`read_position_rows`): a frame left of or above the first ones has a
              position below N/2, and the live canvas moves to hold it

A frame counts as whole once a later frame exists (these files carry no frame counter; the writer's
`acquisition` dataset [frames complete, scan over], when the file has one, is honoured as in the contract
layout, and is the end mark). Without an end mark the run ends after --idle-timeout without a new frame.
Positions must live in the same file (a second file may still be growing).

The final pass reads the finished file with the offline reader (`final_data`), so the final products are exactly
`reconstruct`'s of that file (its window from the mean of up to 256 frames spread over the scan, its origin the
smallest position), whatever the first frames implied.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.data.beamline import (
    SEPARATOR,
    ReadOptions,
    beamline_layout,
    read_beamline,
    read_position_rows,
)
from ptycho_torch.data.detector import MappedFrames
from ptycho_torch.data.validation import ScanValidationError
from ptycho_torch.errors import UserError
from ptycho_torch.live.frames import Frames, SourceHeader, open_swmr

STATUS_KEY = "acquisition"  # int64 (2,): [frames complete, scan over (0/1)], as in the contract layout
ROW_ROLES = ("frames", "translation", "x", "y", "xcoords", "ycoords")  # one row per frame
POSITION_ROLES = ("translation", "x", "y", "xcoords", "ycoords")
FIRST_FRAMES = 16  # frames of the first read (the window's centroid): a few MB even of a megapixel detector


class BeamlineFrameSource:
    """`--watch scan.cxi` / `scan.nxs` / `scan.h5` in a beamline layout (module docstring)."""

    def __init__(self, path: str | Path, options: ReadOptions) -> None:
        self.path, self.options = Path(path), options
        self._file: Any = None
        self._layout: tuple[str, dict[str, list[str]]] | None = None
        self._frame_map: Any = None
        self._N = 0
        self._pixel: float | None = None
        self._origin: dict[str, float] | None = None
        self._next = 0
        self._gone = False
        self._total: int | None = None
        others = [r for r in POSITION_ROLES if SEPARATOR in str(options.datasets.get(r, "")) or
                  Path(str(options.datasets.get(r, ""))).suffix.lower() in (".csv", ".txt", ".dat", ".tsv")]
        if others:
            raise UserError(f"--watch {self.path}: data.datasets.{others[0]} names another file; a live source reads "
                            "positions written into the same file as the frames")

    # ------------------------------------------------------------------ the file
    def _open(self) -> bool:
        self._file = open_swmr(self.path)
        return self._file is not None

    def _dataset(self, role: str) -> Any:
        """The first existing dataset of `role` (data.datasets first), refreshed; None when not there yet."""
        found = self._located(role)
        return None if found is None else found[1]

    def _located(self, role: str) -> tuple[str, Any] | None:
        """(path, dataset) of `role`'s first existing candidate, refreshed; None when not there yet."""
        for where in self._layout[1].get(role, []):
            obj = self._file.get(where)
            if obj is not None and hasattr(obj, "refresh"):
                obj.refresh()
                return where, obj
        return None

    def _rows_written(self) -> int:
        """Frames that are whole and have their positions (the writer's counter when there is one)."""
        frames = self._dataset("frames")
        if frames is None:
            return 0
        n = int(frames.shape[0]) if self._gone else max(int(frames.shape[0]) - 1, 0)
        if STATUS_KEY in self._file:
            status = self._file[STATUS_KEY]
            status.refresh()
            done, over = (int(v) for v in np.asarray(status[:2]))
            self._total = done if over else None
            n = done
        for role in (("xcoords", "ycoords"), ("translation",), ("x", "y")):
            sets = [self._dataset(r) for r in role]
            if all(s is not None for s in sets):
                return min([n] + [int(s.shape[0]) for s in sets])
        return 0

    # ------------------------------------------------------------------ the source interface
    def header(self, timeout_s: float = 60.0) -> SourceHeader:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._file is not None or self._open():
                scan = self._first_read()
                if scan is not None:
                    break
            if time.monotonic() > deadline:
                raise UserError(f"--watch {self.path}: no frame with its position appeared within {timeout_s:g} s; "
                                "start the acquisition (written in SWMR mode), or check the path and data.datasets")
            time.sleep(0.2)
        self._frame_map = scan.frame_map  # None: float frames of N x N, read as they are
        self._N = scan.N
        meta = dict(scan.metadata)
        self._pixel, self._origin = meta.get("pixel_size_m"), meta.get("position_origin_m")
        meta["live_note"] = ("window and origin of the first frames; the final products read the finished file "
                             "as reconstruct does")
        return SourceHeader(np.asarray(scan.probe, np.complex64), scan.N, meta, None, str(self.path))

    def _first_read(self) -> Any:
        """The offline reader's scan of the frames and positions written so far (a copy in memory), or None."""
        import h5py

        if self._layout is None:
            layout = beamline_layout(self._file, self.options)
            if layout is None:
                raise UserError(f"--watch {self.path}: not a beamline layout (CXI, NeXus) and no data.datasets given; "
                                "a file in the data contract's layout is read as such (docs/live.md)")
            kind, found = layout
            found = {k: list(v) for k, v in found.items()}
            found.update({role: [where] for role, where in self.options.datasets.items()})
            if self.options.frames:
                found["frames"] = [self.options.frames]
            self._layout = (kind, found)
        k = min(self._rows_written(), FIRST_FRAMES)
        if k < 1:
            return None
        kind, found = self._layout
        with tempfile.TemporaryDirectory(prefix="ptycho-live-") as tmp:
            first = Path(tmp) / self.path.name
            with h5py.File(first, "w") as copy:
                for role in found:
                    located = self._located(role)
                    if located is None or located[0] in copy:
                        continue
                    where, obj = located
                    copy.create_dataset(where, data=obj[:k] if role in ROW_ROLES else obj[()])
                    copy[where].attrs.update(dict(obj.attrs))
            try:
                with h5py.File(first, "r") as f:
                    scan = read_beamline(first, f, found, kind, self.options, validate=False)
                    scan.close()
            except ScanValidationError as e:
                raise UserError(f"--watch {self.path}: {e}".replace(str(first), str(self.path))) from None
        return scan

    @property
    def finished(self) -> bool:
        """The writer's counter marked the scan over and every frame it counted has been handed out."""
        return self._total is not None and self._next >= self._total

    def poll(self, max_frames: int = 256) -> Frames:
        if self._layout is None or self._N == 0:
            raise RuntimeError("header() first")
        start = self._next
        stop = min(self._rows_written(), start + max_frames)
        if stop <= start:
            return Frames(start, np.zeros((0, 0, 0), np.float32), np.zeros((0, 2)))
        kind, found = self._layout
        try:
            x, y = read_position_rows(self.path, self._file, found, kind, self.options, self._N, self._pixel,
                                      self._origin, start, stop)
        except ScanValidationError as e:
            raise UserError(f"--watch {self.path}: {e}") from None
        frames = self._dataset("frames")  # the handle just refreshed (an older one may read stale chunk indexes)
        amp = (MappedFrames(frames, self._frame_map)[start:stop] if self._frame_map is not None
               else np.asarray(frames[start:stop], np.float32))
        self._next = stop
        return Frames(start, amp, np.stack([x, y], axis=1).astype(np.float64))

    def writer_gone(self) -> None:
        """The writer went quiet for good: its last frame counts as whole."""
        self._gone = True

    def final_data(self) -> Path:
        """What the final pass reads: the file itself, as `reconstruct` reads it."""
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
