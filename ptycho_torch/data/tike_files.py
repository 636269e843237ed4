"""Scans in tike's NPZ layout, and NPZ archives compressed as a whole (.npz.bz2 / .npz.gz / .npz.xz).

tike (AdvancedPhotonSource/tike) and the APS test data it ships keep a scan as

    data   (1, M, N, N) or (M, N, N)  photon counts, zero frequency at the array corner (not fftshifted)
    scan   (1, M, 2) or (M, 2)        positions in object pixels: (row, column) of the *top-left corner*
                                      of the N x N probe window on the object
    probe  (..., K, N, N) complex     a probe guess (K incoherent modes; leading axes of size 1)

and converts to the contract's conventions: amplitudes sqrt(counts) with DC at pixel N/2 (the mean
pattern decides where the zero frequency is: `detector.dc_at_corner`), positions as the patch centre
(x, y) = (column, row) + N/2, shifted so that the lowest corner is at 0 (the object canvas starts at the
scan). Everything is read into memory (such files are small; a large scan belongs in HDF5).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.data.detector import dc_at_corner
from ptycho_torch.data.validation import ScanValidationError

COMPRESSED_NPZ = {".npz.bz2": bz2.decompress, ".npz.gz": gzip.decompress, ".npz.xz": lzma.decompress}
TIKE_KEYS = ("data", "scan", "probe")


def compressed_npz_suffix(path: Path) -> str | None:
    """'.npz.bz2' / '.npz.gz' / '.npz.xz' when `path` names a whole-file-compressed NPZ, else None."""
    name = path.name.lower()
    return next((s for s in COMPRESSED_NPZ if name.endswith(s)), None)


def read_compressed_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz.bz2 / .gz / .xz archive (decompressed in memory, allow_pickle=False)."""
    suffix = compressed_npz_suffix(path)
    try:
        raw = COMPRESSED_NPZ[suffix](path.read_bytes())
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as e:
        raise ScanValidationError([f"file: could not be read as a {suffix} archive ({e}); decompress it by hand "
                                   "to check it, or copy it again"], str(path)) from None


def is_tike_layout(keys: Any) -> bool:
    """Whether an archive's keys are tike's (data, scan, probe) and not the contract's."""
    keys = set(keys)
    return set(TIKE_KEYS) <= keys and "diffraction" not in keys and "diff3d" not in keys


def tike_arrays(arrays: dict[str, np.ndarray], path: Path) -> tuple[dict[str, Any], str]:
    """Contract arrays (diffraction as amplitudes sqrt(counts) with DC at the centre, probeGuess,
    xcoords, ycoords, metadata) from a tike-layout archive, and a line saying how it was read. Raises
    one ScanValidationError listing every problem."""
    problems = []
    data = np.asarray(arrays["data"])
    scan = np.asarray(arrays["scan"], np.float64)
    probe = np.asarray(arrays["probe"])
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if scan.ndim == 3 and scan.shape[0] == 1:
        scan = scan[0]
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ScanValidationError([f"data: expected (M, N, N) or (1, M, N, N) photon counts, found shape "
                                   f"{data.shape}"], str(path))
    M, N = len(data), data.shape[-1]
    if scan.shape != (M, 2):
        problems.append(f"scan: expected ({M}, 2) positions (row, column) for {M} patterns, found shape {scan.shape}")
    probe = probe.reshape(-1, *probe.shape[-2:]) if probe.ndim >= 2 else probe
    if probe.ndim != 3 or probe.shape[-2:] != (N, N) or probe.dtype.kind != "c":
        problems.append(f"probe: expected a complex (..., K, {N}, {N}) probe, found shape {probe.shape} "
                        f"dtype {probe.dtype}")
    counts = np.asarray(data, np.float64)
    if np.isfinite(counts).all() and (counts < 0).any():
        problems.append(f"data: expected photon counts >= 0, found {int((counts < 0).sum())} negative values")
    if problems:
        raise ScanValidationError(problems, str(path))
    corner = dc_at_corner(counts[: min(M, 256)].mean(axis=0))
    amplitudes = np.sqrt(np.maximum(counts, 0)).astype(np.float32)
    if corner:
        amplitudes = np.fft.fftshift(amplitudes, axes=(-2, -1))
    lowest = scan.min(axis=0)
    half = N // 2
    out = {"diffraction": amplitudes, "probeGuess": probe.astype(np.complex64),
           "ycoords": scan[:, 0] - lowest[0] + half, "xcoords": scan[:, 1] - lowest[1] + half,
           "metadata": json.dumps({"source_layout": "tike",
                                   "position_origin_px": [float(lowest[1]), float(lowest[0])]})}
    how = (f"tike layout: {M} patterns of {N}x{N} photon counts read as amplitudes sqrt(counts), "
           + ("DC moved from the corner to the centre" if corner else "DC already at the centre")
           + "; positions (row, column) of the probe window's corner turned into patch centres (x, y), "
           f"shifted by {(-lowest[::-1]).round(2).tolist()} px so the scan starts at the canvas corner")
    return out, how
