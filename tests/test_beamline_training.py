"""Beamline files train and reconstruct with no conversion step; the products carry the pixel size.

Acceptance of issue 14: a CXI file (uint16 counts, positions in metres, energy, distance, pixel size),
a NeXus file and an ad-hoc HDF5 file addressed by dataset paths each train one epoch, reconstruct,
and the stored pixel size equals lambda z / (N Delta) to 1e-6.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from beamline_layouts import (
    ADHOC_DATASETS,
    DET_PIXEL_M,
    DISTANCE_M,
    ENERGY_EV,
    detector_frames,
    metres,
    write_adhoc,
    write_cxi,
    write_nexus,
)
from conftest import simulate, tiny_config

from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.detector import EV_J, LIGHT_M_S, PLANCK_J_S
from ptycho_torch.data.validation import ScanValidationError
from ptycho_torch.physics.forward import poisson_nll

N = 32
LAMBDA_Z_OVER_N_DELTA = PLANCK_J_S * LIGHT_M_S / (ENERGY_EV * EV_J) * DISTANCE_M / (N * DET_PIXEL_M)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    path = simulate(tmp_path_factory.mktemp("sim") / "sim.npz", n_positions=48, nphotons=1e5)
    return read_scan(path)


def _beamline_file(kind, tmp_path, truth):
    counts = detector_frames(truth.diffraction_block(0, truth.n_patterns))
    t = metres(truth.xcoords, truth.ycoords, N)
    if kind == "cxi":
        return str(write_cxi(tmp_path / "scan.cxi", counts, t, truth.probe[0])), {}
    if kind == "nexus":
        return str(write_nexus(tmp_path / "scan.nxs", counts, t[:, 0], t[:, 1], truth.probe[0])), {}
    path = write_adhoc(tmp_path / "scan.h5", counts, t[:, 0], t[:, 1], truth.probe[0])
    return f"{path}::/exp/ccd/frames", {"data.datasets": dict(ADHOC_DATASETS)}


@pytest.mark.parametrize("kind", ["cxi", "nexus", "hdf5"])
def test_train_and_reconstruct_a_beamline_file(tmp_path, truth, kind):
    import tifffile

    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.training.train import train

    data, overrides = _beamline_file(kind, tmp_path, truth)
    config = tiny_config(data, **{"trainer.max_epochs": 1, "logging.logger": "none",
                                  "trainer.enable_checkpointing": False, **overrides})
    run = train(config, tmp_path / "run")
    assert run.epochs_completed == 1 and np.isfinite(run.metrics["train_loss"])
    out = tmp_path / "recon"
    result = reconstruct(run.run_dir, data, out)
    with np.load(out / "object.npz") as z:
        pixel = float(z["pixel_size_m"])
        meta = json.loads(str(z["metadata"]))
        obj = z["object"]
    assert pixel == pytest.approx(LAMBDA_Z_OVER_N_DELTA, rel=1e-6)
    assert meta["pixel_size_m"] == pytest.approx(LAMBDA_Z_OVER_N_DELTA, rel=1e-6)
    assert np.allclose(obj, result.object)
    # products next to object.npz
    probe = np.load(out / "probe.npy")
    assert probe.shape == (1, N, N) and probe.dtype == np.complex64
    amp = tifffile.imread(out / "amplitude.tif")
    assert amp.dtype == np.float32 and amp.shape == obj.shape
    np.testing.assert_allclose(amp, np.abs(obj), rtol=1e-6)
    with tifffile.TiffFile(out / "phase.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata.get("unit") == "um"
        x_res = tif.pages[0].tags["XResolution"].value  # pixels per um as a rational
        assert x_res[0] / x_res[1] == pytest.approx(1 / (pixel * 1e6), rel=1e-5)
    with h5py.File(out / "reconstruction.cxi") as f:
        np.testing.assert_allclose(f["entry_1/image_1/data"][()], obj)
        assert float(f["entry_1/image_1/x_pixel_size"][()]) == pytest.approx(pixel, rel=1e-12)
        np.testing.assert_allclose(f["entry_1/instrument_1/source_1/illumination"][()], probe)
        t = f["entry_1/sample_1/geometry_1/translation"][()]
    # positions come back in metres, in the frame of the file (the reader shifted them to N/2)
    np.testing.assert_allclose(t[:, :2], metres(truth.xcoords, truth.ycoords, N)[:, :2], rtol=0, atol=1e-12)


def test_cli_trains_an_hdf5_file_addressed_by_dataset_paths(tmp_path, truth):
    from ptycho_torch.cli.main import main

    data, _ = _beamline_file("hdf5", tmp_path, truth)
    datasets = json.dumps(ADHOC_DATASETS)
    rc = main(["train", "--data", data, "--out", str(tmp_path / "run"), "--N", "32", "--n-filters-scale", "0.25",
               "--epochs", "1", "--batch-size", "16", "--logger", "none", "--no-progress-bar",
               "--data.datasets", datasets])
    assert rc in (0, None)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "/exp/motors/samx" in config


def test_masked_pixels_are_left_out_of_the_loss():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 8, 8, generator=g) * 4
    meas = torch.rand(3, 1, 8, 8, generator=g) * 4
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 5] = True
    r = 2.0
    plain = poisson_nll(pred, meas, r)
    assert torch.equal(poisson_nll(pred, meas, r, mask=None), plain)  # no mask: the plain path
    masked = poisson_nll(pred, meas, r, mask=mask[None])
    lam, k = (pred / r) ** 2 + 1e-6, meas ** 2
    terms = lam - k * torch.log(lam) - (k - torch.xlogy(k, k))
    counted = k.masked_fill(mask[None], 0).sum() / (~mask[None]).expand_as(k).sum()  # mean counts, counted pixels
    expect = terms.masked_fill(mask[None], 0).flatten(1).sum(1).mean() / counted
    torch.testing.assert_close(masked, expect)
    # a masked pixel's value does not change the loss
    pred2 = pred.clone()
    pred2[:, 0, 2, 5] = 100.0
    torch.testing.assert_close(poisson_nll(pred2, meas, r, mask=mask[None]), masked)
    meas2 = meas.clone()  # nor does a hot pixel's count: neither its term nor the mean counts hold it
    meas2[:, 0, 3, 5] = 1e3
    torch.testing.assert_close(poisson_nll(pred, meas2, r, mask=mask[None]), masked)


def test_a_mask_reaches_the_training_batches(tmp_path, truth):
    from ptycho_torch.data.dataset import PtychoDataModule

    counts = detector_frames(truth.diffraction_block(0, truth.n_patterns))
    mask = np.zeros((N, N), bool)
    mask[10:12, 20] = True
    path = write_cxi(tmp_path / "m.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0], mask=mask)
    dm = PtychoDataModule(tiny_config(str(path)))
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (16, 1, N, N) and batch["mask"][:, 0, 10, 20].all()
    assert (batch["amp"][:, :, 10:12, 20] == 0).all()


def test_larger_frames_train_cropped_to_N(tmp_path, truth):
    from ptycho_torch.config import ConfigError
    from ptycho_torch.training.train import train

    counts = detector_frames(truth.diffraction_block(0, truth.n_patterns), frame=48, corner=(8, 8))
    path = str(write_cxi(tmp_path / "big.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0]))
    quiet = {"trainer.max_epochs": 1, "logging.logger": "none", "trainer.enable_checkpointing": False}
    with pytest.raises(ScanValidationError, match=r"probe: expected 48x48 \(the patterns\) .* found 32x32; or set --N 32"):
        train(tiny_config(path, **quiet, **{"model.N": None}), tmp_path / "refused")
    with pytest.raises(ConfigError, match=r"holds 48x48 patterns.*set --N 32 \(the central 32x32"):  # a 48x48 probe
        np.save(tmp_path / "probe48.npy", np.ones((48, 48), np.complex64))
        train(tiny_config(path, **quiet, **{"model.N": None, "data.probe": str(tmp_path / "probe48.npy")}),
              tmp_path / "refused")
    run = train(tiny_config(path, **quiet, **{"data.beam_center": [24, 24]}), tmp_path / "run")
    assert run.epochs_completed == 1 and np.isfinite(run.metrics["train_loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["beam_center"] == [24.0, 24.0] and saved["model"]["N"] == 32
