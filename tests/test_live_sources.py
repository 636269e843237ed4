"""Live sources beyond HDF5: a directory where frame files appear (ptycho_torch.live.directory_source) and a ZMQ
stream (ptycho_torch.live.zmq_source). For each, a writer (a process for the directory, a thread for the stream)
sends a simulated scan while `live` runs, and the final object is `reconstruct`'s of the same frames. Also: a
file not yet renamed is never read, a missing frame waits (and is given up when the writer is gone), a restart
reads every frame once, messages out of order and frames before their positions wait, the end mark ends the
run, and without pyzmq one line says how to install it."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from ptycho_torch.cli.main import main
from ptycho_torch.config import SimulationConfig
from ptycho_torch.data.scan import ScanData
from ptycho_torch.data.simulate import simulate_scan
from ptycho_torch.errors import UserError
from ptycho_torch.live.acquisition import acquire_directory, stream
from ptycho_torch.live.directory_source import DirectoryFrameSource
from ptycho_torch.live.loop import LiveOptions, live_reconstruct
from ptycho_torch.live.sources import H5FrameSource, open_source
from ptycho_torch.live.zmq_source import (
    ZmqFrameSource,
    end_message,
    header_message,
    image_message,
    positions_message,
)
from ptycho_torch.reconstruction.reconstruct import reconstruct

try:
    import zmq
except ImportError:  # the `live` extra; the directory's tests run without it
    zmq = None
needs_zmq = pytest.mark.skipif(zmq is None, reason="pyzmq is not installed (pip install pyzmq)")

SIM = {"N": 32, "n_positions": 96, "seed": 5, "nphotons": 1e5}
M = SIM["n_positions"]


@pytest.fixture(scope="module")
def scan() -> dict:
    return simulate_scan(SimulationConfig(**SIM))


@pytest.fixture(scope="module")
def lean(scan) -> dict:
    """The scan without its ground truth (the final pass then skips the metrics: quicker)."""
    return {k: v for k, v in scan.items() if k != "object_guess"}


@pytest.fixture(scope="module")
def model(tiny_scan, tmp_path_factory) -> Path:
    from ptycho_torch.training.train import train

    return train(tiny_config(tiny_scan, **{"trainer.max_epochs": 1, "logging.logger": None}),
                 tmp_path_factory.mktemp("live_sources") / "run").bundle_path


@pytest.fixture(scope="module")
def offline(model, lean, tmp_path_factory) -> np.ndarray:
    """`reconstruct`'s object of the whole scan (in memory, the frames as simulated)."""
    data = ScanData(None, lean["probe"], lean["xcoords"], lean["ycoords"], diffraction=lean["diffraction"])
    return reconstruct(model, data, tmp_path_factory.mktemp("offline") / "out").object


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(**kw) -> LiveOptions:
    return LiveOptions(**{"publish_seconds": 0.3, "idle_seconds": 20.0, "start_timeout_s": 60.0, "progress": False,
                          **kw})


def _drain(source, want: int, timeout_s: float = 5.0) -> list:
    """Poll until `want` frames came (or the timeout); the non-empty Frames."""
    got, n, deadline = [], 0, time.monotonic() + timeout_s
    while n < want and time.monotonic() < deadline:
        frames = source.poll(1000)
        if len(frames):
            got.append(frames)
            n += len(frames)
        else:
            time.sleep(0.01)
    return got


# ------------------------------------------------------------------ end to end

def test_directory_live_follows_a_writer_process_and_ends_as_reconstruct(model, lean, offline, tmp_path):
    acq = tmp_path / "acq"
    writer = multiprocessing.get_context("spawn").Process(target=acquire_directory, args=(lean, str(acq), 60.0),
                                                          kwargs={"frames_per_file": 2})
    writer.start()  # 96 frames in about 1.6 s, after the child's start
    try:
        result = live_reconstruct(model, f"{acq}/", tmp_path / "live", _options())
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert result.ended_by == "end mark" and result.frames == M
    assert any(p["frames_received"] < M for p in result.publications), result.publications
    np.testing.assert_allclose(result.final.object, offline, atol=1e-5, rtol=0)
    assert json.loads((acq / "END").read_text()) == {"frames": M}


