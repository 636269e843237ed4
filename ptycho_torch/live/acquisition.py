"""A simulated acquisition: a scan written frame by frame at a set rate, the way a detector delivers it during a
scan (for tests, the docs, the benchmark and the demo). `acquire(scan, out, hz)` writes

    SCAN.h5          an HDF5 file growing in SWMR mode (below; `sources.H5FrameSource`)
    DIR/             a directory: header.npz, then frame_<index>.npz files renamed into place whole, END at the
                     end (`acquire_directory`; the layout of `directory_source`)
    tcp://*:PORT     a ZMQ PUSH stream of the protocol of `zmq_source` (`stream`; needs pyzmq)

The HDF5 file:

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
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.live.sources import STATUS_KEY, TIME_KEY

log = logging.getLogger("ptycho_torch")


def is_directory_target(out: str | Path) -> bool:
    """An --out that names a directory of frame files: ending in '/' or an existing directory."""
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir()


def acquire(scan: Mapping[str, Any], out: str | Path, hz: float, *, stop_after: int | None = None,
            positions_lag: int = 0, progress: bool = False) -> Path | str:
    """Write `scan` (the keyword arguments of contract.write_scan: diffraction (M, N, N), probe, xcoords,
    ycoords, optional object_guess and metadata) to `out` at `hz` frames per second (<= 0: as fast as the
    disk takes them): an HDF5 file (.h5 / .hdf5), a directory of frame files (DIR/, `acquire_directory`) or
    a ZMQ stream (tcp://*:PORT, ipc://path, `stream`). `stop_after` frames ends the writer there without its
    end mark (a detector that dies); `positions_lag` writes each position that many frames after its frame
    (positions that arrive late; HDF5 and ZMQ). Returns `out`."""
    if str(out).startswith(("tcp://", "ipc://")):
        stream(scan, str(out), hz, stop_after=stop_after, positions_lag=positions_lag, progress=progress)
        return str(out)
    if is_directory_target(out):
        if positions_lag:
            raise UserError("positions_lag: a directory's frame files carry their positions; use HDF5 or ZMQ")
        return acquire_directory(scan, out, hz, stop_after=stop_after, progress=progress)
    import h5py

    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"--out {out}: an acquisition is written as HDF5 (.h5 / .hdf5), a directory (DIR/) or a ZMQ "
                        "stream (tcp://*:PORT)")
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


def _pace(start: float, i: int, hz: float) -> None:
    """Sleep until frame i is due at `hz` frames per second from `start` (perf_counter seconds)."""
    if hz > 0:
        delay = start + i / hz - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def acquire_directory(scan: Mapping[str, Any], out: str | Path, hz: float, *, stop_after: int | None = None,
                      frames_per_file: int = 1, progress: bool = False) -> Path:
    """Write `scan` (as `acquire`) into the directory `out` in the layout of `directory_source`: header.npz,
    then frame_<index>.npz files of `frames_per_file` frames each (diffraction (k, N, N), xcoords, ycoords,
    frame_time (k,)) at `hz` frames per second, each written under a temporary name and renamed into place,
    then END ({"frames": M}). `stop_after` frames ends the writer there without END. Returns `out`."""
    from ptycho_torch.live.directory_source import END_NAME, FRAME_NAME, HEADER_NAMES, frame_file_name
    from ptycho_torch.safe_output import atomic_path, atomic_write_text

    out = Path(out)
    if out.is_dir() and any(n in HEADER_NAMES or n == END_NAME or FRAME_NAME.match(n) for n in os.listdir(out)):
        raise UserError(f"--out {out}/: already holds an acquisition (header, frame files or END); choose an empty "
                        "or new directory (frames of two scans would mix)")
    if frames_per_file < 1:
        raise UserError(f"frames_per_file: got {frames_per_file}; must be >= 1")
    diffraction = np.asarray(scan["diffraction"])
    M = diffraction.shape[0]
    x, y = np.asarray(scan["xcoords"], np.float64), np.asarray(scan["ycoords"], np.float64)
    stop = M if stop_after is None else min(M, int(stop_after))
    out.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {"probeGuess": np.asarray(scan["probe"], np.complex64),
                              "metadata": json.dumps({**dict(scan.get("metadata") or {}), "acquired_at_hz": hz})}
    if scan.get("object_guess") is not None:
        header["objectGuess"] = np.asarray(scan["object_guess"], np.complex64)
    with atomic_path(out / "header.npz") as tmp:
        np.savez(tmp, **header)
    start = time.perf_counter()
    for a in range(0, stop, frames_per_file):
        b = min(a + frames_per_file, stop)
        _pace(start, b - 1, hz)
        with atomic_path(out / frame_file_name(a)) as tmp:  # .frame_000123.<random>.tmp.npz, then renamed
            np.savez(tmp, diffraction=diffraction[a:b], xcoords=x[a:b], ycoords=y[a:b],
                     frame_time=np.full(b - a, time.time()))
        if progress and b // 100 > a // 100:
            log.info("acquired %d / %d frames", b, M)
    if stop == M:
        atomic_write_text(out / END_NAME, json.dumps({"frames": M}))
    log.info("%s %d frames into %s/ in %.1f s", "acquired" if stop == M else "stopped (no END) after", stop, out,
             time.perf_counter() - start)
    return out


def stream(scan: Mapping[str, Any], address: str, hz: float, *, stop_after: int | None = None,
           positions_lag: int = 0, order: Sequence[int] | None = None, connect: bool = False,
           linger_s: float = 30.0, progress: bool = False) -> int:
    """Send `scan` (as `acquire`) as the ZMQ stream of `zmq_source`'s protocol from a PUSH socket bound to
    `address` (`connect`: connected to a reader that binds): the header (which waits for a reader), then one
    image message per frame at `hz` frames per second, then series_end. `order` sends the frames in that
    order (a permutation of 0 .. M-1: out of order); `positions_lag` > 0 sends the positions apart, each
    that many frames late (else each in its image message); `stop_after` frames ends there without
    series_end. Waits up to `linger_s` for the queued messages to leave. Returns the frames sent."""
    from ptycho_torch.live.zmq_source import (
        end_message,
        header_message,
        image_message,
        import_zmq,
        positions_message,
    )

    zmq = import_zmq(address)
    diffraction = np.asarray(scan["diffraction"])
    M = diffraction.shape[0]
    x, y = np.asarray(scan["xcoords"], np.float64), np.asarray(scan["ycoords"], np.float64)
    sequence = list(range(M)) if order is None else [int(i) for i in order]
    if sorted(sequence) != list(range(M)):
        raise UserError(f"order: must be a permutation of 0 .. {M - 1}")
    stop = M if stop_after is None else min(M, int(stop_after))
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 0)  # never drop, never block on a slow reader: messages queue here
    try:
        socket.connect(address) if connect else socket.bind(address)
        socket.send_multipart(header_message(scan["probe"], {**dict(scan.get("metadata") or {}),
                                                             "acquired_at_hz": hz}, scan.get("object_guess")))
        start = time.perf_counter()
        sent_positions = 0  # positions of frames [0, sent_positions) were sent (positions_lag > 0)
        for n, i in enumerate(sequence[:stop]):
            _pace(start, n, hz)
            with_position = positions_lag <= 0
            socket.send_multipart(image_message(i, diffraction[i], x[i] if with_position else None,
                                                y[i] if with_position else None, time.time()))
            due = stop if n + 1 == stop else max(0, n + 1 - positions_lag)
            if not with_position and due > sent_positions:
                socket.send_multipart(positions_message(sent_positions, x[sent_positions:due], y[sent_positions:due]))
                sent_positions = due
            if progress and (n + 1) % 100 == 0:
                log.info("sent %d / %d frames", n + 1, M)
        if stop == M:
            socket.send_multipart(end_message(M))
    finally:
        socket.close(linger=int(linger_s * 1000))
        context.term()
    log.info("%s %d frames to %s", "sent" if stop == M else "stopped (no series_end) after", stop, address)
    return stop
