"""Quality metrics (SPEC 8): alignment invariances, PSNR/SSIM/FRC against hand computations."""

import math

import numpy as np
import pytest
from scipy import ndimage

from ptycho_torch.evaluation.metrics import (
    align_phase,
    evaluate_reconstruction,
    frc,
    match_amplitude_scale,
    psnr,
    scanned_region,
    ssim,
)


def smooth_object(H=72, W=88, seed=0):
    """Smooth complex object: amplitude in ~[0.5, 0.9], phase spanning a few radians."""
    rng = np.random.default_rng(seed)
    amp = ndimage.gaussian_filter(rng.random((H, W)), 2)
    amp = 0.5 + 0.4 * (amp - amp.min()) / np.ptp(amp)
    phase = ndimage.gaussian_filter(rng.standard_normal((H, W)), 3)
    phase = 2.5 * phase / np.abs(phase).max()
    return (amp * np.exp(1j * phase)).astype(np.complex128)


def noisy(obj, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return obj + sigma * (rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape))




# ------------------------------------------------------------------ alignment


def test_phase_offset_and_amplitude_scale_removed_exactly():
    truth = smooth_object()
    recon = 0.37 * truth * np.exp(1j * 3.0)  # offset near pi: the mean of angles would fail
    aligned = align_phase(recon, truth)
    scale = match_amplitude_scale(np.abs(aligned), np.abs(truth))
    assert scale == pytest.approx(1 / 0.37, rel=1e-12)
    np.testing.assert_allclose(scale * aligned, truth, atol=1e-12)


def test_align_phase_uses_only_the_mask():
    truth = smooth_object()
    recon = truth * np.exp(-1j * 1.2)
    mask = np.zeros(truth.shape, bool)
    mask[10:40, 10:50] = True
    recon[~mask] = 5.0  # garbage outside the mask must not matter
    aligned = align_phase(recon, truth, mask)
    np.testing.assert_allclose(aligned[mask], truth[mask], atol=1e-12)


@pytest.mark.parametrize("gy, gx", [(0.05, -0.03), (1.1, 2.7)])  # gentle, and wrapping many times
def test_plane_fit_removes_a_linear_ramp(gy, gx):
    truth = smooth_object()
    Y, X = np.mgrid[: truth.shape[0], : truth.shape[1]]
    recon = truth * np.exp(1j * (0.8 + gy * Y + gx * X))
    np.testing.assert_allclose(align_phase(recon, truth, plane_fit=True), truth, atol=1e-9)
    # without the plane fit the ramp stays
    assert np.abs(align_phase(recon, truth) - truth).max() > 0.1
    m = evaluate_reconstruction(recon, truth, plane_fit=True)
    np.testing.assert_allclose(m["phase_ramp_rad_per_px"], [-gy, -gx], atol=1e-9)
    assert m["phase_ssim"] == pytest.approx(1.0, abs=1e-9)


def test_match_amplitude_scale_zero_recon_is_one():
    assert match_amplitude_scale(np.zeros((4, 4)), np.ones((4, 4))) == 1.0


# ------------------------------------------------------------------ PSNR / SSIM


def test_identical_images_psnr_inf_ssim_one_frc_one():
    truth = smooth_object()
    assert psnr(np.abs(truth), np.abs(truth), 1.0) == math.inf
    assert ssim(np.angle(truth), np.angle(truth), 5.0) == pytest.approx(1.0, abs=1e-12)
    curve = np.asarray(frc(truth, truth)["curve"])
    np.testing.assert_allclose(curve, 1.0, atol=1e-9)
    m = evaluate_reconstruction(truth, truth)
    assert m["amplitude_psnr"] > 250 and m["phase_psnr"] > 250  # rounding of exp(i * ~0) only
    assert m["amplitude_ssim"] == pytest.approx(1.0) and m["phase_ssim"] == pytest.approx(1.0)
    assert m["frc_half_freq"] == pytest.approx(0.5) and not m["frc"]["crossed_half"]


def test_psnr_matches_hand_computation():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[0.0, 1.5], [2.0, 2.0]])
    mse = (0.25 + 1.0) / 4
    assert psnr(a, b, 3.0) == pytest.approx(10 * math.log10(9.0 / mse))
    mask = np.array([[True, True], [False, False]])
    assert psnr(a, b, 2.0, mask) == pytest.approx(10 * math.log10(4.0 / (0.25 / 2)))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_data_range_must_be_positive(bad):
    a = np.ones((8, 8))
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, bad)
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, a, bad)


def test_shape_mismatch_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(8, 9\)"):
        psnr(np.ones((8, 8)), np.ones((8, 9)), 1.0)
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(16, 17\)"):
        evaluate_reconstruction(np.ones((16, 16), complex), np.ones((16, 17), complex))
    with pytest.raises(ValueError, match="weight shape"):
        evaluate_reconstruction(np.ones((16, 16), complex), np.ones((16, 16), complex), np.ones((4, 4)))


def test_ssim_of_a_constant_shift_matches_the_luminance_term():
    a = np.full((32, 32), 0.5)
    for c in (0.05, 0.2):
        c1 = (0.01 * 1.0) ** 2
        expected = (2 * 0.5 * (0.5 + c) + c1) / (0.5**2 + (0.5 + c) ** 2 + c1)
        assert ssim(a, a + c, 1.0) == pytest.approx(expected, rel=1e-9)
    # on a textured image a larger shift costs more, and structure is untouched
    tex = np.random.default_rng(0).random((32, 32))
    assert 1.0 > ssim(tex, tex + 0.05, 1.0) > ssim(tex, tex + 0.2, 1.0) > 0.5


