"""manifest.json of a run: versions, seed, hardware, data checksum, git revision, extras."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ptycho_torch.config import RunConfig
from ptycho_torch.model.bundle import versions
from ptycho_torch.safe_output import atomic_write_text
from ptycho_torch.training.data_binding import BINDING_FILE, file_checksum, read_binding


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_manifest(run_dir: Path, config: RunConfig, scan: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write run_dir/manifest.json; `data_files` and `data_changes` come from the run's data_files.json
    (training.data_binding) when it has one."""

    data_path = getattr(scan, "path", None)
    binding = read_binding(run_dir) if (Path(run_dir) / BINDING_FILE).is_file() else None
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "seed": config.training.seed,
        "hardware": hardware(),
        "data": file_checksum(Path(data_path)) if data_path and Path(data_path).is_file() else None,
        "n_patterns": getattr(scan, "n_patterns", None),
        "git_revision": git_revision(),
        **({"data_files": binding["files"], "data_changes": binding.get("changes", [])} if binding else {}),
        **(extra or {}),
    }
    return atomic_write_text(Path(run_dir) / "manifest.json", json.dumps(manifest, indent=2, default=str))
