"""Opening .npz files with one clear line for every way they break.

`np.load` answers an empty file with EOFError, a text file with advice to unpickle it, and a damaged
member with BadZipFile at the moment the array is read. `open_npz` and `read_member` turn each of
those into a `ValueError` naming the file (and member) and what to do; nothing is ever unpickled.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
REWRITE = "re-create it (e.g. ptycho-torch simulate, or numpy.savez of plain arrays) or copy it again"


def npz_problem(path: str | Path) -> str | None:
    """Why the file at `path` cannot be an .npz archive (empty, not a zip), or None when it may be."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return f"is empty (0 bytes): an interrupted copy or write? {REWRITE}"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(NPY_MAGIC):
        return "is a single .npy array, not an .npz archive of named arrays; save it with numpy.savez"
    if not head.startswith(ZIP_MAGIC) or not zipfile.is_zipfile(path):
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
        return f"is not an .npz (zip) archive (it starts with {kind} {head[:8]!r}); {REWRITE}"
    return None


def open_npz(path: str | Path) -> Any:
    """`np.load(path, allow_pickle=False)` of an .npz, or ValueError('<path>: <what is wrong>')."""
    problem = npz_problem(path)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: damaged .npz archive ({e}); {REWRITE}") from None


def read_member(handle: Any, name: str, path: str | Path) -> np.ndarray:
    """`handle[name]` of an open NpzFile; a damaged member (bad CRC, truncated) is a ValueError."""
    try:
        return handle[name]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise UserError(f"{path}: array {name!r} is damaged ({e}); {REWRITE}") from None


def npz_memmap(path: str | Path, member: str) -> np.memmap | None:
    """The array `member` of an .npz as a read-only memory map, or None when it cannot be mapped
    (a compressed or Fortran-ordered member: then read it whole with `np.load`).

    np.load maps plain .npy files (`mmap_mode="r"`) but never the members of an .npz. A member that
    np.savez stored uncompressed is a plain .npy file at a fixed offset of the archive; the offset
    is the end of the member's local zip header (30 bytes + name + extra field, which may differ
    from the central directory's) plus the length of its .npy header, which numpy itself parses.
    """
    import struct

    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != ZIP_MAGIC:
            raise UserError(f"{path}: array {member!r} is damaged (bad zip entry); {REWRITE}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran or dtype.hasobject:
        return None
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
    except ValueError as e:  # the file ends before the array does
        raise UserError(f"{path}: array {member!r} is damaged ({e}); {REWRITE}") from None


def check_member_crc(path: str | Path, member: str) -> None:
    """Read `member` of an .npz through zipfile, in 16 MiB chunks, so that its CRC-32 is checked
    (a memory map never checks it); zipfile.BadZipFile on a damaged member."""
    with zipfile.ZipFile(path) as zf, zf.open(member + ".npy") as fh:
        while fh.read(1 << 24):
            pass
