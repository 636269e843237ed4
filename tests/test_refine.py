"""Iterative reconstruction through the project's forward model (ptycho_torch.refine)."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.data.contract import read_scan
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.refine import coverage, flat_start, refine_object


@pytest.fixture(scope="module")
def scan(small_scan):
    return read_scan(small_scan)


def test_gradient_descent_on_the_object_reconstructs_a_simulated_scan(scan):
    start = flat_start(scan.mean_energy(), scan.probe, scan.object_guess.shape)
    weight = coverage(scan.positions, scan.probe, start.shape)
    before = evaluate_reconstruction(start + 1e-3 * np.random.default_rng(0).standard_normal(start.shape),
                                     scan.object_guess, weight)
    result = refine_object(scan.diffraction_rows, scan.positions, scan.probe, start, steps=400)
    after = evaluate_reconstruction(result.object, scan.object_guess, weight)
    assert result.steps == 400 and result.losses[-1] < 0.5 * result.losses[0]
    assert after["phase_ssim"] > before["phase_ssim"] + 0.3, (before["phase_ssim"], after["phase_ssim"])


def test_flat_start_carries_the_data_energy(scan):
    """|O|^2 sum|P|^2 = mean counts (Parseval with the orthonormal FFT)."""
    start = flat_start(scan.mean_energy(), scan.probe, (8, 8))
    power = np.sum(np.abs(scan.probe) ** 2)
    assert np.isclose(np.abs(start[0, 0]) ** 2 * power, scan.mean_energy(), rtol=1e-5)


def test_refine_needs_a_budget(scan):
    with pytest.raises(ValueError, match="steps or seconds"):
        refine_object(scan.diffraction_rows, scan.positions, scan.probe, scan.object_guess)


def test_reconstruct_refines_the_network_object(small_scan, tmp_path):
    """`reconstruct --refine-seconds`: the network's own object stays in OUT/network/, the refined
    one (in the probe's photon units) scores better against the truth on the same region."""
    import json

    from conftest import tiny_config

    from ptycho_torch.cli import main
    from ptycho_torch.workflows.train import train

    run = train(tiny_config(small_scan, **{"training.nepochs": 1}), tmp_path / "run").run_dir
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(run), "--data", str(small_scan), "--out", str(out),
                 "--refine-seconds", "6"]) == 0
    network = json.loads((out / "network" / "metrics.json").read_text())
    refined = json.loads((out / "metrics.json").read_text())
    assert refined["phase_ssim"] > network["phase_ssim"] + 0.1, (network["phase_ssim"], refined["phase_ssim"])
    meta = json.loads(str(np.load(out / "object.npz")["metadata"]))
    assert meta["refine"]["steps"] > 0 and (out / "network" / "object.npz").is_file()
    assert main(["reconstruct", "--model", str(run), "--data", str(small_scan), "--out", str(tmp_path / "r2"),
                 "--refine-seconds", "-1"]) == 2


def test_masked_detector_pixels_do_not_steer_the_refinement(scan):
    """Hot pixels under the detector mask change nothing: the same steps as on clean data (their terms
    and their counts are left out of the loss); without the mask they pull the object away."""
    rows = scan.diffraction_rows(np.arange(scan.n_patterns)).copy()
    hot = rows.copy()
    hot[:, 2, 3] = hot[:, 20, 7] = 3e3
    mask = np.zeros((scan.N, scan.N), dtype=bool)
    mask[2, 3] = mask[20, 7] = True
    start = flat_start(scan.mean_energy(), scan.probe, scan.object_guess.shape)

    def run(data, m):
        return refine_object(lambda idx: data[idx], scan.positions, scan.probe, start, steps=150, mask=m).object

    clean, masked, unmasked = run(rows, mask), run(hot, mask), run(hot, None)
    np.testing.assert_allclose(masked, clean, atol=1e-5)
    assert np.abs(unmasked - clean).max() > 100 * np.abs(masked - clean).max() + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_refinement_on_the_gpu_follows_the_cpu(scan):
    """The same steps on CUDA as on the CPU (float32 rounding apart): a GPU benchmark compares the
    network with a solver on the same device."""
    start = flat_start(scan.mean_energy(), scan.probe, scan.object_guess.shape)
    cpu = refine_object(scan.diffraction_rows, scan.positions, scan.probe, start, steps=50)
    gpu = refine_object(scan.diffraction_rows, scan.positions, scan.probe, start, steps=50, device="cuda")
    weight = coverage(scan.positions, scan.probe, start.shape)
    a = evaluate_reconstruction(cpu.object, scan.object_guess, weight)["phase_ssim"]
    b = evaluate_reconstruction(gpu.object, scan.object_guess, weight)["phase_ssim"]
    assert gpu.object.dtype == np.complex64 and abs(a - b) < 0.02, (a, b)
