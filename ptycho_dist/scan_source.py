"""Scan files as a stream of row blocks for Ray Data, without the driver holding the patterns.

A reconstruction input is one or many scan files (SPEC 3) whose positions share one object frame.
The driver opens each file's *header* only: probe, positions (M, 2), objectGuess, and the shape of
the diffraction array; the patterns stay on disk:

    HDF5   `read_scan` keeps the diffraction dataset lazy (ScanData.diffraction_block / _rows).
    NPZ    `NpzDiffraction` reads rows of the uncompressed `diffraction.npy` member by file offset
           (np.savez, hence write_scan, stores members uncompressed); a compressed member falls back
           to loading the whole array once per reading process, with a warning.

The Ray Dataset starts as the global indices 0..M_total-1 cut into blocks of `block_size` (8 bytes
per pattern; the patterns themselves are read in the workers); `read_ids` maps each block of ids to
per-file runs of rows (`id_blocks`: a block may straddle two files, a read never does) and
`read_block` turns one run into Ray Data rows (global order is file order, then row order):

    index         ()          int64    global pattern index (file offset + row in the file)
    file          ()          int32    file id (position in `ScanSource.files`)
    x, y          ()          float64  the pattern's scan position, object pixels (column, row)
    seed_channel  ()          int64    channel of the pattern inside its group
    offsets       (C, 2)      float32  group members' positions relative to the group centroid (px)
    amp           (C, N, N)   float32  measured amplitudes sqrt(counts) of the group, C = gridsize**2

Groups (gridsize > 1) are computed on the driver per file from positions only, exactly as the local
loop does (`inference_groups`: the pattern and C - 1 partners among its nearest neighbours in the
same file, drawn with the run's seed); a
block reader fetches the partner rows it needs from its file, so a group never crosses files.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ptycho_torch.data.contract import (
    H5_SUFFIXES,
    NPZ_SUFFIXES,
    ScanData,
    ScanValidationError,
    canvas_shape,
    read_scan,
    validate_scan,
)
from ptycho_torch.data.grouping import Groups
from ptycho_torch.data.validation import check_positions

log = logging.getLogger("ptycho_dist")

DEFAULT_BLOCK_BYTES = 16 * 2**20  # target size of one read block of amplitudes
GLOB_CHARS = "*?["
_SMALL_KEYS = ("probeGuess", "xcoords", "ycoords", "objectGuess", "scan_index", "metadata")


# ------------------------------------------------------------------ file lists

def resolve_scan_paths(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand `data` (a path, a glob pattern, or several of either) into existing files, in order.

    Glob matches are sorted; duplicates are dropped. Raises FileNotFoundError naming the pattern or
    path that matched nothing.
    """
    items = [data] if isinstance(data, (str, Path)) else list(data)
    if not items:
        raise FileNotFoundError("no scan files given; pass --data FILE, a glob such as 'scans/*.h5', "
                                "or several files")
    paths: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in GLOB_CHARS):
            matches = sorted(glob.glob(os.path.expanduser(text)))
            if not matches:
                raise FileNotFoundError(f"no files match {text!r}; check the pattern (quote it so the "
                                        "shell does not expand it) and the directory")
            paths.extend(Path(m) for m in matches)
        else:
            path = Path(os.path.expanduser(text))
            if not path.is_file():
                raise FileNotFoundError(f"scan file {path} does not exist")
            paths.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique


# ------------------------------------------------------------------ lazy NPZ member

