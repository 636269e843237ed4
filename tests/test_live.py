"""Live reconstruction (ptycho_torch.live): a writer process streams a simulated scan into an SWMR HDF5 file at
a set rate while `live` reads it; pictures are published on the way, and the final object is `reconstruct`'s
of the finished file. Also: a partially written frame is never read, late positions wait, a writer that dies
ends the run with what arrived, and a restart reads every frame once."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_config

from ptycho_torch.cli.main import main
from ptycho_torch.config import SimulationConfig
from ptycho_torch.data.simulate import simulate_scan
from ptycho_torch.live.acquisition import acquire
from ptycho_torch.live.loop import LiveOptions, live_reconstruct
from ptycho_torch.live.sources import STATUS_KEY, H5FrameSource
from ptycho_torch.reconstruction.reconstruct import reconstruct

SIM = {"N": 32, "n_positions": 512, "seed": 3, "nphotons": 1e5}


@pytest.fixture(scope="module")
def model(tiny_scan, tmp_path_factory) -> Path:
    from ptycho_torch.training.train import train

    return train(tiny_config(tiny_scan, **{"trainer.max_epochs": 1, "logging.logger": None}),
                 tmp_path_factory.mktemp("live") / "run").bundle_path


def _write(path: str, hz: float, stop_after: int | None = None, positions_lag: int = 0) -> None:
    acquire(simulate_scan(SimulationConfig(**SIM)), path, hz, stop_after=stop_after, positions_lag=positions_lag)


def _writer(path: Path, hz: float, **kw) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=_write, args=(str(path), hz), kwargs=kw)
    process.start()
    return process


def test_live_follows_a_streamed_scan_and_ends_as_reconstruct(model, tmp_path):
    acq = tmp_path / "scan.h5"
    writer = _writer(acq, 80.0)  # 512 frames in about 6.4 s
    try:
        result = live_reconstruct(model, acq, tmp_path / "live", LiveOptions(publish_seconds=0.3, idle_seconds=20,
                                                                             progress=False))
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert result.ended_by == "end mark" and result.frames == 512
    intermediate = [p for p in result.publications if p["frames_received"] < 512]
    assert len(intermediate) >= 3, result.publications
    assert all(np.isfinite(p["data_fit"]) for p in result.publications)
    history = sorted((tmp_path / "live" / "live" / "history").glob("phase_*.png"))
    assert len(history) == len(result.publications)
    status = json.loads((tmp_path / "live" / "live" / "status.json").read_text())
    assert status["final"] and status["frames_received"] == 512 and status["ended_by"] == "end mark"
    with np.load(tmp_path / "live" / "live" / "object.npz") as published:
        assert int(published["frames"]) == 512 and published["object"].shape == published["weight"].shape
    # the finished file is an ordinary scan, and the live run's final object is reconstruct's of it
    offline = reconstruct(model, acq, tmp_path / "offline")
    np.testing.assert_allclose(result.final.object, offline.object, atol=1e-5, rtol=0)
    assert (tmp_path / "live" / "object.npz").is_file() and (tmp_path / "live" / "phase.png").is_file()


def test_a_frame_is_read_only_when_whole_and_with_its_position(tmp_path):
    scan = simulate_scan(SimulationConfig(**{**SIM, "n_positions": 40}))
    acq = tmp_path / "scan.h5"
    acquire(scan, acq, 0, stop_after=30, positions_lag=5)  # a writer that died; positions 5 frames behind
    source = H5FrameSource(acq)
    source.header(5)
    got = source.poll(1000)
    assert got.start == 0 and len(got) == 30  # the lagging positions were flushed with the last frame
    np.testing.assert_array_equal(got.amplitudes, scan["diffraction"][:30])
    assert not source.finished and len(source.poll(1000)) == 0  # nothing twice
    source.close()
    # a writer without a frame counter: its last frame may still be written, so it waits
    with h5py.File(acq, "r+") as f:
        del f[STATUS_KEY]
    source = H5FrameSource(acq)
    source.header(5)
    assert len(source.poll(1000)) == 29
    source.writer_gone()  # silent for good: the last frame counts as whole
    assert len(source.poll(1000)) == 1
    source.close()
    # an end mark is "finished" only once every frame it counts has been handed out
    acquire(scan, tmp_path / "whole.h5", 0)
    source = H5FrameSource(tmp_path / "whole.h5")
    source.header(5)
    assert len(source.poll(25)) == 25 and not source.finished
    assert len(source.poll(25)) == 15 and source.finished
    source.close()


def test_a_writer_that_dies_ends_the_run_with_what_arrived(model, tmp_path, caplog):
    acq = tmp_path / "scan.h5"
    _write(str(acq), 0, stop_after=100)
    result = live_reconstruct(model, acq, tmp_path / "out", LiveOptions(publish_seconds=0.2, idle_seconds=0.5,
                                                                        progress=False))
    assert result.ended_by == "writer gone" and result.frames == 100
    assert "no end mark from the writer" in caplog.text
    # a restart on the same source reads every frame once again (nothing counted twice)
    again = live_reconstruct(model, acq, tmp_path / "out", LiveOptions(publish_seconds=0.2, idle_seconds=0.5,
                                                                       progress=False))
    assert again.frames == 100
    np.testing.assert_allclose(again.final.object, result.final.object, atol=1e-6, rtol=0)


def test_cli_live_and_simulate_acquire(model, tmp_path, capsys):
    acq = tmp_path / "acq.h5"
    assert main(["simulate", "--out", str(acq), "--N", "32", "--n-positions", "64", "--acquire-hz", "0"]) == 0
    assert main(["live", "--model", str(model), "--watch", str(acq), "--out", str(tmp_path / "out"),
                 "--publish-seconds", "0.2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "live: 64 frames (end mark)" in out and (tmp_path / "out" / "object.npz").is_file()
    # bad input: one line each
    assert main(["live", "--model", str(model), "--watch", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]) == 2
    assert main(["live", "--model", str(model), "--watch", str(tmp_path / "never.h5"), "--out", str(tmp_path / "o"),
                 "--start-timeout", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "not an HDF5 file" in err and "no readable HDF5 file appeared within 0.3 s" in err
    assert "Traceback" not in err


def test_live_refuses_a_model_of_another_pattern_size(model, tmp_path):
    from ptycho_torch.errors import UserError

    acq = tmp_path / "scan64.h5"
    acquire(simulate_scan(SimulationConfig(N=64, n_positions=20, seed=0)), acq, 0)
    start = time.monotonic()
    with pytest.raises(UserError, match="trained on 32x32 patterns but .* holds 64x64"):
        live_reconstruct(model, acq, tmp_path / "o", LiveOptions(progress=False))
    assert time.monotonic() - start < 30


def test_gridsize_2_models_group_the_new_frames_and_end_as_reconstruct(tmp_path):
    bundle = Path(__file__).parent / "data" / "run_written_by_43cb0e6" / "model.pt"  # gridsize 2, N=32
    acq = tmp_path / "scan.h5"
    _write(str(acq), 0, stop_after=None)
    result = live_reconstruct(bundle, acq, tmp_path / "out", LiveOptions(publish_seconds=0.2, batch_size=8,
                                                                         progress=False))
    assert result.frames == 512 and result.publications[-1]["frames_reconstructed"] == 512
    offline = reconstruct(bundle, acq, tmp_path / "offline")
    np.testing.assert_allclose(result.final.object, offline.object, atol=1e-5, rtol=0)
