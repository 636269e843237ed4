"""Magnitudes a scan must have before any compute: a canvas that fits in memory, a finite diffraction
energy. Each check fails with one line that names what is wrong (positions in the wrong unit, amplitudes
scaled by 10^18) instead of an allocation of 57 GB or a "data are all zero or invalid".

`check_canvas(scan)` sizes the object canvas the positions imply (complex64 object + float32 weights,
12 bytes per pixel) and refuses one over CANVAS_MEMORY_FRACTION of this machine's memory, naming its
size in GB, before anything allocates it. `energy_problem(scan, energy)` says why a scan's mean
diffraction energy is not a positive finite number.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ptycho_torch.errors import UserError

BYTES_PER_CANVAS_PIXEL = 8 + 4  # complex64 sum of w*O + float32 sum of w
CANVAS_MEMORY_FRACTION = 0.5  # a canvas may take at most this share of the machine's memory
FLOAT32_MAX = float(np.finfo(np.float32).max)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (bytes); 16 GiB when the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def check_canvas(scan: Any, memory_bytes: int | None = None) -> tuple[int, int]:
    """The (H, W) object canvas of `scan` (its object_shape), refused with one UserError line when it
    needs more than CANVAS_MEMORY_FRACTION of the machine's memory. Nothing is allocated."""
    H, W = (int(v) for v in scan.object_shape)
    need = H * W * BYTES_PER_CANVAS_PIXEL
    limit = CANVAS_MEMORY_FRACTION * (memory_bytes or machine_memory_bytes())
    if need > limit:
        x, y = np.asarray(scan.xcoords), np.asarray(scan.ycoords)
        raise UserError(
            f"{getattr(scan, 'path', None) or 'scan'}: the positions span x {x.min():.4g} .. {x.max():.4g}, "
            f"y {y.min():.4g} .. {y.max():.4g} object pixels, a {H}x{W} canvas that needs {need / 1e9:.1f} GB, "
            f"more than the {limit / 1e9:.1f} GB allowed (half of this machine's memory); xcoords/ycoords must be "
            "in object pixels: convert metres with the object pixel size, or fix their scale")
    return H, W


def energy_problem(scan: Any, energy: float) -> str:
    """One line saying why the mean diffraction energy `energy` of `scan` is unusable (not > 0 and
    finite): amplitudes so large their squares overflow, NaN/inf values, or no signal at all."""
    where = getattr(scan, "path", None) or "scan"
    peak, bad = 0.0, 0
    rows = max(1, 2 ** 22 // max(1, scan.N * scan.N))
    for start in range(0, scan.n_patterns, rows):
        block = np.asarray(scan.diffraction_block(start, min(start + rows, scan.n_patterns)))
        finite = np.isfinite(block)
        bad += int(block.size - finite.sum())
        if finite.any():
            peak = max(peak, float(np.abs(block[finite]).max()))
    if bad:
        return (f"{where}: diffraction: {bad} values are NaN or infinite; replace them (e.g. 0 and a detector mask, "
                "data.mask) or re-export the scan")
    if peak * peak > FLOAT32_MAX / (scan.N * scan.N) or not np.isfinite(energy):
        return (f"{where}: diffraction: amplitudes reach {peak:.3g}, so their squared sum overflows (float32 holds "
                f"up to {FLOAT32_MAX:.2g}); diffraction holds amplitudes sqrt(photon counts), typically 0 .. 1e3: "
                "undo the scaling the data went through")
    return (f"{where}: diffraction: every pattern is zero (mean energy {energy:g}); check that the file holds the "
            "measured patterns (not a dark field or a mask)")
