"""Nothing trained is lost and nothing trains on the wrong data (issue 29): last.ckpt at every epoch
end, a run bound to its scan, an atomic claim of the run directory that no stray RANK disables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from conftest import tiny_config

from ptycho_torch.cli import main
from ptycho_torch.workflows.manifest import file_checksum
from ptycho_torch.workflows.train import train


def test_last_checkpoint_is_written_every_epoch_whatever_the_metric_does(tiny_scan, tmp_path):
    """checkpoint_mode max on a falling val_loss: the monitored metric never improves after epoch 0, so
    Lightning's save_last (tied to top-k saves) would leave last.ckpt at epoch 0. Ours follows every
    epoch, and extending the finished run continues after its last epoch."""
    run = tmp_path / "run"
    result = train(tiny_config(tiny_scan, **{"training.nepochs": 3, "execution.checkpoint_mode": "max",
                                             "execution.checkpoint_save_top_k": 1}), run)
    best = [p.name for p in (run / "checkpoints").glob("epoch*.ckpt")]
    assert best == ["epoch000-val_loss" + best[0].split("val_loss")[1]], best  # the metric peaked at epoch 0
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == result.trainer.global_step
    assert [r["epoch"] for r in last["callbacks"]["History"]["rows"]] == [0, 1, 2]  # the epoch's row is in it
    assert main(["train", "--resume", str(run), "--epochs", "5", "--no-progress-bar"]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3, 4]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4


def _other_scan(source: Path, target: Path, scale: float = 1.01) -> Path:
    """A valid scan that is not `source`: its diffraction scaled by `scale`."""
    with np.load(source) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["diffraction"] = (arrays["diffraction"] * scale).astype(arrays["diffraction"].dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **arrays)
    return target


def test_a_run_is_bound_to_its_scan(tiny_scan, tmp_path, monkeypatch, capsys):
    """data.path is absolute in config.yaml; a resume from another directory trains on the run's own
    scan; a different scan under the recorded path (or a run whose config kept a relative path) is
    refused in one line, unless --allow-other-data, which manifest.json records."""
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    shutil.copy(tiny_scan, home / "scan.npz")
    _other_scan(tiny_scan, other / "scan.npz")
    monkeypatch.chdir(home)
    args = ["--no-progress-bar", "--N", "32", "--n-filters-scale", "0.25", "--batch-size", "16"]
    assert main(["train", "--data", "scan.npz", "--out", "run", "--epochs", "1", *args]) == 0
    run = home / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["path"] == str(home / "scan.npz")
    bound = json.loads((run / "data.json").read_text())["files"]
    assert bound[0]["path"] == str(home / "scan.npz") and len(bound[0]["sha256"]) == 64

    monkeypatch.chdir(other)  # the run's own scan, wherever the resume starts
    assert main(["train", "--resume", "../home/run", "--epochs", "2", "--no-progress-bar"]) == 0
    assert json.loads((run / "manifest.json").read_text())["data"]["path"] == str(home / "scan.npz")
    capsys.readouterr()

    legacy = dict(config, data=dict(config["data"], path="scan.npz"))  # as runs before this change kept it
    (run / "config.yaml").write_text(yaml.safe_dump(legacy))
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on " + str(home / "scan.npz") in err[0] and "--allow-other-data" in err[0]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before

    _other_scan(tiny_scan, home / "scan.npz", scale=0.99)  # the recorded file rewritten in place
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar"]) == 2
    assert "data.path now gives " + str(home / "scan.npz") in capsys.readouterr().err
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar", "--allow-other-data"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["data_changes"]) == 1 and manifest["epochs_completed"] == 3
    change = manifest["data_changes"][0]
    assert change["from"][0]["sha256"] == bound[0]["sha256"] == file_checksum(tiny_scan)["sha256"]
    assert change["to"][0]["sha256"] == manifest["data"]["sha256"] != bound[0]["sha256"]
