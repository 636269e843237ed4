"""Scans in layouts other than the contract's: tike's NPZ (counts with DC at the corner, corner
positions), whole-file-compressed .npz.bz2, a contract file whose patterns hold DC at the corner,
data.probe for NPZ files, upstream's normalised convention (an independent simulator), and the real
APS Siemens star when ../shared/data holds it."""

from __future__ import annotations

import bz2
import io
import logging
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.contract import read_scan, write_scan
from ptycho_torch.data.validation import ScanValidationError

STAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "velociprobe-siemens-star.npz.bz2"


@pytest.fixture(scope="module")
def scan(small_scan):
    return read_scan(small_scan)


def _tike_arrays(scan) -> dict[str, np.ndarray]:
    N = scan.N
    counts = np.fft.ifftshift(scan.diffraction_block(0, scan.n_patterns).astype(np.float64) ** 2, axes=(-2, -1))
    corner = np.stack([scan.ycoords, scan.xcoords], axis=1) - N // 2 - 7.25  # (row, col), origin moved
    return {"data": counts[None].astype(np.float32), "scan": corner[None].astype(np.float32),
            "probe": scan.probe.reshape(1, 1, 1, -1, N, N)}


def test_a_tike_layout_reads_as_the_contract(scan, tmp_path, caplog):
    path = tmp_path / "tike.npz"
    np.savez(path, **_tike_arrays(scan))
    with caplog.at_level(logging.INFO, logger="ptycho_torch"):
        read = read_scan(path)
    np.testing.assert_allclose(read.diffraction_block(0, read.n_patterns), scan.diffraction_block(0, scan.n_patterns),
                               rtol=1e-5, atol=1e-4)
    shift = read.positions - scan.positions
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-4)  # one common offset
    assert read.positions.min() >= read.N // 2 and "tike layout" in caplog.text and "DC moved" in caplog.text
    assert read.metadata["source_layout"] == "tike"


def test_a_compressed_npz_reads_and_a_damaged_one_is_one_line(scan, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, **_tike_arrays(scan))
    (tmp_path / "tike.npz.bz2").write_bytes(bz2.compress(buffer.getvalue()))
    assert read_scan(tmp_path / "tike.npz.bz2").n_patterns == scan.n_patterns
    (tmp_path / "bad.npz.bz2").write_bytes(b"not bz2 at all")
    with pytest.raises(ScanValidationError, match=r"\.npz\.bz2 archive"):
        read_scan(tmp_path / "bad.npz.bz2")


def test_a_contract_file_with_dc_at_the_corner_is_shifted_on_read(scan, tmp_path):
    arrays = scan.arrays()
    arrays["diffraction"] = np.fft.ifftshift(arrays["diffraction"], axes=(-2, -1))
    read = read_scan(write_scan(tmp_path / "corner.npz", **arrays))
    np.testing.assert_array_equal(read.diffraction_rows(np.arange(5)), scan.diffraction_rows(np.arange(5)))
    assert "fftshift" in read.metadata["diffraction_read_as"]
    assert "fftshift" not in scan.metadata.get("diffraction_read_as", "")


def test_data_probe_replaces_the_probe_of_an_npz(small_scan, tmp_path):
    """--data.probe was silently ignored for NPZ files: now it is the probe, and a wrong shape is one line."""
    other = (np.ones((32, 32)) * np.exp(0.3j)).astype(np.complex64)
    np.save(tmp_path / "probe.npy", other)
    read = read_scan(small_scan, options=ReadOptions(probe=str(tmp_path / "probe.npy")))
    np.testing.assert_array_equal(read.probe[0], other)
    assert read.metadata["probe_source"] == str(tmp_path / "probe.npy")
    np.save(tmp_path / "junk.npy", np.ones((7, 7), np.complex64))
    with pytest.raises(ScanValidationError, match=r"data.probe: expected a complex \(32, 32\)"):
        read_scan(small_scan, options=ReadOptions(probe=str(tmp_path / "junk.npy")))


def test_data_probe_changes_the_training_loss(small_scan, tmp_path):
    """The loss of one epoch differs with a junk probe: the probe given is the probe trained with."""
    from conftest import tiny_config

    from ptycho_torch.training.train import train

    np.save(tmp_path / "junk.npy", (np.ones((32, 32)) * 0.1).astype(np.complex64))
    losses = []
    for name, extra in (("file", {}), ("junk", {"data.probe": str(tmp_path / "junk.npy")})):
        run = train(tiny_config(small_scan, **{"trainer.max_epochs": 1, **extra}), tmp_path / name)
        losses.append(run.metrics["train_loss"])
    assert abs(losses[0] - losses[1]) > 1e-3 * abs(losses[0]), losses


