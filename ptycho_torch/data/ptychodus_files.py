"""Ptychodus product files (`product.h5` of AdvancedPhotonSource/ptychodus): recognised and read as numpy.

Ptychodus, the APS program in which users run PtychoPINN and Pty-chi, keeps a reconstruction as one
HDF5 "product" (ptychodus.api.io save_product / load_product, ptychodus 1.7). Everything is at the
file's root; lengths are metres, energies eV:

    attributes              name, comments (str); photon_energy_eV (older files: probe_energy_eV);
                            detector_object_distance_m; probe_photon_count (sum |probe|^2);
                            exposure_time_s, mass_attenuation_m2_per_kg, tomography_angle_deg,
                            focus_object_distance_m, tilt_angle_deg (0 = unset); far_field (bool);
                            polarization (optional str)
    object                  (L, H, W) complex, L layers (a 2-D array is one layer); attributes
                            pixel_width_m, pixel_height_m, and center_x_m, center_y_m: the position of
                            the array's centre, pixel ((W - 1) / 2, (H - 1) / 2)
    object_layer_spacing_m  (L - 1,) float
    probe                   (O, P, N, N) complex: O orthogonal-probe-relaxation (OPR) modes of P
                            incoherent modes each ((P, N, N) and (N, N) arrays are read as O = 1, and
                            P = 1); attributes pixel_width_m, pixel_height_m (default: the object's)
    opr_weights             (M, O) float, optional: each position's weights of the OPR modes
    probe_position_indexes  (M,) int
    probe_position_x_m, probe_position_y_m   (M,) float: each position in the object's frame, so that
                            its object pixel is column (x - center_x_m) / pixel_width_m + (W - 1) / 2
                            (row likewise with y, height): PtychoPINN's xcoords, ycoords
    probe_photon_counts     (M,) float, optional
    loss_epochs, loss_values  (E,) the reconstruction's loss history

What this project adds to the products it writes (Ptychodus ignores them): `length_units` = 'm', or
'pixel' when the object pixel size was unknown (then the pixel sizes are 1 and the positions and the
centre are in object pixels, not metres); `detector_pixel_width_m` / `detector_pixel_height_m` when
known; `software`.

`read_product` reads one into a `ProductFile` (numpy arrays, metadata dict); the probe is the first
OPR mode (P, N, N) complex64, as Ptychodus's own PtychoPINN export takes it. A product given as
`data.probe` is read for its probe (beamline.read_array_source).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.data.detector import EV_J, wavelength_m
from ptycho_torch.errors import UserError

log = logging.getLogger(__name__)

# the dataset and attribute names of ptychodus.api.io.ProductFileKeys (1.7)
NAME, COMMENTS = "name", "comments"
PHOTON_ENERGY_EV, LEGACY_PHOTON_ENERGY_EV = "photon_energy_eV", "probe_energy_eV"
DETECTOR_DISTANCE_M = "detector_object_distance_m"
PROBE_PHOTON_COUNT, EXPOSURE_TIME_S = "probe_photon_count", "exposure_time_s"
MASS_ATTENUATION, TOMOGRAPHY_ANGLE = "mass_attenuation_m2_per_kg", "tomography_angle_deg"
FOCUS_OBJECT_DISTANCE_M, TILT_ANGLE, FAR_FIELD = "focus_object_distance_m", "tilt_angle_deg", "far_field"
OBJECT, PROBE, OPR_WEIGHTS, LAYER_SPACING = "object", "probe", "opr_weights", "object_layer_spacing_m"
PIXEL_WIDTH_M, PIXEL_HEIGHT_M = "pixel_width_m", "pixel_height_m"
CENTER_X_M, CENTER_Y_M = "center_x_m", "center_y_m"
POSITION_INDEXES, POSITION_X_M, POSITION_Y_M = "probe_position_indexes", "probe_position_x_m", "probe_position_y_m"
LOSS_EPOCHS, LOSS_VALUES = "loss_epochs", "loss_values"
# this project's additions
LENGTH_UNITS, DETECTOR_PIXEL_WIDTH_M, DETECTOR_PIXEL_HEIGHT_M = ("length_units", "detector_pixel_width_m",
                                                                 "detector_pixel_height_m")

REQUIRED_DATASETS = (OBJECT, PROBE, POSITION_X_M, POSITION_Y_M)


@dataclass
class ProductFile:
    """A Ptychodus product as numpy arrays (lengths in metres unless `length_units` is 'pixel').

    object (L, H, W) complex64 (layer 0 is the 2-D object); probe (P, N, N) complex64, the first OPR
    mode; opr_modes O (the file's probe holds O x P modes); position_x, position_y (M,) float64 and
    position_indexes (M,) int64; object_pixel and probe_pixel (width, height); object_center (x, y);
    metadata: every root attribute (str, float, bool) plus photon_energy_eV, energy_j, wavelength_m,
    detector_distance_m (None when the file does not know them) and detector_pixel_m (None unless
    this project wrote it).
    """

    path: Path
    object: np.ndarray
    object_pixel: tuple[float, float]
    object_center: tuple[float, float]
    probe: np.ndarray
    probe_pixel: tuple[float, float]
    position_x: np.ndarray
    position_y: np.ndarray
    position_indexes: np.ndarray
    opr_modes: int = 1
    length_units: str = "m"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_size_m(self) -> float | None:
        """The object pixel size in metres (its width), or None when the lengths are object pixels."""
        return None if self.length_units == "pixel" else float(self.object_pixel[0])

    @property
    def xcoords(self) -> np.ndarray:
        """(M,) float64 the positions' object columns (PtychoPINN's xcoords): (x - cx) / dx + (W - 1) / 2."""
        width = self.object.shape[-1]
        return (self.position_x - self.object_center[0]) / self.object_pixel[0] + (width - 1) / 2

    @property
    def ycoords(self) -> np.ndarray:
        """(M,) float64 the positions' object rows (PtychoPINN's ycoords): (y - cy) / dy + (H - 1) / 2."""
        height = self.object.shape[-2]
        return (self.position_y - self.object_center[1]) / self.object_pixel[1] + (height - 1) / 2


def is_product(source: Any) -> bool:
    """Whether `source` (a path, or an open h5py File / Group) is a Ptychodus product: an HDF5 file with
    root datasets object, probe, probe_position_x_m and probe_position_y_m. Never raises for a path
    that is missing or not HDF5 (False)."""
    if isinstance(source, (str, Path)):
        import h5py

        path = Path(source).expanduser()
        try:
            if not path.is_file() or not h5py.is_hdf5(path):
                return False
            with h5py.File(path, "r") as f:
                return _has_product_datasets(f)
        except OSError:
            return False
    return _has_product_datasets(source)


def _has_product_datasets(f: Any) -> bool:
    try:
        return all(hasattr(f.get(name), "dtype") for name in REQUIRED_DATASETS)
    except (AttributeError, TypeError):
        return False


def read_product(path: str | Path, *, with_object: bool = True) -> ProductFile:
    """The Ptychodus product at `path` (module docstring). `with_object` False leaves the object array
    out (an empty (1, 0, 0) array; its pixel size and centre are still read): what reading a probe
    needs. A file that is not a product, or a key of the wrong type or shape, raises one UserError
    naming the file and every problem."""
    import h5py

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: no such Ptychodus product file")
    if not h5py.is_hdf5(p):
        raise UserError(f"{p}: not an HDF5 file, so not a Ptychodus product (product.h5)")
    with h5py.File(p, "r") as f:
        missing = [name for name in REQUIRED_DATASETS if not hasattr(f.get(name), "dtype")]
        if missing:
            raise UserError(f"{p}: not a Ptychodus product: no root dataset {', '.join(missing)} (a product "
                            f"holds {', '.join(REQUIRED_DATASETS)})")
        problems: list[str] = []
        meta = {str(k): _plain(v) for k, v in f.attrs.items()}
        obj_ds, probe_ds = f[OBJECT], f[PROBE]
        obj = _complex(obj_ds[()] if with_object else np.zeros((1, 0, 0), np.complex64), OBJECT, (2, 3), problems)
        obj_shape = tuple(obj_ds.shape)
        object_pixel = (_length(obj_ds, PIXEL_WIDTH_M, problems), _length(obj_ds, PIXEL_HEIGHT_M, problems))
        center = (_number(obj_ds, CENTER_X_M, 0.0, problems), _number(obj_ds, CENTER_Y_M, 0.0, problems))
        probe_all = _complex(probe_ds[()], PROBE, (2, 3, 4), problems)
        probe_pixel = (_length(probe_ds, PIXEL_WIDTH_M, problems, object_pixel[0]),
                       _length(probe_ds, PIXEL_HEIGHT_M, problems, object_pixel[1]))
        x = np.asarray(f[POSITION_X_M][()], np.float64)
        y = np.asarray(f[POSITION_Y_M][()], np.float64)
        idx_ds = f.get(POSITION_INDEXES)
        indexes = np.asarray(idx_ds[()], np.int64) if hasattr(idx_ds, "dtype") else np.arange(x.size, dtype=np.int64)
    if x.ndim != 1 or y.shape != x.shape or indexes.shape != x.shape:
        problems.append(f"{POSITION_X_M}, {POSITION_Y_M}, {POSITION_INDEXES}: expected (M,) each, found shapes "
                        f"{x.shape}, {y.shape}, {indexes.shape}")
    elif not (np.isfinite(x).all() and np.isfinite(y).all()):
        problems.append(f"{POSITION_X_M}, {POSITION_Y_M}: expected finite positions, found NaN/Inf")
    if len(obj_shape) not in (2, 3):
        problems.append(f"{OBJECT}: expected an (H, W) or (layers, H, W) array, found shape {obj_shape}")
    if problems:
        raise UserError(f"{p}: not a readable Ptychodus product: " + "; ".join(problems))
    probe4 = probe_all.reshape((1,) * (4 - probe_all.ndim) + probe_all.shape)
    if probe4.shape[0] > 1:
        log.info("%s: the probe holds %d OPR modes; using the first (the probe without OPR variation)", p,
                 probe4.shape[0])
    units = str(meta.get(LENGTH_UNITS, "m"))
    meta.update(_physics(meta, p))
    return ProductFile(path=p, object=obj.reshape((1,) * (3 - obj.ndim) + obj.shape),
                       object_pixel=object_pixel, object_center=center, probe=np.ascontiguousarray(probe4[0]),
                       probe_pixel=probe_pixel, position_x=x, position_y=y, position_indexes=indexes,
                       opr_modes=int(probe4.shape[0]), length_units="pixel" if units == "pixel" else "m",
                       metadata=meta)


def read_product_probe(path: str | Path, what: str = "data.probe") -> np.ndarray:
    """The probe (P, N, N) complex64 (first OPR mode) of the Ptychodus product at `path`; a damaged
    product raises one UserError starting with `what` (the config key)."""
    try:
        return read_product(path, with_object=False).probe
    except UserError as e:
        raise UserError(f"{what}: {e}") from None


def _plain(value: Any) -> Any:
    """An HDF5 attribute as plain Python: str, bool, float, int, or a list."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.reshape(-1)] if value.size != 1 else _plain(value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _complex(a: np.ndarray, name: str, ndims: tuple[int, ...], problems: list[str]) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in ndims or a.dtype.kind not in "cf" or (a.size and not np.isfinite(a).all()):
        shapes = " or ".join(f"{n}-D" for n in ndims)
        problems.append(f"{name}: expected a finite complex {shapes} array, found shape {a.shape} dtype {a.dtype}")
        return np.zeros((1,) * max(ndims), np.complex64)
    return a.astype(np.complex64)


