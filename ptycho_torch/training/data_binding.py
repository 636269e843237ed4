"""A run is bound to its data: absolute scan paths in the resolved config, and `data_files.json` in the run
directory, the scan files it trained on (path, size, mtime, sha256) and every deliberate switch.

`absolute_data_paths` makes data.path (and data.probe / data.mask) absolute before config.yaml is
written, so `--resume` from another working directory reads the same files. `bind_run_to_data` records
the files when a run starts; `check_resume_data` compares them before a resume trains anything: same
size and mtime is taken as the same file (a fast pre-check, no hashing), otherwise the sha256 decides,
and a different scan is refused in one line unless `allow_other_data`, which records the switch
(manifest.json then lists every switch under `data_changes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ptycho_torch.config import ConfigError, RunConfig, apply_overrides
from ptycho_torch.safe_output import atomic_write_text

log = logging.getLogger("ptycho_torch")

BINDING_FILE = "data_files.json"
ALLOW_FLAG = "--allow-other-data"


FULL_HASH_LIMIT = 1 << 30  # files up to 1 GiB are hashed whole; larger ones head + tail + size


def file_checksum(path: Path) -> dict[str, Any]:
    """sha256 of a data file (head/tail/size for files over 1 GiB, marked as such)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
            kind = "sha256"
        else:
            digest.update(fh.read(1 << 24))
            fh.seek(size - (1 << 24))
            digest.update(fh.read())
            digest.update(str(size).encode())
            kind = "sha256-head-tail-size"
    return {"path": str(path.resolve()), "bytes": size, kind: digest.hexdigest()}


def _absolute(item: str) -> str:
    from ptycho_torch.data.beamline import SEPARATOR, split_source

    head, inner = split_source(str(item))
    head = os.path.abspath(os.path.expanduser(head))
    return head if inner is None else f"{head}{SEPARATOR}{inner}"


def absolute_data_paths(config: RunConfig) -> RunConfig:
    """`config` with data.path (every item, globs kept as globs), data.probe and data.mask absolute."""
    data = config.data
    changes: dict[str, Any] = {}
    if data.path:
        changes["data.path"] = ([_absolute(p) for p in data.path] if isinstance(data.path, list)
                                else _absolute(data.path))
    for name in ("probe", "mask"):
        if getattr(data, name):
            changes[f"data.{name}"] = _absolute(getattr(data, name))
    return apply_overrides(config, changes) if changes else config


def data_files(config: RunConfig) -> list[Path]:
    """The scan files data.path resolves to (absolute, in order; FileNotFoundError naming a missing one)."""
    from ptycho_torch.data.scan_files import resolve_scan_paths

    return [p.resolve() for p in resolve_scan_paths(config.data.path)] if config.data.path else []


def file_record(path: Path, with_checksum: bool = True) -> dict[str, Any]:
    """{path, bytes, mtime_ns[, sha256 | sha256-head-tail-size]} of one data file."""

    stat = path.stat()
    record = file_checksum(path) if with_checksum else {"path": str(path), "bytes": stat.st_size}
    return {**record, "mtime_ns": stat.st_mtime_ns}


def _digest(record: dict[str, Any]) -> str | None:
    return record.get("sha256") or record.get("sha256-head-tail-size")


def read_binding(run_dir: Path) -> dict[str, Any] | None:
    """The run's data_files.json; for runs older than it, manifest.json's single `data` entry; else None."""
    for name, key in ((BINDING_FILE, None), ("manifest.json", "data")):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if key is None and isinstance(content, dict) and isinstance(content.get("files"), list):
            return content
        if key is not None and isinstance(content, dict) and isinstance(content.get(key), dict):
            return {"files": [content[key]], "changes": [], "from_manifest": True}
    return None


def bind_run_to_data(run_dir: Path, config: RunConfig) -> dict[str, Any]:
    """Write run_dir/data_files.json for a new run: the files data.path resolves to, with their checksums."""
    binding = {"files": [file_record(p) for p in data_files(config)], "changes": []}
    atomic_write_text(Path(run_dir) / BINDING_FILE, json.dumps(binding, indent=2))
    return binding


def _short(records: list[dict[str, Any]]) -> str:
    first = records[0]
    digest = _digest(first) or "?"
    more = f" and {len(records) - 1} more file(s)" if len(records) > 1 else ""
    return f"{first['path']} ({first['bytes']} bytes, sha256 {digest[:12]}){more}"


def check_resume_data(run_dir: Path, config: RunConfig, allow_other_data: bool = False) -> None:
    """Refuse (ConfigError, one line) to resume `run_dir` on scan files other than those it trained on.

    Same paths, sizes and mtimes pass without hashing. Otherwise the checksums decide: the same bytes
    (e.g. the scan was copied or moved) pass and the record is updated; different ones are refused
    unless `allow_other_data`, which appends the switch to data_files.json's `changes`. A run with no record
    (nothing to compare) passes.
    """
    run_dir = Path(run_dir)
    recorded = read_binding(run_dir)
    if recorded is None or not recorded["files"]:
        return
    current_paths = data_files(config)
    old = recorded["files"]
    if recorded.get("from_manifest") and len(current_paths) != 1:
        return  # an older run's manifest names one file only: nothing to compare several files with
    quick = [file_record(p, with_checksum=False) for p in current_paths]
    if len(quick) == len(old) and all(
            q["path"] == o.get("path") and q["bytes"] == o.get("bytes") and q["mtime_ns"] == o.get("mtime_ns")
            for q, o in zip(quick, old)):
        return
    current = [file_record(p) for p in current_paths]
    same = [_digest(c) for c in current] == [_digest(o) for o in old]
    if not same and not allow_other_data:
        rewritten = [c["path"] for c in current] == [o.get("path") for o in old]
        fix = ("restore the file the run trained on" if rewritten
               else f"resume with the run's own scan (--data {old[0]['path']})")
        raise ConfigError(
            f"--resume {run_dir}: the run trained on {_short(old)} but data.path now gives {_short(current)}"
            f"{' (the same path, rewritten since)' if rewritten else ''}; {fix}, or pass {ALLOW_FLAG} to continue "
            "on this one deliberately (recorded in data_files.json and manifest.json)")
    changes = list(recorded.get("changes", []))
    if not same:
        changes.append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "from": old, "to": current, "reason": ALLOW_FLAG})
        log.warning("resuming %s on other data (%s): %s instead of %s", run_dir, ALLOW_FLAG, _short(current),
                    _short(old))
    atomic_write_text(run_dir / BINDING_FILE, json.dumps({"files": current, "changes": changes}, indent=2))
    # (a run recorded only in an older manifest.json gets its data_files.json here)
