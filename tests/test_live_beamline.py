"""`live --watch scan.cxi`: a CXI file growing in SWMR mode as a beamline writes it (detector frames larger than
N as photon counts, positions in metres, energy / distance / detector pixel, the frames in a scan order whose
later positions lie left of and above the first ones). The live loop reads each frame through the offline
reader's window and conversion, moves its canvas when positions further up or left arrive, publishes pictures,
and its final products are `reconstruct`'s of the finished file."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from ptycho_torch.config import SimulationConfig
from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.detector import object_pixel_m
from ptycho_torch.data.simulate import simulate_scan
from ptycho_torch.errors import UserError
from ptycho_torch.live.beamline_source import BeamlineFrameSource
from ptycho_torch.live.loop import LiveOptions, live_reconstruct
from ptycho_torch.live.running import RunningCanvas
from ptycho_torch.live.sources import H5FrameSource, open_source
from ptycho_torch.reconstruction.reconstruct import reconstruct

N, PAD = 32, 6  # frames of 44 x 44 detector pixels, cropped to 32 x 32 around the beam
ENERGY_J, DISTANCE_M, DETECTOR_PIXEL_M = 8000 * 1.602176634e-19, 1.2, 75e-6
SIM = {"N": N, "n_positions": 80, "seed": 9, "nphotons": 1e5}


def cxi_scan(seed: int = 9) -> dict:
    """A simulated scan as a beamline writes it: counts (M, 44, 44) uint32, translation (M, 3) metres in an order
    that starts in the middle of the scan (later frames lie left of and above the first)."""
    sim = simulate_scan(SimulationConfig(**{**SIM, "seed": seed}))
    counts = np.rint(sim["diffraction"].astype(np.float64) ** 2).astype(np.uint32)
    counts = np.pad(counts, ((0, 0), (PAD, PAD), (PAD, PAD)))
    pixel = object_pixel_m(ENERGY_J, DISTANCE_M, N, DETECTOR_PIXEL_M)
    x_m, y_m = (sim["xcoords"] - N / 2) * pixel + 3e-6, (sim["ycoords"] - N / 2) * pixel - 2e-6
    order = np.argsort(np.hypot(sim["xcoords"] - sim["xcoords"].mean(), sim["ycoords"] - sim["ycoords"].mean()))
    return {"counts": counts[order], "translation": np.stack([x_m, y_m, np.zeros_like(x_m)], axis=1)[order],
            "probe": sim["probe"][0]}


def write_growing_cxi(path: str, seed: int, hz: float, stop_after: int | None = None) -> None:
    """Write cxi_scan(seed) into a CXI file frame by frame in SWMR mode (frame, then its position, flushed)."""
    import h5py

    scan = cxi_scan(seed)
    M, F = scan["counts"].shape[0], scan["counts"].shape[1]
    with h5py.File(path, "w", libver="latest") as f:
        f["cxi_version"] = 150
        src, det = f.create_group("entry_1/instrument_1/source_1"), f.create_group("entry_1/instrument_1/detector_1")
        src["energy"] = ENERGY_J
        det["distance"] = DISTANCE_M
        det["x_pixel_size"] = det["y_pixel_size"] = DETECTOR_PIXEL_M
        src["illumination"] = scan["probe"]
        frames = f.create_dataset("entry_1/data_1/data", (0, F, F), maxshape=(None, F, F), dtype=np.uint32,
                                  chunks=(1, F, F))
        trans = f.create_dataset("entry_1/sample_1/geometry_1/translation", (0, 3), maxshape=(None, 3),
                                 dtype=np.float64, chunks=(64, 3))
        trans.attrs["units"] = "m"
        f.swmr_mode = True
        for i in range(M if stop_after is None else stop_after):
            frames.resize(i + 1, axis=0)
            frames[i] = scan["counts"][i]
            frames.flush()
            trans.resize(i + 1, axis=0)
            trans[i] = scan["translation"][i]
            trans.flush()
            if hz > 0:
                time.sleep(1 / hz)


def written_whole(path: Path, seed: int = 9) -> Path:
    write_growing_cxi(str(path), seed, 0)
    return path


@pytest.fixture(scope="module")
def model(tiny_scan, tmp_path_factory) -> Path:
    from ptycho_torch.training.train import train

    return train(tiny_config(tiny_scan, **{"trainer.max_epochs": 1, "logging.logger": None}),
                 tmp_path_factory.mktemp("live_beamline") / "run").bundle_path


def test_live_follows_a_growing_cxi_file_and_ends_as_reconstruct_of_it(model, tmp_path):
    acq = tmp_path / "scan.cxi"
    writer = multiprocessing.get_context("spawn").Process(target=write_growing_cxi, args=(str(acq), 9, 60.0))
    writer.start()
    try:
        result = live_reconstruct(model, acq, tmp_path / "live", LiveOptions(publish_seconds=0.3, idle_seconds=2.0,
                                                                             start_timeout_s=60, progress=False))
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert result.frames == SIM["n_positions"] and result.ended_by == "writer gone"
    assert len(result.publications) >= 2
    offline = reconstruct(model, acq, tmp_path / "offline")
    np.testing.assert_allclose(result.final.object, offline.object, atol=1e-5)
    # the live picture is the same object: its canvas moved to hold the frames further up and left
    live = np.load(tmp_path / "live" / "live" / "object.npz")
    # (its origin is the first frames', a fraction of a pixel from the whole scan's: a row or column more or less)
    assert all(abs(a - b) <= 1 for a, b in zip(live["object"].shape, offline.object.shape))
    assert np.abs(live["object"]).max() > 0 and int(live["frames"]) == SIM["n_positions"]


def test_frames_are_read_through_the_offline_window_with_positions_from_the_first_origin(tmp_path):
    """Rows read live = the offline reader's rows (frames cropped to N around the beam, counts -> sqrt) when the
    first frames put the window where the whole scan does, and positions = the offline ones plus one offset
    for all (the first frames' origin against the whole scan's)."""
    from ptycho_torch.data.scan_files import read_scans

    path = written_whole(tmp_path / "scan.cxi")
    options = ReadOptions(N=N)
    assert isinstance(open_source(path, options), BeamlineFrameSource)
    assert isinstance(open_source(tmp_path / "contract.h5", options), H5FrameSource)  # not there yet: contract
    source = BeamlineFrameSource(path, options)
    header = source.header(5)
    got = source.poll(1000)
    source.writer_gone()
    got_last = source.poll(1000)
    source.close()
    assert header.N == N and len(got) == SIM["n_positions"] - 1 and len(got_last) == 1  # the last waits: no counter
    offline = read_scans(path, options=ReadOptions(N=N))
    assert header.metadata["pixel_size_m"] == pytest.approx(offline.metadata["pixel_size_m"])
    rows = np.concatenate([got.amplitudes, got_last.amplitudes])
    positions = np.concatenate([got.positions, got_last.positions])
    if header.metadata.get("crop_window") == offline.metadata.get("crop_window"):
        np.testing.assert_array_equal(rows, offline.diffraction_block(0, offline.n_patterns))
    shift = positions - np.stack([offline.xcoords, offline.ycoords], axis=1)
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), axis=0), atol=1e-9)  # one offset for all
    assert (positions.min(axis=0) < N / 2).all()  # later frames lie left of and above the first ones


def test_a_second_file_for_positions_and_a_file_that_never_comes_are_one_line(tmp_path):
    with pytest.raises(UserError, match="names another file; a live source reads positions written into the same"):
        BeamlineFrameSource(tmp_path / "scan.cxi", ReadOptions(N=N, datasets={"translation": "motors.h5::/x"}))
    with pytest.raises(UserError, match="no frame with its position appeared within 0.5 s"):
        BeamlineFrameSource(tmp_path / "never.cxi", ReadOptions(N=N)).header(0.5)


def test_running_canvas_moves_without_changing_what_it_holds():
    import torch

    weight = torch.ones(N, N)
    canvas = RunningCanvas(N, weight)
    patches = torch.ones(2, N, N, dtype=torch.complex64) * torch.tensor([1.0, 2.0])[:, None, None]
    canvas.add(patches, np.array([[20.0, 20.0], [30.0, 24.0]]))
    before, w_before = canvas.snapshot()
    canvas.move(3, 5)
    after, w_after = canvas.snapshot()
    assert after.shape == (before.shape[0] + 3, before.shape[1] + 5)
    np.testing.assert_array_equal(after[3:, 5:], before)
    np.testing.assert_array_equal(w_after[3:, 5:], w_before)
    assert not after[:3].any() and not after[:, :5].any()
