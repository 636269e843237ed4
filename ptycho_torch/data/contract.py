"""The scan data contract (SPEC section 3): read, validate and write NPZ / HDF5 scan files.

Keys (the same names as NPZ arrays or HDF5 root datasets):
    diffraction  (M, N, N) float32   measured amplitude sqrt(photon counts), DC at pixel N/2 (alias diff3d)
    probeGuess   (N, N) or (P, N, N) complex64   probe, P incoherent modes
    xcoords      (M,) float64        scan positions in object pixels: x = column
    ycoords      (M,) float64        y = row
    objectGuess  (H, W) complex64    optional ground truth / reference, in the frame of the positions
    scan_index   (M,) int64          optional scan a pattern belongs to
    metadata     JSON string         optional (NPZ: a 0-d str array)

Patch convention (physics.py): the patch of position (x, y) covers rows floor(y) - N/2 ... floor(y) + N/2 - 1
and the same columns around floor(x), so it lies inside an (H, W) object iff
N/2 <= floor(x) <= W - N/2 and N/2 <= floor(y) <= H - N/2.

HDF5 diffraction is read lazily: `ScanData` keeps the path and dataset name and opens h5py on demand
inside the process that reads, so it pickles to DataLoader and Ray workers.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["ScanValidationError", "ScanData", "read_scan", "validate_scan", "write_scan"]

log = logging.getLogger(__name__)

REQUIRED = ("diffraction", "probeGuess", "xcoords", "ycoords")
OPTIONAL = ("objectGuess", "scan_index", "metadata")
ALIASES = {"diff3d": "diffraction"}
NPZ_SUFFIXES = (".npz",)
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_FIRST = 5  # how many offending indices a message shows


class ScanValidationError(ValueError):
    """A scan file or array set breaks the data contract. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str], source: str = "scan") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) with the scan data:\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


# ------------------------------------------------------------------ validation

def _shape(a: Any) -> tuple[int, ...]:
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def _dtype(a: Any) -> np.dtype:
    return np.dtype(a.dtype) if hasattr(a, "dtype") else np.asarray(a).dtype


def _first(idx: np.ndarray) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx[:_FIRST]) + (", ..." if idx.size > _FIRST else "") + "]"


