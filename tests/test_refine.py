"""Iterative reconstruction through the project's forward model (ptycho_torch.reconstruction.refine)."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.data.contract import read_scan
from ptycho_torch.evaluation.metrics import evaluate_reconstruction
from ptycho_torch.reconstruction.refine import coverage, refine_stitched


@pytest.fixture(scope="module")
def scan(small_scan):
    return read_scan(small_scan)


def test_refining_a_rough_object_improves_it(scan):
    """A blurred, dimmed truth with holes (weight 0) refined for 1 s: closer to the truth."""
    from scipy.ndimage import gaussian_filter

    truth = scan.object_guess
    rough = (gaussian_filter(truth.real, 2) + 1j * gaussian_filter(truth.imag, 2)).astype(np.complex64) * 0.01
    weight = coverage(scan.positions, scan.probe, truth.shape)
    holes = weight.copy()
    holes[:10] = 0
    before = evaluate_reconstruction(rough, truth, weight)["phase_ssim"]
    sol = refine_stitched(rough, holes, scan, scan.probe, seconds=1.0)
    after = evaluate_reconstruction(sol.object, truth, weight)["phase_ssim"]
    assert sol.epochs > 0 and after > before + 0.05, (before, after)


def test_reconstruct_refines_the_network_object(small_scan, tmp_path):
    """`reconstruct --refine-seconds`: the network's own object stays in OUT/network/, the refined
    one (in the probe's photon units) scores better against the truth on the same region."""
    import json

    from conftest import tiny_config

    from ptycho_torch.cli.main import main
    from ptycho_torch.training.train import train

    run = train(tiny_config(small_scan, **{"trainer.max_epochs": 1}), tmp_path / "run").run_dir
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(run), "--data", str(small_scan), "--out", str(out),
                 "--refine-seconds", "6"]) == 0
    network = json.loads((out / "network" / "metrics.json").read_text())
    refined = json.loads((out / "metrics.json").read_text())
    assert refined["phase_ssim"] > network["phase_ssim"] + 0.1, (network["phase_ssim"], refined["phase_ssim"])
    meta = json.loads(str(np.load(out / "object.npz")["metadata"]))
    assert meta["refine"]["epochs"] > 0 and (out / "network" / "object.npz").is_file()
    assert meta["data_fit"]["ratio"] < json.loads(str(np.load(out / "network" / "object.npz")["metadata"]))["data_fit"]["ratio"]
    assert main(["reconstruct", "--model", str(run), "--data", str(small_scan), "--out", str(tmp_path / "r2"),
                 "--refine-seconds", "-1"]) == 2


def test_masked_detector_pixels_do_not_steer_the_solver(scan):
    """Hot pixels under the detector mask change nothing: the same object as from clean data (the
    modulus constraint leaves excluded pixels alone); without the mask they pull the object away."""
    from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve

    rows = scan.diffraction_rows(np.arange(scan.n_patterns)).copy()
    hot = rows.copy()
    hot[:, 2, 3] = hot[:, 20, 7] = 3e3
    mask = np.zeros((scan.N, scan.N), dtype=bool)
    mask[2, 3] = mask[20, 7] = True

    def run(data, m):
        return solve(lambda idx: data[idx], scan.positions, scan.probe, scan.object_shape, epochs=5, mask=m,
                     options=SolverOptions(refine_probe=False)).object

    clean_masked, masked, unmasked = run(rows, mask), run(hot, mask), run(hot, None)
    np.testing.assert_allclose(masked, clean_masked, atol=1e-5)
    assert np.abs(unmasked - clean_masked).max() > 100 * np.abs(masked - clean_masked).max() + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_the_solver_on_the_gpu_follows_the_cpu(scan):
    """The same epochs on CUDA as on the CPU (float32 rounding apart): a GPU benchmark compares the
    network with a solver on the same device."""
    from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve

    runs = [solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_shape, epochs=10, device=d,
                  options=SolverOptions(refine_probe=False)) for d in ("cpu", "cuda")]
    weight = coverage(scan.positions, scan.probe, scan.object_shape)
    a, b = (evaluate_reconstruction(r.object, scan.object_guess, weight)["phase_ssim"] for r in runs)
    assert runs[1].object.dtype == np.complex64 and abs(a - b) < 0.02, (a, b)
