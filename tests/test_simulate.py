"""Synthetic scans: reproducible, photon-calibrated, inside the object, and equal to a numpy oracle."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptycho_torch.config import ConfigError, SimulationConfig
from ptycho_torch.data.contract import read_scan, validate_scan
from ptycho_torch.data.simulate import (
    make_object,
    make_probe,
    probe_diameter,
    simulate_scan,
    simulate_to_file,
)

SMALL = dict(N=32, n_positions=36, nphotons=1e5)


def _file_arrays(out: dict) -> dict:
    return {"diffraction": out["diffraction"], "probeGuess": out["probe"], "xcoords": out["xcoords"],
            "ycoords": out["ycoords"], "objectGuess": out["object_guess"], "scan_index": out["scan_index"]}


def test_same_seed_same_scan_different_seed_different_scan():
    a = simulate_scan(SimulationConfig(**SMALL, seed=3))
    b = simulate_scan(SimulationConfig(**SMALL, seed=3))
    c = simulate_scan(SimulationConfig(**SMALL, seed=4))
    for key in ("diffraction", "probe", "xcoords", "ycoords", "object_guess"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["diffraction"], c["diffraction"])
    assert not np.array_equal(a["object_guess"], c["object_guess"])
    assert not np.array_equal(a["xcoords"], c["xcoords"])  # jitter


@pytest.mark.parametrize("nphotons", [1e3, 1e6])
def test_mean_photons_per_pattern(nphotons):
    out = simulate_scan(SimulationConfig(**{**SMALL, "nphotons": nphotons}))
    counts = out["diffraction"].astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3 * max(1.0, counts.max()) ** 0.5)
    mean = counts.sum(axis=(1, 2)).mean()
    assert mean == pytest.approx(nphotons, rel=5 / np.sqrt(nphotons * 36))
    assert out["metadata"]["mean_photons"] == pytest.approx(mean)


@pytest.mark.parametrize("scan", ["raster", "spiral"])
def test_positions_count_and_every_patch_inside_the_object(scan):
    cfg = SimulationConfig(**{**SMALL, "n_positions": 50}, scan=scan)
    out = simulate_scan(cfg)
    N, (H, W) = cfg.N, out["object_guess"].shape
    assert out["diffraction"].shape == (50, N, N) and out["xcoords"].shape == (50,)
    margin = out["metadata"]["margin_px"]
    fx, fy = np.floor(out["xcoords"]), np.floor(out["ycoords"])
    assert fx.min() >= N // 2 + margin and fx.max() <= W - N // 2 - margin
    assert fy.min() >= N // 2 + margin and fy.max() <= H - N // 2 - margin
    validate_scan(_file_arrays(out))
    # neighbours are one step apart: the step is (1 - overlap) * probe diameter
    step = (1 - cfg.overlap) * N / 2
    assert out["metadata"]["scan_step_px"] == pytest.approx(step)
    pos = np.stack([out["xcoords"], out["ycoords"]], 1)
    nn = cKDTree(pos).query(pos, k=2)[0][:, 1].mean()
    assert nn == pytest.approx(step, rel=0.25)


def _oracle_amplitude(obj: np.ndarray, probe: np.ndarray, x: int, y: int, N: int) -> np.ndarray:
    """|F(P O)| with numpy: integer-position patch, fft2(norm='ortho') + fftshift, modes summed."""
    patch = obj[y - N // 2:y + N // 2, x - N // 2:x + N // 2].astype(np.complex128)
    far = np.fft.fftshift(np.fft.fft2(probe.astype(np.complex128) * patch, norm="ortho"), axes=(-2, -1))
    return np.sqrt((np.abs(far) ** 2).sum(axis=0))


@pytest.mark.parametrize("modes", [1, 2])
def test_noiseless_amplitudes_equal_numpy_oracle(modes):
    # overlap 0.75 of a 16 px probe -> step 4 px, no jitter -> integer positions
    cfg = SimulationConfig(N=32, n_positions=16, overlap=0.75, jitter=0.0, probe_modes=modes,
                           object="dead_leaves", probe_defocus=2.0)
    out = simulate_scan(cfg, noise=False)
    xs, ys = out["xcoords"], out["ycoords"]
    np.testing.assert_array_equal(xs, np.round(xs))
    np.testing.assert_array_equal(ys, np.round(ys))
    assert out["probe"].shape == (modes, 32, 32)
    for m in range(16):
        expected = _oracle_amplitude(out["object_guess"], out["probe"], int(xs[m]), int(ys[m]), 32)
        np.testing.assert_allclose(out["diffraction"][m], expected, rtol=0, atol=1e-4 * expected.max())
    # the stored probe is in photon units: expected counts average to nphotons per pattern
    assert (out["diffraction"].astype(np.float64) ** 2).sum(axis=(1, 2)).mean() == pytest.approx(
        cfg.nphotons, rel=1e-5)


@pytest.mark.parametrize("N,modes,defocus", [(32, 1, 0.0), (64, 1, 3.0), (64, 3, 0.0)])
def test_probe_footprint_and_dark_edges(N, modes, defocus):
    probe, info = make_probe(N, defocus=defocus, modes=modes, rng=np.random.default_rng(0))
    assert probe.shape == (modes, N, N) and probe.dtype == np.complex64
    intensity = (np.abs(probe) ** 2).sum(axis=0)
    edges = np.concatenate([intensity[0], intensity[-1], intensity[:, 0], intensity[:, -1]])
    assert edges.max() < 1e-3 * intensity.max()
    assert probe_diameter(probe) == pytest.approx(N / 2, rel=0.02)
    assert info["measured_diameter_px"] == pytest.approx(N / 2, rel=0.02)
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1.0, rel=1e-5)
    if modes > 1:
        gram = np.einsum("pij,qij->pq", probe.conj(), probe)
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 1e-5  # incoherent modes are orthogonal
        power = np.real(np.diag(gram))
        assert np.all(np.diff(power) < 0)  # decaying power


def test_probe_diameter_follows_the_config():
    cfg = SimulationConfig(**SMALL, probe_diameter_px=12.0, overlap=0.5)
    out = simulate_scan(cfg)
    assert probe_diameter(out["probe"]) == pytest.approx(12.0, rel=0.02)
    assert out["metadata"]["scan_step_px"] == pytest.approx(6.0)


@pytest.mark.parametrize("kind", ["lines", "dead_leaves", "grf"])
def test_procedural_objects_span_the_requested_ranges(kind):
    obj = make_object(kind, (60, 70), np.random.default_rng(1), min_amplitude=0.3, max_phase=1.2)
    assert obj.shape == (60, 70) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() == pytest.approx(0.3, abs=1e-5) and amp.max() == pytest.approx(1.0, abs=1e-5)
    assert phase.min() == pytest.approx(-1.2, abs=1e-5) and phase.max() == pytest.approx(1.2, abs=1e-5)
    assert not np.allclose(amp, amp[0, 0])


def test_object_from_npy_images(tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    np.save(tmp_path / "amp.npy", xx.astype(np.float32))  # ramp along x
    np.save(tmp_path / "phase.npy", yy.astype(np.float64))  # ramp along y
    cfg = SimulationConfig(**SMALL, object=str(tmp_path / "amp.npy"),
                           phase_object=str(tmp_path / "phase.npy"), min_amplitude=0.2, max_phase=1.0)
    obj = simulate_scan(cfg)["object_guess"]
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() == pytest.approx(0.2, abs=1e-4) and amp.max() == pytest.approx(1.0, abs=1e-4)
    assert phase.min() == pytest.approx(-1.0, abs=1e-4) and phase.max() == pytest.approx(1.0, abs=1e-4)
    mid_r, mid_c = obj.shape[0] // 2, obj.shape[1] // 2
    assert np.all(np.diff(amp[mid_r, 2:-2]) > 0)  # amplitude follows the x ramp
    assert np.all(np.diff(phase[2:-2, mid_c]) > 0)  # phase follows the y ramp
    # without a phase image the amplitude image also gives the phase
    obj2 = simulate_scan(SimulationConfig(**SMALL, object=str(tmp_path / "amp.npy")))["object_guess"]
    assert np.all(np.diff(np.angle(obj2)[mid_r, 2:-2]) > 0)


def test_bad_object_sources_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="simulation.object"):
        simulate_scan(SimulationConfig(**SMALL, object="clouds"))
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3)))
    with pytest.raises(ConfigError, match="2-D"):
        simulate_scan(SimulationConfig(**SMALL, object=str(tmp_path / "rgb.npy")))


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_simulate_to_file_writes_a_valid_scan_with_metadata(tmp_path, suffix):
    cfg = SimulationConfig(**SMALL, scan="spiral", probe_modes=2, seed=7)
    path = simulate_to_file(cfg, tmp_path / f"sim{suffix}")
    scan = read_scan(path)
    expected = simulate_scan(cfg)
    np.testing.assert_array_equal(scan.diffraction_block(0, scan.n_patterns), expected["diffraction"])
    np.testing.assert_array_equal(scan.object_guess, expected["object_guess"])
    meta = scan.metadata
    assert meta["simulation"] == cfg.to_dict()
    assert SimulationConfig.from_dict(meta["simulation"]) == cfg
    for key in ("generator", "probe_diameter_px", "scan_step_px", "version", "probe_diameter_definition"):
        assert key in meta
    assert scan.mean_energy() == pytest.approx(meta["mean_photons"], rel=1e-5)


def test_default_scan_is_fast():
    start = time.perf_counter()
    out = simulate_scan(SimulationConfig())  # 400 patterns, N = 64
    elapsed = time.perf_counter() - start
    assert out["diffraction"].shape == (400, 64, 64)
    assert elapsed < 10.0, f"simulating 400 patterns of 64x64 took {elapsed:.1f} s"


def test_bilinear_patches_match_the_numpy_interpolation_and_differ_from_fourier():
    """bilinear_patches against an explicit numpy bilinear interpolation; at integer positions it
    equals the Fourier-shift extraction, at half-pixel positions on a sharp object it does not."""
    import torch

    from ptycho_torch.data.simulate import bilinear_patches
    from ptycho_torch.physics import forward as physics

    rng = np.random.default_rng(0)
    obj = (rng.random((40, 40)) + 1j * rng.random((40, 40))).astype(np.complex64)
    pos = np.array([[16.3, 17.8], [20.0, 19.0], [22.5, 16.5]], np.float32)
    got = bilinear_patches(torch.from_numpy(obj), torch.from_numpy(pos), 16).numpy()
    for k, (x, y) in enumerate(pos):
        x0, y0, fx, fy = int(np.floor(x)) - 8, int(np.floor(y)) - 8, x - np.floor(x), y - np.floor(y)
        c = obj[y0:y0 + 17, x0:x0 + 17]
        want = ((1 - fy) * ((1 - fx) * c[:-1, :-1] + fx * c[:-1, 1:]) + fy * ((1 - fx) * c[1:, :-1] + fx * c[1:, 1:]))
        np.testing.assert_allclose(got[k], want, atol=1e-5)
    fourier = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(pos), 16).numpy()
    np.testing.assert_allclose(got[1], fourier[1], atol=1e-5)
    assert np.abs(got[2] - fourier[2]).mean() > 0.05


def test_bilinear_extraction_simulates_a_valid_scan():
    fourier = simulate_scan(SimulationConfig(N=32, n_positions=40, seed=3), progress=False)
    bilinear = simulate_scan(SimulationConfig(N=32, n_positions=40, seed=3, patch_extraction="bilinear"),
                             progress=False)
    np.testing.assert_array_equal(fourier["object_guess"], bilinear["object_guess"])
    assert not np.allclose(fourier["diffraction"], bilinear["diffraction"])


@pytest.mark.parametrize("kind", ["siemens_star", "texture", "mixed"])
def test_object_families_beyond_lines(kind):
    """Issue 28: test patterns and textures (and a mix) for corpora that are no lines specialists;
    each seed gives another object, amplitude and phase in range."""
    import numpy as np

    from ptycho_torch.data.simulate import make_object

    a = make_object(kind, (96, 96), np.random.default_rng(0))
    b = make_object(kind, (96, 96), np.random.default_rng(1))
    assert a.shape == (96, 96) and a.dtype == np.complex64 and not np.allclose(a, b)
    assert 0.5 - 1e-6 <= np.abs(a).min() and np.abs(a).max() <= 1 + 1e-6 and np.abs(np.angle(a)).max() <= 1.5 + 1e-6
    assert np.std(np.abs(a)) > 0.05  # structure, not a flat field
