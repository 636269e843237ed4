"""Nothing trained is lost and nothing trains on the wrong data (issue 29): last.ckpt at every epoch
end, a run bound to its scan, an atomic claim of the run directory that no stray RANK disables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from ptycho_torch.cli import main
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