def _scan_diffraction(d: Any, block: int | None) -> dict[str, float]:
    """One streaming pass over (M, N, N) amplitudes (blocks of ~16 M values, or `block` patterns):
    NaN/Inf/negative counts, the first pattern holding each, and the energy sum in float64."""
    out = {"nan": 0, "inf": 0, "neg": 0, "energy": 0.0, "first_bad": -1, "first_neg": -1}
    rows = block or max(1, 2 ** 24 // max(1, int(np.prod(_shape(d)[1:]))))
    for start in range(0, _shape(d)[0], rows):
        x = np.asarray(d[start:start + rows], dtype=np.float32)
        finite, nan, neg = np.isfinite(x), np.isnan(x), x < 0
        out["nan"] += int(nan.sum())
        out["inf"] += int((~finite & ~nan).sum())
        out["neg"] += int(neg.sum())
        for key, mask in (("first_bad", ~finite), ("first_neg", neg)):
            hit = np.flatnonzero(mask.any(axis=(1, 2)))
            if hit.size and out[key] < 0:
                out[key] = start + int(hit[0])
        x = np.where(finite, x, 0.0)
        out["energy"] += float(np.sum(x * x, dtype=np.float64))
    return out


def _check_diffraction(d: Any, p: list[str], stats: dict[str, float], block: int | None) -> tuple:
    """Append diffraction problems; return (M, N) (None where unknown)."""
    s, dt = _shape(d), _dtype(d)
    M = s[0] if len(s) == 3 else None
    N = s[1] if len(s) == 3 and s[1] == s[2] and s[1] % 2 == 0 else None
    if len(s) != 3:
        p.append(f"diffraction: expected rank 3 (M, N, N), found shape {s}; stack the patterns along axis 0")
    elif N is None:
        p.append(f"diffraction: expected square patterns with even N, found {s[1]}x{s[2]}; crop or pad "
                 "the patterns to an even N x N")
    if dt.kind in "iu":
        p.append(f"diffraction: expected real floating amplitudes, found integer dtype {dt}; these look "
                 "like photon counts: store the amplitude np.sqrt(counts).astype(np.float32)")
    elif dt.kind != "f":
        p.append(f"diffraction: expected real float32 amplitudes, found dtype {dt}; store np.abs(...) of "
                 "complex far fields")
    elif M:
        st = _scan_diffraction(d, block)
        if st["nan"] or st["inf"]:
            p.append(f"diffraction: expected finite amplitudes, found {st['nan']} NaN and {st['inf']} Inf "
                     f"values (first in pattern {st['first_bad']}); drop or repair those patterns")
        if st["neg"]:
            p.append(f"diffraction: expected amplitudes >= 0, found {st['neg']} negative values (first in "
                     f"pattern {st['first_neg']}); clip background-subtracted counts at 0 before the sqrt")
        if not st["nan"] and not st["inf"] and st["energy"] <= 0:
            p.append("diffraction: expected some signal, found every pattern zero")
        stats["mean_energy"] = st["energy"] / M
    return M, N


def _check_probe(probe: Any, N: int | None, p: list[str]) -> None:
    s, dt = _shape(probe), _dtype(probe)
    if len(s) not in (2, 3):
        p.append(f"probeGuess: expected rank 2 (N, N) or 3 (P, N, N), found shape {s}")
    elif N is not None and s[-2:] != (N, N):
        p.append(f"probeGuess: expected {N}x{N} to match the diffraction patterns, found {s[-2]}x{s[-1]}; "
                 "sample the probe on the detector's N x N grid")
    if dt.kind not in "cf":
        p.append(f"probeGuess: expected complex64 (or real float), found dtype {dt}")
        return
    pv = np.asarray(probe)
    if not np.isfinite(pv).all():
        p.append(f"probeGuess: expected finite values, found {int((~np.isfinite(pv)).sum())} NaN/Inf")
    elif not np.any(pv):
        p.append("probeGuess: expected a probe, found all zeros; store the probe estimate")


def _check_vector(arrays: Mapping[str, Any], key: str, kinds: str, M: int | None, p: list[str]
                  ) -> np.ndarray | None:
    """Rank-1 length-M checks for xcoords/ycoords/scan_index; returns the finite float64 values."""
    s, dt = _shape(arrays[key]), _dtype(arrays[key])
    if len(s) != 1:
        p.append(f"{key}: expected rank 1 (M,), found shape {s}; flatten it")
    elif M is not None and s[0] != M:
        p.append(f"{key}: expected length M = {M} (one per diffraction pattern), found {s[0]}")
    if dt.kind not in kinds:
        p.append(f"{key}: expected {'integers' if kinds == 'iu' else 'real numbers'}, found dtype {dt}")
        return None
    v = np.asarray(arrays[key], dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v))
        p.append(f"{key}: expected finite values, found {bad.size} NaN/Inf at indices {_first(bad)}")
        return None
    return v if len(s) == 1 else None


def _check_positions(coords: dict[str, np.ndarray], half: int, hw: tuple | None, p: list[str]) -> None:
    """Patches must lie inside objectGuess (hw given) or at least start inside the object frame."""
    for key, axis, size in (("xcoords", "x", hw and hw[1]), ("ycoords", "y", hw and hw[0])):
        if key not in coords or not half:
            continue
        c, f = coords[key], np.floor(coords[key])
        bad = np.flatnonzero((f < half) | (f > size - half) if size is not None else (f < half))
        if bad.size:
            frame = f"the {hw[0]}x{hw[1]} objectGuess" if size is not None else "the object frame"
            need = f"{half} <= floor({axis})" + (f" <= {size - half}" if size is not None else "")
            fix = ("use positions in the objectGuess pixel frame or drop objectGuess" if size is not None
                   else f"add at least {half - f.min():.0f} to every {key}")
            p.append(f"{key}: {bad.size} of {f.size} patches fall outside {frame}: expected {need}, found "
                     f"{c.min():.2f} .. {c.max():.2f} ({int((c < 0).sum())} negative), first at indices "
                     f"{_first(bad)}; {fix}")