@needs_zmq
def test_zmq_live_follows_a_stream_out_of_order_and_ends_as_reconstruct(model, lean, offline, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    order = np.random.default_rng(0).permuted(np.arange(M).reshape(-1, 8), axis=1).ravel()  # shuffled in 8s
    sent: list[int] = []
    sender = threading.Thread(target=lambda: sent.append(stream(lean, address, 80.0, order=order, positions_lag=5)))
    sender.start()
    try:
        result = live_reconstruct(model, address, tmp_path / "live", _options())
    finally:
        sender.join(60)
    assert sent == [M]
    assert result.ended_by == "end mark" and result.frames == M
    np.testing.assert_allclose(result.final.object, offline, atol=1e-5, rtol=0)


def test_cli_simulate_into_a_directory_and_watch_it(model, tmp_path, capsys):
    acq = tmp_path / "acq"
    assert main(["simulate", "--out", str(acq), "--N", "32", "--n-positions", "48", "--acquire-hz", "0"]) == 0
    assert (acq / "header.npz").is_file() and (acq / "END").is_file() and len(list(acq.glob("frame_*.npz"))) == 48
    assert main(["live", "--model", str(model), "--watch", f"{acq}/", "--out", str(tmp_path / "out"),
                 "--publish-seconds", "0.2", "--device", "cpu"]) == 0
    assert "live: 48 frames (end mark)" in capsys.readouterr().out
    if zmq is None:
        return
    # a stream address reaches the source whole (not a path), and a silent one is one line
    port = _free_port()
    assert main(["live", "--model", str(model), "--watch", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / "o"),
                 "--start-timeout", "0.3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--watch tcp://127.0.0.1:{port}: no header message within 0.3 s" in err and "Traceback" not in err


# ------------------------------------------------------------------ the directory source

def _header(d: Path, scan: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "header.npz", probeGuess=scan["probe"], metadata=json.dumps({"beamline": "test"}))


def _frame_file(d: Path, scan: dict, start: int, k: int = 1, name: str | None = None) -> Path:
    path = d / (name or f"frame_{start:06d}.npz")
    with open(path, "wb") as f:  # a file object: np.savez keeps the name as given
        np.savez(f, diffraction=scan["diffraction"][start:start + k], xcoords=scan["xcoords"][start:start + k],
                 ycoords=scan["ycoords"][start:start + k], frame_time=1000.0 + np.arange(start, start + k))
    return path


def test_directory_reads_only_renamed_files_in_order_and_ends_at_the_end_mark(scan, tmp_path):
    d = tmp_path / "acq"
    _header(d, scan)
    source = DirectoryFrameSource(d)
    header = source.header(2)
    assert header.N == 32 and header.metadata == {"beamline": "test"} and header.object_guess is None
    _frame_file(d, scan, 0, 2)
    _frame_file(d, scan, 3)
    pending = _frame_file(d, scan, 2, name=".frame_000002.x1y2.tmp.npz")  # being written: never read
    (d / "frame_000004.npz.part").write_bytes(b"half a file")  # nor this
    got = source.poll(100)
    assert got.start == 0 and len(got) == 2 and got.indices is None
    np.testing.assert_array_equal(got.amplitudes, scan["diffraction"][:2])
    np.testing.assert_array_equal(got.written_at, [1000.0, 1001.0])
    assert len(source.poll(100)) == 0  # frame 2 is missing while 3 is there: 3 waits
    os.replace(pending, d / "frame_000002.npz")  # the writer's rename
    got = source.poll(100)
    assert got.start == 2 and len(got) == 2
    np.testing.assert_array_equal(got.positions, np.stack([scan["xcoords"][2:4], scan["ycoords"][2:4]], axis=1))
    (d / "END").write_text(json.dumps({"frames": 6}))
    assert len(source.poll(100)) == 0 and not source.finished  # END counts 6: frames 4, 5 still to come
    _frame_file(d, scan, 4, 2)
    assert len(source.poll(100)) == 2 and source.finished
    source.close()


def test_directory_writer_gone_gives_up_a_missing_frame_and_a_restart_reads_each_once(scan, tmp_path):
    d = tmp_path / "acq"
    _header(d, scan)
    _frame_file(d, scan, 0)
    _frame_file(d, scan, 2)
    (d / "frame_000003.npz").write_bytes(b"not an npz: a writer that does not rename")
    _frame_file(d, scan, 4)
    source = DirectoryFrameSource(d)
    source.header(2)
    assert len(source.poll(100)) == 1 and len(source.poll(100)) == 0  # 1 missing, 3 unreadable: both wait
    source.writer_gone()
    got = source.poll(100)
    assert got.indices.tolist() == [2, 4] and not source.finished  # no END: the loop ends it as 'writer gone'
    np.testing.assert_array_equal(got.amplitudes, scan["diffraction"][[2, 4]])
    # a whole acquisition, read by two sources one after the other (a restart): every frame once, in order
    whole = acquire_directory(scan, tmp_path / "whole", 0, frames_per_file=5)
    for _ in range(2):
        source = DirectoryFrameSource(whole)
        source.header(2)
        chunks = []
        while not source.finished:
            chunks.append(source.poll(7))
            assert len(chunks) < 100
        assert [c.start for c in chunks] == list(range(0, M, 7)) and all(c.indices is None for c in chunks)
        np.testing.assert_array_equal(np.concatenate([c.amplitudes for c in chunks]), scan["diffraction"])
        assert len(source.poll(1000)) == 0
    with pytest.raises(UserError, match="already holds an acquisition"):
        acquire_directory(scan, whole, 0)


def test_directory_bad_layouts_are_one_line(scan, tmp_path):
    with pytest.raises(UserError, match=r"no header.npz \(or header.h5\) appeared \(the directory does not exist\) "
                                        "within 0.3 s"):
        DirectoryFrameSource(tmp_path / "never").header(0.3)
    d = tmp_path / "acq"
    d.mkdir()
    np.savez(d / "header.npz", probe=scan["probe"])
    with pytest.raises(UserError, match="header.npz has no probeGuess .*holds probe"):
        DirectoryFrameSource(d).header(1)
    _header(d, scan)
    np.savez(d / "frame_000000.npz", diffraction=scan["diffraction"][:1])
    source = DirectoryFrameSource(d)
    source.header(1)
    with pytest.raises(UserError, match="frame_000000.npz has no xcoords, ycoords"):
        source.poll(10)


# ------------------------------------------------------------------ the ZMQ source

@pytest.fixture()
def pusher():
    """A PUSH socket bound to a free loopback port, and its address."""
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    address = f"tcp://127.0.0.1:{_free_port()}"
    sock.bind(address)
    yield sock, address
    sock.close(linger=0)
    context.term()


@needs_zmq
def test_zmq_messages_out_of_order_and_frames_before_positions_wait(scan, pusher):
    sock, address = pusher
    source = ZmqFrameSource(address)
    d, x, y = scan["diffraction"], scan["xcoords"], scan["ycoords"]
    counts = np.round(d[:5] ** 2).astype(np.uint16)  # photon counts: the source takes their sqrt
    sock.send_multipart(image_message(1, counts[1], x[1], y[1]))  # before the header: kept until it comes
    sock.send_multipart(header_message(scan["probe"], {"beamline": "test"}, scan["object_guess"], name="scan 7"))
    header = source.header(5)
    assert header.N == 32 and header.name == "scan 7" and header.metadata == {"beamline": "test"}
    np.testing.assert_array_equal(header.object_guess, scan["object_guess"])
    sock.send_multipart(image_message(0, counts[0]))  # no position yet
    sock.send_multipart(image_message(3, counts[3], x[3], y[3]))
    sock.send_multipart(image_message(2, counts[2], x[2], y[2], written_at=1234.5))
    time.sleep(0.2)
    assert len(source.poll(100)) == 0  # frame 0 waits for its position, 1..3 for frame 0
    sock.send_multipart(positions_message(0, x[:1], y[:1]))
    sock.send_multipart(image_message(2, counts[2] + 1, x[2], y[2]))  # sent twice: the first copy counts
    sock.send_multipart(end_message(5))
    got = _drain(source, 4)
    assert [g.start for g in got] == [0] and len(got[0]) == 4 and not source.finished
    np.testing.assert_allclose(got[0].amplitudes, np.sqrt(counts[:4].astype(np.float32)), rtol=0, atol=0)
    np.testing.assert_array_equal(got[0].positions, np.stack([x[:4], y[:4]], axis=1))
    assert got[0].written_at[2] == 1234.5
    sock.send_multipart(image_message(4, counts[4], x[4], y[4]))
    assert len(_drain(source, 1)[0]) == 1 and source.finished  # series_end counted 5
    source.close()
    assert source._socket.closed and source._context.closed
    source.close()  # twice is fine


@needs_zmq
def test_zmq_writer_gone_gives_up_missing_frames_and_bad_messages_are_one_line(scan, pusher):
    sock, address = pusher
    source = ZmqFrameSource(address)
    d, x, y = scan["diffraction"], scan["xcoords"], scan["ycoords"]
    sock.send_multipart(header_message(scan["probe"]))
    source.header(5)
    for i in (0, 1, 3, 5):
        sock.send_multipart(image_message(i, d[i], x[i], y[i]))
    sock.send_multipart(image_message(6, d[6]))  # never gets a position
    assert sum(len(f) for f in _drain(source, 2)) == 2  # frames 0 and 1 (one poll or two: the wire decides)
    time.sleep(0.2)
    assert len(source.poll(100)) == 0  # 3 and 5 wait for the missing 2 and 4
    source.writer_gone()
    got = _drain(source, 2)
    indices = np.concatenate([f.indices for f in got])
    assert indices.tolist() == [3, 5] and not source.finished
    np.testing.assert_array_equal(np.concatenate([f.amplitudes for f in got]), d[[3, 5]])
    sock.send_multipart([b"not json"])
    with pytest.raises(UserError, match="first part is not JSON with an htype"):
        _drain(source, 1, 2)
    sock.send_multipart(image_message(7, d[7][:16, :16], x[7], y[7]))
    with pytest.raises(UserError, match=r"frame 7 has shape \[16, 16\]; the header's probe is 32x32"):
        _drain(source, 1, 2)
    sock.send_multipart([json.dumps({"htype": "image", "frame": 8, "shape": [32, 32], "type": "float32"}).encode()])
    with pytest.raises(UserError, match="a malformed 'image' message"):
        _drain(source, 1, 2)
    source.close()
    with pytest.raises(UserError, match="no header message within 0.2 s"):
        quiet = ZmqFrameSource(f"tcp://127.0.0.1:{_free_port()}")
        try:
            quiet.header(0.2)
        finally:
            quiet.close()


def test_without_pyzmq_one_line_says_how_to_install_it(scan, monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)  # `import zmq` raises ImportError
    with pytest.raises(UserError, match=r"^--watch tcp://127.0.0.1:5555: a ZMQ stream needs pyzmq, which is not "
                                        r"installed: pip install pyzmq"):
        open_source("tcp://127.0.0.1:5555")
    with pytest.raises(UserError, match="pip install pyzmq"):
        stream(scan, "tcp://127.0.0.1:5555", 0)


@needs_zmq
def test_open_source_picks_by_the_watch_argument(tmp_path):
    (tmp_path / "acq").mkdir()
    assert isinstance(open_source(tmp_path / "acq"), DirectoryFrameSource)
    assert isinstance(open_source(f"{tmp_path}/not_yet/"), DirectoryFrameSource)  # a directory still to come
    assert isinstance(open_source(tmp_path / "scan.h5"), H5FrameSource)
    source = open_source(f"tcp://127.0.0.1:{_free_port()}")
    assert isinstance(source, ZmqFrameSource)
    source.close()
    listening = open_source(f"tcp://*:{_free_port()}")  # binds: senders connect to it
    listening.close()
    with pytest.raises(UserError, match="not an HDF5 file .*, a directory \\(DIR/\\) or a ZMQ address"):
        open_source(tmp_path / "scan.npz")
    with pytest.raises(UserError, match="a ZMQ stream is tcp://host:port"):
        open_source("http://example.org/scan")
