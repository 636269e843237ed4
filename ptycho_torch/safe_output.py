"""Where outputs go: atomic file writes, writability checks before compute, and run-directory claims.

Every file the project writes goes through `atomic_path` (write a hidden temporary file in the same
directory, then `os.replace` it over the target), so a crash, a full disk or a SIGKILL leaves either
the old file or the new one, never half of one. `check_output_dir` is called before any compute: an
output directory that is a regular file, read-only, or on a full disk fails in a second with one
line, not after an hour of reconstruction. `claim_run_dir` keeps trained runs from being overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import os
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ptycho_torch.errors import ConfigError

MIN_FREE_BYTES = 16 << 20  # an output directory needs at least this much free space (16 MiB)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so matplotlib/numpy infer the format);
    on success it replaces `path` atomically, on any error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.filename is None or str(e.filename) == str(tmp):  # name the file the user knows, not the temp one
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _nearest_existing(path: Path) -> Path:
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def check_output_dir(path: str | Path, flag: str, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check that `path` can become (or already is) a writable output directory, creating nothing.

    Raises ConfigError naming `flag` when `path` is a regular file, when its nearest existing ancestor
    is not a directory or cannot be written (probed by creating and removing a file, which also
    catches read-only mounts where permission bits say yes), or when that filesystem has less than
    `min_free_bytes` free.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is an existing file, not a directory; give a directory path "
                          "(it is created if missing)")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise ConfigError(f"{flag} {path}: {base} is a file, so the directory cannot be created; "
                          "choose another path")
    probe = base / f".ptycho-write-check-{uuid.uuid4().hex[:12]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise ConfigError(f"{flag} {path}: cannot write in {base} ({reason}); choose a writable "
                          "directory") from None
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        raise ConfigError(f"{flag} {path}: only {free / 2**20:.1f} MiB free on the disk of {base} "
                          f"(need at least {min_free_bytes / 2**20:.0f} MiB); free space or choose "
                          "another directory")
    return path


def holds_files(path: Path) -> bool:
    """True when `path` is a directory with at least one entry."""
    return path.is_dir() and any(path.iterdir())


def aside_name(path: Path, now: datetime | None = None) -> Path:
    """`RUN.replaced-YYYYmmdd-HHMMSS` next to RUN (with -2, -3 ... when taken)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.replaced-{stamp}")
    k = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.replaced-{stamp}-{k}")
        k += 1
    return candidate


def refuse_existing_run(run_dir: Path, resume_hint: str, overwrite_hint: str = "--overwrite") -> None:
    """Raise the one-line refusal for training into a directory that already holds files."""
    raise ConfigError(f"--out {run_dir}: already holds a run (or other files); continue it with "
                      f"{resume_hint}, or pass {overwrite_hint} to move it aside (to {run_dir.name}.replaced-"
                      "<time>, nothing is deleted), or choose another --out")


CLAIM_FILE = ".ptycho-claim.json"  # created exclusively by the one process that claims a run directory


def claim_run_dir(run_dir: str | Path, *, overwrite: bool = False, launch_id: str | None = None) -> Path | None:
    """Make `run_dir` a fresh run directory owned by this process; return where an existing one was
    moved (or None).

    An existing non-empty directory is refused unless `overwrite`, which renames it aside (never
    deletes it). A missing or empty directory is fine. The claim is atomic: the directory is created
    with a plain mkdir and `CLAIM_FILE` (holding `launch_id`, so the other processes of the same
    launch can recognise it: `await_claim`) with O_EXCL, so of two runs started at once exactly one
    wins and the other gets the one-line refusal. Call it only after the inputs were validated.
    """
    run_dir = Path(run_dir)
    check_output_dir(run_dir, "--out")
    moved = None
    if holds_files(run_dir):
        if not overwrite:
            refuse_existing_run(run_dir, f"--resume {run_dir}")
        moved = aside_name(run_dir)
        os.replace(run_dir, moved)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # an existing empty directory may be claimed
        run_dir.mkdir()
    try:
        fd = os.open(run_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        refuse_existing_run(run_dir, f"--resume {run_dir}")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({"launch_id": launch_id, "pid": os.getpid(), "time": time.time()}))
    return moved