class NpzDiffraction:
    """Rows of a (M, N, N) array stored in an .npz member, read on demand (picklable).

    Mirrors ScanData's reading API (`diffraction_block`, `diffraction_rows`) and the array protocol
    bits that `contract.validate_scan` needs (`shape`, `dtype`, slicing). An uncompressed member is
    read by file offset; a compressed one is loaded whole on first use in each process.
    """

    def __init__(self, path: str | Path, member: str) -> None:
        self.path = Path(path)
        self.member = member
        with zipfile.ZipFile(self.path) as zf:
            info = zf.getinfo(member + ".npy")
            self.compressed = info.compress_type != zipfile.ZIP_STORED
            with zf.open(info) as fp:  # header only: shape and dtype without reading the data
                self.shape, self.fortran, self.dtype = _npy_header(fp)
        self.data_offset: int | None = None
        if not self.compressed:
            with open(self.path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ScanValidationError([f"{member}: corrupt zip entry"], str(self.path))
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                fh.seek(info.header_offset + 30 + name_len + extra_len)
                _npy_header(fh)
                self.data_offset = fh.tell()
        if self.compressed or self.fortran:
            log.warning("%s: the %s array is %s; every reading process loads it whole. Store scans "
                        "with np.savez / write_scan (uncompressed) or as HDF5 for large data", self.path,
                        member, "compressed" if self.compressed else "Fortran-ordered")
        self._fh: Any = None
        self._pid: int | None = None
        self._whole: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"], state["_whole"] = None, None, None
        return state

    @property
    def n_patterns(self) -> int:
        return int(self.shape[0])

    @property
    def _row_items(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def _file(self) -> Any:
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        return self._fh

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 in the stored dtype, (hi - lo, N, N)."""
        lo, hi = max(lo, 0), min(hi, self.n_patterns)
        if self.data_offset is None or self.fortran:
            if self._whole is None:
                with np.load(self.path, allow_pickle=False) as z:
                    self._whole = np.ascontiguousarray(z[self.member])
            return self._whole[lo:hi]
        out = np.empty((max(hi - lo, 0),) + tuple(self.shape[1:]), dtype=self.dtype)
        fh = self._file()
        fh.seek(self.data_offset + lo * self._row_items * self.dtype.itemsize)
        view = memoryview(out).cast("B")
        if fh.readinto(view) != view.nbytes:
            raise OSError(f"{self.path}: truncated {self.member} array (rows {lo}..{hi})")
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("NpzDiffraction supports contiguous row slices only")
        lo, hi, _ = key.indices(self.n_patterns)
        return self._span(lo, hi)

    def __len__(self) -> int:
        return self.n_patterns

    def diffraction_block(self, start: int, stop: int) -> np.ndarray:
        """Patterns start..stop-1 as (k, N, N) float32."""
        return np.asarray(self._span(start, stop), dtype=np.float32)

    def diffraction_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patterns at `indices` (any order, repeats allowed) as (k, N, N) float32: one read of the
        covering span when dense, else one read per run of consecutive rows."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.zeros((0,) + tuple(self.shape[1:]), np.float32)
        uniq, inverse = np.unique(idx, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= 2 * uniq.size:
            return np.asarray(self._span(lo, hi), dtype=np.float32)[idx - lo]
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = [self._span(int(r[0]), int(r[-1]) + 1) for r in np.split(uniq, breaks)]
        return np.asarray(np.concatenate(runs), dtype=np.float32)[inverse]


def _npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


# ------------------------------------------------------------------ one file

def load_object_guess(path: Path) -> np.ndarray | None:
    """The (H, W) complex64 objectGuess of a scan file, read alone (no diffraction), or None."""
    if path.suffix.lower() in H5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f["objectGuess"][()], np.complex64) if "objectGuess" in f else None
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z["objectGuess"], np.complex64) if "objectGuess" in z.files else None


@dataclass(eq=False)
class ScanFile:
    """One scan file of a reconstruction input, opened without loading its patterns.

    probe (P, N, N) complex64; xcoords, ycoords (M,) float64 object pixels; object_shape (H, W) of
    its objectGuess or the smallest canvas holding its patches (contract.canvas_shape); `reader`
    reads diffraction rows (ScanData for HDF5, NpzDiffraction for NPZ).
    """

    path: Path
    file_id: int
    offset: int
    n_patterns: int
    N: int
    probe: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    object_shape: tuple[int, int]
    has_object_guess: bool
    reader: Any = field(repr=False)

    @property
    def positions(self) -> np.ndarray:
        """(M, 2) float64 (x, y) object pixels."""
        return np.stack([self.xcoords, self.ycoords], axis=1)


def _open_h5(path: Path, validate: bool) -> tuple[dict[str, Any], Any]:
    scan = read_scan(path, validate=validate)
    header = {"probe": scan.probe, "xcoords": scan.xcoords, "ycoords": scan.ycoords,
              "object_guess": scan.object_guess, "N": scan.N, "M": scan.n_patterns,
              "shape": (scan.n_patterns,) + scan.diffraction_block(0, 0).shape[1:]}
    # the reader shipped to Ray workers: lazy, and without the (H, W) objectGuess
    reader = ScanData(path=path, probe=scan.probe, xcoords=scan.xcoords, ycoords=scan.ycoords,
                      h5_key=scan.h5_key, photon_scale=scan.photon_scale)
    return header, reader


def _open_npz(path: Path, validate: bool) -> tuple[dict[str, Any], Any]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ScanValidationError([f"file: could not be opened as NPZ ({e})"], str(path)) from None
    with z:
        names = set(z.files)
        member = "diffraction" if "diffraction" in names else ("diff3d" if "diff3d" in names else None)
        arrays: dict[str, Any] = {}
        problems: list[str] = []
        for key in _SMALL_KEYS:
            if key in names:
                try:
                    arrays[key] = z[key]
                except ValueError as e:
                    problems.append(f"{key}: could not be read without unpickling ({e}); store plain "
                                    "numeric arrays (and metadata as a JSON string)")
    if problems:
        raise ScanValidationError(problems, str(path))
    reader = NpzDiffraction(path, member) if member is not None else None
    mapping = {**arrays, "diffraction": reader}
    if validate or reader is None or any(k not in arrays for k in ("probeGuess", "xcoords", "ycoords")):
        validate_scan(mapping, source=str(path))
    probe = np.asarray(arrays["probeGuess"]).astype(np.complex64)
    header = {"probe": probe[None] if probe.ndim == 2 else probe,
              "xcoords": np.asarray(arrays["xcoords"], dtype=np.float64),
              "ycoords": np.asarray(arrays["ycoords"], dtype=np.float64),
              "object_guess": arrays.get("objectGuess"), "N": int(reader.shape[-1]), "M": reader.n_patterns,
              "shape": reader.shape}
    return header, reader


def _basic_problems(header: dict[str, Any], shape_hw: tuple[int, int]) -> list[str]:
    """What must hold even without full validation (cheap: shapes and positions only)."""
    M, N, shape = header["M"], header["N"], tuple(header["shape"])
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 2:
        return [f"diffraction: expected (M, N, N) with even N, found shape {shape}"]
    problems = [f"{key}: expected {M} finite positions (one per diffraction pattern), found "
                f"{len(header[key])}" + ("" if len(header[key]) != M else " with NaN or Inf")
                for key in ("xcoords", "ycoords")
                if len(header[key]) != M or not np.isfinite(header[key]).all()]
    if not problems:
        check_positions({k: header[k] for k in ("xcoords", "ycoords")}, N // 2, shape_hw, problems)
    return problems


def open_scan_file(path: Path, file_id: int, offset: int, *, validate: bool = True) -> ScanFile:
    """Open one .npz / .h5 / .hdf5 scan without reading its patterns into memory.

    With `validate`, the whole data contract is checked, streaming the patterns block-wise (SPEC 3);
    without it only shapes and positions are checked (the patterns are trusted).
    """
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        header, reader = _open_h5(path, validate)
    elif suffix in NPZ_SUFFIXES:
        header, reader = _open_npz(path, validate)
    else:
        raise ScanValidationError([f"file: expected a .npz, .h5 or .hdf5 scan file, found suffix "
                                   f"'{path.suffix}'; convert it or rename it"], str(path))
    obj = header["object_guess"]
    shape = tuple(int(s) for s in np.shape(obj)) if obj is not None else \
        canvas_shape(header["xcoords"], header["ycoords"], header["N"])
    problems = [] if validate else _basic_problems(header, shape)  # validation checked all of it
    if problems:
        raise ScanValidationError(problems, str(path))
    return ScanFile(path=path, file_id=file_id, offset=offset, n_patterns=header["M"], N=header["N"],
                    probe=header["probe"], xcoords=header["xcoords"], ycoords=header["ycoords"],
                    object_shape=shape, has_object_guess=obj is not None, reader=reader)


# ------------------------------------------------------------------ many files

@dataclass(frozen=True)
class Block:
    """Rows start..stop-1 of file `file`: one read of consecutive rows."""

    file: int
    start: int
    stop: int


@dataclass(eq=False)
class FileRows:
    """What a block reader needs of one file (shipped once to every reading process):
    the lazy diffraction reader, positions (M, 2) float64, the groups (M, C) int64 local indices
    and seed channels (M,) int64, and the file's global index offset."""

    reader: Any
    positions: np.ndarray
    groups: Groups
    offset: int
    file_id: int


@dataclass(eq=False)
class ScanSource:
    """Several scan files in one object frame: shared N and probe, canvas = union of their frames."""

    files: list[ScanFile]
    gridsize: int
    groups: list[Groups]

    @property
    def N(self) -> int:
        return self.files[0].N

    @property
    def n_patterns(self) -> int:
        return sum(f.n_patterns for f in self.files)

    @property
    def channels(self) -> int:
        return self.gridsize * self.gridsize

    @property
    def canvas_hw(self) -> tuple[int, int]:
        """(H, W): elementwise max of the files' object frames."""
        return (max(f.object_shape[0] for f in self.files), max(f.object_shape[1] for f in self.files))

    @property
    def xcoords(self) -> np.ndarray:
        """(M_total,) float64 in global index order."""
        return np.concatenate([f.xcoords for f in self.files])

    @property
    def ycoords(self) -> np.ndarray:
        return np.concatenate([f.ycoords for f in self.files])

    def truth_file(self) -> ScanFile | None:
        """The first file carrying an objectGuess (the ground truth for metrics), if any."""
        return next((f for f in self.files if f.has_object_guess), None)

    def file_rows(self) -> list[FileRows]:
        return [FileRows(f.reader, f.positions, g, f.offset, f.file_id) for f, g in zip(self.files, self.groups)]

    def default_block_size(self, actors: int = 1) -> int:
        """Patterns per read block: ~DEFAULT_BLOCK_BYTES of amplitudes, and at least 4 blocks per
        actor overall when the scan is large enough."""
        by_bytes = max(1, DEFAULT_BLOCK_BYTES // (4 * self.channels * self.N * self.N))
        by_count = max(1, math.ceil(self.n_patterns / (4 * max(actors, 1))))
        return int(min(by_bytes, by_count))


def open_scan_source(data: str | Path | Sequence[str | Path], gridsize: int, *,
                     validate: bool = True, neighbor_count: int = 6, seed: int = 0) -> ScanSource:
    """Open every file of `data` (path, glob, or several) as one source; groups per file, built
    with the model's `neighbor_count` and the run's `seed` as the local loop builds them.

    Raises FileNotFoundError (nothing matches), ScanValidationError (a file breaks the contract),
    ValueError (files disagree on N or probe).
    """
    paths = resolve_scan_paths(data)
    files: list[ScanFile] = []
    offset = 0
    for i, path in enumerate(paths):
        f = open_scan_file(path, i, offset, validate=validate)
        files.append(f)
        offset += f.n_patterns
    first = files[0]
    for f in files[1:]:
        if f.N != first.N:
            raise ValueError(f"scan files hold patterns of different sizes: {first.path} is "
                             f"{first.N}x{first.N} but {f.path} is {f.N}x{f.N}; reconstruct them separately")
        scale = float(np.abs(first.probe).max())
        if f.probe.shape != first.probe.shape or not np.allclose(f.probe, first.probe, rtol=1e-5,
                                                                   atol=1e-6 * scale):
            raise ValueError(f"scan files have different probes: {f.path} differs from {first.path} "
                             f"(shapes {f.probe.shape} and {first.probe.shape}); files of one "
                             "reconstruction must come from the same probe")
    from ptycho_torch.workflows.reconstruct import inference_groups  # torch: not needed by block readers

    # per file: groups never cross files
    groups = [inference_groups(f, gridsize, neighbor_count, seed) for f in files]
    return ScanSource(files, gridsize, groups)


# ------------------------------------------------------------------ block readers (run in Ray workers)

# Kept light on purpose: the readers run in Ray workers that should not import torch for reading.

def read_block(files: Sequence[FileRows], block: Block) -> dict[str, np.ndarray]:
    """The rows of one block (see module docstring); amplitudes of each group's members (C, N, N)."""
    f = files[block.file]
    start, stop = int(block.start), int(block.stop)
    members = f.groups.indices[start:stop]  # (k, C) local indices
    k, C = members.shape
    if C == 1:
        amp = f.reader.diffraction_block(start, stop)  # (k, N, N)
    else:
        amp = f.reader.diffraction_rows(members.reshape(-1))  # (k * C, N, N)
    N = amp.shape[-1]
    pos = f.positions[start:stop]
    member_pos = f.positions[members].astype(np.float32)  # (k, C, 2), as GroupDataset computes it
    offsets = member_pos - member_pos.mean(axis=1, keepdims=True)
    return {
        "index": np.arange(f.offset + start, f.offset + stop, dtype=np.int64),
        "file": np.full(k, f.file_id, dtype=np.int32),
        "x": pos[:, 0].copy(),
        "y": pos[:, 1].copy(),
        "seed_channel": f.groups.seed_channel[start:stop].astype(np.int64),
        "offsets": offsets.astype(np.float32),
        "amp": np.ascontiguousarray(amp, dtype=np.float32).reshape(k, C, N, N),
    }


def id_blocks(ids: np.ndarray, files: Sequence[FileRows]) -> list[Block]:
    """Split global pattern indices into per-file runs of consecutive rows (a block of ids may
    straddle two files; groups were built per file, so reads stay per file)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64).reshape(-1))
    if ids.size == 0:
        return []
    starts = np.array([f.offset for f in files], dtype=np.int64)
    fid = np.searchsorted(starts, ids, side="right") - 1  # (k,) file of each id
    breaks = np.flatnonzero((np.diff(ids) != 1) | (np.diff(fid) != 0)) + 1
    out = []
    for run, run_fid in zip(np.split(ids, breaks), np.split(fid, breaks)):
        f = files[int(run_fid[0])]
        out.append(Block(f.file_id, int(run[0]) - f.offset, int(run[-1]) - f.offset + 1))
    return out


def read_ids(batch: dict[str, np.ndarray], files: Sequence[FileRows]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data `map_batches` function: a block of global ids (column "data") -> its rows (module
    docstring), read one per-file run of consecutive rows at a time."""
    for block in id_blocks(batch["data"], files):
        yield read_block(files, block)


def id_energies(batch: dict[str, np.ndarray], files: Sequence[FileRows]) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function for `--renormalize`: for a block of ids, sum_m sum_xy X_m**2
    (float64, photons) and the pattern count."""
    energy, count = 0.0, 0
    for block in id_blocks(batch["data"], files):
        x = files[block.file].reader.diffraction_block(block.start, block.stop).astype(np.float64)
        energy += float(np.square(x).sum())
        count += len(x)
    return {"energy": np.array([energy]), "count": np.array([count], np.int64)}