def _check(arrays: Mapping[str, Any], block: int | None = None) -> tuple[list[str], dict[str, float]]:
    """Return (problems, stats) for canonical-key arrays (numpy arrays or h5py datasets)."""
    p: list[str] = []
    stats: dict[str, float] = {}
    a = {k: v for k, v in arrays.items() if v is not None}
    for key in REQUIRED:
        if key not in a:
            hint = " (upstream files may call it 'diff3d')" if key == "diffraction" else ""
            p.append(f"{key}: expected a required key, found it missing{hint}; add it to the file")
    M, N = _check_diffraction(a["diffraction"], p, stats, block) if "diffraction" in a else (None, None)
    if "probeGuess" in a:
        _check_probe(a["probeGuess"], N, p)
        N = N or (_shape(a["probeGuess"])[-1] if _shape(a["probeGuess"]) else None)
    coords = {k: v for k in ("xcoords", "ycoords") if k in a
              for v in [_check_vector(a, k, "iuf", M, p)] if v is not None}
    if "scan_index" in a:
        _check_vector(a, "scan_index", "iu", M, p)
    hw = None
    if "objectGuess" in a:
        s, dt = _shape(a["objectGuess"]), _dtype(a["objectGuess"])
        hw = s if len(s) == 2 else None
        if hw is None:
            p.append(f"objectGuess: expected rank 2 (H, W), found shape {s}")
        if dt.kind not in "cf":
            p.append(f"objectGuess: expected complex64, found dtype {dt}")
        elif not np.isfinite(np.asarray(a["objectGuess"])).all():
            p.append("objectGuess: expected finite values, found NaN/Inf")
    _check_positions(coords, (N or 0) // 2, hw, p)
    if "metadata" in a and not isinstance(a["metadata"], dict):
        try:
            if not isinstance(_parse_metadata(a["metadata"]), dict):
                p.append("metadata: expected a JSON object ({...}), found another JSON value")
        except ValueError as e:
            p.append(f"metadata: expected a JSON string, could not parse it ({e}); write json.dumps(dict)")
    return p, stats


def _parse_metadata(raw: Any) -> Any:
    """JSON text (str, bytes, 0-d array or h5py scalar dataset) -> Python value."""
    value = raw[()] if hasattr(raw, "shape") and not isinstance(raw, np.ndarray) else raw
    value = value.item() if isinstance(value, np.ndarray) else value
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))


def _canonical(arrays: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in arrays.items() if k in REQUIRED + OPTIONAL}
    for alias, key in ALIASES.items():
        if out.get(key) is None and arrays.get(alias) is not None:
            out[key] = arrays[alias]
    return out


def validate_scan(arrays: Mapping[str, Any] | "ScanData", *, source: str = "scan", block: int | None = None
                  ) -> None:
    """Check arrays against the contract (file keys, e.g. 'probeGuess'; alias 'diff3d' accepted) or a
    ScanData; raise one ScanValidationError listing every problem. HDF5 datasets are streamed."""
    if isinstance(arrays, ScanData):
        arrays = arrays._as_mapping()
    problems, _ = _check(_canonical(arrays), block)
    if problems:
        raise ScanValidationError(problems, source)


# ------------------------------------------------------------------ ScanData

