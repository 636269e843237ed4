"""One scan source from one or several files: the reader interface every workflow uses.

`read_scans(data)` takes a path, a glob pattern ('scans/part*.npz', quoted so the shell leaves it
alone) or several of either, and returns a `ScanData` for one file or a `ScanFiles` for several.
Both offer the same reading interface, so training, local reconstruction and the Ray Data path
read scans the same way:

    n_patterns, N, probe (P, N, N), xcoords / ycoords (M,) and positions (M, 2) in global order
    (file order, then row order), object_shape (H, W), object_guess (or None), path,
    diffraction_block(start, stop) and diffraction_rows(indices) -> (k, N, N) float32 photon units,
    mean_energy(), subset(indices), without_object()

Several files are one scan only when they share one object frame, N and probe: the canvas is the
union of their frames (elementwise max of their object shapes), the ground truth is the objectGuess
of the first file whose shape is that canvas. Groups for reconstruction are formed per file
(`parts`), so a group never spans two files.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ptycho_torch.data.beamline import ReadOptions, split_source
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.detector import FrameMap
from ptycho_torch.data.scan import ScanData
from ptycho_torch.errors import UserError

log = logging.getLogger("ptycho_torch")

GLOB_CHARS = "*?["
ScanPaths = Union[str, Path, Sequence[Union[str, Path]]]


def resolve_scan_paths(data: ScanPaths) -> list[Path]:
    """Expand `data` (a path, a glob pattern, or several of either) into existing files, in order
    (glob matches sorted, duplicates dropped). FileNotFoundError names what matched nothing. A
    'FILE.h5::/dataset' item counts as its file (see `resolve_scan_sources`)."""
    return list(dict.fromkeys(p for p, _ in resolve_scan_sources(data)))


def resolve_scan_sources(data: ScanPaths) -> list[tuple[Path, str | None]]:
    """Like `resolve_scan_paths`, keeping each item's '::/path/to/frames' dataset (or None)."""
    items = [data] if isinstance(data, (str, Path)) else list(data)
    if not items:
        raise FileNotFoundError("no scan files given; pass --data FILE, a glob such as 'scans/*.h5', "
                                "or several files")
    paths: list[tuple[Path, str | None]] = []
    for item in items:
        head, frames = split_source(str(item))
        text = os.path.expanduser(head)
        if any(ch in text for ch in GLOB_CHARS):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"no files match {head!r}; check the pattern (quote it so the "
                                        "shell does not expand it) and the directory")
            paths.extend((Path(m), frames) for m in matches)
        elif not Path(text).is_file():
            raise FileNotFoundError(f"scan file {head} does not exist")
        else:
            paths.append((Path(text), frames))
    return list(dict.fromkeys((p.resolve(), f) for p, f in paths))


