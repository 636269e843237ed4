"""Writing a scan file (NPZ or HDF5 by suffix), validated first and written atomically."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from ptycho_torch.data.validation import H5_SUFFIXES, ScanValidationError, check_arrays, scan_suffix

__all__ = ["write_scan"]


def write_scan(
    path: str | Path,
    *,
    diffraction: np.ndarray,
    probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    object_guess: np.ndarray | None = None,
    scan_index: np.ndarray | None = None,
    metadata: dict | str | None = None,
) -> Path:
    """Validate, then write a scan as NPZ or HDF5 (by suffix) atomically (temp file + rename).

    diffraction (M, N, N) amplitudes -> float32 (integer photon counts are kept as they are, and read
    back as sqrt(counts)); probe (N, N)/(P, N, N) -> complex64; coords -> float64;
    object_guess -> complex64; scan_index -> int64; metadata dict -> JSON string.
    """
    path = Path(path)
    is_h5 = scan_suffix(path) in H5_SUFFIXES
    meta_json = metadata if isinstance(metadata, str) else json.dumps(metadata or {})
    arrays = {"diffraction": np.asarray(diffraction), "probeGuess": np.asarray(probe),
              "xcoords": np.asarray(xcoords), "ycoords": np.asarray(ycoords),
              "objectGuess": None if object_guess is None else np.asarray(object_guess),
              "scan_index": None if scan_index is None else np.asarray(scan_index),
              "metadata": meta_json}
    problems, _ = check_arrays(arrays)
    if problems:
        raise ScanValidationError(problems, str(path))
    casts = {"diffraction": np.float32, "probeGuess": np.complex64, "xcoords": np.float64,
             "ycoords": np.float64, "objectGuess": np.complex64, "scan_index": np.int64}
    if arrays["diffraction"].dtype.kind in "iu":
        casts["diffraction"] = arrays["diffraction"].dtype  # counts stay counts
    out = {k: arrays[k].astype(t, copy=False) for k, t in casts.items() if arrays[k] is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        if is_h5:
            import h5py
            with h5py.File(tmp, "w") as f:
                for k, v in out.items():
                    chunks = (min(len(v), 64),) + v.shape[1:] if k == "diffraction" and len(v) else None
                    f.create_dataset(k, data=v, chunks=chunks)
                f.create_dataset("metadata", data=meta_json)
        else:
            with open(tmp, "wb") as fh:
                np.savez(fh, **out, metadata=np.array(meta_json))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
