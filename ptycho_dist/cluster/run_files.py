"""Where Ray runs live and their files, in a local directory or under an object-store URI (pyarrow).

`storage_path` / `run_location` are the one way a run's location is spelled (`storage/name`);

`write_run_file` / `read_run_file` hold the small text files next to a run (config.yaml, ray.yaml),
`upload` copies a locally staged run to a URI, and `registered_checkpoint` / `newest_checkpoint_name`
read which `checkpoint_<time>/checkpoint.ckpt` Ray registered (what `--resume` continues from) and
which is newest on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_STORAGE = "ray_runs"

CONFIG_FILE = "config.yaml"  # the resolved RunConfig of a run (as ptycho-torch writes it)
RAY_FILE = "ray.yaml"  # the `ray:` section of a run, next to config.yaml
CHECKPOINT_FILE = "checkpoint.ckpt"  # inside each Ray checkpoint directory (RayTrainReportCallback)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray's list of registered checkpoints


def is_uri(path: str) -> bool:
    """True for 's3://bucket/x', 'gs://...', 'file:///...' (anything with a scheme)."""
    return "://" in path


def absolute_location(raw: str) -> str:
    """A local path made absolute, or a URI unchanged."""
    return raw if is_uri(raw) else str(Path(raw).expanduser().resolve())


def storage_path(ray_config: Any) -> str:
    """`ray.storage_path` (default ./ray_runs) as an absolute local path, or the URI unchanged."""
    return absolute_location(ray_config.storage_path or DEFAULT_STORAGE)


def run_location(storage: str, name: str) -> str:
    """The directory (path or URI) of run `name` under `storage`."""
    return f"{storage.rstrip('/')}/{name}"


def _fs(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(location)


def write_run_file(location: str, name: str, text: str) -> None:
    """Write `location/name` (local directory or URI), creating the directory; atomically on local
    paths (temp file + rename; object stores publish whole objects anyway)."""
    if not is_uri(location):
        from ptycho_torch.safe_output import atomic_write_text

        atomic_write_text(Path(location, name), text)
        return
    fs, path = _fs(location)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as fh:
        fh.write(text.encode())


def read_run_file(location: str, name: str) -> str | None:
    """The text of `location/name`, or None when it does not exist."""
    if not is_uri(location):
        path = Path(location, name)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    if fs.get_file_info(f"{path}/{name}").type != pafs.FileType.File:
        return None
    with fs.open_input_stream(f"{path}/{name}") as fh:
        return fh.read().decode()


def upload(local_dir: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def registered_checkpoint(location: str) -> tuple[str, int] | None:
    """(directory name, epoch) of the latest checkpoint Ray registered for a local run, i.e. the one
    `--resume` continues from; None when there is none (or for URIs)."""
    import json

    if is_uri(location):
        return None
    try:
        snapshot = json.loads(Path(location, SNAPSHOT_FILE).read_text())
        latest = snapshot["latest_checkpoint_result"]
        return str(latest["checkpoint_dir_name"]), int(latest["metrics"].get("epoch", -1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def newest_checkpoint_name(location: str) -> str | None:
    """The newest `checkpoint_<time>` directory holding a checkpoint file (local runs; names sort by time)."""
    if is_uri(location) or not Path(location).is_dir():
        return None
    found = sorted(p.parent.name for p in Path(location).glob("checkpoint_*/" + CHECKPOINT_FILE))
    return found[-1] if found else None


def clean_unregistered_checkpoints(location: str) -> list[str]:
    """Remove the `checkpoint_*` directories of a local run that Ray's snapshot does not list (each
    SIGTERM of a Ray run can leave the one being written when the driver stopped: Ray never registers,
    uses or deletes it); return their names. Nothing is removed without a readable snapshot, or for URIs."""
    import json
    import shutil

    if is_uri(location) or not Path(location).is_dir():
        return []
    try:
        snapshot = json.loads(Path(location, SNAPSHOT_FILE).read_text())
        results = [*snapshot.get("checkpoint_results", []), snapshot.get("latest_checkpoint_result") or {}]
        registered = {str(r["checkpoint_dir_name"]) for r in results if r.get("checkpoint_dir_name")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    if not registered:
        return []
    stale = sorted(p.name for p in Path(location).glob("checkpoint_*") if p.is_dir() and p.name not in registered)
    for name in stale:
        shutil.rmtree(Path(location, name), ignore_errors=True)
    return stale