def test_noise_lowers_psnr_and_ssim_monotonically():
    truth = smooth_object()
    rows = [evaluate_reconstruction(noisy(truth, s), truth) for s in (0.005, 0.02, 0.05, 0.15)]
    for key in ("amplitude_psnr", "amplitude_ssim", "phase_psnr", "phase_ssim", "frc_half_freq"):
        values = [r[key] for r in rows]
        assert all(x > y for x, y in zip(values, values[1:])), (key, values)


def test_ssim_mask_ignores_outside_pixels():
    a = np.random.default_rng(0).random((40, 40))
    b = a.copy()
    mask = np.zeros_like(a, bool)
    mask[5:25, 5:25] = True
    b[~mask] = 0.0
    assert ssim(a, b, 1.0, mask) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, 1.0) < 0.9


# ------------------------------------------------------------------ FRC


def test_frc_of_independent_noise_is_low():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((128, 128)) + 1j * rng.standard_normal((128, 128))
    b = rng.standard_normal((128, 128)) + 1j * rng.standard_normal((128, 128))
    result = frc(a, b)
    curve = np.asarray(result["curve"])
    assert np.abs(curve[4:]).mean() < 0.08
    assert result["threshold_half"] < 0.05


def test_frc_thresholds_of_a_blurred_image_between_analytic_bounds():
    # a, b = blur(x) + independent noise eps: FRC(f) = S / (S + eps^2), S = exp(-(2 pi sigma f)^2),
    # so FRC = 0.5 at f = sqrt(ln(1/eps^2)) / (2 pi sigma) ~ 0.195 and 1/7 at ~0.222 (sigma 2, eps .05)
    rng = np.random.default_rng(4)
    x = ndimage.gaussian_filter(rng.standard_normal((160, 160)), 2.0, mode="wrap")
    eps = 0.05
    a = x + eps * rng.standard_normal(x.shape)
    b = x + eps * rng.standard_normal(x.shape)
    result = frc(a, b)
    f_half = math.sqrt(math.log(1 / eps**2)) / (2 * math.pi * 2.0)
    f_17 = math.sqrt(math.log(6 / eps**2)) / (2 * math.pi * 2.0)
    assert result["crossed_half"] and result["crossed_17"]
    assert abs(result["threshold_half"] - f_half) < 0.03
    assert abs(result["threshold_17"] - f_17) < 0.03
    assert result["threshold_half"] < result["threshold_17"]
    assert result["resolution_half_px"] == pytest.approx(1 / result["threshold_half"])
    freq = np.asarray(result["freq"])
    assert freq[0] > 0 and freq[-1] == pytest.approx(0.5) and len(freq) == len(result["curve"])


def test_frc_masked_region_with_taper():
    truth = smooth_object(96, 96)
    mask = np.zeros(truth.shape, bool)
    mask[20:70, 15:80] = True
    result = frc(noisy(truth, 0.01), truth, mask)
    assert result["n"] == 65
    assert np.asarray(result["curve"])[:5].min() > 0.9


# ------------------------------------------------------------------ region and full evaluation


def test_scanned_region_threshold_and_erosion():
    w = np.zeros((30, 30))
    w[5:25, 5:25] = 1.0
    w[5:25, 5] = 0.05  # a faint rim below 10 % of the maximum
    region = scanned_region(w, threshold=0.1)
    assert region.sum() == 20 * 19 and not region[10, 5]
    eroded = scanned_region(w, threshold=0.1, erode_px=2)
    assert eroded.sum() == 16 * 15
    assert not scanned_region(np.zeros((4, 4))).any()


def test_evaluate_reconstruction_restricts_to_scanned_region():
    truth = smooth_object()
    recon = 2.0 * truth * np.exp(1j * 0.4)
    weight = np.zeros(truth.shape, np.float32)
    weight[10:60, 12:70] = 1.0
    recon[weight == 0] = 0  # the stitcher leaves unseen pixels at zero
    m = evaluate_reconstruction(recon, truth, weight)
    assert m["n_pixels"] == 50 * 58 and m["region_bbox"] == [10, 60, 12, 70]
    assert m["amplitude_psnr"] > 200 and m["phase_ssim"] == pytest.approx(1.0)
    assert m["amplitude_scale"] == pytest.approx(0.5) and m["phase_offset_rad"] == pytest.approx(-0.4)
    region = weight > 0
    amp = np.abs(truth[region])
    assert m["amplitude_data_range"] == pytest.approx(amp.max() - amp.min())
    assert m["amplitude_data_range_kind"] == "span" and m["phase_data_range_kind"] == "span"
    with pytest.raises(ValueError, match="scanned region is empty"):
        evaluate_reconstruction(recon, truth, np.zeros_like(weight))


def test_evaluate_pure_phase_object_uses_max_amplitude_range():
    truth = np.exp(1j * smooth_object().real)
    m = evaluate_reconstruction(noisy(truth, 0.01), truth)
    assert m["amplitude_data_range_kind"] == "max" and m["amplitude_data_range"] == pytest.approx(1.0)
    assert math.isfinite(m["amplitude_psnr"])


def test_phase_metrics_do_not_suffer_from_wrapping():
    truth = smooth_object()
    recon = truth * np.exp(1j * (math.pi - 0.01))  # moves much of the phase across +-pi
    m = evaluate_reconstruction(noisy(recon, 0.01), truth)
    ref = evaluate_reconstruction(noisy(truth, 0.01), truth)
    assert m["phase_psnr"] == pytest.approx(ref["phase_psnr"], abs=0.1)
    assert m["phase_rmse_rad"] < 0.05
