"""Reconstruction quality against a ground truth: phase alignment, PSNR, SSIM, FRC (SPEC 7-8).

Pure numpy/scipy functions on 2-D images (H, W); no torch. Conventions:
    recon, truth   complex object (H, W) in the same pixel frame (SPEC 7: object[y, x] at scan (x, y))
    amplitude      |O|, dimensionless transmission
    phase          arg O in radians
    mask           bool (H, W), True where pixels are compared (the scanned region)
    frequencies    cycles per pixel (Nyquist = 0.5); resolutions in pixels (one full period, 1/f)

A reconstruction is only defined up to a global phase factor (and, for the network, an amplitude
scale), so `evaluate_reconstruction` removes both, optionally with a linear phase ramp, before
scoring. Data ranges for PSNR/SSIM are always explicit and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "align_phase", "match_amplitude_scale", "psnr", "ssim", "frc", "scanned_region", "AlignedPair",
    "align_pair", "evaluate_reconstruction", "resolution_in_nm",
]

FRC_HALF = 0.5
FRC_17 = 1.0 / 7.0


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str = "a, b") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"{names} must be 2-D images (H, W), got shape {a.shape}")


def _mask_or_all(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape} but the images are {shape}")
    return mask


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), half-open bounding box of the True pixels of `mask` (H, W)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("the mask selects no pixel (empty scanned region)")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# ------------------------------------------------------------------ alignment

def _phase_fit(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray, plane_fit: bool
               ) -> tuple[float, float, float, float, float]:
    """Fit truth ~ recon * exp(i (c + gy (y - yc) + gx (x - xc))) on `mask`.

    Returns (c rad, gy rad/px, gx rad/px, yc px, xc px). The ramp starts from the peak of the
    2x-padded FFT of truth * conj(recon) (so ramps that wrap many times are caught), then is refined
    by |z|-weighted least squares on the wrapped residual phase; c = angle(sum z e^{-i ramp}).
    """
    y0, y1, x0, x1 = _bbox(mask)
    z = np.where(mask, truth * np.conj(recon), 0)[y0:y1, x0:x1]  # (h, w) complex
    yc, xc = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    Y = (np.arange(y0, y1) - yc)[:, None]
    X = (np.arange(x0, x1) - xc)[None, :]
    gy = gx = 0.0
    if plane_fit and np.count_nonzero(z) >= 3:
        h, w = z.shape
        spec = np.abs(np.fft.fft2(z, s=(2 * h, 2 * w)))
        py, px = np.unravel_index(int(np.argmax(spec)), spec.shape)
        gy, gx = 2 * np.pi * np.fft.fftfreq(2 * h)[py], 2 * np.pi * np.fft.fftfreq(2 * w)[px]
        sel = np.abs(z) > 0
        wts = np.sqrt(np.abs(z[sel]))
        A = np.stack([np.ones(sel.sum()), np.broadcast_to(Y, z.shape)[sel],
                      np.broadcast_to(X, z.shape)[sel]], 1) * wts[:, None]  # (K, 3)
        for _ in range(2):
            zz = z * np.exp(-1j * (gy * Y + gx * X))
            res = np.angle(zz * np.exp(-1j * np.angle(zz.sum())))[sel]  # wrapped residual about 0 (K,)
            coef = np.linalg.lstsq(A, res * wts, rcond=None)[0]
            gy, gx = gy + float(coef[1]), gx + float(coef[2])
    total = np.sum(z * np.exp(-1j * (gy * Y + gx * X)))
    c = float(np.angle(total)) if abs(total) > 0 else 0.0
    return c, float(gy), float(gx), float(yc), float(xc)


def _apply_phase(recon: np.ndarray, fit: tuple[float, float, float, float, float]) -> np.ndarray:
    c, gy, gx, yc, xc = fit
    H, W = recon.shape
    Y = (np.arange(H) - yc)[:, None]
    X = (np.arange(W) - xc)[None, :]
    return recon * np.exp(1j * (c + gy * Y + gx * X))


def align_phase(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                plane_fit: bool = False) -> np.ndarray:
    """Remove the global phase offset (and optionally a linear phase ramp) of `recon` w.r.t. `truth`.

    recon, truth: (H, W) complex; mask: (H, W) bool or None (all pixels). The offset is
    angle(sum_mask conj(recon) * truth), which is insensitive to phase wrapping and weights pixels by
    |recon||truth|. With `plane_fit`, a ramp gy*y + gx*x (rad/px) is fitted first (FFT peak, then
    weighted least squares on the wrapped phase difference within the mask). Returns the aligned
    reconstruction (H, W) complex128: recon * exp(i (offset + ramp)).
    """
    recon, truth = np.asarray(recon), np.asarray(truth)
    _check_same_shape(recon, truth, "recon, truth")
    mask = _mask_or_all(mask, recon.shape)
    return _apply_phase(recon.astype(np.complex128), _phase_fit(recon, truth, mask, plane_fit))


def match_amplitude_scale(recon_amp: np.ndarray, truth_amp: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Least-squares scalar s minimising sum_mask (s * recon_amp - truth_amp)^2; (H, W) real inputs.

    s = <r, t> / <r, r>; 1.0 when the reconstruction is zero on the mask.
    """
    r, t = np.asarray(recon_amp, dtype=np.float64), np.asarray(truth_amp, dtype=np.float64)
    _check_same_shape(r, t, "recon_amp, truth_amp")
    m = _mask_or_all(mask, r.shape)
    den = float(np.sum(r[m] ** 2))
    return float(np.sum(r[m] * t[m]) / den) if den > 0 else 1.0


