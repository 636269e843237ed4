"""Reconstruction products other programs open: probe, pixel size, 32-bit TIFFs and a CXI file.

Written next to object.npz by `reconstruction.reconstruct.write_reconstruction`:

    probe.npy           (P, N, N) complex64: the probe the reconstruction used (the model's, refined
                        when it was trained with model.probe_trainable)
    amplitude.tif       (H, W) float32 |O|; phase.tif (H, W) float32 arg O in radians (global offset
                        removed as in phase.png). ImageJ-flavoured TIFFs: Fiji shows the pixel size
                        in um when it is known
    reconstruction.cxi  HDF5 in the CXI layout: /entry_1/image_1/data (H, W) complex64 object,
                        /entry_1/image_1/weight, /entry_1/instrument_1/source_1/illumination (probe),
                        /entry_1/sample_1/geometry_1/translation (M, 3) metres (when the pixel size is
                        known), /entry_1/image_1/x_pixel_size and y_pixel_size (m), and the positions in
                        object pixels /entry_1/data_1/xcoords_px, ycoords_px

The pixel size comes from the scan's metadata (`pixel_size_m`, which the beamline readers compute as
lambda z / (N Delta)); without it the products carry no physical units.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.safe_output import atomic_path


def pixel_size_of(metadata: dict[str, Any]) -> float | None:
    """The object pixel size in metres recorded in a scan's metadata, or None."""
    value = (metadata or {}).get("pixel_size_m")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


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


def write_cxi_product(path: str | Path, obj: np.ndarray, weight: np.ndarray, probe: np.ndarray | None,
                      xcoords: np.ndarray, ycoords: np.ndarray, N: int, metadata: dict[str, Any]) -> Path:
    """The reconstruction as a CXI-layout HDF5 file (module docstring)."""
    import h5py

    pixel = pixel_size_of(metadata)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["cxi_version"] = 150
        image = f.create_group("entry_1/image_1")
        image["data"] = np.asarray(obj, np.complex64)
        image["weight"] = np.asarray(weight, np.float32)
        image["data_type"] = "reconstructed object (complex transmission)"
        if pixel is not None:
            image["x_pixel_size"] = image["y_pixel_size"] = pixel
            image["x_pixel_size"].attrs["units"] = image["y_pixel_size"].attrs["units"] = "m"
        if probe is not None:
            f["entry_1/instrument_1/source_1/illumination"] = np.asarray(probe, np.complex64)
        data = f.create_group("entry_1/data_1")
        data["xcoords_px"], data["ycoords_px"] = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
        if pixel is not None:
            origin = metadata.get("position_origin_m") or {"x_m": 0.0, "y_m": 0.0}
            x_m = (np.asarray(xcoords) - N / 2) * pixel + float(origin.get("x_m", 0.0))
            y_m = (np.asarray(ycoords) - N / 2) * pixel + float(origin.get("y_m", 0.0))
            t = f.create_dataset("entry_1/sample_1/geometry_1/translation",
                                 data=np.stack([x_m, y_m, np.zeros_like(x_m)], axis=1))
            t.attrs["units"] = "m"
        for key in ("energy_j", "wavelength_m", "distance_m"):
            if key in metadata:
                f[f"entry_1/instrument_1/{key}"] = float(metadata[key])
    return Path(path)


def write_products(out_dir: str | Path, obj: np.ndarray, weight: np.ndarray, probe: np.ndarray | None,
                   xcoords: np.ndarray, ycoords: np.ndarray, N: int, metadata: dict[str, Any]) -> dict[str, str]:
    """Write probe.npy (when a probe is given), amplitude.tif, phase.tif and reconstruction.cxi into
    `out_dir`; returns name -> path of what was written."""
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
    return written
