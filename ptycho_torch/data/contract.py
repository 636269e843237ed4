"""The scan data contract (SPEC section 3): read, validate and write NPZ / HDF5 scan files.

Keys (the same names as NPZ arrays or HDF5 root datasets):
    diffraction  (M, N, N) float32   measured amplitude sqrt(photon counts), DC at pixel N/2 (alias diff3d);
                 or integer photon counts (any int dtype), read as sqrt(counts) row by row
    probeGuess   (N, N) or (P, N, N) complex64   probe, P incoherent modes
    xcoords      (M,) float64        scan positions in object pixels: x = column
    ycoords      (M,) float64        y = row
    objectGuess  (H, W) complex64    optional ground truth / reference, in the frame of the positions
    scan_index   (M,) int64          optional scan a pattern belongs to
    metadata     JSON string         optional (NPZ: a 0-d str array)

Patch convention (physics.py): the patch of position (x, y) covers rows floor(y) - N/2 ... floor(y) + N/2 - 1
and the same columns around floor(x), so it lies inside an (H, W) object iff
N/2 <= floor(x) <= W - N/2 and N/2 <= floor(y) <= H - N/2.

Diffraction is read lazily where the file allows it: an HDF5 dataset, or an NPZ member stored
uncompressed (what np.savez and write_scan write) through a read-only memory map. `ScanData` keeps the
path and the dataset/member name and opens the file on demand inside the process that reads, so it
pickles cheaply to DataLoader and Ray workers. A compressed NPZ member is loaded into memory.
`read_object_guess` reads the ground truth alone (evaluation never touches the patterns). Beamline
files (CXI, NeXus, dataset paths) are read by beamline.py into the same ScanData; `write_scan` lives
in scan_writer.py (re-exported here).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ptycho_torch.data.beamline import (
    ReadOptions,
    beamline_layout,
    read_array_source,
    read_beamline,
    split_source,
)
from ptycho_torch.data.detector import FrameMap, MappedFrames, dc_at_corner
from ptycho_torch.data.npz_files import check_member_crc, npz_memmap, npz_problem
from ptycho_torch.data.photon_units import photon_units
from ptycho_torch.data.scan_writer import write_scan
from ptycho_torch.data.tike_files import (
    TIKE_KEYS,
    compressed_npz_suffix,
    is_tike_layout,
    read_compressed_npz,
    tike_arrays,
)
from ptycho_torch.data.validation import (
    ALIASES,
    H5_SUFFIXES,
    OPTIONAL,
    REQUIRED,
    ScanValidationError,
    canonical_keys,
    check_arrays,
    parse_metadata,
    scan_suffix,
)
from ptycho_torch.errors import UserError

__all__ = ["ScanValidationError", "ScanData", "canvas_shape", "read_object_guess", "read_scan", "validate_scan",
           "write_scan"]

log = logging.getLogger(__name__)


def canvas_shape(xcoords: np.ndarray, ycoords: np.ndarray, N: int) -> tuple[int, int]:
    """(H, W) of the smallest canvas holding every N x N patch at positions (x, y) object pixels:
    H = floor(max y) + N/2 (physics.place_patches needs floor(y) - N/2 + N <= H)."""
    half = N // 2
    return (int(np.floor(ycoords.max())) + half, int(np.floor(xcoords.max())) + half)


def validate_scan(arrays: Mapping[str, Any] | "ScanData", *, source: str = "scan", block: int | None = None
                  ) -> None:
    """Check arrays against the contract (file keys, e.g. 'probeGuess'; alias 'diff3d' accepted) or a
    ScanData; raise one ScanValidationError listing every problem. HDF5 datasets are streamed."""
    if isinstance(arrays, ScanData):
        arrays = arrays._as_mapping()
    problems, _ = check_arrays(canonical_keys(arrays), block)
    if problems:
        raise ScanValidationError(problems, source)


# ------------------------------------------------------------------ ScanData

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


# ------------------------------------------------------------------ reading

def _read_arrays(path: Path, handle: Any, is_h5: bool) -> tuple[dict[str, Any], list[str]]:
    """Canonical-key arrays from an open NpzFile / h5py.File: HDF5 diffraction stays a dataset, an
    uncompressed NPZ diffraction member becomes a memory map (`npz_memmap`)."""
    known = set(REQUIRED + OPTIONAL) | set(ALIASES)
    names = sorted(handle.keys(), key=lambda n: n in ALIASES)  # 'diffraction' wins over 'diff3d'
    if set(names) - known:
        log.debug("%s: ignoring keys %s", path, ", ".join(sorted(set(names) - known)))
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name in (n for n in names if n in known and ALIASES.get(n, n) not in out):
        key = ALIASES.get(name, name)
        try:
            lazy = npz_memmap(path, name) if key == "diffraction" and not is_h5 else None
            item = lazy if lazy is not None else handle[name]
            if is_h5 and not hasattr(item, "dtype"):
                problems.append(f"{name}: expected an HDF5 dataset, found a group; move the data to "
                                f"a root dataset named {key}")
                continue
            out[key] = item[()] if is_h5 and key != "diffraction" else item
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged .npz member
            problems.append(f"{name}: damaged in the file ({e}); re-create the scan file or copy it again")
        except ValueError as e:  # object arrays under allow_pickle=False, a truncated member
            if "damaged" in str(e):
                problems.append(f"{name}: {e}")
                continue
            problems.append(f"{name}: could not be read without unpickling ({e}); store plain "
                            "numeric arrays (and metadata as a JSON string)")
    return out, problems


def read_scan(path: str | Path, *, validate: bool = True, options: ReadOptions | None = None) -> ScanData:
    """Read a .npz (allow_pickle=False) or HDF5 (lazy diffraction) scan file: a contract file, or a
    beamline file (CXI, NeXus, any layout by dataset paths; see beamline.py) read as one.

    `path` may be 'FILE.h5::/path/to/frames'; `options` (beamline.ReadOptions, from the run config)
    carry dataset paths, the pattern size N to crop / bin to, a mask, the probe and the geometry.

    Extra keys (e.g. upstream PtychoPINN 'xcoords_start', 'Y') are ignored. With `validate`, every
    contract problem is collected and raised once as ScanValidationError (one streaming pass over the
    patterns, which also checks a memory-mapped NPZ member's CRC); without it the pattern values are
    trusted (a process reading a file its driver validated) and only keys, shapes, dtypes, probe and
    positions are checked.
    """
    text, frames = split_source(str(path))
    path, options = Path(text), (options or ReadOptions()).with_frames(frames)
    compressed = compressed_npz_suffix(path) is not None
    is_h5 = not compressed and scan_suffix(path) in H5_SUFFIXES
    if not path.is_file():
        raise FileNotFoundError(f"scan file {path} does not exist")
    if compressed:
        return _finish(path, *_in_memory(path, read_compressed_npz(path), validate), options, validate)
    if options.explicit and not is_h5:
        raise ScanValidationError(["file: dataset paths (data.datasets, FILE::/path) need an HDF5 file"], str(path))
    problem = None if is_h5 else npz_problem(path)
    if problem is not None:
        raise ScanValidationError([f"file: {problem}"], str(path))
    try:
        if is_h5:
            import h5py
            handle = h5py.File(path, "r")
        else:
            handle = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        kind = "HDF5" if is_h5 else "NPZ"
        raise ScanValidationError([f"file: could not be opened as {kind} ({e})"], str(path)) from None
    with handle:
        layout = beamline_layout(handle, options) if is_h5 else None
        if layout is not None:
            return read_beamline(path, handle, layout[1], layout[0], options, validate)
        if not is_h5 and is_tike_layout(handle.files):
            return _finish(path, *_in_memory(path, {k: handle[k] for k in TIKE_KEYS}, validate), options, validate)
        arrays, problems = _read_arrays(path, handle, is_h5)
        if is_h5 and "diffraction" not in arrays and not problems:
            problems.append("file: neither a scan file (root 'diffraction'), CXI (entry_1) nor NeXus (an NXentry); "
                            "name the datasets: --data FILE.h5::/path/to/frames and data.datasets")
        stats: dict[str, float] = {}
        lazy_npz = not is_h5 and isinstance(arrays.get("diffraction"), np.memmap)
        if not problems:  # an unreadable array would also show up as missing
            more, stats = check_arrays(arrays, contents=validate)
            problems += more
            if lazy_npz and validate:
                member = "diffraction" if "diffraction" in handle.files else "diff3d"
                try:
                    check_member_crc(path, member)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                    problems.append(f"{member}: damaged in the file ({e}); re-create the scan file or copy it again")
        if problems:
            raise ScanValidationError(problems, str(path))
        lazy_key = None  # keep only the dataset's / member's name; ScanData reopens it where it reads
        if is_h5:
            lazy_key = arrays["diffraction"].name.lstrip("/")
        elif lazy_npz:
            lazy_key = "diffraction" if "diffraction" in handle.files else "diff3d"
    return _finish(path, arrays, stats, lazy_key, None, options, validate)


def _in_memory(path: Path, raw: dict[str, np.ndarray], validate: bool
               ) -> tuple[dict[str, Any], dict[str, float], None, str | None]:
    """(canonical arrays, stats, no lazy key, how a tike file was read) of an archive read whole."""
    how = None
    if is_tike_layout(raw):
        raw, how = tike_arrays(raw, path)
    arrays = canonical_keys(raw)
    problems, stats = check_arrays(arrays, contents=validate)
    if problems:
        raise ScanValidationError(problems, str(path))
    return arrays, stats, None, how


def _finish(path: Path, arrays: dict[str, Any], stats: dict[str, float], lazy_key: str | None,
            read_as: str | None, options: ReadOptions, validate: bool) -> ScanData:
    """The ScanData of checked contract arrays: photon units, the detector mask, the zero frequency
    moved to the centre where the patterns hold it at the corner, and data.probe in place of the
    file's probe. `read_as` says how a converted layout was read (None for a contract file)."""
    meta = arrays.get("metadata")
    stored_dtype = np.dtype(arrays["diffraction"].dtype)
    counts = stored_dtype.kind in "iu"
    mask = _contract_mask(options, _shape_of(arrays["diffraction"]), path)
    scan = ScanData(
        path=path, probe=arrays["probeGuess"], xcoords=arrays["xcoords"], ycoords=arrays["ycoords"],
        object_guess=arrays.get("objectGuess"), scan_index=arrays.get("scan_index"),
        metadata=parse_metadata(meta) if meta is not None else {},
        diffraction=None if lazy_key else arrays["diffraction"], lazy_key=lazy_key,
        frame_map=FrameMap(counts=counts, mask=mask) if counts or mask is not None else None)
    if "mean_energy" in stats and mask is None:  # with a mask, masked pixels are left out of the energy
        scan._energy = stats["mean_energy"]
    if counts:  # counts are photons by definition: intensity_scale / nphotons do not apply
        scale, how = 1.0, scan.frame_map.describe(stored_dtype)
    else:
        scale, how = photon_units(arrays, scan.mean_energy)  # energy as stored (scale 1)
    if scale != 1.0:
        scan.photon_scale = scale
        scan._energy = scan.mean_energy() * scale ** 2
    # a rescaled file or counts are worth a line by default where the file is validated (the driver);
    # the plain reading shows with -v (every Ray worker reads the file, unvalidated: an INFO line there
    # would repeat once per worker)
    if read_as is not None:
        how = f"{read_as}; {how}" if scale != 1.0 else read_as
    elif _dc_at_corner(scan):
        scan.frame_map = dataclasses.replace(scan.frame_map or FrameMap(), fftshift=True)
        how = f"{how}, {FRAME_DC_NOTE}"
    if counts or scale != 1.0 or read_as is not None or scan.frame_map is not None and scan.frame_map.fftshift:
        scan.metadata["diffraction_read_as"] = how  # a plain sqrt(counts) file keeps its metadata as written
    if options.probe:
        scan.probe = _probe_override(options.probe, scan.N, path)
        scan.metadata["probe_source"] = str(options.probe)
    loud = scale != 1.0 or (counts and validate) or read_as is not None or "fftshift" in how
    log.log(logging.INFO if loud else logging.DEBUG, "%s: diffraction read as %s", path, how)
    return scan


FRAME_DC_NOTE = "DC moved from the corner to the centre (fftshift; the mean pattern is brightest at the corner)"


def _dc_at_corner(scan: ScanData) -> bool:
    """Whether the scan's patterns hold their zero frequency at the array corner (mean of up to 64)."""
    rows = scan.diffraction_block(0, min(scan.n_patterns, 64)).astype(np.float64)
    return dc_at_corner(np.mean(rows * rows, axis=0))


def _probe_override(spec: str, N: int, path: Path) -> np.ndarray:
    """data.probe for a contract or tike file: a complex (N, N) or (K, N, N) probe (.npy or
    FILE.h5::/dataset, e.g. the probe.npy of a `solve` run), as (K, N, N) complex64."""
    try:
        probe = np.asarray(read_array_source(spec, "data.probe"))
    except UserError as e:
        raise ScanValidationError([str(e)], str(path)) from None
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (N, N) or probe.dtype.kind not in "cf":
        raise ScanValidationError([f"data.probe: expected a complex ({N}, {N}) or (K, {N}, {N}) probe like the "
                                   f"patterns, found shape {probe.shape} dtype {probe.dtype} in {spec}"], str(path))
    if not np.isfinite(probe).all() or not np.any(probe):
        raise ScanValidationError([f"data.probe: {spec} is all zero or holds NaN/Inf"], str(path))
    probe = probe.astype(np.complex64)
    return probe[None] if probe.ndim == 2 else probe


def _shape_of(a: Any) -> tuple[int, ...]:
    return tuple(a.shape)


def _contract_mask(options: ReadOptions, shape: tuple[int, ...], path: Path) -> np.ndarray | None:
    """data.mask for a contract file: an (N, N) array, nonzero = excluded pixel; None without one."""
    if not options.mask:
        return None
    m = np.squeeze(read_array_source(options.mask, "data.mask"))
    if m.shape != tuple(shape[1:]):
        raise ScanValidationError([f"data.mask: expected {shape[1]}x{shape[2]} like the patterns, found {m.shape}"],
                                  str(path))
    return (m != 0) if (m != 0).any() else None


def read_object_guess(path: str | Path) -> np.ndarray | None:
    """The (H, W) complex64 objectGuess of a scan file read alone (never the diffraction), or None."""
    path = Path(path)
    if scan_suffix(path) in H5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f["objectGuess"][()], np.complex64) if "objectGuess" in f else None
    from ptycho_torch.data.npz_files import open_npz, read_member

    with open_npz(path) as z:
        return np.asarray(read_member(z, "objectGuess", path), np.complex64) if "objectGuess" in z.files else None
