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
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ptycho_torch.data.beamline import (
    ReadOptions,
    beamline_layout,
    read_array_source,
    read_beamline,
    split_source,
)
from ptycho_torch.data.detector import FrameMap, dc_at_corner
from ptycho_torch.data.npz_files import check_member_crc, npz_memmap, npz_problem
from ptycho_torch.data.photon_units import photon_units
from ptycho_torch.data.scan import ScanData, canvas_shape
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


def validate_scan(arrays: Mapping[str, Any] | "ScanData", *, source: str = "scan", block: int | None = None
                  ) -> None:
    """Check arrays against the contract (file keys, e.g. 'probeGuess'; alias 'diff3d' accepted) or a
    ScanData; raise one ScanValidationError listing every problem. HDF5 datasets are streamed."""
    if isinstance(arrays, ScanData):
        arrays = arrays._as_mapping()
    problems, _ = check_arrays(canonical_keys(arrays), block)
    if problems:
        raise ScanValidationError(problems, source)


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
