"""Resolution without a ground truth: half-scan Fourier ring correlation.

The scan is split into two interleaved halves (even and odd patterns in acquisition order, so both
cover the whole field of view with half the dose), each half is reconstructed the same way, the second
object is registered to the first (sub-pixel shift, then global phase and linear phase ramp, which
ptychography leaves free), and the FRC of the two is computed over their common well-lit region. The
resolution is where the curve falls below the 1/7 threshold and the half-bit threshold (van Heel &
Schatz 2005, for two half data sets), in pixels and, when the object pixel size is known, in nm.
Each half carries half the photons, so this is a slightly pessimistic estimate for the full scan.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptycho_torch.evaluation.metrics import FRC_17, align_phase, frc, resolution_in_nm, scanned_region


def interleaved_halves(n_patterns: int) -> tuple[np.ndarray, np.ndarray]:
    """(even, odd) pattern indices in acquisition order."""
    idx = np.arange(n_patterns)
    return idx[0::2], idx[1::2]


def register_shift(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(dy, dx) pixels to move `b` (H, W) complex by so it lies on `a`: the peak of the phase
    correlation of the two (windowed by mask) refined to sub-pixel by a parabola through the peak and
    its neighbours on each axis."""
    w = mask.astype(np.float64)
    A = np.fft.fft2((a - np.sum(w * a) / max(w.sum(), 1)) * w)
    B = np.fft.fft2((b - np.sum(w * b) / max(w.sum(), 1)) * w)
    cross = A * np.conj(B)
    corr = np.abs(np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-30)))
    H, W = corr.shape
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)

    def vertex(m: float, c: float, p: float) -> float:
        d = m - 2 * c + p
        return 0.0 if d == 0 else 0.5 * (m - p) / d

    dy = py + vertex(corr[(py - 1) % H, px], corr[py, px], corr[(py + 1) % H, px])
    dx = px + vertex(corr[py, (px - 1) % W], corr[py, px], corr[py, (px + 1) % W])
    dy = dy - H if dy > H / 2 else dy
    dx = dx - W if dx > W / 2 else dx
    return float(dy), float(dx)


def _shifted(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    H, W = img.shape
    ky, kx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    return np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * math.pi * (ky * dy + kx * dx)))


def half_bit_threshold(n: int) -> np.ndarray:
    """The half-bit threshold per ring k = 1 .. n//2 of an n x n FRC (van Heel & Schatz 2005):
    (0.2071 + 1.9102 / sqrt(n_k)) / (1.2071 + 0.9102 / sqrt(n_k)), n_k the pixels in ring k."""
    f = np.fft.fftfreq(n)
    k = np.rint(np.hypot(f[:, None], f[None, :]) * n).astype(np.int64).ravel()
    counts = np.bincount(k[k <= n // 2], minlength=n // 2 + 1)[1:].astype(np.float64)
    root = np.sqrt(np.maximum(counts, 1))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def half_scan_frc(obj_a: np.ndarray, obj_b: np.ndarray, weight_a: np.ndarray, weight_b: np.ndarray,
                  pixel_size_m: float | None = None) -> dict[str, Any]:
    """FRC of two half-scan objects (H, W) complex in the same frame, with their illumination
    weights (H, W). Returns the frc() curve plus shift_px (dy, dx) applied to b, resolution_17_px,
    resolution_halfbit_px (one full period, pixels; the field's highest frequency when the curve never
    crosses), crossed_17 / crossed_halfbit, and *_nm when `pixel_size_m` is given."""
    region = scanned_region(np.minimum(weight_a, weight_b), 0.3, erode_px=4)
    if region.sum() < 64:
        raise ValueError("the two halves share too small a well-lit region for an FRC (fewer than 64 pixels)")
    dy, dx = register_shift(obj_a, obj_b, region)
    b = _shifted(np.asarray(obj_b, np.complex128), dy, dx)
    b = align_phase(b, obj_a, region, plane_fit=True)
    result = frc(obj_a, b, region)
    curve, freq = np.asarray(result["curve"]), np.asarray(result["freq"])
    halfbit = half_bit_threshold(result["n"])[: len(curve)]
    below = np.flatnonzero(curve < halfbit)
    f_hb = float(freq[-1])
    if below.size:
        j = int(below[0])
        f_hb = float(freq[0])
        if j > 0:
            d0, d1 = curve[j - 1] - halfbit[j - 1], curve[j] - halfbit[j]  # > 0, < 0
            f_hb = float(freq[j - 1] + d0 / (d0 - d1) * (freq[j] - freq[j - 1]))
    out = {**result, "shift_px": [dy, dx], "threshold_halfbit": halfbit.tolist(), "threshold_17_value": FRC_17,
           "resolution_halfbit_px": 1.0 / f_hb, "crossed_halfbit": bool(below.size),
           "region_pixels": int(region.sum())}
    return resolution_in_nm(out, pixel_size_m)
