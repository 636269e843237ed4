"""A simulated acquisition: a scan written into an HDF5 file frame by frame at a set rate, in SWMR mode, the
way a detector's file grows during a scan (for tests, the docs, the benchmark and the demo).

The file is in the data contract's layout from the start (probeGuess, objectGuess, metadata written
first; diffraction (0 -> M, N, N), xcoords, ycoords grown frame by frame), plus `acquisition` =
[frames complete, scan over], updated after each frame's bytes are flushed, so a reader
(`sources.H5FrameSource`) never takes a frame that is half written. When the scan is over the file is an
ordinary contract file: `reconstruct` and `train` read it as any other. `frame_time` (M,) float64 holds
each frame's write time (Unix seconds), from which the live run measures its latency.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.live.sources import STATUS_KEY, TIME_KEY

log = logging.getLogger("ptycho_torch")


def acquire(scan: Mapping[str, Any], out: str | Path, hz: float, *, stop_after: int | None = None,
            positions_lag: int = 0, progress: bool = False) -> Path:
    """Write `scan` (the keyword arguments of contract.write_scan: diffraction (M, N, N), probe, xcoords,
    ycoords, optional object_guess and metadata) into the HDF5 file `out` at `hz` frames per second
    (<= 0: as fast as the disk takes them). `stop_after` frames ends the writer there without its end
    mark (a detector that dies); `positions_lag` writes each position that many frames after its frame
    (positions that arrive late). Returns `out`."""
    import h5py

    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"--out {out}: an acquisition is written as HDF5 (.h5 / .hdf5)")
    diffraction = np.asarray(scan["diffraction"])
    M, N = diffraction.shape[0], diffraction.shape[-1]
    x, y = np.asarray(scan["xcoords"], np.float64), np.asarray(scan["ycoords"], np.float64)
    probe = np.asarray(scan["probe"], np.complex64)
    stop = M if stop_after is None else min(M, int(stop_after))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".creating")
    with h5py.File(tmp, "w", libver="latest") as f:  # everything but the frames, then renamed into place
        f.create_dataset("probeGuess", data=probe)
        if scan.get("object_guess") is not None:
            f.create_dataset("objectGuess", data=np.asarray(scan["object_guess"], np.complex64))
        f.create_dataset("metadata", data=json.dumps({**dict(scan.get("metadata") or {}), "acquired_at_hz": hz}))
        f.create_dataset("diffraction", shape=(0, N, N), maxshape=(None, N, N), chunks=(1, N, N),
                         dtype=diffraction.dtype)
        for key in ("xcoords", "ycoords", TIME_KEY):
            f.create_dataset(key, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float64)
        f.create_dataset(STATUS_KEY, data=np.zeros(2, np.int64))
    tmp.replace(out)
    start = time.perf_counter()
    with h5py.File(out, "r+", libver="latest") as f:
        f.swmr_mode = True
        d, xs, ys, status, stamps = f["diffraction"], f["xcoords"], f["ycoords"], f[STATUS_KEY], f[TIME_KEY]
        for i in range(stop):
            if hz > 0:
                delay = start + i / hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            d.resize((i + 1, N, N))
            d[i] = diffraction[i]
            d.flush()
            stamps.resize((i + 1,))
            stamps[i] = time.time()  # when the frame's bytes were flushed (latency is measured from here)
            stamps.flush()
            have = max(0, i + 1 - positions_lag) if i + 1 < stop else stop
            if have > xs.shape[0]:
                for ds, values in ((xs, x), (ys, y)):
                    old = ds.shape[0]
                    ds.resize((have,))
                    ds[old:have] = values[old:have]
                    ds.flush()
            status[0] = i + 1
            status.flush()
            if progress and (i + 1) % 100 == 0:
                log.info("acquired %d / %d frames", i + 1, M)
        if stop == M:
            status[1] = 1
            status.flush()
    log.info("%s %d frames into %s in %.1f s", "acquired" if stop == M else "stopped (no end mark) after", stop, out,
             time.perf_counter() - start)
    return out