def _number(ds: Any, name: str, default: float | None, problems: list[str]) -> float:
    value = ds.attrs.get(name)
    if value is None:
        if default is None:
            problems.append(f"{ds.name.lstrip('/')}: no '{name}' attribute")
            return 1.0
        return default
    try:
        v = float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        v = float("nan")
    if not np.isfinite(v):
        problems.append(f"{ds.name.lstrip('/')}: attribute '{name}' = {value!r} is not a finite number")
        return 1.0
    return v


def _length(ds: Any, name: str, problems: list[str], default: float | None = None) -> float:
    v = _number(ds, name, default, problems)
    if v <= 0:
        problems.append(f"{ds.name.lstrip('/')}: attribute '{name}' = {v:g} is not a positive length")
        return 1.0
    return v


def _physics(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """photon_energy_eV, energy_j, wavelength_m, detector_distance_m, detector_pixel_m from the root
    attributes (None where unknown: absent, 0 or not a positive number)."""

    def positive(key: str) -> float | None:
        try:
            v = float(meta[key])
        except (KeyError, TypeError, ValueError):
            return None
        return v if np.isfinite(v) and v > 0 else None

    ev = positive(PHOTON_ENERGY_EV) or positive(LEGACY_PHOTON_ENERGY_EV)
    det = positive(DETECTOR_PIXEL_WIDTH_M)
    det_y = positive(DETECTOR_PIXEL_HEIGHT_M)
    if det is not None and det_y is not None and abs(det - det_y) > 1e-9 * det:
        log.warning("%s: detector pixels %g m x %g m are not square; detector_pixel_m is the width", path, det, det_y)
    return {"photon_energy_eV": ev, "energy_j": None if ev is None else ev * EV_J,
            "wavelength_m": None if ev is None else wavelength_m(ev * EV_J),
            "detector_distance_m": positive(DETECTOR_DISTANCE_M), "detector_pixel_m": det}
