"""Beamline files written the way beamlines write them (CXI, NeXus, an ad-hoc HDF5), for the tests.

Each writer takes a simulated contract scan (amplitudes, probe, positions in object pixels) and
stores it as a beamline would: uint16 photon counts, positions in metres, energy / distance / pixel
size, optionally embedded in a larger detector frame with the beam off centre.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ptycho_torch.data.detector import EV_J, object_pixel_m

ENERGY_EV = 8000.0
DISTANCE_M = 2.0
DET_PIXEL_M = 75e-6


def pixel_m(N: int, binning: int = 1) -> float:
    return object_pixel_m(ENERGY_EV * EV_J, DISTANCE_M, N, DET_PIXEL_M * binning)


def detector_frames(amplitude: np.ndarray, frame: int | None = None, corner: tuple[int, int] = (0, 0)
                    ) -> np.ndarray:
    """uint16 counts round(amplitude**2), embedded at `corner` of a frame x frame detector."""
    counts = np.round(np.asarray(amplitude, np.float64) ** 2).astype(np.uint16)
    M, N, _ = counts.shape
    if frame is None or frame == N:
        return counts
    out = np.zeros((M, frame, frame), np.uint16)
    out[:, corner[0]:corner[0] + N, corner[1]:corner[1] + N] = counts
    return out


def metres(xcoords: np.ndarray, ycoords: np.ndarray, N: int) -> np.ndarray:
    """(M, 3) translations in metres of positions in object pixels (z = 0)."""
    p = pixel_m(N)
    return np.stack([xcoords * p, ycoords * p, np.zeros_like(xcoords)], axis=1)


def write_cxi(path: Path, frames: np.ndarray, translation: np.ndarray, probe: np.ndarray | None,
              mask: np.ndarray | None = None, energy_units: str | None = None) -> Path:
    """The cxidb layout: frames under detector_1 (linked from data_1), energy in J (or eV with units)."""
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        det = f.create_group("entry_1/instrument_1/detector_1")
        det.create_dataset("data", data=frames, chunks=(min(8, len(frames)),) + frames.shape[1:])
        det["distance"] = DISTANCE_M
        det["x_pixel_size"] = DET_PIXEL_M
        det["y_pixel_size"] = DET_PIXEL_M
        if mask is not None:
            det["mask"] = mask.astype(np.uint32)
        src = f.create_group("entry_1/instrument_1/source_1")
        if energy_units == "eV":
            src["energy"] = ENERGY_EV
            src["energy"].attrs["units"] = "eV"
        else:
            src["energy"] = ENERGY_EV * EV_J
        if probe is not None:
            src["illumination"] = probe.astype(np.complex64)
        f["entry_1/sample_1/geometry_1/translation"] = translation
        data = f.create_group("entry_1/data_1")
        data["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
    return path


def _nx(group: h5py.Group, cls: str) -> h5py.Group:
    group.attrs["NX_class"] = cls
    return group


def write_nexus(path: Path, frames: np.ndarray, x_m: np.ndarray, y_m: np.ndarray, probe: np.ndarray,
                positions_in: str = "axes") -> Path:
    """NXentry 'scan' (not 'entry') / NXdata 'measurement' with signal 'counts', energy in keV, distance
    in mm, positions as NXdata axes (in um) or as NXsample NXpositioner values (in nm)."""
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "scan"
        entry = _nx(f.create_group("scan"), "NXentry")
        entry.attrs["default"] = "measurement"
        inst = _nx(entry.create_group("beamline"), "NXinstrument")
        det = _nx(inst.create_group("pilatus"), "NXdetector")
        det["distance"] = DISTANCE_M * 1e3
        det["distance"].attrs["units"] = "mm"
        det["x_pixel_size"] = DET_PIXEL_M
        det["x_pixel_size"].attrs["units"] = "m"
        det["counts"] = frames
        mono = _nx(inst.create_group("mono"), "NXmonochromator")
        mono["energy"] = ENERGY_EV / 1e3
        mono["energy"].attrs["units"] = "keV"
        entry["probe"] = probe.astype(np.complex64)
        data = _nx(entry.create_group("measurement"), "NXdata")
        data["counts"] = h5py.SoftLink(det["counts"].name)
        data.attrs["signal"] = "counts"
        if positions_in == "axes":
            data["x"], data["y"] = x_m * 1e6, y_m * 1e6
            data["x"].attrs["units"] = data["y"].attrs["units"] = "um"
            data.attrs["axes"] = ["x", "y"]
        else:
            sample = _nx(entry.create_group("sample"), "NXsample")
            for name, v in (("sample_x", x_m), ("sample_y", y_m)):
                pos = _nx(sample.create_group(name), "NXpositioner")
                pos["value"] = v * 1e9
                pos["value"].attrs["units"] = "nm"
    return path


def write_adhoc(path: Path, frames: np.ndarray, x_m: np.ndarray, y_m: np.ndarray, probe: np.ndarray) -> Path:
    """A layout nobody standardised: frames, motors and geometry under arbitrary names."""
    with h5py.File(path, "w") as f:
        f.create_dataset("exp/ccd/frames", data=frames, chunks=(4,) + frames.shape[1:])
        f["exp/motors/samx"], f["exp/motors/samy"] = x_m, y_m
        f["exp/setup/energy_ev"] = ENERGY_EV
        f["exp/setup/energy_ev"].attrs["units"] = "eV"
        f["exp/setup/det_z"] = DISTANCE_M
        f["exp/setup/pixel"] = DET_PIXEL_M
        f["exp/recon/probe"] = probe.astype(np.complex64)
    return path


ADHOC_DATASETS = {"x": "/exp/motors/samx", "y": "/exp/motors/samy", "energy": "/exp/setup/energy_ev",
                  "distance": "/exp/setup/det_z", "detector_pixel": "/exp/setup/pixel", "probe": "/exp/recon/probe"}
