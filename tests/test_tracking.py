"""Experiment tracking of a real tiny training run: the learning rate (Lightning's
LearningRateMonitor), the losses and, every logging.log_images_every_n_epochs, the current
reconstruction of a fixed validation region reach TensorBoard, MLflow (MLFLOW_TRACKING_URI honoured)
and the CSV logger (PNG files)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from ptycho_torch.config import ConfigError, LoggingConfig
from ptycho_torch.training.progress_images import region_indices, render
from ptycho_torch.training.train import train

needs = {name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} is not installed")
         for name in ("tensorboard", "mlflow")}
IMAGES = ("amplitude", "phase")


def fit(scan: Path, run_dir: Path, **overrides):
    return train(tiny_config(scan, **{"trainer.max_epochs": 2, **overrides}), run_dir)


def test_csv_run_saves_pngs_every_k_epochs_and_lr_in_the_metrics(tiny_scan, tmp_path):
    result = fit(tiny_scan, tmp_path / "run", **{"trainer.max_epochs": 3, "logging.log_images_every_n_epochs": 2})
    folder = result.run_dir / "logs" / "version_0"
    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    # epoch index 1 (the 2nd epoch) and the last one (index 2)
    assert names == [f"epoch{e:03d}_{k}.png" for e in (1, 2) for k in IMAGES]
    from matplotlib.image import imread

    picture = imread(folder / "images" / "epoch002_phase.png")
    assert picture.shape[0] >= 256 and picture.shape[2] in (3, 4) and picture[..., :3].std() > 0
    with open(folder / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    default_schedule = [5e-4, 1e-3, 1e-5]  # WarmupCosine: 1 warm-up epoch, then cosine to 1% at the last epoch
    assert [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")] == pytest.approx(default_schedule)
    assert [row["lr"] for row in result.history] == pytest.approx(default_schedule)  # the epoch metric stays
    off = fit(tiny_scan, tmp_path / "off", **{"trainer.max_epochs": 1, "logging.log_images_every_n_epochs": 0})
    assert not list(off.run_dir.glob("logs/*/images"))


@needs["tensorboard"]
def test_tensorboard_gets_lr_losses_and_the_reconstruction(tiny_scan, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(tiny_scan, tmp_path / "tb", **{"logging.logger": "tensorboard",
                                                "logging.log_images_every_n_epochs": 1,
                                                "optimizer.scheduler": "Exponential",
                                                "optimizer.scheduler_gamma": 0.5})
    events = EventAccumulator(str(result.run_dir / "logs" / "version_0"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"lr-Adam", "train_loss", "val_loss"} <= set(tags["scalars"])
    assert [round(e.value, 9) for e in events.Scalars("lr-Adam")] == [1e-3, 5e-4]  # the scheduler's steps
    for name in IMAGES:
        shots = events.Images(f"reconstruction/{name}")
        assert len(shots) == 2 and shots[0].width >= 256 and shots[0].step < shots[1].step


@needs["mlflow"]
def test_mlflow_honours_the_tracking_uri(tiny_scan, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'team' / 'store.db'}"
    (tmp_path / "team").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "beamtime")
    monkeypatch.chdir(tmp_path)  # a sqlite store without an artifact root keeps artifacts in ./mlruns
    result = fit(tiny_scan, tmp_path / "ml", **{"logging.logger": "mlflow",
                                                "logging.log_images_every_n_epochs": 1})
    assert not (result.run_dir / "mlruns").exists()  # nothing local when a store is set
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("beamtime")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "ml"
    assert {"lr-Adam", "train_loss", "val_loss"} <= set(run.data.metrics)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr-Adam")] == pytest.approx([5e-4, 1e-3])
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("reconstruction_amplitude" in p for p in images) and any("reconstruction_phase" in p for p in images)


def test_region_and_render():
    centroids = np.array([[0.0, 0], [10, 10], [11, 10], [50, 50], [9, 9]])
    assert region_indices(centroids, 2).tolist() == [1, 2]  # nearest the median point (10, 10)
    obj = np.exp(1j * np.linspace(0, 1, 40 * 30)).reshape(40, 30).astype(np.complex64) * 0.8
    weight = np.ones((40, 30), np.float32)
    weight[:5] = 0
    obj[:5] = 0
    images = render(obj, weight)
    assert images["amplitude"].shape == (280, 210, 3) and images["amplitude"].dtype == np.uint8
    assert images["phase"][:35].max() == 0 and images["phase"][35:].std() > 0  # black outside the support


def test_bad_image_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="log_images_every_n_epochs: got -1; must be >= 0"):
        LoggingConfig(log_images_every_n_epochs=-1)


def test_several_scans_show_a_region_of_scan_0(tmp_path):
    """Two scans in other frames: the region's groups all come from scan 0 (one frame), and the run
    (gridsize 2, csv) writes its pictures."""
    from ptycho_torch.cli.main import main
    from ptycho_torch.config import apply_overrides
    from ptycho_torch.data.dataset import PtychoDataModule
    from ptycho_torch.training.progress_images import _region_dataset

    out = tmp_path / "scans"
    assert main(["simulate", "--n-scans", "2", "--out", str(out), "--N", "32", "--n-positions", "40"]) == 0
    files = sorted(str(p) for p in out.glob("scan_*.npz"))
    config = apply_overrides(tiny_config(files[0]), {"data.path": files, "model.gridsize": 2,
                                                     "trainer.max_epochs": 1, "training.batch_size": 8,
                                                     "logging.log_images_every_n_epochs": 1})
    datamodule = PtychoDataModule(config)
    dataset, indices = _region_dataset(datamodule)
    assert len(indices) > 0 and (datamodule.scan.pattern_scan[dataset.groups.indices[indices]] == 0).all()
    val = {tuple(g) for g in datamodule.val_groups.indices}
    assert all(tuple(g) in val for g in dataset.groups.indices)  # validation groups
    result = train(config, tmp_path / "run")
    assert len(list(result.run_dir.glob("logs/version_0/images/epoch000_*.png"))) == 2
