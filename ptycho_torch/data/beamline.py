"""Beamline HDF5 files (CXI, NeXus, any layout by dataset paths) read as a `ScanData`.

A finder (cxi_files, nexus_files, or none) says where each *role* lives in the file; `data.datasets`
(role -> dataset path) and a `FILE.h5::/path/to/frames` data path override it. Roles:

    frames          (M, Fr, Fc) detector frames: integer photon counts or float amplitudes
    translation     (M, 2 or 3) scan positions (x, y[, z]) in metres (the `units` attribute may say mm, um, nm)
    x, y            (M,) scan positions in metres (same units rule), instead of translation
    xcoords, ycoords  (M,) scan positions already in object pixels (x = column, y = row)
    energy          photon energy: joules (CXI) unless a `units` attribute says eV / keV
    wavelength      photon wavelength in metres (`units` may say nm, angstrom), when there is no energy
    distance        sample-detector distance in metres
    detector_pixel  detector pixel size in metres (x_pixel_size; y_pixel_size must agree)
    probe           (Fr, Fc), (N, N) or (P, ., .) complex probe
    mask            (Fr, Fc) detector mask, nonzero = excluded pixel (CXI / NeXus pixel_mask convention)

A data.datasets value may name another file (position_files.py): OTHER.h5::/path (any role but frames),
a text table of positions (positions.csv[::x=COL y=COL units=um]) or a Ptychodus product (product.h5).

What is converted: frames are cropped around the beam centre (`data.beam_center`, else the centroid
of the mean pattern) or binned then cropped (`data.frame_fit`) to N x N, lazily as rows are read;
counts become sqrt(counts); positions in metres become object pixels of size lambda z / (N b Delta)
(b the binning), after `data.positions_transpose` / `_flip_x` / `_flip_y`; a probe sampled for the
full frames is resampled for N x N (detector.fit_probe). The pixel size and every choice made land
in the scan's metadata. Every problem of a file is collected and raised once (ScanValidationError).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ptycho_torch.data.detector import (
    LENGTH_UNITS,
    LIGHT_M_S,
    PLANCK_J_S,
    FrameMap,
    centroid,
    fit_mask,
    fit_probe,
    fit_window,
    is_finite_positive,
    mean_pattern,
    object_pixel_m,
    positions_px,
    to_joules,
    to_metres,
    wavelength_m,
)
from ptycho_torch.data.position_files import OtherFiles, names_a_file
from ptycho_torch.data.validation import ScanValidationError, check_arrays
from ptycho_torch.errors import UserError

log = logging.getLogger(__name__)

SEPARATOR = "::"


def split_source(text: str) -> tuple[str, str | None]:
    """'scan.h5::/entry/data' -> ('scan.h5', '/entry/data'); a plain path -> (path, None)."""
    head, sep, tail = str(text).partition(SEPARATOR)
    return (head, tail or None) if sep else (str(text), None)


@dataclass(frozen=True)
class ReadOptions:
    """How beamline files are read (from DataConfig and model.N: `from_config`).

    N: pattern size to crop / bin to (None = the frames' own size); datasets: role -> dataset path;
    frames: the dataset of a FILE::/path data path; probe / mask: a .npy file or FILE.h5::/dataset;
    frame_fit 'crop' or 'bin'; beam_center (row, column) detector pixels or None (mean pattern's
    centroid); positions_*: axis swaps and flips; energy_ev, distance_m, detector_pixel_m: geometry
    that overrides (or stands in for) the file's.
    """

    N: int | None = None
    datasets: dict[str, str] = field(default_factory=dict)
    frames: str | None = None
    probe: str | None = None
    mask: str | None = None
    frame_fit: str = "crop"
    beam_center: tuple[float, float] | None = None
    positions_transpose: bool = False
    positions_flip_x: bool = False
    positions_flip_y: bool = False
    energy_ev: float | None = None
    distance_m: float | None = None
    detector_pixel_m: float | None = None
    probe_optional: bool = False  # a file without a probe reads with a flat placeholder (`solve --probe estimate`)

    @classmethod
    def from_config(cls, config: Any) -> "ReadOptions":
        """From a RunConfig (its data section and model.N)."""
        d = config.data
        return cls(N=config.model.N, datasets=dict(d.datasets or {}), probe=d.probe, mask=d.mask,
                   frame_fit=d.frame_fit, beam_center=tuple(d.beam_center) if d.beam_center else None,
                   positions_transpose=d.positions_transpose, positions_flip_x=d.positions_flip_x,
                   positions_flip_y=d.positions_flip_y, energy_ev=d.energy_ev, distance_m=d.distance_m,
                   detector_pixel_m=d.detector_pixel_m)

    def with_frames(self, frames: str | None) -> "ReadOptions":
        from dataclasses import replace

        return self if frames is None else replace(self, frames=frames)

    @property
    def explicit(self) -> bool:
        """Whether dataset paths were given (then the file is read as a beamline file)."""
        return bool(self.datasets) or self.frames is not None


def read_array_source(spec: str, what: str) -> np.ndarray:
    """An array from a .npy file or 'FILE.h5::/dataset' (`what` names the config key in errors). A
    Ptychodus product file (product.h5, no '::'; data/ptychodus_files.py) gives its probe (P, N, N)
    complex64, the first OPR mode, where `what` is a probe ('data.probe'); so does
    'product.h5::/probe'. Other keys (data.mask) refuse a product with one line."""
    from ptycho_torch.data.ptychodus_files import is_product, read_product_probe

    path, inner = split_source(spec)
    p = Path(path).expanduser()
    wants_probe = what.endswith("probe")
    hint = "give a .npy file or FILE.h5::/dataset" + (" or a Ptychodus product .h5" if wants_probe else "")
    if not p.is_file():
        raise UserError(f"{what}: {path} does not exist; {hint}")
    if inner is None:
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        if is_product(p):
            if not wants_probe:
                raise UserError(f"{what}: {path} is a Ptychodus product (object, probe, positions), which holds "
                                f"no {what.rsplit('.', 1)[-1]}; give a .npy file or FILE.h5::/dataset")
            return read_product_probe(p, what)
        raise UserError(f"{what}: {path} is neither a .npy file nor a Ptychodus product; {hint}")
    import h5py

    with h5py.File(p, "r") as f:
        if inner not in f or not hasattr(f[inner], "dtype"):
            raise UserError(f"{what}: {p} has no dataset {inner}; check the path after '::'")
        product_probe = wants_probe and inner.strip("/") == "probe" and is_product(f)
        if not product_probe:
            return np.asarray(f[inner][()])
    return read_product_probe(p, what)  # (O, P, N, N) in the file: the first OPR mode


# ------------------------------------------------------------------ reading one file

def _attr_text(obj: Any, name: str) -> str | None:
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else None
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


class _Roles:
    """Role lookups in an open file with problems collected (one line each). A `data.datasets` value
    (`given`) naming another file is read whole from it (position_files.OtherFiles, relative to the
    scan file's folder `base`); those files stay open until `close` (a `with` block)."""

    def __init__(self, f: Any, found: dict[str, list[str]], kind: str, given: dict[str, str] | None = None,
                 base: Path = Path(".")) -> None:
        self.f, self.found, self.kind, self.given = f, found, kind, dict(given or {})
        self.problems: list[str] = []
        self.other = OtherFiles(base)

    def __enter__(self) -> "_Roles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.other.close()

    def _other_file(self, role: str, path: str) -> tuple[str, str | None] | None:
        """(file, path in it or options) where data.datasets.`role` names another file, else None."""
        head, inner = split_source(path)
        if self.given.get(role) != path or not names_a_file(head, inner) or (inner is None and path in self.f):
            return None
        return head, inner

    def dataset(self, role: str) -> Any:
        """The first existing dataset of `role`'s candidate paths (an h5py dataset, or a LoadedArray of
        another file), or None."""
        for path in self.found.get(role, []):
            other = self._other_file(role, path)
            if other is not None:
                got = self.other.read(role, *other)
                if isinstance(got, str) and got not in self.problems:
                    self.problems.append(got)
                return None if isinstance(got, str) else got
            obj = self.f.get(path)
            if obj is not None and hasattr(obj, "dtype"):
                return obj
            if obj is not None:
                self.problems.append(f"{role}: {path} is a group, not a dataset; give the dataset path "
                                     f"(data.datasets.{role})")
                return None
        return None

    def exists(self, role: str) -> bool:
        """Whether any candidate path of `role` exists in the file."""
        return any(self._other_file(role, path) is not None or path in self.f for path in self.found.get(role, []))

    def where(self, role: str) -> str:
        paths = self.found.get(role, [])
        return ("looked at " + ", ".join(paths)) if paths else f"the {self.kind} layout names none"

    def scalar(self, role: str, convert: Callable[[float, str | None], float | None], unit: str) -> float | None:
        ds = self.dataset(role)
        if ds is None:
            return None
        v = np.asarray(ds[()], dtype=np.float64).reshape(-1)
        if v.size < 1 or not np.isfinite(v).all():
            self.problems.append(f"{role}: expected one finite number at {ds.name}, found {v[:3]}")
            return None
        units = _attr_text(ds, "units")
        out = convert(float(v.mean()), units)
        if out is None or not is_finite_positive(out):
            self.problems.append(f"{role}: {ds.name} = {v[0]:g} {units or ''} is not a positive {unit} "
                                 f"(units '{units}' unknown?); fix it or set it in the config")
            return None
        return out


def read_beamline(path: str | Path, f: Any, found: dict[str, list[str]], kind: str, options: ReadOptions,
                  validate: bool = True) -> Any:
    """A ScanData of the open h5py file `f` whose roles live at `found` (role -> candidate paths,
    first existing wins); `options.datasets` / `options.frames` take precedence (a data.datasets value
    may name another file: position_files.py; those are closed when this returns). See module doc."""
    with _Roles(f, _given_first(found, options), kind, options.datasets, Path(path).parent) as roles:
        return _read(path, roles, kind, options, validate)


def _given_first(found: dict[str, list[str]], options: ReadOptions) -> dict[str, list[str]]:
    """The layout's candidate paths with options.datasets / options.frames in their place."""
    found = {k: list(v) for k, v in found.items()}
    for role, where in options.datasets.items():
        found[role] = [where]
    if options.frames:
        found["frames"] = [options.frames]
    return found


def read_position_rows(path: str | Path, f: Any, found: dict[str, list[str]], kind: str, options: ReadOptions,
                       N: int, pixel_m: float | None, origin: dict[str, float] | None, start: int,
                       stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(xcoords, ycoords) (stop - start,) object pixels of rows [start, stop) of a file's positions (a growing
    file read live), converted as read_beamline converts them, with `origin` (an earlier read's metadata
    `position_origin_m`) in place of the smallest position: rows beyond the first read's may lie below N/2.
    Problems (rows not written yet included) raise one ScanValidationError."""
    with _Roles(f, _given_first(found, options), kind, options.datasets, Path(path).parent) as roles:
        x, y = _positions(roles, options, stop - start, N, pixel_m, {}, rows=slice(start, stop), origin=origin)
        if roles.problems:
            raise ScanValidationError(roles.problems, str(path))
    return x, y


def _read(path: str | Path, roles: _Roles, kind: str, options: ReadOptions, validate: bool) -> Any:
    """read_beamline's ScanData of the roles `roles` finds (their problems raised once)."""
    from ptycho_torch.data.scan import ScanData

    p = roles.problems
    frames = roles.dataset("frames")
    if frames is None:
        if not p:
            p.append(f"frames: no detector frames found ({roles.where('frames')}); give the dataset as "
                     "FILE.h5::/path/to/frames or data.datasets.frames")
        raise ScanValidationError(p, str(path))
    if frames.ndim != 3 or np.dtype(frames.dtype).kind not in "iuf":
        raise ScanValidationError(p + [f"frames: expected an (M, rows, columns) dataset of counts or amplitudes at "
                                       f"{frames.name}, found shape {frames.shape} dtype {frames.dtype}; point "
                                       "data.datasets.frames at the frame stack"], str(path))
    M, Fr, Fc = (int(s) for s in frames.shape)
    meta: dict[str, Any] = {"format": kind, "frames": frames.name, "detector_shape": [Fr, Fc]}

    full_mask = _full_mask(roles, options, (Fr, Fc))
    N = options.N or (Fr if Fr == Fc else None)
    if N is None:
        p.append(f"frames: {Fr}x{Fc} frames are not square; set model.N (--N) to the pattern size to crop to")
        raise ScanValidationError(p, str(path))
    if options.beam_center is not None:
        center, meta["beam_center_from"] = tuple(float(c) for c in options.beam_center), "data.beam_center"
    elif (Fr, Fc) != (N, N):
        center, meta["beam_center_from"] = centroid(mean_pattern(frames, mask=full_mask)), "mean pattern centroid"
    else:
        center = (Fr / 2, Fc / 2)
    window, b, problem = fit_window((Fr, Fc), N, options.frame_fit, center)
    if problem:
        p.append(problem)
    if window is not None:
        meta.update(beam_center=[round(center[0], 3), round(center[1], 3)], crop_window=list(window), binning=b)

    pixel_m = _geometry(roles, options, N, b, meta)
    xcoords, ycoords = _positions(roles, options, M, N, pixel_m, meta)
    probe = _probe(roles, options, (Fr, Fc), N, b)
    if p:
        raise ScanValidationError(p, str(path))
    fmap = FrameMap(counts=np.dtype(frames.dtype).kind in "iu", window=window, bin=b,
                    mask=None if full_mask is None else fit_mask(full_mask, window, b))
    if fmap.mask is not None and not fmap.mask.any():
        fmap.mask = None
    meta["diffraction_read_as"] = fmap.describe(frames.dtype)
    plain = not fmap.counts and window is None and fmap.mask is None
    scan = ScanData(path=Path(path), probe=probe, xcoords=xcoords, ycoords=ycoords, metadata=meta,
                    lazy_key=frames.name, frame_map=None if plain else fmap)
    problems, stats = check_arrays(scan._as_mapping(), contents=validate)
    if problems:
        raise ScanValidationError(problems, str(path))
    if "mean_energy" in stats:
        scan._energy = stats["mean_energy"]
    log.log(logging.INFO if validate else logging.DEBUG, "%s: %s file, %d patterns read as %s%s", path, kind, M,
            meta["diffraction_read_as"], f", object pixel {pixel_m:.4g} m" if pixel_m else "")
    return scan


def _full_mask(roles: _Roles, options: ReadOptions, frame: tuple[int, int]) -> np.ndarray | None:
    """The (Fr, Fc) bool mask (True = excluded) from data.mask or the file, or None."""
    if options.mask:
        try:
            m = read_array_source(options.mask, "data.mask")
        except UserError as e:
            roles.problems.append(str(e))
            return None
        source = options.mask
    else:
        ds = roles.dataset("mask")
        if ds is None:
            return None
        m, source = np.asarray(ds[()]), ds.name
    m = np.squeeze(m)
    if m.shape != frame:
        roles.problems.append(f"mask: expected the detector's {frame[0]}x{frame[1]} shape at {source}, found "
                              f"{m.shape}; give a mask of the full frame (nonzero = excluded pixel)")
        return None
    return m != 0


def _geometry(roles: _Roles, options: ReadOptions, N: int, b: int, meta: dict[str, Any]) -> float | None:
    """The object pixel size in metres (None when energy, distance or detector pixel is unknown)."""
    energy = (to_joules(options.energy_ev, "eV") if options.energy_ev else roles.scalar("energy", to_joules, "energy"))
    if energy is None and not roles.exists("energy"):  # NXptycho gives the wavelength instead
        wavelength = roles.scalar("wavelength", to_metres, "length")
        energy = None if wavelength is None else PLANCK_J_S * LIGHT_M_S / wavelength
    distance = options.distance_m or roles.scalar("distance", to_metres, "length")
    det = options.detector_pixel_m or roles.scalar("detector_pixel", to_metres, "length")
    if not options.detector_pixel_m:
        det_y = roles.scalar("detector_pixel_y", to_metres, "length")
        if det is not None and det_y is not None and abs(det_y - det) > 1e-9 * det:
            roles.problems.append(f"detector_pixel: x and y pixel sizes differ ({det:g} m, {det_y:g} m); "
                                  "non-square detector pixels are not supported (set data.detector_pixel_m "
                                  "only if they are in fact equal)")
            return None
    missing = [(name, fix) for name, value, fix in (("energy", energy, "data.energy_ev"),
                                                     ("distance", distance, "data.distance_m"),
                                                     ("detector_pixel", det, "data.detector_pixel_m"))
               if value is None]
    if missing:
        meta["geometry_missing"] = [m for m, _ in missing]
        return None
    pixel = object_pixel_m(energy, distance, N, det * b)
    meta.update(energy_j=energy, energy_ev=energy / 1.602176634e-19, wavelength_m=wavelength_m(energy),
                distance_m=distance, detector_pixel_m=det * b, pixel_size_m=pixel)
    return pixel


def _positions(roles: _Roles, options: ReadOptions, M: int, N: int, pixel_m: float | None,
               meta: dict[str, Any], rows: slice | None = None,
               origin: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(xcoords, ycoords) (M,) object pixels from pixel positions or positions in metres (only `rows` of the
    datasets when given; metres relative to `origin` when given, else to the smallest position)."""
    p = roles.problems
    known = len(p)  # a position role that failed to read already said why: no generic line then
    xc, yc = roles.dataset("xcoords"), roles.dataset("ycoords")
    if xc is not None and yc is not None:
        meta["positions_from"] = f"{xc.name}, {yc.name} (object pixels)"
        return _vector(xc, M, p, "xcoords", rows), _vector(yc, M, p, "ycoords", rows)
    trans = roles.dataset("translation")
    xs, ys = roles.dataset("x"), roles.dataset("y")
    if trans is not None:
        t = np.asarray(trans[()] if rows is None else trans[rows], np.float64)
        if t.ndim != 2 or t.shape[0] != M or t.shape[1] < 2:
            rows = f" ({t.shape[0]} rows for {M} frames)" if t.ndim == 2 and t.shape[1] >= 2 else ""
            p.append(f"translation: expected (M, 3) = ({M}, 3) positions in metres at {trans.name}, found shape "
                     f"{t.shape}{rows}; give one row per frame, in the frames' order")
            return np.zeros(M), np.zeros(M)
        units = _attr_text(trans, "units")
        x_m, y_m = to_metres(t[:, 0], units), to_metres(t[:, 1], units)
        source = trans.name
    elif xs is not None and ys is not None:
        x_m = to_metres(_vector(xs, M, p, "x", rows), _attr_text(xs, "units"))
        y_m = to_metres(_vector(ys, M, p, "y", rows), _attr_text(ys, "units"))
        source = f"{xs.name}, {ys.name}"
    else:
        if len(p) == known:
            p.append(f"positions: no scan positions found (translation: {roles.where('translation')}; x/y: "
                     f"{roles.where('x')}); give data.datasets.translation, or x and y (metres), or xcoords and "
                     "ycoords (object pixels)")
        return np.zeros(M), np.zeros(M)
    if x_m is None or y_m is None:
        p.append(f"positions: unknown length units at {source}; use one of {', '.join(LENGTH_UNITS)}")
        return np.zeros(M), np.zeros(M)
    if not (np.isfinite(x_m).all() and np.isfinite(y_m).all()):
        p.append(f"positions: expected finite values at {source}, found NaN/Inf; drop those frames")
        return np.zeros(M), np.zeros(M)
    if pixel_m is None:
        fixes = {"energy": "data.energy_ev", "distance": "data.distance_m", "detector_pixel": "data.detector_pixel_m"}
        missing = [m for m in meta.get("geometry_missing", []) if not any(q.startswith(f"{m}:") for q in p)]
        if missing:
            p.append("positions: given in metres, but the object pixel size lambda z / (N Delta) needs "
                     + ", ".join(f"{m} ({roles.where(m)}; or set {fixes[m]})" for m in missing))
        return np.zeros(M), np.zeros(M)
    x, y, origin = positions_px(x_m, y_m, pixel_m, N, transpose=options.positions_transpose,
                                flip_x=options.positions_flip_x, flip_y=options.positions_flip_y, origin=origin)
    meta.update(positions_from=f"{source} (metres)", position_origin_m=origin,
                positions_transpose=options.positions_transpose, positions_flip_x=options.positions_flip_x,
                positions_flip_y=options.positions_flip_y)
    return x, y


def _vector(ds: Any, M: int, p: list[str], role: str, rows: slice | None = None) -> np.ndarray:
    v = np.asarray(ds[()] if rows is None else ds[rows], np.float64)
    if v.ndim != 1 or v.shape[0] != M:
        rows = f" ({v.shape[0]} values for {M} frames)" if v.ndim == 1 else ""
        p.append(f"{role}: expected ({M},) values, one per frame, at {ds.name}, found shape {v.shape}{rows}; "
                 "give one value per frame, in the frames' order")
        return np.zeros(M)
    return v


def _probe(roles: _Roles, options: ReadOptions, frame: tuple[int, int], N: int, b: int) -> np.ndarray:
    """(P, N, N) complex64 probe from data.probe or the file (resampled when sampled for full frames)."""
    p = roles.problems
    if options.probe:
        try:
            probe, source = read_array_source(options.probe, "data.probe"), options.probe
        except UserError as e:
            p.append(str(e))
            return np.ones((1, N, N), np.complex64)
    else:
        ds = roles.dataset("probe")
        if ds is None and options.probe_optional:  # the solver estimates one from the data
            return np.ones((1, N, N), np.complex64)
        if ds is None:
            p.append(f"probe: no probe in the file ({roles.where('probe')}); give data.probe (a .npy of a "
                     f"complex ({N}, {N}) or (P, {N}, {N}) probe, or FILE.h5::/dataset)")
            return np.ones((1, N, N), np.complex64)
        probe, source = np.asarray(ds[()]), ds.name
    probe = np.asarray(probe)
    if probe.ndim not in (2, 3) or probe.dtype.kind not in "cf":
        p.append(f"probe: expected a complex (N, N) or (P, N, N) array at {source}, found shape {probe.shape} "
                 f"dtype {probe.dtype}")
        return np.ones((1, N, N), np.complex64)
    if probe.shape[-2:] == (N, N):
        return probe.astype(np.complex64)
    if probe.shape[-2:] == tuple(frame) and frame[0] == frame[1] and frame[0] >= N * b:
        return fit_probe(probe, frame, N, b)
    hint = (f"; or set --N {probe.shape[-1]} (model.N) to crop the frames to the probe's size"
            if options.N is None and probe.shape[-2] == probe.shape[-1] < min(frame) else "; resample the probe")
    where = f"{N}x{N} (the patterns)" + ("" if tuple(frame) == (N, N) else f" or {frame[0]}x{frame[1]} (the detector frames)")
    p.append(f"probe: expected {where} at {source}, found {probe.shape[-2]}x{probe.shape[-1]}{hint}")
    return np.ones((1, N, N), np.complex64)


# ------------------------------------------------------------------ which reader

CONTRACT_ROLES = {"frames": ["/diffraction", "/diff3d"], "xcoords": ["/xcoords"], "ycoords": ["/ycoords"],
                  "probe": ["/probeGuess"]}


def beamline_layout(f: Any, options: ReadOptions) -> tuple[str, dict[str, list[str]]] | None:
    """(kind, role -> candidate paths) for an open HDF5 file read as a beamline file, or None when it
    is a contract file (root `diffraction` / `diff3d`) and no dataset paths were given. CXI is
    recognised by `cxi_version` / `entry_1`, NeXus by an NXentry group; dataset paths (data.datasets,
    FILE::/frames) apply to any file."""
    from ptycho_torch.data.cxi_files import cxi_roles, is_cxi
    from ptycho_torch.data.nexus_files import is_nexus, nexus_roles

    contract = "diffraction" in f or "diff3d" in f
    if contract and not options.explicit:
        return None
    if is_cxi(f):
        return "cxi", cxi_roles(f)
    if is_nexus(f):
        return "nexus", nexus_roles(f)
    if options.explicit:
        return "hdf5", dict(CONTRACT_ROLES)
    return None
