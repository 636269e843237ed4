"""Figures (plots.py) and the evaluate workflow end to end on synthetic files."""

import json
import math
import struct

import numpy as np
import pytest
from scipy import ndimage

from ptycho_torch.evaluation import plots
from ptycho_torch.evaluation.evaluate import evaluate
from ptycho_torch.evaluation.metrics import frc


def png_size(path):
    """(width, height) from the PNG header; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def expected_size(figsize):
    return round(figsize[0] * plots.DPI), round(figsize[1] * plots.DPI)


def smooth_object(H=64, W=72, seed=0):
    rng = np.random.default_rng(seed)
    amp = ndimage.gaussian_filter(rng.random((H, W)), 2)
    amp = 0.5 + 0.4 * (amp - amp.min()) / np.ptp(amp)
    phase = ndimage.gaussian_filter(rng.standard_normal((H, W)), 3)
    return (amp * np.exp(1j * 2.0 * phase / np.abs(phase).max())).astype(np.complex64)


def scanned_weight(shape, box=(8, 56, 10, 62)):
    w = np.zeros(shape, np.float32)
    y0, y1, x0, x1 = box
    w[y0:y1, x0:x1] = 1.0
    return w


# ------------------------------------------------------------------ figures


def test_save_complex_images_with_weight(tmp_path):
    obj = smooth_object()
    amp, phase = plots.save_complex_images(obj, tmp_path / "out", prefix="recon_", weight=scanned_weight(obj.shape))
    assert amp == tmp_path / "out" / "recon_amplitude.png" and phase.name == "recon_phase.png"
    for p in (amp, phase):
        assert png_size(p) == expected_size((5.5, 4.5))


def test_save_comparison_and_frc_plot(tmp_path):
    truth = smooth_object()
    rng = np.random.default_rng(1)
    recon = 0.8 * truth * np.exp(1j * 2.5) + 0.02 * rng.standard_normal(truth.shape)
    path = plots.save_comparison(recon, truth, tmp_path / "cmp.png", weight=scanned_weight(truth.shape))
    assert png_size(path) == expected_size((14, 8.5))
    path = plots.save_frc_plot(frc(recon, truth), tmp_path / "frc.png")
    assert png_size(path) == expected_size((6.5, 4.5))
    # a curve that never crosses still plots
    path = plots.save_frc_plot(frc(truth, truth), tmp_path / "frc_perfect.png")
    assert path.stat().st_size > 1000


METRICS_CSV = """epoch,lr-Adam,step,train_loss,train_nll,val_loss,val_nll
0,0.001,3,,,,
0,,3,,,2.51,2.40
0,,3,3.10,3.00,,
1,0.001,7,,,,
1,,7,,,1.92,1.85
1,,7,2.20,2.10,,
2,0.0005,11,,,,
2,,11,,,1.60,1.55
2,,11,1.75,1.70,,
"""


def test_save_loss_curves_from_sparse_lightning_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(METRICS_CSV)
    path = plots.save_loss_curves(csv_path, tmp_path / "loss.png")
    assert png_size(path) == expected_size((6.5, 4.5))
    series = plots._rows_from(csv_path)
    assert len(series) == 9 and math.isnan(series[0]["train_loss"]) and series[2]["train_loss"] == 3.10


def test_save_loss_curves_from_history_rows_and_columns(tmp_path):
    rows = [{"epoch": 0.0, "train_loss": -1.0, "val_loss": -0.5}, {"epoch": 1.0, "train_loss": -2.0}]
    assert plots.save_loss_curves(rows, tmp_path / "a.png").stat().st_size > 1000  # negative: linear y
    cols = {"train_loss": [3.0, 2.0, 1.5], "val_loss": [3.2, float("nan"), 1.7]}
    assert plots.save_loss_curves(cols, tmp_path / "b.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no loss values"):
        plots.save_loss_curves([{"epoch": 0, "lr": 0.1}], tmp_path / "c.png")


def test_save_trial_curves(tmp_path):
    curves = {f"trial_{i}": (np.arange(5), np.exp(-np.arange(5) * (i + 1) / 4)) for i in range(4)}
    curves["diverged"] = ([0, 1, 2], [1.0, float("nan"), float("nan")])
    path = plots.save_trial_curves(curves, tmp_path / "trials.png", "val_loss")
    assert png_size(path) == expected_size((7.5, 4.8))
    with pytest.raises(ValueError, match="3 epochs but 2 values"):
        plots.save_trial_curves({"x": ([0, 1, 2], [1, 2])}, tmp_path / "bad.png", "val_loss")


# ------------------------------------------------------------------ evaluate workflow


def write_recon(path, obj, weight):
    np.savez(path, object=obj.astype(np.complex64), weight=weight.astype(np.float32),
             xcoords=np.arange(3.0), ycoords=np.arange(3.0), metadata=np.array(json.dumps({"engine": "test"})))
    return path


def test_evaluate_end_to_end(tmp_path):
    truth = smooth_object()
    weight = scanned_weight(truth.shape)
    recon = (0.6 * truth * np.exp(-1j * 1.3)).astype(np.complex64)
    recon[weight == 0] = 0
    (tmp_path / "recon").mkdir()
    recon_path = write_recon(tmp_path / "recon" / "object.npz", recon, weight)
    truth_path = tmp_path / "truth.npz"
    np.savez(truth_path, objectGuess=truth)
    result = evaluate(recon_path, truth_path, None)
    out = tmp_path / "recon" / "metrics.json"
    for name in ("metrics.json", "frc.png", "comparison.png"):
        assert (tmp_path / "recon" / name).stat().st_size > 0
    stored = json.loads(out.read_text())
    for key in ("amplitude_psnr", "amplitude_ssim", "phase_psnr", "phase_ssim", "frc_half_resolution_px",
                "frc_17_resolution_px", "amplitude_data_range", "phase_data_range_rad", "n_pixels",
                "amplitude_scale", "phase_offset_rad", "frc", "recon", "truth"):
        assert key in stored
    assert stored["n_pixels"] == 48 * 52
    assert stored["amplitude_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert stored["phase_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert stored["amplitude_psnr"] > 80 and stored["amplitude_scale"] == pytest.approx(1 / 0.6, rel=1e-5)
    assert stored["phase_offset_rad"] == pytest.approx(1.3, abs=1e-5)
    assert stored["frc"]["curve"] == pytest.approx(result["frc"]["curve"])
    region = weight > 0
    assert stored["amplitude_data_range"] == pytest.approx(float(np.ptp(np.abs(truth[region]))), rel=1e-5)


def test_evaluate_perfect_match_writes_strict_json(tmp_path):
    truth = smooth_object()
    recon_path = write_recon(tmp_path / "object.npz", truth, np.ones(truth.shape))
    np.save(tmp_path / "truth.npy", truth)
    result = evaluate(recon_path, tmp_path / "truth.npy", tmp_path / "m" / "scores.json")
    assert result["amplitude_psnr"] == math.inf
    text = (tmp_path / "m" / "scores.json").read_text()
    assert "Infinity" not in text and json.loads(text)["amplitude_psnr"] is None
    assert (tmp_path / "m" / "frc.png").is_file()


def test_evaluate_reads_a_scan_file_through_the_contract(tmp_path):
    pytest.importorskip("ptycho_torch.data.contract")
    truth = smooth_object()
    N, M = 16, 4
    probe = np.ones((N, N), np.complex64)
    scan = dict(diffraction=np.ones((M, N, N), np.float32), probeGuess=probe,
                xcoords=np.array([20.0, 30, 40, 50]), ycoords=np.array([20.0, 25, 30, 35]))
    np.savez(tmp_path / "scan.npz", objectGuess=truth, **scan)
    np.savez(tmp_path / "no_truth.npz", **scan)
    recon_path = write_recon(tmp_path / "object.npz", truth, scanned_weight(truth.shape))
    result = evaluate(recon_path, tmp_path / "scan.npz", plots=False)
    assert result["phase_ssim"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"has no ground truth \(objectGuess\)"):
        evaluate(recon_path, tmp_path / "no_truth.npz", plots=False)


def test_evaluate_clear_errors(tmp_path):
    truth = smooth_object()
    np.savez(tmp_path / "truth.npz", objectGuess=truth)
    np.savez(tmp_path / "bad_recon.npz", obj=truth)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['object', 'weight'\]"):
        evaluate(tmp_path / "bad_recon.npz", tmp_path / "truth.npz")
    small = write_recon(tmp_path / "small.npz", truth[:32, :32], np.ones((32, 32)))
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(64, 72\)"):
        evaluate(small, tmp_path / "truth.npz")
    np.savez(tmp_path / "two.npz", a=truth, b=truth)
    with pytest.raises(ValueError, match="no ground truth"):
        evaluate(small, tmp_path / "two.npz")
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "missing.npz", tmp_path / "truth.npz")


def test_frc_in_nm_when_the_object_pixel_size_is_known(tmp_path):
    """An object.npz that records its pixel size gives the FRC resolutions in nm (metrics.json, the
    plot's labels); one without it stays in pixels."""
    rng = np.random.default_rng(5)
    truth = smooth_object()
    weight = scanned_weight(truth.shape)
    recon = (truth + 0.05 * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape)))
    recon = recon.astype(np.complex64)
    np.save(tmp_path / "truth.npy", truth)
    pixel_m = 12.5e-9
    (tmp_path / "nm").mkdir()
    path = tmp_path / "nm" / "object.npz"
    np.savez(path, object=recon, weight=weight, pixel_size_m=np.float64(pixel_m))
    with_nm = evaluate(path, tmp_path / "truth.npy", None)
    stored = json.loads((tmp_path / "nm" / "metrics.json").read_text())
    for key in ("half", "17"):
        px = stored[f"frc_{key}_resolution_px"]
        assert stored[f"frc_{key}_resolution_nm"] == pytest.approx(px * 12.5)
        assert stored["frc"][f"resolution_{key}_nm"] == pytest.approx(px * 12.5)
    assert with_nm["frc"]["pixel_size_m"] == pytest.approx(pixel_m)
    (tmp_path / "px").mkdir()
    plain = write_recon(tmp_path / "px" / "object.npz", recon, weight)
    without = evaluate(plain, tmp_path / "truth.npy", None)
    assert "frc_half_resolution_nm" not in without and "pixel_size_m" not in without["frc"]
    assert without["frc_half_resolution_px"] == pytest.approx(with_nm["frc_half_resolution_px"])
    labels = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.legend

    def keep_labels(self, *args, **kwargs):
        labels.extend(h.get_label() for h in self.get_legend_handles_labels()[0])
        return original(self, *args, **kwargs)

    matplotlib.axes.Axes.legend = keep_labels
    try:
        plots.save_frc_plot(with_nm["frc"], tmp_path / "frc_nm.png")
    finally:
        matplotlib.axes.Axes.legend = original
    assert any(" nm)" in label for label in labels), labels
