"""A ZMQ stream of frames (`--watch tcp://host:port`, `ipc://path`), as a detector bridge sends them.

Needs pyzmq (`pip install pyzmq`), imported only when a stream is watched.

Sockets: the sender PUSHes, the source PULLs (one reader gets every message; nothing is lost while the reader
is slow, and the sender's first message waits until a reader connects). `--watch tcp://host:port` connects to a
sender that binds, as detector streams (Eiger, the MAX IV streaming-receiver) do; `--watch tcp://*:port` (or
0.0.0.0) binds, and senders connect; `ipc://path` connects.

Messages are multipart; part 0 is JSON with an "htype" (the header / image / series_end pattern of detector
streams, whose "frame", "shape" and "type" fields it keeps):

    header      {"htype": "header", "probe": {"shape": [P, N, N] or [N, N], "type": "complex64"},
                 "object": {"shape": [H, W], "type": "complex64"} (optional: a ground truth),
                 "metadata": {...} (optional), "name": "..." (optional)}
                part 1: the probe's bytes (C order, the byte order of "type"; sqrt-photon units as the data
                contract); part 2: the object's bytes when "object" is given
    image       {"htype": "image", "frame": i, "shape": [N, N], "type": "uint32",
                 "x": x, "y": y (optional: the position, object pixels), "time": Unix seconds (optional),
                 "compression": "none" (optional; nothing else is read)}
                part 1: the frame's bytes; an integer "type" is photon counts (sqrt taken), a float one amplitudes
    positions   {"htype": "positions", "frame": i, "x": [x_i, x_i+1, ...], "y": [...]}
                positions of frames i, i + 1, ... (for a bridge that learns them apart from the frames)
    series_end  {"htype": "series_end", "frames": M (optional: the scan's frame count)}

"type" is a NumPy dtype name ("uint16", "<u4", "float32", "complex64"). Frames may arrive in any order and
before their positions: each waits until every frame before it is there with its position, and is handed out
once (a frame index sent twice is kept once). Messages before the header are kept until it comes; a second
header and unknown htypes are ignored (one warning). When the writer is gone (no frame for the loop's idle
time), frames that never arrived are given up and the later ones handed out. A stream is not stored: a
restarted `live` gets what the sender sends from then on (a bridge that also writes the scan to a file or a
directory lets a restart read it from there).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Sequence

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.live.frames import FrameBuffer, Frames, SourceHeader, amplitudes_of

log = logging.getLogger("ptycho_torch")

HTYPES = ("header", "image", "positions", "series_end")


def import_zmq(address: str) -> Any:
    """pyzmq, or one line saying how to install it."""
    try:
        import zmq
    except ImportError:
        raise UserError(f"--watch {address}: a ZMQ stream needs pyzmq, which is not installed: pip install pyzmq "
                        "(or pip install 'ptycho-dist[live]')") from None
    return zmq


def listens(address: str) -> bool:
    """Whether the address is one to bind (tcp://*:port, tcp://0.0.0.0:port) rather than to connect to."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return address.startswith("tcp://") and host in ("*", "0.0.0.0")


# ------------------------------------------------------------------ the messages (what a sender sends)

def _array_meta(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "type": a.dtype.str}


def header_message(probe: np.ndarray, metadata: dict[str, Any] | None = None,
                   object_guess: np.ndarray | None = None, name: str = "") -> list[bytes]:
    """The header: probe (P, N, N) or (N, N) complex, optional metadata and ground truth (H, W) complex."""
    probe = np.ascontiguousarray(probe, np.complex64)
    meta: dict[str, Any] = {"htype": "header", "probe": _array_meta(probe), "metadata": metadata or {}, "name": name}
    parts = [probe.tobytes()]
    if object_guess is not None:
        obj = np.ascontiguousarray(object_guess, np.complex64)
        meta["object"] = _array_meta(obj)
        parts.append(obj.tobytes())
    return [json.dumps(meta).encode(), *parts]


def image_message(index: int, frame: np.ndarray, x: float | None = None, y: float | None = None,
                  written_at: float | None = None) -> list[bytes]:
    """Frame `index`: (N, N) counts (integer) or amplitudes (float), with its position (x, y) object pixels
    when known, and when it was written (Unix seconds)."""
    frame = np.ascontiguousarray(frame)
    meta: dict[str, Any] = {"htype": "image", "frame": int(index), **_array_meta(frame)}
    if x is not None and y is not None:
        meta["x"], meta["y"] = float(x), float(y)
    if written_at is not None:
        meta["time"] = float(written_at)
    return [json.dumps(meta).encode(), frame.tobytes()]


def positions_message(start: int, x: Sequence[float], y: Sequence[float]) -> list[bytes]:
    """Positions (x, y) object pixels of frames start, start + 1, ..."""
    return [json.dumps({"htype": "positions", "frame": int(start), "x": [float(v) for v in x],
                        "y": [float(v) for v in y]}).encode()]


def end_message(frames: int | None = None) -> list[bytes]:
    """The end mark, with the scan's frame count."""
    return [json.dumps({"htype": "series_end", **({} if frames is None else {"frames": int(frames)})}).encode()]


# ------------------------------------------------------------------ the source

class ZmqFrameSource:
    """`--watch tcp://host:port` / `ipc://path`: the messages of this module's protocol from a PULL socket."""

    def __init__(self, address: str, receive_hwm: int = 0) -> None:
        """`receive_hwm`: messages queued before the sender waits (0 = no limit: a detector is never held up)."""
        zmq = import_zmq(address)
        self.address = address
        self._zmq = zmq
        self._buffer: FrameBuffer | None = None
        self._header: SourceHeader | None = None
        self._early: list[list[bytes]] = []  # messages that came before the header
        self._ignored: set[str] = set()
        self._gone = False
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, receive_hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            if listens(address):
                self._socket.bind(address)
            else:
                self._socket.connect(address)
        except zmq.ZMQError as e:
            self.close()
            raise UserError(f"--watch {address}: cannot {'listen on' if listens(address) else 'connect to'} it "
                            f"({e}); give tcp://host:port, tcp://*:port (listen) or ipc://path") from None

    def header(self, timeout_s: float = 60.0) -> SourceHeader:
        deadline = time.monotonic() + timeout_s
        while self._header is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(f"--watch {self.address}: no header message within {timeout_s:g} s; start the sender "
                                "(a detector bridge speaking the protocol in docs/live.md), or check the address")
            if self._socket.poll(int(min(left, 0.5) * 1000)):
                self._dispatch(self._socket.recv_multipart())
        return self._header

    @property
    def finished(self) -> bool:
        """series_end arrived and every frame known (and counted by it) has been handed out."""
        return self._buffer is not None and self._buffer.finished

    def poll(self, max_frames: int = 256) -> Frames:
        if self._buffer is None:
            raise RuntimeError("header() first")
        for _ in range(2 * min(max_frames, 1 << 20) + 64):  # what has arrived (bounded: frames out soon)
            try:
                parts = self._socket.recv_multipart(flags=self._zmq.NOBLOCK)
            except self._zmq.Again:
                break
            self._dispatch(parts)
        return self._buffer.take(max_frames, skip_gaps=self._gone)

    def writer_gone(self) -> None:
        """The sender went quiet for good: frames that never arrived are given up, the later ones handed out."""
        self._gone = True

    def close(self) -> None:
        """Close the socket and end the context (unsent and unread messages are dropped)."""
        if not self._socket.closed:
            self._socket.close(linger=0)
        if not self._context.closed:
            self._context.term()

    # ------------------------------------------------------------------ messages in
    def _dispatch(self, parts: list[bytes]) -> None:
        try:
            meta = json.loads(parts[0])
            htype = str(meta["htype"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UserError(f"--watch {self.address}: a message whose first part is not JSON with an htype "
                            f"({bytes(parts[0][:60])!r}); the protocol is in docs/live.md") from None
        if htype not in HTYPES:
            if htype not in self._ignored:
                log.warning("live: %s: messages of htype %r are not part of the protocol; ignored", self.address,
                            htype)
                self._ignored.add(htype)
            return
        if self._header is None and htype != "header":
            self._early.append(parts)
            return
        try:
            if htype == "header":
                self._on_header(meta, parts)
            elif htype == "image":
                self._on_image(meta, parts)
            elif htype == "positions":
                start = int(meta["frame"])
                xs, ys = np.atleast_1d(np.asarray(meta["x"], np.float64)), np.atleast_1d(np.asarray(meta["y"], np.float64))
                if xs.shape != ys.shape or xs.ndim != 1:
                    raise ValueError(f"x {xs.shape} and y {ys.shape} differ")
                for j, (x, y) in enumerate(zip(xs, ys)):
                    self._buffer.add_position(start + j, x, y)
            else:
                frames = meta.get("frames")
                self._buffer.end(None if frames is None else int(frames))
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"--watch {self.address}: a malformed {htype!r} message ({type(e).__name__}: {e}); the "
                            "protocol is in docs/live.md") from None

    def _array(self, spec: dict[str, Any], payload: bytes, what: str) -> np.ndarray:
        dtype, shape = np.dtype(spec["type"]), tuple(int(n) for n in spec["shape"])
        if len(payload) != dtype.itemsize * int(np.prod(shape)):
            raise UserError(f"--watch {self.address}: {what} has {len(payload)} bytes; shape {list(shape)} of "
                            f"{dtype} needs {dtype.itemsize * int(np.prod(shape))}")
        return np.frombuffer(payload, dtype).reshape(shape)

    def _on_header(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        if self._header is not None:
            log.warning("live: %s: a second header arrived; ignored (one live run follows one scan)", self.address)
            return
        probe = self._array(meta["probe"], parts[1], "the header's probe").astype(np.complex64)
        probe = probe[None] if probe.ndim == 2 else probe
        if probe.ndim != 3 or probe.shape[-1] != probe.shape[-2]:
            raise UserError(f"--watch {self.address}: the header's probe has shape {list(probe.shape)}; expected "
                            "[N, N] or [modes, N, N]")
        truth = None
        if meta.get("object") is not None:
            truth = self._array(meta["object"], parts[2], "the header's object").astype(np.complex64)
        N = int(probe.shape[-1])
        metadata = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
        self._header = SourceHeader(probe, N, metadata, truth, str(meta.get("name") or self.address))
        self._buffer = FrameBuffer(N, self.address)
        early, self._early = self._early, []
        for message in early:
            self._dispatch(message)

    def _on_image(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        index = int(meta["frame"])
        if str(meta.get("compression", "none")).lower() not in ("none", ""):
            raise UserError(f"--watch {self.address}: frame {index} is compressed ({meta['compression']}); send "
                            "frames uncompressed (compression 'none')")
        frame = self._array(meta, parts[1], f"frame {index}")
        N = self._buffer.N
        if frame.shape != (N, N):
            raise UserError(f"--watch {self.address}: frame {index} has shape {list(frame.shape)}; the header's probe "
                            f"is {N}x{N}")
        self._buffer.add_frame(index, amplitudes_of(frame), float(meta.get("time", time.time())))
        if meta.get("x") is not None and meta.get("y") is not None:
            self._buffer.add_position(index, float(meta["x"]), float(meta["y"]))
