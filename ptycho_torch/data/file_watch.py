"""Scan files that change under a running training: detected before they are read.

Diffraction is read lazily (HDF5 datasets, memory-mapped NPZ members) for the whole run. A file
truncated or rewritten meanwhile would give zero-filled patterns (HDF5) or kill the process with
SIGBUS (a memory map that lost its pages), and training would go on, or die, without a word.
`FileWatch` records (size, mtime) of every lazily read file when the dataset is built and compares
them before each read (an os.stat per batch: microseconds); a difference raises `DataFileChanged`,
one line naming the file, so the run stops with its last checkpoint kept and exits non-zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ptycho_torch.errors import UserError

Stamp = tuple[int, int] | None  # (size in bytes, mtime in ns); None = missing


class DataFileChanged(UserError):
    """A scan file changed (size or modification time) while training read it."""

    def __init__(self, message: str) -> None:
        # re-raised from a DataLoader worker, the message is "Caught ... Original Traceback ...": keep our line
        lines = [line for line in str(message).splitlines() if line.strip()]
        if len(lines) > 1 and lines[-1].startswith(f"{type(self).__name__}: "):
            message = lines[-1][len(type(self).__name__) + 2:]
        super().__init__(message)


def stamp(path: Path) -> Stamp:
    """(size, mtime_ns) of `path`, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def lazy_files(scan: Any) -> list[Path]:
    """The files `scan` (a ScanData, ScanFiles or ScanCorpus) still reads its diffraction from."""
    for attr in ("scans", "parts"):  # a corpus of scans, a scan in several files
        if isinstance(getattr(scan, attr, None), list):
            return [p for part in getattr(scan, attr) for p in lazy_files(part)]
    path = getattr(scan, "path", None)
    lazy = getattr(scan, "diffraction", None) is None and getattr(scan, "lazy_key", None) is not None
    return [Path(path)] if lazy and path is not None else []


class FileWatch:
    """(size, mtime) of a scan's lazily read files, recorded now; `check()` before every read."""

    def __init__(self, scan: Any) -> None:
        self.stamps: dict[Path, Stamp] = {p: stamp(p) for p in lazy_files(scan)}

    def check(self) -> None:
        """Raise DataFileChanged (one line) when a watched file changed since it was recorded."""
        for path, then in self.stamps.items():
            now = stamp(path)
            if now != then:
                raise DataFileChanged(f"{path}: {describe_change(then, now)} while training read it; training "
                                      "stopped before reading it again (the last checkpoint is kept): restore the "
                                      "file and resume the run (--resume)")

    def explain(self, error: BaseException) -> None:
        """After a failed read: raise DataFileChanged when a watched file changed (the likely cause)."""
        try:
            self.check()
        except DataFileChanged as changed:
            raise changed from error


def describe_change(then: Stamp, now: Stamp) -> str:
    if now is None:
        return "was deleted or moved"
    if then is None:
        return "appeared"
    if now[0] != then[0]:
        return f"changed size from {then[0]} to {now[0]} bytes" + (" (truncated)" if now[0] < then[0] else "")
    return "was rewritten (same size, new modification time)"
