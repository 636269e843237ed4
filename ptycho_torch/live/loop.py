"""Live reconstruction: frames in while the detector writes them, a picture that sharpens every few seconds,
and at the end the same products as `reconstruct`.

    live_reconstruct(model, watch, out_dir, options) -> LiveResult

While the scan runs, new frames are read from the source (sources.py) as soon as they are whole, run through
the network in batches (PatchPredictor, as `reconstruct` runs it) and stitched onto a canvas that grows with
the positions (running.py). Every `publish_seconds` the object so far is published into out_dir/live/,
each file written whole (object.npz, amplitude.png, phase.png, coverage.png, amplitude.tif, phase.tif,
status.json; a phase snapshot per publication in live/history/), so a viewer that reloads never sees a half
written file. One terminal line (a log line per publication off a terminal) says frames received /
reconstructed, the lag and the data fit so far.

The running picture is a preview in two ways, both undone at the end: the normalisation factor r is
taken from the first batch of frames (offline: from all of them), and with gridsize > 1 each batch of
new frames is grouped among itself (offline: among the whole scan). When the scan is over (the writer's
end mark) or the writer went quiet for `idle_seconds` (it died: said so), the frames received are
reconstructed exactly as `reconstruct` does it (the same function, on the frames in memory), so the
final object equals `reconstruct` of the finished file. A restart on the same source reads it from its
first frame again: nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho_torch.data.grouping import cover_groups
from ptycho_torch.data.scan import ScanData
from ptycho_torch.errors import UserError
from ptycho_torch.live.running import FrameStore, RunningCanvas
from ptycho_torch.live.sources import Frames, FrameSource, SourceHeader, open_source
from ptycho_torch.logging_setup import show_progress
from ptycho_torch.physics.forward import normalization_factor
from ptycho_torch.physics.stitching import stitch_weight
from ptycho_torch.reconstruction.reconstruct import PatchPredictor, ReconResult, choose_probe, reconstruct

log = logging.getLogger("ptycho_torch")

LIVE_DIR = "live"


@dataclass
class LiveOptions:
    """How a live reconstruction runs (the flags of `ptycho-torch live`)."""

    publish_seconds: float = 5.0  # publish the picture so far this often
    idle_seconds: float = 30.0  # no new frame for this long and no end mark: the writer is gone, finish
    start_timeout_s: float = 120.0  # wait this long for the source to appear
    batch_size: int | None = None  # patterns per network batch (None = the model's inference batch size)
    poll_seconds: float = 0.05  # sleep between polls of a quiet source
    fit_patterns: int = 256  # data fit of each publication on this many of the frames so far (0 = none)
    refine_seconds: float = 0.0  # the final object refined by the iterative solver this long
    device: str = "cpu"
    progress: bool | None = None  # the terminal line (None = on a terminal)

    def check(self) -> None:
        for name in ("publish_seconds", "idle_seconds", "start_timeout_s", "poll_seconds"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(self, name)}; must be > 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size: got {self.batch_size}; must be >= 1")
        if self.fit_patterns < 0 or self.refine_seconds < 0:
            raise UserError("--fit-patterns and --refine-seconds must be >= 0")


@dataclass
class LiveResult:
    """What a live run did: the final reconstruction, how it ended, and one row per publication
    (seconds since start, frames received / reconstructed, data fit ratio or None)."""

    final: ReconResult
    frames: int
    ended_by: str  # 'end mark' or 'writer gone'
    publications: list[dict[str, Any]] = field(default_factory=list)
    live_frames_per_second: float = 0.0  # frames reconstructed per second of network + stitching while live
    latency_s: list[float] = field(default_factory=list)  # per frame: written (else received) -> published
    live_seconds: float = 0.0  # from the first frame received until every frame was on the running canvas
    network_reads_per_frame: float = 0.0  # patterns through the network per frame (offline 'cover': about 1)


class LiveReconstruction:
    """The state of one live run; `live_reconstruct` drives it. Split out so the Ray adapter
    (ptycho_dist.live) can replace `reconstruct_batches` with an actor pool and keep the rest."""

    def __init__(self, predictor: PatchPredictor, header: SourceHeader, out_dir: Path, options: LiveOptions) -> None:
        self.predictor, self.header, self.options = predictor, header, options
        self.config = predictor.config
        self.N = header.N
        self.C = self.config.model.gridsize ** 2
        self.batch = options.batch_size or self.config.inference_batch_size
        self.canvas = RunningCanvas(self.N, stitch_weight(predictor.probe, self.config.inference.stitch_weight))
        self.store = FrameStore(self.N)
        self.moved = np.zeros(2)  # (x, y) whole pixels every position was moved by (receive)
        self.received_at: list[float] = []
        self.done = 0  # frames [0, done) are on the canvas
        self.published_upto = 0  # frames [0, published_upto) are in a published picture
        self.latency: list[float] = []
        self.network_seconds = 0.0
        self.network_patterns = 0  # patterns through the network (a frame read as a partner counts again)
        self.live_dir = out_dir / LIVE_DIR
        self.publications: list[dict[str, Any]] = []
        self.start = time.monotonic()
        self.first_frame_at: float | None = None  # monotonic time of the first frame received
        self.caught_up_at: float | None = None  # ... and of the last catch-up that left nothing behind

    # ------------------------------------------------------------------ frames in
    def receive(self, frames: Frames) -> None:
        """Keep new frames; each one's time (monotonic) is when it was written, if the source says, else now. A
        frame whose patch would start left of or above the canvas moves every position and the canvas by whole
        pixels (a beamline file read live: positions relative to its first frames)."""
        positions = frames.positions + self.moved
        low = np.floor(positions.min(axis=0)) - self.N // 2 if len(positions) else np.zeros(2)
        if (low < 0).any():
            dx, dy = (int(-v) if v < 0 else 0 for v in low)
            self.moved += (dx, dy)
            positions = positions + (dx, dy)
            self.store.positions[:self.store.n] += (dx, dy)
            self.canvas.move(dy, dx)
        self.store.append(frames.amplitudes, positions)
        now, wall = time.monotonic(), time.time()
        if self.first_frame_at is None:
            self.first_frame_at = now
        if frames.written_at is not None:
            self.received_at.extend(now - np.maximum(wall - frames.written_at, 0.0))
        else:
            self.received_at.extend([now] * len(frames))

    def groups_of(self, a: int, b: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batches (indices (B, C), stitched (B, C) bool) that stitch each of frames [a, b) once: single
        frames at gridsize 1; else cover groups of the new frames, completed with earlier ones when fewer
        than C are new (those are read, not stitched again)."""
        if self.C == 1:
            idx = np.arange(a, b)[:, None]
            stitched = np.ones_like(idx, dtype=bool)
        else:
            lo = max(0, min(a, b - self.C))
            _, positions = self.store.frames()
            groups = cover_groups(positions[lo:b], self.config.model.gridsize,
                                  neighbor_count=self.config.data.neighbor_count,
                                  rng=np.random.default_rng(self.config.training.seed))
            idx = groups.indices + lo
            stitched = groups.stitch_mask() & (idx >= a)
        return [(idx[s:s + self.batch], stitched[s:s + self.batch]) for s in range(0, len(idx), self.batch)]

    def reconstruct_batches(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Run the network on each batch and stitch its marked patches onto the canvas."""
        amplitudes, positions = self.store.frames()
        for idx, stitched in batches:
            self.network_patterns += idx.size
            amp = torch.from_numpy(amplitudes[idx])  # (B, C, N, N)
            pos = positions[idx].astype(np.float32)  # (B, C, 2)
            offsets = None if self.C == 1 else torch.from_numpy(pos - pos.mean(axis=1, keepdims=True))
            patches = self.predictor(amp, offsets)  # (B, C, N, N) complex64
            mask = torch.from_numpy(stitched)
            self.canvas.add(patches[mask], positions[idx][stitched])

    def catch_up(self, final: bool = False) -> None:
        """Reconstruct the frames received since the last call: whole batches, or all of them when `final`
        (or when a publication is due)."""
        a, b = self.done, self.store.n
        if b <= a or (not final and b - a < self.C):
            return
        # groups of a few new frames need partners from outside them (read twice): wait for a chunk of several
        # batches unless a publication is due (gridsize 1: no partners, a batch is enough)
        chunk = self.batch * self.C * (8 if self.C > 1 else 1)
        if not final and b - a < chunk and time.monotonic() - self._last_publish() < self.options.publish_seconds:
            return
        if self.done == 0:  # r of the first frames (offline: of all of them; the final pass uses that)
            amplitudes, _ = self.store.frames()
            energy = float(np.mean(np.sum(np.square(amplitudes[:b], dtype=np.float64), axis=(1, 2))))
            self.predictor.norm_factor = normalization_factor(energy, self.N)
        t = time.perf_counter()
        self.canvas.reserve(self.store.frames()[1][:b])  # one growth per catch-up, to the exact extent
        self.reconstruct_batches(self.groups_of(a, b))
        self.network_seconds += time.perf_counter() - t
        self.done = b
        self.caught_up_at = time.monotonic()

    def _last_publish(self) -> float:
        return self.publications[-1]["at_monotonic"] if self.publications else self.start

    # ------------------------------------------------------------------ pictures out
    def publish(self) -> dict[str, Any] | None:
        """Write the picture so far into out_dir/live/, each file whole; returns its row."""
        from ptycho_torch.evaluation.plots import save_complex_images, save_weight_map
        from ptycho_torch.reconstruction.exports import shown_phase, write_tiff
        from ptycho_torch.safe_output import atomic_path, atomic_write_text

        if self.canvas.count == 0:
            return None
        obj, weight = self.canvas.snapshot(self.config.inference.weight_threshold)
        amplitudes, positions = self.store.frames()
        fit = None
        if self.options.fit_patterns:
            from ptycho_torch.evaluation.data_fit import data_fit

            seen = ScanData(None, self.predictor.probe.numpy(), positions[:self.done, 0], positions[:self.done, 1],
                            diffraction=amplitudes[:self.done])
            fit = data_fit(obj, seen, self.predictor.probe.numpy(), scale=self.predictor.photon_scale,
                           max_patterns=self.options.fit_patterns).ratio
        live = self.live_dir
        live.mkdir(parents=True, exist_ok=True)
        with atomic_path(live / "object.npz") as tmp:
            np.savez(tmp, object=obj, weight=weight, xcoords=positions[:self.done, 0], ycoords=positions[:self.done, 1],
                     frames=np.int64(self.done))
        save_complex_images(obj, live, weight=weight)
        save_weight_map(weight, live / "coverage.png", title=f"coverage: {self.done} frames")
        write_tiff(live / "amplitude.tif", np.abs(obj))
        write_tiff(live / "phase.tif", shown_phase(obj, weight))
        k = len(self.publications)
        (live / "history").mkdir(exist_ok=True)
        with atomic_path(live / "history" / f"phase_{k:04d}.png") as tmp:
            shutil.copyfile(live / "phase.png", tmp)
        now = time.monotonic()
        row = {"seconds": round(now - self.start, 3), "frames_received": self.store.n, "frames_reconstructed": self.done,
               "data_fit": fit, "at_monotonic": now}
        self.publications.append(row)
        atomic_write_text(live / "status.json", json.dumps(
            {**{k: v for k, v in row.items() if k != "at_monotonic"}, "publication": k, "final": False}, indent=1))
        self.latency.extend(now - t for t in self.received_at[self.published_upto:self.done])
        self.published_upto = self.done
        return row

    def status_line(self) -> str:
        newest = self.received_at[self.store.n - 1] if self.store.n else 0.0  # how far the picture trails the detector
        lag = newest - self.received_at[self.done - 1] if self.done else (time.monotonic() - newest if self.store.n else 0.0)
        fit = self.publications[-1]["data_fit"] if self.publications else None
        return (f"received {self.store.n} | reconstructed {self.done} | lag {lag:.1f} s"
                + (f" | data fit {fit:.2f}x" if fit is not None and math.isfinite(fit) else ""))


def check_out_dir(out_dir: Path) -> None:
    """Refuse, before waiting for any frame, an --out that holds files other than a reconstruction."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "object.npz").is_file() \
            and not (out_dir / LIVE_DIR).is_dir():
        raise UserError(f"--out {out_dir}: holds files that are not a reconstruction; choose an empty or new "
                        "directory (nothing in it was changed)")


def live_reconstruct(model: Any, watch: str | Path | FrameSource, out_dir: str | Path,
                     options: LiveOptions | None = None, reconstruct_batches: Any = None) -> LiveResult:
    """Reconstruct the scan `watch` (a growing HDF5 file, or a FrameSource) with the bundle `model` while it
    is acquired, publishing pictures into out_dir/live/; at the end write `reconstruct`'s products into
    out_dir. `reconstruct_batches` (LiveReconstruction's method signature) replaces the local network pass
    (the Ray adapter's actor pool)."""
    options = options or LiveOptions()
    options.check()
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    predictor = PatchPredictor(model, device=options.device)
    from ptycho_torch.data.beamline import ReadOptions

    source = open_source(watch, ReadOptions.from_config(predictor.config)) if isinstance(watch, (str, Path)) else watch
    final_data = getattr(source, "final_data", None)  # a file the final pass reads as reconstruct does
    try:
        header = source.header(options.start_timeout_s)
        if header.N != predictor.config.model.N:
            raise UserError(f"the model {predictor.bundle.path} was trained on {predictor.config.model.N}x"
                            f"{predictor.config.model.N} patterns but {header.name or 'the source'} holds "
                            f"{header.N}x{header.N} patterns")
        chosen, probe_used = choose_probe(predictor.bundle, header.probe, "auto")
        if chosen is not None:
            predictor.use_probe(chosen)
        run = LiveReconstruction(predictor, header, out_dir, options)
        if reconstruct_batches is not None:
            run.reconstruct_batches = reconstruct_batches(run)  # type: ignore[method-assign]
        ended_by = _follow(source, run, options)
    finally:
        source.close()
    run.publish()
    return _finish(run, header, out_dir, options, ended_by, probe_used, final_data() if final_data else None)


def _follow(source: FrameSource, run: LiveReconstruction, options: LiveOptions) -> str:
    """Read, reconstruct and publish until the end mark or the writer's silence; how it ended."""
    last_frame = time.monotonic()
    with tqdm(unit="frame", desc="live", disable=not show_progress(options.progress)) as bar:
        while True:
            got = source.poll(4096)
            now = time.monotonic()
            if len(got):
                run.receive(got)
                last_frame = now
            over = source.finished
            gone = now - last_frame > options.idle_seconds
            if gone:
                source.writer_gone()  # its last frame counts as whole now
                tail = source.poll(1 << 30)
                if len(tail):
                    run.receive(tail)
            run.catch_up(final=over or gone)
            if now - run._last_publish() >= options.publish_seconds and run.done > run.published_upto:
                row = run.publish()
                if row is not None and bar.disable:
                    log.info("live: %s", run.status_line())
            bar.n = run.done
            bar.set_postfix_str(run.status_line(), refresh=True)
            if over:
                return "end mark"
            if gone:
                log.warning("live: no new frame for %.0f s and no end mark from the writer: finishing with the "
                            "%d frames that arrived", options.idle_seconds, run.store.n)
                return "writer gone"
            if not len(got):
                time.sleep(options.poll_seconds)


def _finish(run: LiveReconstruction, header: SourceHeader, out_dir: Path, options: LiveOptions, ended_by: str,
            probe_used: str, final_data: Path | None = None) -> LiveResult:
    """The frames received, reconstructed as `reconstruct` does, into out_dir (the previews kept in live/); with
    `final_data` (a beamline file, read live through a provisional window and origin) that file, as
    `reconstruct` reads it."""
    if run.store.n == 0:
        raise UserError(f"live: {header.name or 'the source'} ended ({ended_by}) before a whole frame arrived; "
                        "nothing to reconstruct")
    amplitudes, positions = run.store.frames()
    scan = ScanData(None, header.probe, positions[:, 0].copy(), positions[:, 1].copy(),
                    object_guess=header.object_guess, metadata=dict(header.metadata), diffraction=amplitudes)
    previews = out_dir.parent / f".{out_dir.name}.live-{os.getpid()}"
    if run.live_dir.is_dir():
        os.replace(run.live_dir, previews)  # kept out of the way of the whole-directory write
    try:
        final = reconstruct(run.predictor.bundle, final_data or scan, out_dir, batch_size=options.batch_size,
                            device=options.device, refine_seconds=options.refine_seconds, progress=False)
    finally:
        if previews.is_dir():
            out_dir.mkdir(parents=True, exist_ok=True)
            os.replace(previews, run.live_dir)
    from ptycho_torch.safe_output import atomic_write_text

    if run.live_dir.is_dir():
        atomic_write_text(run.live_dir / "status.json", json.dumps(
            {"frames_received": run.store.n, "frames_reconstructed": run.store.n, "final": True, "ended_by": ended_by,
             "final_object": str(out_dir / "object.npz"), "probe": probe_used}, indent=1))
    rate = run.done / run.network_seconds if run.network_seconds > 0 else 0.0
    span = (run.caught_up_at - run.first_frame_at) if run.caught_up_at and run.first_frame_at else 0.0
    log.info("live: %d frames (%s); %d pictures published; final reconstruction in %s", run.store.n, ended_by,
             len(run.publications), out_dir)
    return LiveResult(final, run.store.n, ended_by, [{k: v for k, v in r.items() if k != "at_monotonic"}
                                                       for r in run.publications], rate, run.latency, span,
                     run.network_patterns / max(run.store.n, 1))