@dataclass(eq=False)
class ScanFiles:
    """Several scan files read as one scan (module docstring); `parts` are their ScanData in order."""

    parts: list[ScanData]
    offsets: np.ndarray = field(init=False, repr=False)  # (K + 1,) int64: global index of each file's row 0
    _truth: ScanData | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [p.n_patterns for p in self.parts]).astype(np.int64)
        first = self.parts[0]
        for part in self.parts[1:]:
            if part.N != first.N:
                raise UserError(f"scan files hold patterns of different sizes: {first.path} is "
                                 f"{first.N}x{first.N} but {part.path} is {part.N}x{part.N}; use them separately")
            scale = float(np.abs(first.probe).max())
            if part.probe.shape != first.probe.shape or not np.allclose(part.probe, first.probe, rtol=1e-5,
                                                                         atol=1e-6 * scale):
                raise UserError(f"scan files have different probes: {part.path} differs from {first.path} "
                                 f"(shapes {part.probe.shape} and {first.probe.shape}); files of one scan "
                                 "must come from the same probe")

    # -- what one scan has
    @property
    def path(self) -> Path | None:
        return self.parts[0].path

    @property
    def paths(self) -> list[Path]:
        return [p.path for p in self.parts]

    @property
    def probe(self) -> np.ndarray:
        return self.parts[0].probe

    @property
    def metadata(self) -> dict:
        return self.parts[0].metadata

    @property
    def N(self) -> int:
        return self.parts[0].N

    @property
    def mask(self) -> np.ndarray | None:
        """(N, N) bool detector mask of the first file (True = excluded pixel), or None."""
        return self.parts[0].mask

    @property
    def n_patterns(self) -> int:
        return int(self.offsets[-1])

    @functools.cached_property
    def xcoords(self) -> np.ndarray:
        """(M,) float64 in global order."""
        return np.concatenate([p.xcoords for p in self.parts])

    @functools.cached_property
    def ycoords(self) -> np.ndarray:
        return np.concatenate([p.ycoords for p in self.parts])

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """(M, 2) float64 (x, y) object pixels in global order."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    @property
    def scan_index(self) -> np.ndarray | None:
        if any(p.scan_index is None for p in self.parts):
            return None
        return np.concatenate([p.scan_index for p in self.parts])

    @property
    def object_shape(self) -> tuple[int, int]:
        """(H, W): the union (elementwise max) of the files' frames."""
        shapes = [p.object_shape for p in self.parts]
        return (max(s[0] for s in shapes), max(s[1] for s in shapes))

    @functools.cached_property
    def truth_part(self) -> ScanData | None:
        """The first file carrying an objectGuess, when that is in the canvas frame (the ground truth)."""
        part = next((p for p in self.parts if p.object_guess is not None), None)
        if part is not None and tuple(part.object_guess.shape) != self.object_shape:
            log.warning("no ground truth: the objectGuess of %s is %s but the canvas of all files is %s",
                        part.path, tuple(part.object_guess.shape), self.object_shape)
            return None
        return part

    @property
    def object_guess(self) -> np.ndarray | None:
        truth = self.truth_part
        return None if truth is None else truth.object_guess

    # -- reading rows by global index
    def diffraction_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patterns at global `indices` (any shape and order) as (*indices.shape, N, N) float32, one
        read per file holding some of them."""
        return rows_by_part(self.parts, self.offsets, indices, self.N)

    def diffraction_block(self, start: int, stop: int) -> np.ndarray:
        """Patterns start..stop-1 (global) as (k, N, N) float32."""
        return self.diffraction_rows(np.arange(max(start, 0), min(stop, self.n_patterns)))

    def mean_energy(self, block: int | None = None) -> float:
        """Mean over all patterns of sum_xy X**2 (photons)."""
        total = sum(p.mean_energy(block) * p.n_patterns for p in self.parts)
        return total / max(self.n_patterns, 1)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ScanData:
        """An in-memory ScanData of the patterns at global `indices`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        scan_index = self.scan_index
        return ScanData(path=self.path, probe=self.probe, xcoords=self.xcoords[idx], ycoords=self.ycoords[idx],
                        object_guess=self.object_guess, metadata=self.metadata,
                        scan_index=None if scan_index is None else scan_index[idx],
                        diffraction=self.diffraction_rows(idx),
                        frame_map=None if self.mask is None else FrameMap(mask=self.mask))

    def without_object(self) -> "ScanFiles":
        return ScanFiles([p.without_object() for p in self.parts])


Scan = Union[ScanData, ScanFiles]


def rows_by_part(parts: Sequence[Any], offsets: np.ndarray, indices: Sequence[int] | np.ndarray, N: int
                 ) -> np.ndarray:
    """Patterns at global `indices` (any shape and order) of sources laid end to end (part k holds
    rows offsets[k]..offsets[k+1]-1, offsets (K + 1,)), as (*indices.shape, N, N) float32: one
    `diffraction_rows` read per part holding some of them."""
    idx = np.asarray(indices, dtype=np.int64)
    flat = idx.reshape(-1)
    out = np.empty((flat.size, N, N), np.float32)
    owner = np.searchsorted(offsets, flat, side="right") - 1
    for k in np.unique(owner):
        hit = owner == k
        out[hit] = parts[k].diffraction_rows(flat[hit] - offsets[k])
    return out.reshape(*idx.shape, N, N)


def read_scans(data: ScanPaths, *, validate: bool = True, options: ReadOptions | None = None) -> Scan:
    """Read `data` (path, glob, or several; 'FILE.h5::/frames' allowed) as one scan: ScanData for one
    file, ScanFiles for several. Each file is validated unless `validate` is False (the patterns are
    then trusted). `options` (beamline.ReadOptions.from_config(run config)) say how beamline files
    are read (dataset paths, N, mask, probe, geometry)."""
    parts = [read_scan(p, validate=validate, options=(options or ReadOptions()).with_frames(frames))
             for p, frames in resolve_scan_sources(data)]
    return parts[0] if len(parts) == 1 else ScanFiles(parts)


def scan_parts(scan: Scan) -> list[ScanData]:
    """The files of a scan in order (one for a ScanData)."""
    return scan.parts if isinstance(scan, ScanFiles) else [scan]


def scan_paths(scan: Scan) -> list[str]:
    return [str(p.path) for p in scan_parts(scan)]
