"""The iterative solver (ptycho_torch.reconstruction.solver): reconstruction, probe retrieval, scale invariance,
probe modes, position correction, probe estimation, half-scan FRC, and `ptycho-torch solve`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ptycho_torch.data.contract import read_scan
from ptycho_torch.evaluation.metrics import evaluate_reconstruction
from ptycho_torch.reconstruction.refine import coverage
from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve
from ptycho_torch.reconstruction.solver.half_scan import half_scan_frc, register_shift
from ptycho_torch.reconstruction.solver.modes import add_modes, orthogonalise_modes
from ptycho_torch.reconstruction.solver.probe_init import search_probe


@pytest.fixture(scope="module")
def scan(small_scan):
    return read_scan(small_scan)


def _phase_ssim(scan, obj):
    """Phase SSIM against the truth, a linear phase ramp removed (probe and object can trade one)."""
    return evaluate_reconstruction(obj, scan.object_guess, coverage(scan.positions, scan.probe, obj.shape),
                                   plane_fit=True)["phase_ssim"]


def _mean_intensity(scan):
    X = scan.diffraction_block(0, scan.n_patterns).astype(np.float64)
    return (X * X).mean(axis=0)


def test_known_probe_from_a_flat_start_reconstructs_the_object(scan):
    sol = solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_shape,
                options=SolverOptions(refine_probe=False), epochs=20)
    assert sol.epochs == 20 and sol.errors[-1] < 0.5 * sol.errors[0]
    assert _phase_ssim(scan, sol.object) > 0.9


@pytest.mark.parametrize("estimated", [False, True], ids=["file probe", "estimated probe"])
def test_the_probe_units_do_not_change_the_reconstruction(scan, estimated):
    """Probe x c (object / c) gives the same object and probe, c = 1e-3, 1, 1e3 (issue 28)."""
    probe = search_probe(scan.diffraction_rows, scan.positions, scan.object_shape, _mean_intensity(scan))[0] \
        if estimated else scan.probe
    runs = [solve(scan.diffraction_rows, scan.positions, probe * np.complex64(c), scan.object_shape, epochs=4)
            for c in (1e-3, 1.0, 1e3)]
    for other in (runs[0], runs[2]):
        np.testing.assert_allclose(other.object, runs[1].object, atol=2e-4 * np.abs(runs[1].object).max())
        np.testing.assert_allclose(other.probe, runs[1].probe, atol=2e-4 * np.abs(runs[1].probe).max())


def test_a_start_in_any_units_gives_the_same_refinement(scan):
    start = scan.object_guess * np.complex64(0.9 * np.exp(0.3j))
    runs = [solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_shape, epochs=3,
                  start=start * np.complex64(c), options=SolverOptions(refine_probe=False)) for c in (1e-3, 1e3)]
    np.testing.assert_allclose(runs[0].object, runs[1].object, atol=2e-4 * np.abs(runs[1].object).max())


def _defocused(probe: np.ndarray, z_px2: float) -> np.ndarray:
    """probe (N, N) propagated by a far-field phase pi z q^2 (a focus error)."""
    N = probe.shape[-1]
    q = np.fft.fftshift(np.fft.fftfreq(N))
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe))) * np.exp(1j * np.pi * z_px2 * (q[:, None] ** 2 + q[None] ** 2))
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far))).astype(np.complex64)


def test_a_wrong_probe_is_retrieved(scan):
    """Starting from the probe out of focus (a wrong defocus, as an analytic model often has),
    refining the probe fits the data far better than keeping it, and the object comes out."""
    wrong = _defocused(scan.probe[0], 150.0)[None]
    kept = solve(scan.diffraction_rows, scan.positions, wrong, scan.object_shape, epochs=60,
                 options=SolverOptions(refine_probe=False))
    found = solve(scan.diffraction_rows, scan.positions, wrong, scan.object_shape, epochs=60)
    assert found.errors[-1] < 0.5 * kept.errors[-1], (found.errors[-1], kept.errors[-1])
    assert _phase_ssim(scan, found.object) > 0.8 > _phase_ssim(scan, kept.object)


def test_the_probe_estimated_from_the_data_reconstructs(scan):
    probe, record = search_probe(scan.diffraction_rows, scan.positions, scan.object_shape, _mean_intensity(scan))
    assert probe.shape == (1, scan.N, scan.N) and len(record["candidates"]) == 6
    sol = solve(scan.diffraction_rows, scan.positions, probe, scan.object_shape, epochs=40)
    assert _phase_ssim(scan, sol.object) > 0.7


def test_modes_are_orthogonal_and_keep_the_intensity():
    rng = np.random.default_rng(0)
    modes = torch.from_numpy((rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))).astype(np.complex64))
    out = orthogonalise_modes(modes)
    gram = (out.reshape(3, -1).conj() @ out.reshape(3, -1).T).numpy()
    assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-3 * abs(gram).max())
    assert np.all(np.diff(np.diag(gram).real) <= 0)  # strongest first
    np.testing.assert_allclose((out.abs() ** 2).sum(0), (modes.abs() ** 2).sum(0), rtol=1e-4)
    grown = add_modes(modes[:1].numpy(), 3, rng)
    assert grown.shape == (3, 16, 16)
    np.testing.assert_allclose(np.sum(np.abs(grown) ** 2), np.sum(np.abs(modes[0].numpy()) ** 2), rtol=1e-4)


def test_partially_coherent_data_need_modes(tmp_path):
    """A scan simulated with 3 probe modes: 3 modes fit it better than 1."""
    from conftest import simulate

    mixed = read_scan(simulate(tmp_path / "modes.npz", n_positions=200, probe_modes=3, nphotons=1e6))
    one = solve(mixed.diffraction_rows, mixed.positions, mixed.probe[:1], mixed.object_shape, epochs=30)
    three = solve(mixed.diffraction_rows, mixed.positions, mixed.probe[:1], mixed.object_shape, epochs=30,
                  options=SolverOptions(modes=3))
    assert three.probe.shape[0] == 3 and three.errors[-1] < 0.9 * one.errors[-1], (three.errors[-1], one.errors[-1])


def test_position_correction_moves_positions_towards_the_truth(scan):
    rng = np.random.default_rng(1)
    error = rng.uniform(-1.5, 1.5, size=scan.positions.shape)
    error -= error.mean(axis=0)
    wrong = scan.positions + error
    sol = solve(scan.diffraction_rows, wrong, scan.probe, scan.object_shape, epochs=40,
                options=SolverOptions(refine_probe=False, positions=True, positions_start_epoch=3))
    left = sol.positions - scan.positions
    left -= left.mean(axis=0)
    assert np.sqrt(np.mean(left ** 2)) < 0.6 * np.sqrt(np.mean(error ** 2))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="solver.modes"):
        SolverOptions(modes=0)
    with pytest.raises(ValueError, match="solver.object_alpha"):
        SolverOptions(object_alpha=2)


def test_register_shift_finds_a_subpixel_shift():
    rng = np.random.default_rng(0)
    img = np.fft.ifft2(np.fft.fft2(rng.normal(size=(64, 64))) * np.exp(-(np.fft.fftfreq(64)[:, None] ** 2
                                                                          + np.fft.fftfreq(64)[None] ** 2) * 200))
    ky, kx = np.fft.fftfreq(64)[:, None], np.fft.fftfreq(64)[None]
    moved = np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (ky * 2.3 + kx * -1.6)))
    dy, dx = register_shift(img, moved, np.ones((64, 64), bool))
    assert abs(dy + 2.3) < 0.2 and abs(dx - 1.6) < 0.2


def test_half_scan_frc_of_identical_and_of_unrelated_halves():
    rng = np.random.default_rng(0)
    obj = np.exp(1j * rng.normal(size=(80, 80)))
    w = np.ones((80, 80))
    same = half_scan_frc(obj, obj, w, w, pixel_size_m=10e-9)
    assert not same["crossed_halfbit"] and same["resolution_halfbit_nm"] == pytest.approx(same["resolution_halfbit_px"] * 10)
    noise = half_scan_frc(obj, np.exp(1j * rng.normal(size=(80, 80))), w, w)
    assert noise["crossed_halfbit"] and noise["resolution_halfbit_px"] > 10


def test_solve_cli_writes_the_products(small_scan, tmp_path):
    from ptycho_torch.cli.main import main

    out = tmp_path / "solved"
    assert main(["solve", "--data", str(small_scan), "--out", str(out), "--seconds", "0", "--epochs", "8",
                 "--half-scan", "--device", "cpu"]) == 0
    for name in ("object.npz", "probe.npy", "probe.png", "phase.png", "amplitude.tif", "reconstruction.cxi",
                 "fit.png", "errors.png", "resolution.json", "frc_half_scan.png", "metrics.json"):
        assert (out / name).is_file(), name
    meta = json.loads(str(np.load(out / "object.npz")["metadata"]))
    assert meta["engine"] == "iterative" and meta["data_fit"]["ratio"] < 5
    assert json.loads((out / "resolution.json").read_text())["resolution_halfbit_px"] > 1
    assert main(["solve", "--data", str(small_scan), "--out", str(tmp_path / "bad"), "--modes", "0"]) == 2


def test_solve_api_estimates_a_probe(scan):
    import ptycho_torch as pt

    result = pt.solve(scan, epochs=10, seconds=None, probe="estimate")
    assert result.object.shape == scan.object_shape and result.probe_origin["method"].startswith("mean pattern")


def test_solve_replaces_a_reconstruction_whole_and_refuses_other_folders(small_scan, tmp_path):
    from ptycho_torch.cli.main import main

    out = tmp_path / "solved"
    args = ["solve", "--data", str(small_scan), "--seconds", "0", "--epochs", "2", "--device", "cpu",
            "--fit-patterns", "0"]
    assert main([*args, "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from an earlier run")
    assert main([*args, "--out", str(out)]) == 0 and not (out / "stale.txt").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main([*args, "--out", str(other)]) == 2 and (other / "mine.txt").read_text() == "keep"
