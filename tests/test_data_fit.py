"""The data fit of a reconstruction (ptycho_torch.evaluation.data_fit): deviance / counting-noise floor."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import simulate, tiny_config

from ptycho_torch.config import ConfigError, InferenceConfig, apply_overrides
from ptycho_torch.data.scan_files import read_scans
from ptycho_torch.evaluation.data_fit import data_fit, expected_deviance, fit_indices
from ptycho_torch.evaluation.truth_loss import truth_loss
from ptycho_torch.reconstruction.reconstruct import reconstruct
from ptycho_torch.training.train import train


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[float, Path]:
    d = tmp_path_factory.mktemp("fit")
    return {n: simulate(d / f"scan_{n:g}.npz", nphotons=n, n_positions=100) for n in (1e3, 1e6)}


@pytest.fixture(scope="module")
def bundle(scans, tmp_path_factory) -> Path:
    config = apply_overrides(tiny_config(scans[1e6]), {"trainer.max_epochs": 1, "logging.logger": None,
                                                       "trainer.enable_checkpointing": False})
    return train(config, tmp_path_factory.mktemp("run")).bundle_path


def _term(lam: float, k: np.ndarray) -> np.ndarray:
    return lam - k * np.log(lam) - (k - np.where(k > 0, k * np.log(np.maximum(k, 1)), 0.0))


@pytest.mark.parametrize("lam", [0.02, 0.7, 5.0, 150.0, 210.0, 5000.0])
def test_expected_deviance_is_the_poisson_mean_of_the_loss_term(lam):
    k = np.random.default_rng(0).poisson(lam, size=400_000).astype(np.float64)
    sample = _term(lam, k)
    assert expected_deviance(np.array([lam]))[0] == pytest.approx(sample.mean(), abs=4 * sample.std() / 632)
    assert expected_deviance(np.array([0.0]))[0] == 0.0


def test_truth_is_explained_to_the_noise_at_any_dose_and_a_flat_object_is_not(scans):
    for nphotons, path in scans.items():
        scan = read_scans(str(path))
        truth = data_fit(scan.object_guess, scan, scan.probe)
        assert truth.ratio == pytest.approx(1.0, abs=0.05), nphotons
        # the same number as the training loss of the truth (gridsize 1), whose floor it estimates
        assert truth.deviance == pytest.approx(truth_loss(scan, 1), rel=1e-4)
        assert np.all(truth.pattern_ratio < 1.5)
        flat = np.full_like(scan.object_guess, np.abs(scan.object_guess).mean())
        assert data_fit(flat, scan, scan.probe).ratio > 2.0 * truth.ratio, nphotons
        # the scale: an object in other units than the probe's explains the data worse (at a low dose
        # counting noise hides more of a 44% intensity error)
        assert data_fit(scan.object_guess, scan, scan.probe, scale=1.2).ratio > 1.15 * truth.ratio


def test_masked_detector_pixels_count_in_neither_number(scans):
    scan = read_scans(str(scans[1e6]))
    rows = scan.diffraction_rows(np.arange(scan.n_patterns)).copy()
    rows[:, 3, 5] = 1e4  # a hot pixel in every pattern
    mask = np.zeros((scan.N, scan.N), dtype=bool)
    mask[3, 5] = True

    def fake(with_mask: bool) -> SimpleNamespace:
        return SimpleNamespace(N=scan.N, n_patterns=scan.n_patterns, positions=scan.positions,
                               diffraction_rows=lambda idx: rows[np.asarray(idx)],
                               mask=mask if with_mask else None)

    assert data_fit(scan.object_guess, fake(False), scan.probe).ratio > 10
    assert data_fit(scan.object_guess, fake(True), scan.probe).ratio == pytest.approx(1.0, abs=0.05)


def test_large_scans_are_fitted_on_patterns_spread_through_them():
    idx = fit_indices(10_000, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 9999 and np.all(np.diff(idx) > 90)
    np.testing.assert_array_equal(fit_indices(50, 100), np.arange(50))
    np.testing.assert_array_equal(fit_indices(50, None), np.arange(50))


def test_reconstruct_records_the_fit_and_refinement_lowers_it(scans, bundle, tmp_path, capsys):
    from ptycho_torch.cli.main import main

    out = tmp_path / "rec"
    assert main(["reconstruct", "--model", str(bundle.parent), "--data", str(scans[1e6]), "--out", str(out),
                 "--refine-seconds", "2"]) == 0
    assert "data fit: Poisson deviance" in capsys.readouterr().out
    network = json.loads(str(np.load(out / "network" / "object.npz")["metadata"]))["data_fit"]
    refined = json.loads(str(np.load(out / "object.npz")["metadata"]))["data_fit"]
    assert (out / "fit.png").is_file() and (out / "network" / "fit.png").is_file()
    assert network["n_patterns"] == 100 and network["ratio"] > 1.5  # one epoch leaves most of the data
    assert refined["ratio"] < network["ratio"]  # gradient descent on the same deviance
    # the fit is read in the model's photon units: the truth's own fit is ~1 (above); a network object
    # that is off by its scale would sit far above even a flat object's
    scan = read_scans(str(scans[1e6]))
    flat = np.full_like(scan.object_guess, np.abs(scan.object_guess).mean())
    assert refined["ratio"] < data_fit(flat, scan, scan.probe).ratio


def test_fit_patterns_zero_measures_nothing_and_negative_is_refused(scans, bundle, tmp_path):
    from ptycho_torch.model.bundle import load_bundle

    loaded = load_bundle(bundle)
    loaded.config = apply_overrides(loaded.config, {"inference.fit_patterns": 0})
    result = reconstruct(loaded, scans[1e6], tmp_path / "none", progress=False)
    assert result.data_fit is None and not (tmp_path / "none" / "fit.png").exists()
    assert "data_fit" not in json.loads(str(np.load(tmp_path / "none" / "object.npz")["metadata"]))
    with pytest.raises(ConfigError, match="fit_patterns"):
        InferenceConfig(fit_patterns=-1)
