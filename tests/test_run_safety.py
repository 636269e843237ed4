"""Nothing trained is lost: atomic writes, run-directory claims (--overwrite moves aside), the
checkpoint a resume continues from (damaged ones skipped, unsafe ones refused), and private token
files. Fast: no training, no Ray."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from test_bad_inputs import Workspace, payload_bytes

from ptycho_torch.config import ConfigError
from ptycho_torch.model.checkpoints import UnsafeCheckpointError, load_checkpoint_safely, resume_checkpoint
from ptycho_torch.safe_output import (
    CLAIM_FILE,
    atomic_path,
    atomic_write_text,
    check_output_dir,
    claim_run_dir,
)


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new fi")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left behind
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_claim_refuses_an_existing_run_and_overwrite_moves_it_aside(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.pt").write_bytes(b"trained for a week")
    with pytest.raises(ConfigError, match="--resume .*--overwrite"):
        claim_run_dir(run)
    moved = claim_run_dir(run, overwrite=True)
    assert moved is not None and moved.name.startswith("run.replaced-")
    assert (moved / "model.pt").read_bytes() == b"trained for a week"  # moved, not deleted
    assert run.is_dir() and [p.name for p in run.iterdir()] == [CLAIM_FILE]  # fresh: only this process's claim
    assert claim_run_dir(tmp_path / "empty") is None  # a new or empty directory is fine


def test_output_dir_check_catches_a_full_disk(tmp_path):
    with pytest.raises(ConfigError, match="MiB free"):
        check_output_dir(tmp_path / "out", "--out", min_free_bytes=1 << 62)
    assert not (tmp_path / "out").exists()


def _checkpoint(path: Path, epoch: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": epoch, "loops": {}}, path)
    return path


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    folder = tmp_path / "run" / "checkpoints"
    older = _checkpoint(folder / "epoch001-val_loss9.ckpt", 1)
    newer = _checkpoint(folder / "epoch002-val_loss8.ckpt", 2)
    os.utime(older, (1, 1))
    last = _checkpoint(folder / "last.ckpt", 3)
    assert resume_checkpoint(tmp_path / "run") == last
    last.write_bytes(last.read_bytes()[:100])  # truncated by an interrupted copy
    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        assert resume_checkpoint(tmp_path / "run") == newer
    assert "last.ckpt: damaged or truncated" in caplog.text and "newest intact checkpoint" in caplog.text
    newer.write_bytes(b"")
    older.write_bytes(b"")
    with pytest.raises(ConfigError, match="no intact checkpoint left"):
        resume_checkpoint(tmp_path / "run")


def test_unsafe_checkpoint_is_refused_even_when_torch_is_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    w = Workspace(tmp_path, tmp_path / "unused.npz")
    path = w.file("run/checkpoints/last.ckpt", payload_bytes(w))
    _checkpoint(tmp_path / "run" / "checkpoints" / "epoch000.ckpt", 0)  # an intact one is not a way around
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        resume_checkpoint(tmp_path / "run")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_safely(path)
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_embedded_ray_token_is_private(tmp_path, monkeypatch):
    from ptycho_dist.cluster.session import secure_token_file

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    old_umask = os.umask(0o022)
    try:
        token = secure_token_file()  # before ray.init: created 0600 in a 0700 folder
    finally:
        os.umask(old_umask)
    assert token == tmp_path / ".ray" / "auth_token" and len(token.read_text()) >= 32
    text = token.read_text()  # as Ray's own generator writes them: 256 random bits, 64 lowercase hex digits
    assert len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    token.chmod(0o644)  # as Ray writes it under the default umask
    secure_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_ray_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path):
    from ptycho_dist.training.driver import intact_ray_checkpoint

    run = tmp_path / "run"
    older = _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001" / "checkpoint.ckpt", 1)
    latest = _checkpoint(run / "checkpoint_2026-01-01_10-05-00.000001" / "checkpoint.ckpt", 2)
    assert intact_ray_checkpoint(latest, str(run)) == latest
    latest.write_bytes(b"")
    assert intact_ray_checkpoint(latest, str(run)) == older
    older.write_bytes(older.read_bytes()[:64])
    with pytest.raises(ConfigError, match="no intact checkpoint left"):
        intact_ray_checkpoint(latest, str(run))
    w = Workspace(tmp_path, tmp_path / "unused.npz")
    latest.write_bytes(payload_bytes(w))
    with pytest.raises(UnsafeCheckpointError):
        intact_ray_checkpoint(latest, str(run))
    assert not (tmp_path / "PAYLOAD_RAN").exists()
