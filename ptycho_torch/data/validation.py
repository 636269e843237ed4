"""Checking scan arrays against the data contract (SPEC section 3), one error listing every problem.

`check_arrays` (used by contract.read_scan / validate_scan / write_scan) takes the canonical file keys
and returns the list of problems plus diffraction statistics; HDF5 diffraction is streamed in blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ptycho_torch.data.detector import FrameMap, MappedFrames
from ptycho_torch.errors import UserError

REQUIRED = ("diffraction", "probeGuess", "xcoords", "ycoords")
OPTIONAL = ("objectGuess", "scan_index", "metadata", "intensity_scale", "nphotons")
ALIASES = {"diff3d": "diffraction"}
NPZ_SUFFIXES = (".npz",)
H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".cxi", ".nxs", ".nx5")
_FIRST = 5  # how many offending indices a message shows


class ScanValidationError(UserError):
    """A scan file or array set breaks the data contract. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str], source: str = "scan") -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"{source}: {self.problems[0]}")
            return
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        super().__init__(f"{source}: {len(self.problems)} problems with the scan data: {listed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


def scan_suffix(path: Path) -> str:
    """The lower-case suffix of a scan file path, or one ScanValidationError naming the kinds read."""
    s = path.suffix.lower()
    if s not in NPZ_SUFFIXES + H5_SUFFIXES:
        raise ScanValidationError([f"file: expected a .npz, .h5 or .hdf5 scan file (or .cxi / .nxs / .npz.bz2), found "
                                   f"suffix '{path.suffix}'; convert it or rename it"], str(path))
    return s


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
        out["peak"] = max(out.get("peak", 0.0), float(np.abs(x).max(initial=0.0)))
        with np.errstate(over="ignore"):  # squares beyond float32: reported as a problem, not warned
            out["energy"] += float(np.sum(x * x, dtype=np.float64))
    return out


def _check_diffraction(d: Any, p: list[str], stats: dict[str, float], block: int | None,
                       contents: bool = True) -> tuple:
    """Append diffraction problems (with `contents`, also those of the values: one streaming pass);
    return (M, N) (None where unknown). Integer photon counts are checked as the amplitudes
    sqrt(counts) they are read as."""
    if _dtype(d).kind in "iu" and len(_shape(d)) == 3:
        d = MappedFrames(d if hasattr(d, "shape") else np.asarray(d), FrameMap(counts=True))
    s, dt = _shape(d), _dtype(d)
    M = s[0] if len(s) == 3 else None
    N = s[1] if len(s) == 3 and s[1] == s[2] and s[1] % 2 == 0 else None
    if len(s) != 3:
        p.append(f"diffraction: expected rank 3 (M, N, N), found shape {s}; stack the patterns along axis 0")
    elif N is None:
        p.append(f"diffraction: expected square patterns with even N, found {s[1]}x{s[2]}; crop or pad "
                 "the patterns to an even N x N")
    if dt.kind != "f":
        p.append(f"diffraction: expected real float32 amplitudes, found dtype {dt}; store np.abs(...) of "
                 "complex far fields")
    elif M and contents:
        st = _scan_diffraction(d, block)
        if st["nan"] or st["inf"]:
            p.append(f"diffraction: expected finite amplitudes, found {st['nan']} NaN and {st['inf']} Inf "
                     f"values (first in pattern {st['first_bad']}); drop or repair those patterns")
        if st["neg"]:
            p.append(f"diffraction: expected amplitudes (or counts) >= 0, found {st['neg']} negative values "
                     f"(first in pattern {st['first_neg']}); clip background-subtracted counts at 0")
        if not st["nan"] and not st["inf"] and st["energy"] <= 0:
            p.append("diffraction: expected some signal, found every pattern zero")
        if not np.isfinite(st["energy"]):
            p.append(f"diffraction: amplitudes reach {st['peak']:.3g}, so their squares overflow (float32 holds up "
                     "to 3.4e+38); diffraction holds amplitudes sqrt(photon counts), typically 0 .. 1e3: undo the "
                     "scaling the data went through")
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


def check_positions(coords: dict[str, np.ndarray], half: int, hw: tuple | None, p: list[str]) -> None:
    """Patches must lie inside the (H, W) frame hw (objectGuess's) or, hw None, at least start inside
    the object frame; appends one problem per offending axis to p."""
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


def check_arrays(arrays: Mapping[str, Any], block: int | None = None, contents: bool = True
                 ) -> tuple[list[str], dict[str, float]]:
    """Return (problems, stats) for canonical-key arrays (numpy arrays or h5py datasets). Without
    `contents` the diffraction values are trusted (no pass over the patterns): keys, shapes, dtypes,
    probe and positions are still checked."""
    p: list[str] = []
    stats: dict[str, float] = {}
    a = {k: v for k, v in arrays.items() if v is not None}
    for key in REQUIRED:
        if key not in a:
            hint = " (upstream files may call it 'diff3d')" if key == "diffraction" else ""
            p.append(f"{key}: expected a required key, found it missing{hint}; add it to the file")
    M, N = _check_diffraction(a["diffraction"], p, stats, block, contents) if "diffraction" in a else (None, None)
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
    check_positions(coords, (N or 0) // 2, hw, p)
    for key in ("intensity_scale", "nphotons"):
        if key in a:
            v = np.asarray(a[key])
            if v.size != 1 or v.dtype.kind not in "iuf" or not np.isfinite(v).all() or float(v.reshape(-1)[0]) <= 0:
                p.append(f"{key}: expected one positive finite number, found {v.reshape(-1)[:3]!r} "
                         f"(dtype {v.dtype}); fix or remove it")
    if "metadata" in a and not isinstance(a["metadata"], dict):
        try:
            if not isinstance(parse_metadata(a["metadata"]), dict):
                p.append("metadata: expected a JSON object ({...}), found another JSON value")
        except ValueError as e:
            p.append(f"metadata: expected a JSON string, could not parse it ({e}); write json.dumps(dict)")
    return p, stats


def parse_metadata(raw: Any) -> Any:
    """JSON text (str, bytes, 0-d array or h5py scalar dataset) -> Python value."""
    value = raw[()] if hasattr(raw, "shape") and not isinstance(raw, np.ndarray) else raw
    value = value.item() if isinstance(value, np.ndarray) else value
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))


def canonical_keys(arrays: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in arrays.items() if k in REQUIRED + OPTIONAL}
    for alias, key in ALIASES.items():
        if out.get(key) is None and arrays.get(alias) is not None:
            out[key] = arrays[alias]
    return out
