"""The Python API of ptycho_dist (`import ptycho_dist as pd`) on a real local Ray: pd.train (Ray Train),
pd.reconstruct (Ray Data, equal to pt.reconstruct) and pd.tune (a one-trial Ray Tune sweep); keywords
are the flags of `ptycho-dist`. Tiny: N=32, 1 epoch, one worker."""

from __future__ import annotations

import numpy as np
import pytest

import ptycho_dist as pd
import ptycho_torch as pt
from ptycho_torch.config import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # 80-150 s: a Ray Train run, a Ray Data run, a one-trial sweep

TINY = {"N": 32, "epochs": 1, "batch_size": 16, "progress_bar": False, "overrides": {"model.n_filters_scale": 0.25}}


def test_train_reconstruct_and_tune_over_ray(ray_local, tiny_scan, tmp_path):
    from ptycho_dist.training.driver import fit_distributed  # the module stays importable next to pd.train

    assert callable(fit_distributed) and callable(pd.train) and callable(pd.tune)
    run = pd.train(tiny_scan, tmp_path / "runs" / "one", address=ray_local, **TINY)
    assert run.world_size == 1 and run.epochs_completed >= 1
    assert run.run_dir == str(tmp_path / "runs" / "one")
    # the worker's csv logger got the learning rate and the picture of the last epoch
    assert sorted(p.name for p in (tmp_path / "runs" / "one").glob("logs/version_*/images/*.png")) == [
        "epoch000_amplitude.png", "epoch000_phase.png"]
    assert "lr-Adam" in next((tmp_path / "runs" / "one").glob("logs/version_*/metrics.csv")).read_text()
    obj = pd.reconstruct(run, tiny_scan, tmp_path / "recon", concurrency=1, address=ray_local)
    assert (tmp_path / "recon" / "object.npz").is_file()
    local = pt.reconstruct(run, tiny_scan)
    assert obj.shape == local.shape and np.abs(obj - local).max() <= 1e-5
    sweep = {"metric": "val_loss", "mode": "min", "scheduler": {"name": "fifo"}, "workers_per_trial": 1,
             "space": {"optimizer.learning_rate": {"grid": [1e-3]}}}
    result = pd.tune(sweep, tmp_path / "sweep", data=tiny_scan, address=ray_local,
                     config=pt.api.run_config(None, **TINY))
    assert result.complete and len(result.trials) == 1 and result.best_config is not None
    assert result.best_config.trainer.max_epochs == 1
    # Ray Tune's own ResultGrid, for users who know Tune's API: the same trial, the same best metric
    best = result.result_grid.get_best_result(metric="val_loss", mode="min")
    assert len(result.result_grid) == 1 and best.metrics["val_loss"] == pytest.approx(result.best.last_value)


def test_unknown_keywords_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="batchsize: unknown keyword.*batch_size"):
        pd.train("scan.npz", tmp_path / "run", batchsize=8)
    with pytest.raises(ConfigError, match="concurrency: got 0"):
        pd.reconstruct("run", "scan.npz", tmp_path / "recon", concurrency=0)
    with pytest.raises(ConfigError, match="epochs: unknown keyword"):
        pd.tune({"space": {}}, tmp_path / "sweep", epochs=3)
