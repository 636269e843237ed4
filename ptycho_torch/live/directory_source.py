"""A directory where a detector's file writer puts one file per frame, or per block of frames (`--watch DIR/`).

The layout (what `acquisition.acquire(scan, "DIR/", hz)` and `ptycho-torch simulate --acquire-hz RATE
--out DIR` write):

    DIR/header.npz      probeGuess (P, N, N) or (N, N) complex, sqrt-photon units as the data contract;
                        optional objectGuess (H, W) complex (a ground truth) and metadata (a JSON string).
                        header.h5 with the same datasets at its root counts as well.
    DIR/frame_<i>.npz   frames i .. i + k - 1 of the scan: diffraction (k, N, N) or (N, N), integer photon
                        counts (sqrt taken) or float amplitudes; xcoords, ycoords (k,) or scalars, (x, y) in
                        object pixels as the contract; optional frame_time (k,) Unix seconds the frames were
                        written (else the file's modification time). <i> is the index of the file's first
                        frame, decimal, any width (frame_000123.npz). frame_<i>.h5 with the same datasets
                        counts as well.
    DIR/END             the end mark: empty, or JSON {"frames": M} (the scan's frame count).

Each file is written under another name and renamed into place when whole (what detector file writers do,
and what `safe_output.atomic_path` does: `.frame_000123.<random>.tmp.npz`). The source reads only files whose
whole name is `header.npz` / `header.h5`, `frame_<digits>.npz` / `.h5` or `END`, so a file being written is
never read. A matching file that cannot be read yet (a writer that does not rename) is tried again on the
next poll; when the writer is gone it is given up with a warning.

Frames are ordered by the index in their file's name, not by when the files appear: a frame waits for
every frame before it. When the writer is gone (no new frame for the loop's idle time), frames that never
arrived are given up and those after them handed out (`Frames.indices` says which). The END file is
checked before the directory is listed, so the frame files renamed before it are always seen. A restart
on the same directory reads every frame from the first again, each once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.live.frames import FrameBuffer, Frames, SourceHeader, amplitudes_of

log = logging.getLogger("ptycho_torch")

HEADER_NAMES = ("header.npz", "header.h5")
FRAME_NAME = re.compile(r"^frame_(\d+)\.(npz|h5)$")
END_NAME = "END"
FRAME_KEYS = ("diffraction", "xcoords", "ycoords")
NOT_YET_READABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # a file still being written


def frame_file_name(start: int, suffix: str = ".npz") -> str:
    """The name of the file holding frames start, start + 1, ... (frame_000123.npz)."""
    return f"frame_{start:06d}{suffix}"


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, or every dataset at the root of an .h5 file."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


def _metadata(raw: Any) -> dict[str, Any]:
    raw = raw.item() if isinstance(raw, np.ndarray) else raw
    try:
        meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


class DirectoryFrameSource:
    """`--watch DIR/`: header.npz and frame_<index>.npz files renamed into place whole, END when the scan is
    over (the layout in this module's docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buffer: FrameBuffer | None = None
        self._known: set[str] = set()  # frame file names listed so far
        self._pending: dict[int, Path] = {}  # first frame index -> frame file listed, not read yet
        self._gone = False

    def _header_path(self) -> Path | None:
        for name in HEADER_NAMES:
            if (self.path / name).is_file():
                return self.path / name
        return None

    def header(self, timeout_s: float = 60.0) -> SourceHeader:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._header_path()
            if found is not None:
                try:
                    arrays = read_arrays(found)
                    break
                except FileNotFoundError:
                    pass
                except NOT_YET_READABLE as e:
                    if time.monotonic() > deadline:
                        raise UserError(f"--watch {self.path}/: {found.name} cannot be read ({e}); the header is "
                                        "an .npz (or .h5) holding probeGuess, renamed into place whole") from e
            if time.monotonic() > deadline:
                where = "in it" if self.path.is_dir() else "(the directory does not exist)"
                raise UserError(f"--watch {self.path}/: no header.npz (or header.h5) appeared {where} within "
                                f"{timeout_s:g} s; start the acquisition, or check the path (a directory source holds "
                                "header.npz + frame_<index>.npz files, docs/live.md)")
            time.sleep(0.2)
        if "probeGuess" not in arrays:
            raise UserError(f"--watch {self.path}/: {found.name} has no probeGuess (it holds "
                            f"{', '.join(sorted(arrays)) or 'nothing'}); the header holds probeGuess (P, N, N) "
                            "complex, optional objectGuess and metadata (docs/live.md)")
        probe = np.asarray(arrays["probeGuess"], np.complex64)
        probe = probe[None] if probe.ndim == 2 else probe
        if probe.ndim != 3 or probe.shape[-1] != probe.shape[-2]:
            raise UserError(f"--watch {self.path}/: probeGuess in {found.name} has shape {probe.shape}; "
                            "expected (N, N) or (modes, N, N)")
        N = int(probe.shape[-1])
        truth = np.asarray(arrays["objectGuess"], np.complex64) if "objectGuess" in arrays else None
        metadata = _metadata(arrays["metadata"]) if "metadata" in arrays else {}
        self._buffer = FrameBuffer(N, f"{self.path}/")
        return SourceHeader(probe, N, metadata, truth, f"{self.path}/")

    @property
    def finished(self) -> bool:
        """END is there and every frame known has been handed out."""
        return self._buffer is not None and not self._pending and self._buffer.finished

    def _list(self) -> None:
        """Note the frame files that appeared (and the end mark, checked first)."""
        buffer = self._buffer
        end = self.path / END_NAME
        ended = not buffer.ended and end.is_file()
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name in self._known:
                    continue
                match = FRAME_NAME.match(entry.name)
                if match is None:
                    continue
                self._known.add(entry.name)
                start = int(match.group(1))
                if start in self._pending:
                    log.warning("live: %s/: %s and %s both start at frame %d; reading the first", self.path,
                                self._pending[start].name, entry.name, start)
                    continue
                self._pending[start] = Path(entry.path)
                buffer.expect(start + 1)
        if ended:
            text = end.read_text().strip()
            try:
                total = json.loads(text).get("frames") if text else None
            except (ValueError, AttributeError):
                total = None
            buffer.end(None if total is None else int(total))

    def _read(self, start: int) -> None:
        """Put the frames of the file listed for `start` into the buffer (or leave it for the next poll)."""
        path = self._pending[start]
        try:
            arrays = read_arrays(path)
            written = path.stat().st_mtime
        except FileNotFoundError:
            log.warning("live: %s disappeared before it was read; its frames are missing", path)
            del self._pending[start]
            return
        except NOT_YET_READABLE as e:
            if self._gone:
                log.warning("live: %s cannot be read (%s) and the writer is gone; going on without it", path, e)
                del self._pending[start]
            return
        del self._pending[start]
        missing = [k for k in FRAME_KEYS if k not in arrays]
        if missing:
            raise UserError(f"--watch {self.path}/: {path.name} has no {', '.join(missing)}; a frame file holds "
                            "diffraction (k, N, N), xcoords and ycoords (k,) (docs/live.md)")
        N = self._buffer.N
        d = np.asarray(arrays["diffraction"])
        d = d[None] if d.ndim == 2 else d
        k = len(d)
        x = np.atleast_1d(np.asarray(arrays["xcoords"], np.float64)).ravel()
        y = np.atleast_1d(np.asarray(arrays["ycoords"], np.float64)).ravel()
        if d.ndim != 3 or d.shape[1:] != (N, N) or len(x) != k or len(y) != k:
            raise UserError(f"--watch {self.path}/: {path.name} holds diffraction {d.shape}, xcoords {x.shape}, "
                            f"ycoords {y.shape}; expected (k, {N}, {N}) (the header's probe is {N}x{N}) and (k,)")
        stamps = np.asarray(arrays.get("frame_time", written), np.float64).ravel()
        stamps = stamps if stamps.size == k else np.full(k, stamps[0] if stamps.size == 1 else written)
        amplitudes = amplitudes_of(d)
        for j in range(k):
            self._buffer.add_frame(start + j, amplitudes[j], stamps[j])
            self._buffer.add_position(start + j, x[j], y[j])

    def poll(self, max_frames: int = 256) -> Frames:
        if self._buffer is None:
            raise RuntimeError("header() first")
        self._list()
        window = self._buffer.next + max_frames  # files past it wait (a restart on a long scan reads in steps)
        for start in sorted(self._pending):
            if start >= window and not self._gone:
                break
            self._read(start)
        return self._buffer.take(max_frames, skip_gaps=self._gone)

    def writer_gone(self) -> None:
        """The writer went quiet for good: frames that never arrived are given up, the later ones handed out."""
        self._gone = True

    def close(self) -> None:
        """Nothing is held open between polls."""
