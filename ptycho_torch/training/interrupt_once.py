"""Ctrl-C at the command line: the first SIGINT stops the program, any further one is ignored.

Pressing Ctrl-C twice is what users do. Python raises KeyboardInterrupt for each press, so the second
one lands wherever the first one's handling happens to be (an import of torch, an `except` clause, a
`finally`) and prints a traceback instead of the one-line message. `first_sigint_only()` installs,
for the duration of a command, a SIGINT handler that raises KeyboardInterrupt once and then ignores
SIGINT; training's own handler (ptycho_torch.training.interrupt) marks the interrupt as seen with
`note_interrupt()`, so a later press after it restored this handler is ignored too. Kept free of
heavy imports: it must be in place before torch is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

_seen = threading.Event()


def note_interrupt() -> None:
    """Record that an interrupt was received (and is being acted on): later SIGINTs are ignored."""
    _seen.set()


def _first_only(signum: int, frame: FrameType | None) -> None:
    if not _seen.is_set():
        _seen.set()
        raise KeyboardInterrupt


def forget_unhandled_interrupt() -> None:
    """Make a handled Ctrl-C end the process with its exit status, not by SIGINT.

    CPython (3.11, 3.12) marks a KeyboardInterrupt that left code run by exec()/eval() of a *string*
    as unhandled, even when it is caught further up; dataclasses and namedtuple build their methods
    that way, so a Ctrl-C during an import often passes through one. Under `python -m`, the process
    then kills itself with SIGINT after our one-line message instead of exiting 130 (seen in CI as
    returncode -2). Every exec of a string clears that mark first, so one harmless exec clears it.
    """
    exec("pass")  # noqa: S102 - a constant string, run only for its side effect described above


def interrupted() -> bool:
    """Whether a SIGINT (or training's SIGTERM/SIGINT) arrived since first_sigint_only started."""
    return _seen.is_set()


@contextlib.contextmanager
def first_sigint_only() -> Iterator[None]:
    """Within: the first SIGINT raises KeyboardInterrupt, later ones are ignored. On leaving, the
    previous handler is restored, unless an interrupt arrived: the program is then exiting, and SIGINT
    stays ignored so that a late press cannot kill it mid-message (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    _seen.clear()
    signal.signal(signal.SIGINT, _first_only)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if _seen.is_set() else previous)