LOCK_FILE = ".ptycho-run.lock"  # held (flock) by the one process training a run directory, for the whole run


class RunLock:
    """An exclusive advisory lock (fcntl.flock) on `run_dir/LOCK_FILE`, taken by `hold_run_lock`. The
    kernel drops it when the process ends in any way (SIGKILL, OOM), so it never goes stale."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before the unlock: a newcomer then locks a new file, never this one
        os.close(self._fd)  # closing drops the flock
        self._fd = -1


def hold_run_lock(run_dir: str | Path, flag: str) -> RunLock:
    """Lock `run_dir` for the process that trains it (a fresh run after its claim, or a resume), so a
    second `--resume` of a run that is still training (or a resume started twice) is refused in one
    line instead of two processes writing the same checkpoints. `flag` names the option in the error."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(fd, 32, 0).decode().split()[0])})"
        os.close(fd)
        raise ConfigError(f"{flag} {run_dir}: another process is training this run now{holder}; wait for it to end "
                          "(or stop it: it saves a resumable checkpoint on SIGTERM), then resume") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)


def await_claim(run_dir: str | Path, launch_id: str | None, rank: int, timeout_s: float = 120.0) -> None:
    """In a non-zero rank of a multi-process launch: wait until rank 0 of the same launch (`launch_id`)
    has claimed `run_dir`; one ConfigError line when it does not within `timeout_s` (e.g. a RANK
    variable left over in the shell of a single-process run: such a process may not write into a
    directory nobody of its launch claimed)."""
    path = Path(run_dir) / CLAIM_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if launch_id is not None and json.loads(path.read_text()).get("launch_id") == launch_id:
                return
        if time.monotonic() >= deadline:
            raise ConfigError(f"--out {run_dir}: this process is rank {rank} of a multi-process launch (RANK / "
                              "LOCAL_RANK / SLURM_PROCID and WORLD_SIZE are set), but rank 0 of the same launch did not "
                              f"claim the directory within {timeout_s:g} s; unset those variables for a "
                              "single-process run, or start every rank of the launch")
        time.sleep(0.2)


@contextlib.contextmanager
def replaced_dir(out_dir: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Write a whole output directory or nothing: yield `out_dir`, fresh and empty, to write into.

    An existing `out_dir` with files is first renamed to a hidden `.NAME.old-<id>` next to it; when
    the body succeeds, that old directory is deleted, and when it fails (a full disk, an error, Ctrl-C)
    the partial new directory is removed and the old one renamed back, untouched (a directory that did
    not exist is removed again): the directory holds the old outputs or the new ones, never a mix. (A SIGKILL in between leaves the old outputs in
    `.NAME.old-<id>`.) A non-empty directory without `object.npz` is not a reconstruction and is
    refused in one line (its files are never replaced or deleted).
    """
    out_dir = Path(out_dir)
    old, existed = None, out_dir.exists()
    if holds_files(out_dir):
        if not (out_dir / "object.npz").is_file():
            raise ConfigError(f"{flag} {out_dir}: holds files that are not a reconstruction; choose an empty or new "
                              "directory (nothing in it was changed)")
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out_dir, old)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        yield out_dir
    except BaseException:
        if old is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(old, out_dir)
        elif not existed:  # nothing was there: nothing is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


F = TypeVar("F", bound=Callable[..., Any])


def writes_whole_dir(parameter: str) -> Callable[[F], F]:
    """Decorate a function that writes an output directory (its argument `parameter`, None = writes
    nothing): the whole call runs inside `replaced_dir`, so the directory ends up with the old
    outputs or the new ones, never a mix, and a folder that is not a reconstruction is refused before
    any compute."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out_dir = signature.bind_partial(*args, **kwargs).arguments.get(parameter)
            if out_dir is None:
                return fn(*args, **kwargs)
            with replaced_dir(out_dir):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
