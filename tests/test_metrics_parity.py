"""SSIM, PSNR and FRC against reference implementations on the same images.

SSIM and PSNR: scikit-image (`skimage.metrics`). FRC: the textbook definition (van Heel & Schatz,
J. Struct. Biol. 2005), FRC(k) = Re sum_{|q| in ring k} A(q) conj(B(q)) / sqrt(sum |A|^2 sum |B|^2),
written here ring by ring as a plain loop, on a square image without window or mean removal.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.evaluation.metrics import frc, psnr, ssim, ssim_map

skimage_metrics = pytest.importorskip("skimage.metrics")


def _images(seed: int = 0, shape: tuple[int, int] = (64, 80)) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return a, a + 0.05 * rng.standard_normal(shape)


@pytest.mark.parametrize("data_range", [1.0, 0.3])
def test_ssim_equals_scikit_image_away_from_the_border(data_range):
    a, b = _images()
    ours, _ = ssim_map(a, b, data_range)
    mean, theirs = skimage_metrics.structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
    pad = 5  # scikit-image's window radius for sigma 1.5 (truncate 3.5); it crops it from the mean too
    np.testing.assert_allclose(ours[pad:-pad, pad:-pad], theirs[pad:-pad, pad:-pad], rtol=0, atol=1e-10)
    inner = np.zeros(a.shape, bool)
    inner[pad:-pad, pad:-pad] = True
    assert float(np.mean(ours[inner])) == pytest.approx(mean, abs=1e-10)
    assert ssim(a, a, data_range) == pytest.approx(1.0, abs=1e-12)


def test_psnr_equals_scikit_image():
    a, b = _images(1)
    for data_range in (1.0, 2.5):
        assert psnr(a, b, data_range) == pytest.approx(
            skimage_metrics.peak_signal_noise_ratio(a, b, data_range=data_range), rel=1e-12)


def _frc_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    A, B = np.fft.fft2(a), np.fft.fft2(b)
    f = np.fft.fftfreq(n) * n
    radius = np.hypot(f[:, None], f[None, :])
    out = []
    for k in range(1, n // 2 + 1):
        ring = np.rint(radius) == k
        num = np.sum(A[ring] * np.conj(B[ring])).real
        out.append(num / np.sqrt(np.sum(np.abs(A[ring]) ** 2) * np.sum(np.abs(B[ring]) ** 2)))
    return np.array(out)


def test_frc_equals_the_ring_by_ring_definition():
    a, b = _images(2, (64, 64))
    ours = frc(a, b, taper_px=0.0, subtract_mean=False)
    np.testing.assert_allclose(ours["curve"], _frc_reference(a, b), rtol=0, atol=1e-12)
    assert np.allclose(frc(a, a, taper_px=0.0)["curve"], 1.0)
    rng = np.random.default_rng(3)
    noise = frc(rng.standard_normal((64, 64)), rng.standard_normal((64, 64)), taper_px=0.0)["curve"]
    assert abs(float(np.mean(noise))) < 0.05  # independent images: no correlation on average