# ------------------------------------------------------------------ PSNR / SSIM

def _check_range(data_range: float) -> float:
    if not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    return float(data_range)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE) over the mask.

    a, b: (H, W) real (or complex: MSE of |a - b|^2); data_range: in the images' units, > 0
    (ValueError otherwise). Returns inf for identical images.
    """
    data_range = _check_range(data_range)
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    m = _mask_or_all(mask, a.shape)
    if not m.any():
        raise ValueError("psnr: the mask selects no pixel")
    mse = float(np.mean(np.abs(a[m].astype(np.complex128) - b[m]) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, mask: np.ndarray | None = None,
         win_sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of real images a, b (H, W): the mean of `ssim_map`
    over the mask."""
    smap, m = ssim_map(a, b, data_range, mask, win_sigma)
    return float(np.mean(smap[m]))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float, mask: np.ndarray | None = None,
             win_sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Local structural similarity (Wang et al. 2004) of real images a, b (H, W): (map (H, W), mask).

    Away from the mask's edge (and the image border) the map equals scikit-image's
    `structural_similarity(gaussian_weights=True, use_sample_covariance=False)` (tested).

    Local statistics use a Gaussian window (sigma `win_sigma` px, truncated at 3.5 sigma: 11x11 for
    1.5) and population (co)variances; K1 = 0.01, K2 = 0.03, C = (K L)^2 with L = data_range (> 0).
    Only pixels inside the mask enter the local statistics (normalised convolution), so pixels
    outside the scanned region, and the image border, do not bias the result.
    """
    data_range = _check_range(data_range)
    a, b = np.asarray(a), np.asarray(b)
    if np.iscomplexobj(a) or np.iscomplexobj(b):
        raise ValueError("ssim needs real images; pass amplitude or phase")
    _check_same_shape(a, b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    m = _mask_or_all(mask, a.shape)
    if not m.any():
        raise ValueError("ssim: the mask selects no pixel")
    mf = m.astype(np.float64)

    def smooth(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, win_sigma, mode="constant", truncate=3.5)

    wsum = np.maximum(smooth(mf), 1e-12)
    mu_a, mu_b = smooth(mf * a) / wsum, smooth(mf * b) / wsum
    s_aa = smooth(mf * a * a) / wsum - mu_a * mu_a
    s_bb = smooth(mf * b * b) / wsum - mu_b * mu_b
    s_ab = smooth(mf * a * b) / wsum - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return smap, m


# ------------------------------------------------------------------ FRC

def _taper(mask: np.ndarray, taper_px: float) -> np.ndarray:
    """(h, w) float window: 1 deep inside the mask, raised-cosine to ~0 over `taper_px` at its edge."""
    if taper_px <= 0:
        return mask.astype(np.float64)
    d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # px to the nearest outside pixel
    return np.where(mask, 0.5 - 0.5 * np.cos(np.pi * np.clip(d / taper_px, 0, 1)), 0.0)


def _crossing(freq: np.ndarray, curve: np.ndarray, threshold: float) -> tuple[float, bool]:
    """First frequency where `curve` falls below `threshold` (linear interpolation); (f, crossed)."""
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return float(freq[-1]), False
    j = int(below[0])
    if j == 0:
        return float(freq[0]), True
    c0, c1 = curve[j - 1], curve[j]
    t = (c0 - threshold) / (c0 - c1)
    return float(freq[j - 1] + t * (freq[j] - freq[j - 1])), True


def frc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, taper_px: float = 8.0,
        subtract_mean: bool = True) -> dict[str, Any]:
    """Fourier ring correlation of two images a, b (H, W), complex or real.

    The images are cropped to the bounding box of `mask` (all pixels when None), multiplied by a
    window that is 1 inside the mask and falls smoothly to 0 over `taper_px` pixels at the mask's
    edge (0 = hard mask), the weighted mean is removed (`subtract_mean`), and both are zero-padded
    to a square n x n. Rings are one frequency bin (1/n cycles/px) wide, k = 1 .. n//2 (DC dropped):
        FRC(k) = Re sum_ring A conj(B) / sqrt(sum_ring |A|^2 sum_ring |B|^2).
    Returns a dict: freq (cycles/px, list), curve (list), threshold_half / threshold_17 (cycles/px
    where the curve first falls below 0.5 / 1/7, interpolated; the highest frequency if it never
    does, with crossed_half / crossed_17 False), resolution_half_px / resolution_17_px (1/freq,
    one full period in pixels), n (padded size).
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    m = _mask_or_all(mask, a.shape)
    y0, y1, x0, x1 = _bbox(m)
    m = m[y0:y1, x0:x1]
    a = a[y0:y1, x0:x1].astype(np.complex128)
    b = b[y0:y1, x0:x1].astype(np.complex128)
    n = max(m.shape)
    if n < 8:
        raise ValueError(f"frc needs a region of at least 8 pixels across, got {m.shape}")
    w = _taper(m, taper_px)
    if subtract_mean:
        a = a - np.sum(w * a) / np.sum(w)
        b = b - np.sum(w * b) / np.sum(w)
    A = np.fft.fft2(w * a, s=(n, n))  # (n, n)
    B = np.fft.fft2(w * b, s=(n, n))
    f = np.fft.fftfreq(n)
    k = np.rint(np.hypot(f[:, None], f[None, :]) * n).astype(np.int64).ravel()  # ring index per pixel
    keep = k <= n // 2
    k = k[keep]
    num = np.bincount(k, (A * np.conj(B)).real.ravel()[keep], minlength=n // 2 + 1)
    pa = np.bincount(k, (np.abs(A) ** 2).ravel()[keep], minlength=n // 2 + 1)
    pb = np.bincount(k, (np.abs(B) ** 2).ravel()[keep], minlength=n // 2 + 1)
    den = np.sqrt(pa * pb)
    curve = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)[1:]
    freq = np.arange(1, n // 2 + 1) / n
    f_half, crossed_half = _crossing(freq, curve, FRC_HALF)
    f_17, crossed_17 = _crossing(freq, curve, FRC_17)
    return {
        "freq": freq.tolist(), "curve": curve.tolist(),
        "threshold_half": f_half, "threshold_17": f_17,
        "resolution_half_px": 1.0 / f_half, "resolution_17_px": 1.0 / f_17,
        "crossed_half": crossed_half, "crossed_17": crossed_17, "n": int(n),
    }


# ------------------------------------------------------------------ regions and the full evaluation

def scanned_region(weight: np.ndarray, threshold: float = 0.1, erode_px: int = 0) -> np.ndarray:
    """Bool (H, W): pixels where the stitching weight (H, W) exceeds threshold * max(weight).

    `erode_px` > 0 shrinks the region by a disk of that radius (pixels), dropping the poorly
    constrained rim; the image border does not erode. Non-finite weights count as outside.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight must be a 2-D map (H, W), got shape {w.shape}")
    w = np.where(np.isfinite(w), w, 0.0)
    top = float(w.max()) if w.size else 0.0
    if top <= 0:
        return np.zeros(w.shape, dtype=bool)
    region = w > threshold * top
    if erode_px > 0:
        r = int(erode_px)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        region = ndimage.binary_erosion(region, structure=yy**2 + xx**2 <= r * r, border_value=1)
    return region


@dataclass
class AlignedPair:
    """A reconstruction aligned to its truth, cropped to the bounding box of the scanned region.

    recon, truth: (h, w) complex128 (recon phase-aligned and amplitude-scaled); mask (h, w) bool;
    *_amp dimensionless; *_phase in rad, with a common constant removed so the truth's mean phase
    is ~0, and recon_phase = truth_phase + wrapped(arg recon - arg truth) (no wrapping artefacts).
    bbox = (y0, y1, x0, x1) in the full image.
    """

    recon: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    recon_amp: np.ndarray
    truth_amp: np.ndarray
    recon_phase: np.ndarray
    truth_phase: np.ndarray
    phase_offset_rad: float
    phase_ramp_rad_per_px: tuple[float, float]  # (gy, gx)
    amplitude_scale: float
    bbox: tuple[int, int, int, int]


def align_pair(recon: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None,
               plane_fit: bool = False, weight_threshold: float = 0.1, erode_px: int = 0) -> AlignedPair:
    """Mask to the scanned region of `weight` (all pixels when None), align phase, match scale."""
    recon, truth = np.asarray(recon), np.asarray(truth)
    if recon.shape != truth.shape:
        raise ValueError(f"reconstruction shape {recon.shape} differs from ground truth shape {truth.shape}; "
                         "both must be in the scan's pixel frame (docs/data_format.md)")
    if recon.ndim != 2:
        raise ValueError(f"objects must be 2-D (H, W), got shape {recon.shape}")
    if weight is None:
        mask = np.ones(recon.shape, dtype=bool)
    else:
        weight = np.asarray(weight)
        if weight.shape != recon.shape:
            raise ValueError(f"weight shape {weight.shape} differs from reconstruction shape {recon.shape}")
        mask = scanned_region(weight, weight_threshold, erode_px)
    if not mask.any():
        raise ValueError("the scanned region is empty (weight is zero everywhere or the threshold is too high)")
    for name, arr in (("reconstruction", recon), ("ground truth", truth)):
        bad = int(np.count_nonzero(~np.isfinite(arr[mask])))
        if bad:
            raise ValueError(f"the {name} has {bad} NaN/Inf pixels inside the scanned region")
    y0, y1, x0, x1 = _bbox(mask)
    r, t, m = recon[y0:y1, x0:x1], truth[y0:y1, x0:x1].astype(np.complex128), mask[y0:y1, x0:x1]
    fit = _phase_fit(r, t, m, plane_fit)
    r = _apply_phase(r.astype(np.complex128), fit)
    scale = match_amplitude_scale(np.abs(r), np.abs(t), m)
    r = r * scale
    t_sum = np.sum(t[m])
    centre = np.exp(-1j * np.angle(t_sum)) if abs(t_sum) > 0 else 1.0
    t_phase = np.angle(t * centre)
    r_phase = t_phase + np.angle(r * np.conj(t))
    return AlignedPair(r, t, m, np.abs(r), np.abs(t), r_phase, t_phase, fit[0], (fit[1], fit[2]),
                       scale, (y0, y1, x0, x1))


def _data_range(values: np.ndarray, fallback: float, fallback_kind: str) -> tuple[float, str]:
    """(max - min, "span"), or the fallback when the values are uniform to 1e-6 relative."""
    span = float(values.max() - values.min())
    return (span, "span") if span > 1e-6 * float(np.abs(values).max()) else (fallback, fallback_kind)


def resolution_in_nm(result: dict[str, Any], pixel_size_m: float | None) -> dict[str, Any]:
    """`result` with `resolution_<key>_nm` added for every `resolution_<key>_px` (one full period)
    when the object pixel size (metres) is known; unchanged otherwise."""
    if not pixel_size_m:
        return result
    nm = {k[:-3] + "_nm": float(v) * pixel_size_m * 1e9 for k, v in result.items()
          if k.startswith("resolution_") and k.endswith("_px")}
    return {**result, **nm, "pixel_size_m": float(pixel_size_m)}


def evaluate_reconstruction(recon: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None,
                            plane_fit: bool = False, *, weight_threshold: float = 0.1, erode_px: int = 0,
                            frc_taper_px: float = 8.0, pixel_size_m: float | None = None) -> dict[str, Any]:
    """Score a complex reconstruction (H, W) against the ground truth (H, W), same pixel frame.

    Steps: restrict to the scanned region (weight > weight_threshold * max, eroded by `erode_px`;
    everything when `weight` is None) and its bounding box; remove the global phase offset (and a
    linear ramp with `plane_fit`); scale the amplitude by the least-squares factor; then
      amplitude PSNR/SSIM with data_range = max - min of the truth amplitude in the region (or its
        max when the truth amplitude is uniform to 1e-6 relative, e.g. a pure phase object);
      phase PSNR/SSIM (rad) with data_range = max - min of the truth phase in the region (or 2 pi
        when the truth phase is uniform); phase errors are wrapped to (-pi, pi];
      FRC of the aligned complex images (see `frc`), in nm as well when `pixel_size_m` (the object
        pixel size, metres) is known (frc_half_resolution_nm, frc_17_resolution_nm).
    Returns a JSON-friendly dict of floats/ints/bools/lists; PSNR is inf for a perfect match.
    """
    p = align_pair(recon, truth, weight, plane_fit, weight_threshold, erode_px)
    m = p.mask
    amp_range, amp_kind = _data_range(p.truth_amp[m], float(p.truth_amp[m].max()), "max")
    if amp_range <= 0:
        raise ValueError("the ground-truth amplitude is zero everywhere in the scanned region")
    ph_range, ph_kind = _data_range(p.truth_phase[m], 2 * np.pi, "2pi")
    phase_err = p.recon_phase[m] - p.truth_phase[m]
    f = resolution_in_nm(frc(p.recon, p.truth, m, taper_px=frc_taper_px), pixel_size_m)
    nm = {f"frc_{key}_resolution_nm": f[f"resolution_{key}_nm"] for key in ("half", "17")
          if f"resolution_{key}_nm" in f}
    return {**nm,
        "amplitude_psnr": psnr(p.recon_amp, p.truth_amp, amp_range, m),
        "amplitude_ssim": ssim(p.recon_amp, p.truth_amp, amp_range, m),
        "phase_psnr": psnr(p.recon_phase, p.truth_phase, ph_range, m),
        "phase_ssim": ssim(p.recon_phase, p.truth_phase, ph_range, m),
        "phase_rmse_rad": float(np.sqrt(np.mean(phase_err**2))),
        "amplitude_rmse": float(np.sqrt(np.mean((p.recon_amp[m] - p.truth_amp[m]) ** 2))),
        "frc_half_freq": f["threshold_half"], "frc_half_resolution_px": f["resolution_half_px"],
        "frc_17_freq": f["threshold_17"], "frc_17_resolution_px": f["resolution_17_px"],
        "amplitude_data_range": amp_range, "amplitude_data_range_kind": amp_kind,
        "phase_data_range_rad": ph_range, "phase_data_range_kind": ph_kind,
        "amplitude_scale": p.amplitude_scale, "phase_offset_rad": p.phase_offset_rad,
        "phase_ramp_rad_per_px": list(p.phase_ramp_rad_per_px) if plane_fit else None,
        "plane_fit": bool(plane_fit), "n_pixels": int(m.sum()), "region_bbox": list(p.bbox),
        "weight_threshold": float(weight_threshold) if weight is not None else None,
        "erode_px": int(erode_px),
        "frc": f,
    }