def _independent_scan(path: Path, nphotons: float, scale_key: bool, wrong_nphotons: bool = False) -> np.ndarray:
    """An upstream-convention file written without this project's simulator: integer-pixel patches
    of a smooth random object (a texture, not lines), a defocused disk probe in arbitrary units, the
    stored diffraction = sqrt(counts) / intensity_scale (probe x object reproduces it), positions on
    an integer grid. Returns the true object."""
    rng = np.random.default_rng(3)
    N, step, grid = 32, 5, 14
    H = W = N + step * (grid - 1) + 2
    f = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None])
    smooth = lambda a: np.real(np.fft.ifft2(np.fft.fft2(a) * np.exp(-(f / 0.06) ** 2)))  # noqa: E731
    amp, phase = smooth(rng.normal(size=(H, W))), smooth(rng.normal(size=(H, W)))
    obj = (0.75 + 0.2 * amp / np.abs(amp).max()) * np.exp(1.2j * phase / np.abs(phase).max())
    yy, xx = np.mgrid[:N, :N] - N / 2
    q = np.fft.fftfreq(N)
    pupil = (np.hypot(q[:, None], q[None]) < 0.2) * np.exp(1j * 40 * (q[:, None] ** 2 + q[None] ** 2))
    probe = np.fft.fftshift(np.fft.ifft2(pupil)) * 37.0  # arbitrary units
    ys, xs = np.meshgrid(np.arange(grid) * step + N // 2 + 1, np.arange(grid) * step + N // 2 + 1, indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    clean = np.stack([np.abs(np.fft.fftshift(np.fft.fft2(probe * obj[y - N // 2:y + N // 2, x - N // 2:x + N // 2],
                                                          norm="ortho"))) for y, x in zip(ys, xs)])
    s = np.sqrt(nphotons / np.mean(np.sum(clean ** 2, axis=(1, 2))))
    counts = rng.poisson((s * clean) ** 2)
    keys = {"diffraction": (np.sqrt(counts) / s).astype(np.float32), "probeGuess": probe.astype(np.complex64),
            "xcoords": xs.astype(np.float64), "ycoords": ys.astype(np.float64), "objectGuess": obj.astype(np.complex64)}
    if scale_key:
        keys["intensity_scale"] = np.float64(s)
    keys["nphotons"] = np.float64(nphotons * (30 if wrong_nphotons else 1))
    np.savez(path, **keys)
    return obj


@pytest.mark.parametrize("scale_key", [True, False], ids=["intensity_scale", "nphotons"])
def test_an_independent_upstream_convention_scan_fits_and_solves(tmp_path, scale_key):
    """Issue 28: the truth explains the file to the noise (data fit ~1) and the solver from a flat
    start reaches phase SSIM >= 0.9, whichever dose key the file carries."""
    from ptycho_torch.evaluation.data_fit import data_fit
    from ptycho_torch.evaluation.metrics import evaluate_reconstruction
    from ptycho_torch.reconstruction.refine import coverage
    from ptycho_torch.reconstruction.solver.engine import solve

    _independent_scan(tmp_path / "u.npz", 1e6, scale_key)
    scan = read_scan(tmp_path / "u.npz")
    truth_fit = data_fit(scan.object_guess, scan, scan.probe * np.complex64(scan.photon_scale))
    assert 0.9 < truth_fit.ratio < 1.15, truth_fit.ratio
    sol = solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_shape, epochs=60)
    weight = coverage(scan.positions, scan.probe, scan.object_shape)
    scores = evaluate_reconstruction(sol.object, scan.object_guess, weight, plane_fit=True)
    assert scores["phase_ssim"] >= 0.9, scores["phase_ssim"]


def test_disagreeing_dose_keys_are_reported(tmp_path, caplog):
    _independent_scan(tmp_path / "u.npz", 1e5, scale_key=True, wrong_nphotons=True)
    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        scan = read_scan(tmp_path / "u.npz")
    assert "nphotons" in caplog.text and "intensity_scale was used" in caplog.text
    assert "disagrees" in scan.metadata["diffraction_read_as"]


@pytest.mark.skipif(not STAR.is_file(), reason="the APS Siemens star is not in ../shared/data")
def test_the_aps_siemens_star_reads_and_solves_from_the_data_alone():
    """The real scan, read in its own layout; 6 epochs from an estimated probe already explain it far
    better than the flat start does."""
    from ptycho_torch.evaluation.data_fit import data_fit
    from ptycho_torch.reconstruction.solve import solve_scan
    from ptycho_torch.reconstruction.solver.engine import SolverOptions

    scan = read_scan(STAR)
    assert (scan.n_patterns, scan.N) == (516, 128) and scan.metadata["source_layout"] == "tike"
    flat = data_fit(np.ones(scan.object_shape, np.complex64), scan, scan.probe * np.sqrt(
        scan.mean_energy() / np.sum(np.abs(scan.probe) ** 2)), max_patterns=64)
    result = solve_scan(scan, None, seconds=None, epochs=6, probe="estimate", options=SolverOptions(), progress=False)
    fit = data_fit(result.object, scan, result.probe, max_patterns=64)
    assert fit.ratio < 0.5 * flat.ratio and fit.ratio < 8, (flat.ratio, fit.ratio)
