"""Where the roles of a CXI file (cxidb.org layout, CXI 1.x) live, for `beamline.read_beamline`.

    frames          /entry_1/data_1/data  or  /entry_1/instrument_1/detector_1/data
    translation     /entry_1/sample_1/geometry_1/translation  (M, 3) metres  (or /entry_1/data_1/translation)
    energy          /entry_1/instrument_1/source_1/energy     joules (a `units` attribute of eV is honoured)
    distance        /entry_1/instrument_1/detector_1/distance metres
    detector_pixel  /entry_1/instrument_1/detector_1/x_pixel_size (y_pixel_size must agree), metres
    probe           /entry_1/instrument_1/source_1/illumination  or  .../detector_1/probe  (optional)
    mask            /entry_1/instrument_1/detector_1/mask     nonzero = excluded pixel (optional)

The numbered groups (entry_1, data_1, ...) are taken as written; a file with several entries is read
from entry_1 (give other paths with data.datasets).
"""

from __future__ import annotations

from typing import Any

ENTRY = "/entry_1"
DET = f"{ENTRY}/instrument_1/detector_1"
SRC = f"{ENTRY}/instrument_1/source_1"
CXI_ROLES: dict[str, list[str]] = {
    "frames": [f"{ENTRY}/data_1/data", f"{DET}/data"],
    "translation": [f"{ENTRY}/sample_1/geometry_1/translation", f"{ENTRY}/data_1/translation"],
    "energy": [f"{SRC}/energy"],
    "distance": [f"{DET}/distance"],
    "detector_pixel": [f"{DET}/x_pixel_size"],
    "detector_pixel_y": [f"{DET}/y_pixel_size"],
    "probe": [f"{SRC}/illumination", f"{DET}/probe", f"{SRC}/probe"],
    "mask": [f"{DET}/mask"],
}


def is_cxi(f: Any) -> bool:
    """Whether an open h5py file is CXI: a `cxi_version` dataset, or frames at a CXI path (CXI files
    that also carry NeXus attributes are read as CXI)."""
    return "cxi_version" in f or any(path in f for path in CXI_ROLES["frames"])


def cxi_roles(f: Any) -> dict[str, list[str]]:
    """Candidate dataset paths of each role (the first that exists is used)."""
    return {role: list(paths) for role, paths in CXI_ROLES.items()}
