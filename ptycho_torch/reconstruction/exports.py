"""Reconstruction products other programs open: probe, 32-bit TIFFs, a CXI file and a Ptychodus product.

Written next to object.npz by `reconstruction.reconstruct.write_reconstruction`:

    probe.npy           (P, N, N) complex64: the probe the reconstruction used (the model's, refined
                        when it was trained with model.probe_trainable)
    amplitude.tif       (H, W) float32 |O|; phase.tif (H, W) float32 arg O in radians (global offset
                        removed as in phase.png). ImageJ-flavoured TIFFs: Fiji shows the pixel size
                        in um when it is known
    reconstruction.cxi  HDF5 in the CXI layout (cxidb.org, the paths data/cxi_files.py reads):
                        /entry_1/image_1/data (H, W) complex64 object, /entry_1/image_1/weight,
                        /entry_1/instrument_1/source_1/illumination (probe); when the pixel size is
                        known, /entry_1/image_1/x_pixel_size and y_pixel_size (m) and the positions
                        /entry_1/sample_1/geometry_1/translation (M, 3) m (linked as
                        /entry_1/data_1/translation); when known, source_1/energy (J),
                        detector_1/distance (m) and detector_1/x_pixel_size, y_pixel_size (m, the
                        binned pixel the patterns were read with); always the positions in object
                        pixels /entry_1/data_1/xcoords_px, ycoords_px
    product.h5          a Ptychodus product file (layout: data/ptychodus_files.py): object (1, H, W)
                        complex64 with its pixel size and centre, probe (1, P, N, N) complex64, the
                        positions probe_position_x_m / _y_m, photon energy (eV), detector distance (m),
                        probe photon count sum |P|^2; Ptychodus opens it and so do `read_product` and
                        `data.probe: product.h5`. Needs a probe (skipped, with a log line, without one)

The pixel size comes from the scan's metadata (`pixel_size_m`, which the beamline readers compute as
lambda z / (N Delta)); without it the products carry no physical units: the TIFFs and the CXI file
have no pixel size or translations, and product.h5 is written in object pixels (pixel size 1,
positions and centre in pixels, attribute length_units = 'pixel' and a line in its comments saying
so; an energy or distance that is not known is written as 0, Ptychodus's 'unset').
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.data.detector import EV_J, LIGHT_M_S, PLANCK_J_S
from ptycho_torch.safe_output import atomic_path

log = logging.getLogger("ptycho_torch")


def pixel_size_of(metadata: dict[str, Any]) -> float | None:
    """The object pixel size in metres recorded in a scan's metadata, or None."""
    value = (metadata or {}).get("pixel_size_m")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _positive(metadata: dict[str, Any], key: str) -> float | None:
    """metadata[key] as a finite positive float, or None."""
    try:
        v = float((metadata or {}).get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def energy_j_of(metadata: dict[str, Any]) -> float | None:
    """The photon energy in joules of a scan's metadata (`energy_j`, else from `wavelength_m`), or None."""
    energy = _positive(metadata, "energy_j")
    wavelength = _positive(metadata, "wavelength_m")
    if energy is None and wavelength is not None:
        energy = PLANCK_J_S * LIGHT_M_S / wavelength
    return energy


def positions_m(xcoords: np.ndarray, ycoords: np.ndarray, N: int, pixel: float,
                metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Positions in object pixels (M,) -> metres in the scan file's frame, (x_m, y_m) (M,) float64:
    (coords - N/2) * pixel + position_origin_m (what detector.positions_px took away)."""
    origin = (metadata or {}).get("position_origin_m") or {"x_m": 0.0, "y_m": 0.0}
    x_m = (np.asarray(xcoords, np.float64) - N / 2) * pixel + float(origin.get("x_m", 0.0))
    y_m = (np.asarray(ycoords, np.float64) - N / 2) * pixel + float(origin.get("y_m", 0.0))
    return x_m, y_m


def shown_phase(obj: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """arg O (H, W) float32 with the global phase offset removed (the weighted mean set to 0)."""
    total = np.sum(obj * (weight if weight is not None else 1.0))
    rotated = obj * np.exp(-1j * np.angle(total)) if abs(total) > 0 else obj
    return np.angle(rotated).astype(np.float32)


def write_tiff(path: str | Path, image: np.ndarray, pixel_size_m: float | None = None) -> Path:
    """A 2-D float32 TIFF (ImageJ flavour); with the pixel size, resolution in pixels per um."""
    import tifffile

    image = np.ascontiguousarray(image, dtype=np.float32)
    kwargs: dict[str, Any] = {"imagej": True}
    if pixel_size_m:
        per_um = 1.0 / (pixel_size_m * 1e6)
        kwargs.update(resolution=(per_um, per_um), metadata={"unit": "um", "axes": "YX"})
    else:
        kwargs["metadata"] = {"axes": "YX"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, **kwargs)
    return Path(path)


def _with_units(group: Any, name: str, value: float, units: str) -> None:
    group[name] = float(value)
    group[name].attrs["units"] = units


def write_cxi_product(path: str | Path, obj: np.ndarray, weight: np.ndarray, probe: np.ndarray | None,
                      xcoords: np.ndarray, ycoords: np.ndarray, N: int, metadata: dict[str, Any]) -> Path:
    """The reconstruction as a CXI-layout HDF5 file (module docstring): obj (H, W) complex, weight
    (H, W), probe (P, N, N) or None, xcoords / ycoords (M,) object pixels, N the pattern size;
    geometry from `metadata` (pixel_size_m, position_origin_m, energy_j / wavelength_m, distance_m,
    detector_pixel_m), at the CXI paths where known."""
    import h5py

    pixel = pixel_size_of(metadata)
    energy = energy_j_of(metadata)
    distance = _positive(metadata, "distance_m")
    det_pixel = _positive(metadata, "detector_pixel_m")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["cxi_version"] = 150
        image = f.create_group("entry_1/image_1")
        image["data"] = np.asarray(obj, np.complex64)
        image["weight"] = np.asarray(weight, np.float32)
        image["data_type"] = "reconstructed object (complex transmission)"
        if pixel is not None:
            _with_units(image, "x_pixel_size", pixel, "m")
            _with_units(image, "y_pixel_size", pixel, "m")
        source = f.create_group("entry_1/instrument_1/source_1")
        if probe is not None:
            source["illumination"] = np.asarray(probe, np.complex64)
        if energy is not None:
            _with_units(source, "energy", energy, "J")
        detector = f.create_group("entry_1/instrument_1/detector_1")
        if distance is not None:
            _with_units(detector, "distance", distance, "m")
        if det_pixel is not None:
            _with_units(detector, "x_pixel_size", det_pixel, "m")
            _with_units(detector, "y_pixel_size", det_pixel, "m")
        data = f.create_group("entry_1/data_1")
        data["xcoords_px"], data["ycoords_px"] = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
        if pixel is not None:
            x_m, y_m = positions_m(xcoords, ycoords, N, pixel, metadata)
            t = f.create_dataset("entry_1/sample_1/geometry_1/translation",
                                 data=np.stack([x_m, y_m, np.zeros_like(x_m)], axis=1))
            t.attrs["units"] = "m"
            data["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        for key in ("energy_j", "wavelength_m", "distance_m"):  # the paths of earlier versions, still written
            if key in metadata:
                f[f"entry_1/instrument_1/{key}"] = float(metadata[key])
    return Path(path)


def product_name(metadata: dict[str, Any], fallback: str) -> str:
    """A product's name: the stem of the (first) scan file the metadata names, else `fallback`."""
    data = (metadata or {}).get("data")
    first = data[0] if isinstance(data, (list, tuple)) and data else data
    if isinstance(first, str) and first and first != "in-memory arrays":
        name = Path(first.split("::", 1)[0]).name
        for suffix in (".bz2", ".gz", ".xz", ".npz", ".h5", ".hdf5", ".cxi", ".nxs"):
            name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
        return name or fallback
    return fallback


def write_product_file(path: str | Path, obj: np.ndarray, probe: np.ndarray, xcoords: np.ndarray,
                       ycoords: np.ndarray, N: int, metadata: dict[str, Any], name: str | None = None) -> Path:
    """The reconstruction as a Ptychodus product (layout: ptycho_torch.data.ptychodus_files): obj (H, W)
    complex, probe (P, N, N) or (N, N) complex, xcoords / ycoords (M,) object pixels, N the pattern
    size. Positions in metres are (coords - N/2) * pixel + position_origin_m, the object's centre
    (pixel ((W - 1) / 2, (H - 1) / 2)) in the same frame, so Ptychodus maps each position back to
    (xcoords, ycoords). Without a pixel size in `metadata`: lengths in object pixels (module docstring)."""
    import h5py

    from ptycho_torch.data import ptychodus_files as keys

    obj = np.asarray(obj, np.complex64)
    probe = np.asarray(probe, np.complex64)
    probe = probe.reshape((1,) * (4 - probe.ndim) + probe.shape)  # (OPR modes = 1, P, N, N)
    H, W = obj.shape[-2:]
    pixel = pixel_size_of(metadata)
    in_pixels = pixel is None
    step = 1.0 if pixel is None else pixel
    x_m, y_m = positions_m(xcoords, ycoords, N, step, metadata if not in_pixels else {})
    cx, cy = positions_m(np.array([(W - 1) / 2]), np.array([(H - 1) / 2]), N, step,
                         metadata if not in_pixels else {})
    energy = energy_j_of(metadata)
    energy_ev = 0.0 if energy is None else energy / EV_J
    distance = _positive(metadata, "distance_m") or 0.0
    det_pixel = _positive(metadata, "detector_pixel_m")
    notes = [f"ptycho-dist (PtychoPINN in PyTorch) reconstruction, engine {metadata.get('engine', 'unknown')}"]
    if metadata.get("model"):
        notes.append(f"model {metadata['model']}")
    if in_pixels:
        notes.append("LENGTHS IN OBJECT PIXELS, NOT METRES: the scan gave no pixel size (energy, distance and "
                     "detector pixel unknown), so pixel sizes are 1 and positions are in pixels")
    if energy is None or distance == 0.0:
        notes.append("photon energy / detector distance 0 = unknown")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        attrs = f.attrs
        attrs[keys.NAME] = name or product_name(metadata, Path(path).parent.name or "reconstruction")
        attrs[keys.COMMENTS] = "; ".join(notes)
        attrs[keys.DETECTOR_DISTANCE_M] = float(distance)
        attrs[keys.PHOTON_ENERGY_EV] = float(energy_ev)
        attrs[keys.PROBE_PHOTON_COUNT] = float(np.sum(np.abs(probe[0].astype(np.complex128)) ** 2))
        for key in (keys.EXPOSURE_TIME_S, keys.MASS_ATTENUATION, keys.TOMOGRAPHY_ANGLE, keys.FOCUS_OBJECT_DISTANCE_M,
                    keys.TILT_ANGLE):
            attrs[key] = 0.0
        attrs[keys.FAR_FIELD] = True  # the forward model is Fraunhofer diffraction
        attrs[keys.LENGTH_UNITS] = "pixel" if in_pixels else "m"
        attrs["software"] = "ptycho-dist"
        if det_pixel is not None:
            attrs[keys.DETECTOR_PIXEL_WIDTH_M] = attrs[keys.DETECTOR_PIXEL_HEIGHT_M] = det_pixel
        f.create_dataset(keys.POSITION_INDEXES, data=np.arange(len(x_m), dtype=np.int64))
        f.create_dataset(keys.POSITION_X_M, data=x_m)
        f.create_dataset(keys.POSITION_Y_M, data=y_m)
        p = f.create_dataset(keys.PROBE, data=probe)
        p.attrs[keys.PIXEL_WIDTH_M] = p.attrs[keys.PIXEL_HEIGHT_M] = step  # far field: the object's pixel
        o = f.create_dataset(keys.OBJECT, data=obj.reshape(1, H, W))
        o.attrs[keys.CENTER_X_M], o.attrs[keys.CENTER_Y_M] = float(cx[0]), float(cy[0])
        o.attrs[keys.PIXEL_WIDTH_M] = o.attrs[keys.PIXEL_HEIGHT_M] = step
        f.create_dataset(keys.LAYER_SPACING, data=np.zeros(0, np.float64))
        f.create_dataset(keys.LOSS_EPOCHS, data=np.zeros(0, np.int64))
        f.create_dataset(keys.LOSS_VALUES, data=np.zeros(0, np.float64))
    return Path(path)


def write_products(out_dir: str | Path, obj: np.ndarray, weight: np.ndarray, probe: np.ndarray | None,
                   xcoords: np.ndarray, ycoords: np.ndarray, N: int, metadata: dict[str, Any]) -> dict[str, str]:
    """Write probe.npy and product.h5 (when a probe is given), amplitude.tif, phase.tif and
    reconstruction.cxi into `out_dir` (module docstring); returns name -> path of what was written."""
    out_dir = Path(out_dir)
    pixel = pixel_size_of(metadata)
    written: dict[str, str] = {}
    if probe is not None:
        with atomic_path(out_dir / "probe.npy") as tmp:
            np.save(tmp, np.asarray(probe, np.complex64))
        written["probe"] = str(out_dir / "probe.npy")
    written["amplitude_tif"] = str(write_tiff(out_dir / "amplitude.tif", np.abs(obj), pixel))
    written["phase_tif"] = str(write_tiff(out_dir / "phase.tif", shown_phase(obj, weight), pixel))
    written["cxi"] = str(write_cxi_product(out_dir / "reconstruction.cxi", obj, weight, probe, xcoords, ycoords,
                                           N, metadata))
    if probe is not None:
        written["ptychodus_product"] = str(write_product_file(out_dir / "product.h5", obj, probe, xcoords, ycoords,
                                                              N, metadata))
        if pixel is None:
            log.info("%s: written in object pixels (the scan gives no pixel size: set data.energy_ev, "
                     "data.distance_m and data.detector_pixel_m for metres)", out_dir / "product.h5")
    else:
        log.info("no product.h5 in %s: a Ptychodus product needs a probe", out_dir)
    return written