@dataclass(eq=False)
class ScanData:
    """One scan in memory, except HDF5 diffraction which is read on demand (`h5_key` set).

    probe (P, N, N) complex64; xcoords, ycoords (M,) float64 object pixels; object_guess (H, W)
    complex64 or None; scan_index (M,) int64 or None; diffraction (M, N, N) float32 amplitudes or None
    when lazy (then `path` + `h5_key` name the HDF5 dataset).
    """

    path: Path | None
    probe: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    object_guess: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    diffraction: np.ndarray | None = field(default=None, repr=False)
    h5_key: str | None = None
    _shape: tuple[int, int, int] = field(init=False, repr=False, default=(0, 0, 0))
    _h5: Any = field(init=False, repr=False, default=None)
    _h5_pid: int | None = field(init=False, repr=False, default=None)
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
            self.diffraction = np.asarray(self.diffraction).astype(np.float32, copy=False)
            self._shape = tuple(self.diffraction.shape)
        elif self.h5_key is not None and self.path is not None:
            import h5py
            with h5py.File(self.path, "r") as f:
                self._shape = tuple(f[self.h5_key].shape)
        else:
            raise ValueError("ScanData needs `diffraction` (an array) or `path` + `h5_key` (HDF5)")

    # -- pickling: never ship an open h5py handle
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def _dataset(self) -> Any:
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py
            self._h5, self._h5_pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5[self.h5_key]

    def close(self) -> None:
        """Close the HDF5 handle of this process (reads reopen it)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5, self._h5_pid = None, None

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
        half = self.N // 2
        return (int(np.floor(self.ycoords.max())) + half, int(np.floor(self.xcoords.max())) + half)

    def diffraction_block(self, start: int, stop: int) -> np.ndarray:
        """Patterns start..stop-1 as (k, N, N) float32 (a view for in-memory data)."""
        if self.diffraction is not None:
            return self.diffraction[start:stop]
        return np.asarray(self._dataset()[start:stop], dtype=np.float32)

    def diffraction_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patterns at `indices` (any shape and order, repeats allowed) as (*indices.shape, N, N)
        float32. HDF5 reads one contiguous span when the rows are dense, else the sorted unique rows
        (what h5py fancy indexing needs)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.diffraction is not None:
            return self.diffraction[idx]
        flat = idx.reshape(-1)
        if flat.size == 0:
            return np.zeros((*idx.shape, self.N, self.N), np.float32)
        uniq, inverse = np.unique(flat, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= 2 * uniq.size:
            rows = np.asarray(self._dataset()[lo:hi], dtype=np.float32)[flat - lo]
        else:
            rows = np.asarray(self._dataset()[uniq], dtype=np.float32)[inverse.reshape(-1)]
        return rows.reshape(*idx.shape, self.N, self.N)

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
            metadata=self.metadata, diffraction=self.diffraction_rows(idx))

    def arrays(self) -> dict[str, Any]:
        """Keyword arguments for `write_scan` (loads all diffraction into memory)."""
        return dict(diffraction=self.diffraction_block(0, self.n_patterns), probe=self.probe,
                    xcoords=self.xcoords, ycoords=self.ycoords, object_guess=self.object_guess,
                    scan_index=self.scan_index, metadata=self.metadata)

    def _as_mapping(self) -> dict[str, Any]:
        d = self.diffraction if self.diffraction is not None else self._dataset()
        return {"diffraction": d, "probeGuess": self.probe, "xcoords": self.xcoords,
                "ycoords": self.ycoords, "objectGuess": self.object_guess,
                "scan_index": self.scan_index, "metadata": self.metadata}


# ------------------------------------------------------------------ reading

def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in NPZ_SUFFIXES + H5_SUFFIXES:
        raise ScanValidationError([f"file: expected a .npz, .h5 or .hdf5 scan file, found suffix "
                                   f"'{path.suffix}'; convert it or rename it"], str(path))
    return s


def _read_arrays(path: Path, handle: Any, is_h5: bool) -> tuple[dict[str, Any], list[str]]:
    """Canonical-key arrays from an open NpzFile / h5py.File (HDF5 diffraction stays a dataset)."""
    known = set(REQUIRED + OPTIONAL) | set(ALIASES)
    names = sorted(handle.keys(), key=lambda n: n in ALIASES)  # 'diffraction' wins over 'diff3d'
    if set(names) - known:
        log.debug("%s: ignoring keys %s", path, ", ".join(sorted(set(names) - known)))
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name in (n for n in names if n in known and ALIASES.get(n, n) not in out):
        key = ALIASES.get(name, name)
        try:
            item = handle[name]
            if is_h5 and not hasattr(item, "dtype"):
                problems.append(f"{name}: expected an HDF5 dataset, found a group; move the data to "
                                f"a root dataset named {key}")
                continue
            out[key] = item[()] if is_h5 and key != "diffraction" else item
        except ValueError as e:  # object arrays under allow_pickle=False
            problems.append(f"{name}: could not be read without unpickling ({e}); store plain "
                            "numeric arrays (and metadata as a JSON string)")
    return out, problems


def read_scan(path: str | Path, *, validate: bool = True) -> ScanData:
    """Read a .npz (allow_pickle=False) or .h5/.hdf5 (lazy diffraction) scan file.

    Extra keys (e.g. upstream PtychoPINN 'xcoords_start', 'Y') are ignored. With `validate`, every
    contract problem is collected and raised once as ScanValidationError.
    """
    path = Path(path)
    is_h5 = _suffix(path) in H5_SUFFIXES
    if not path.is_file():
        raise FileNotFoundError(f"scan file {path} does not exist")
    try:
        if is_h5:
            import h5py
            handle = h5py.File(path, "r")
        else:
            handle = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        kind = "HDF5" if is_h5 else "NPZ"
        raise ScanValidationError([f"file: could not be opened as {kind} ({e})"], str(path)) from None
    with handle:
        arrays, problems = _read_arrays(path, handle, is_h5)
        stats: dict[str, float] = {}
        if validate:
            more, stats = _check(arrays)
            problems += more
        if problems:
            raise ScanValidationError(problems, str(path))
        if is_h5:  # keep only the dataset's name; ScanData reopens the file where it reads
            arrays["diffraction"] = arrays["diffraction"].name.lstrip("/")
    meta = arrays.get("metadata")
    scan = ScanData(
        path=path, probe=arrays["probeGuess"], xcoords=arrays["xcoords"], ycoords=arrays["ycoords"],
        object_guess=arrays.get("objectGuess"), scan_index=arrays.get("scan_index"),
        metadata=_parse_metadata(meta) if meta is not None else {},
        diffraction=None if is_h5 else arrays["diffraction"],
        h5_key=arrays["diffraction"] if is_h5 else None)
    if "mean_energy" in stats:
        scan._energy = stats["mean_energy"]
    return scan


# ------------------------------------------------------------------ writing

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

    diffraction (M, N, N) amplitudes -> float32; probe (N, N)/(P, N, N) -> complex64; coords -> float64;
    object_guess -> complex64; scan_index -> int64; metadata dict -> JSON string.
    """
    path = Path(path)
    is_h5 = _suffix(path) in H5_SUFFIXES
    meta_json = metadata if isinstance(metadata, str) else json.dumps(metadata or {})
    arrays = {"diffraction": np.asarray(diffraction), "probeGuess": np.asarray(probe),
              "xcoords": np.asarray(xcoords), "ycoords": np.asarray(ycoords),
              "objectGuess": None if object_guess is None else np.asarray(object_guess),
              "scan_index": None if scan_index is None else np.asarray(scan_index),
              "metadata": meta_json}
    problems, _ = _check(arrays)
    if problems:
        raise ScanValidationError(problems, str(path))
    casts = {"diffraction": np.float32, "probeGuess": np.complex64, "xcoords": np.float64,
             "ycoords": np.float64, "objectGuess": np.complex64, "scan_index": np.int64}
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
