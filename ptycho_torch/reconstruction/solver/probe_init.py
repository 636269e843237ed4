"""A starting probe estimated from the data, for scans that bring none (or a poor one).

The mean of many diffraction patterns is close to the far-field intensity of the probe itself (the
sample's scattering blurs it and adds a halo): its square root is taken as the probe's far-field
amplitude. The phase is unknown; a focused beam with the sample out of focus carries a quadratic
(defocus) phase in the far field, so the estimate gets one whose real-space beam has a diameter
matched to the scan. By stationary phase, a far-field phase pi z q^2 (q in cycles per pixel, z in
px^2) maps the frequency q to the real-space radius z q, so the bright disc of radius q_a becomes a
beam of radius R for z = R / q_a.

Neither the beam diameter nor the sign of the defocus (before or after the focus: not the same
patterns, one is not a twin of the other) follows from the mean pattern, so `search_probe` tries a few
of each for a few epochs on the patterns nearest the scan's centre and keeps the one the data like
best (the lowest amplitude error). On the APS Siemens star this finds the zone plate's ring from the
data alone, and the reconstruction reaches the data fit of the file's analytic probe.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from scipy.spatial import cKDTree

from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve

BEAM_DIAMETER_STEPS = 4.0  # the guessed beam diameter, in nearest-neighbour scan steps (~75% overlap)


def scan_step(positions: np.ndarray) -> float:
    """Median nearest-neighbour distance (object pixels) of positions (M, 2)."""
    pos = np.asarray(positions, np.float64)
    if len(pos) < 2:
        return 1.0
    d, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(d[:, 1]))


def estimate_probe(mean_intensity: np.ndarray, positions: np.ndarray, diameter_px: float | None = None,
                   sign: int = 1) -> np.ndarray:
    """Probe (1, N, N) complex64 from the mean diffraction intensity (N, N) (photon counts, DC at the
    centre) and the scan positions (M, 2) object pixels: far-field amplitude sqrt(mean), a defocus
    phase giving a real-space beam of `diameter_px` (default BEAM_DIAMETER_STEPS nearest-neighbour
    steps, at most N/2), in photon units (sum |P|^2 = the mean counts per pattern)."""
    I = np.clip(np.asarray(mean_intensity, np.float64), 0, None)
    N = I.shape[-1]
    total = I.sum()
    if not math.isfinite(total) or total <= 0:
        raise ValueError("the mean diffraction pattern is zero: no probe can be estimated from these data")
    q = np.fft.fftshift(np.fft.fftfreq(N))  # cycles/px, DC at N/2
    qq = q[:, None] ** 2 + q[None, :] ** 2
    order = np.argsort(qq.reshape(-1))
    cumulative = np.cumsum(I.reshape(-1)[order]) / total
    q_a = math.sqrt(qq.reshape(-1)[order][np.searchsorted(cumulative, 0.9)])  # radius of 90% of the energy
    q_a = max(q_a, 1.0 / N)
    diameter = diameter_px if diameter_px is not None else min(BEAM_DIAMETER_STEPS * scan_step(positions), N / 2)
    z = (diameter / 2) / q_a
    far = np.sqrt(I) * np.exp(1j * math.pi * sign * z * qq)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far), norm="ortho"))
    probe *= math.sqrt(total / max(float(np.sum(np.abs(probe) ** 2)), 1e-30))
    return probe[None].astype(np.complex64)


SEARCH_DIAMETERS = (0.25, 0.375, 0.5)  # candidate beam diameters, fractions of N
SEARCH_PATTERNS = 128  # patterns nearest the scan centre that judge the candidates
SEARCH_EPOCHS = 3


def search_probe(rows: Callable[[np.ndarray], np.ndarray], positions: np.ndarray, shape: tuple[int, int],
                 mean_intensity: np.ndarray, *, mask: np.ndarray | None = None, device: str = "cpu",
                 seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """The estimated probe (1, N, N) complex64 whose (diameter, defocus sign) reconstructs the
    SEARCH_PATTERNS patterns nearest the scan's centre best after SEARCH_EPOCHS epochs of `solve`
    (object and probe refined), and a record of every candidate's error (for the log and metadata).
    rows / positions / shape / mask as `solve`; mean_intensity (N, N) counts, DC at the centre."""
    pos = np.asarray(positions, np.float64)
    N = np.shape(mean_intensity)[-1]
    centre = np.median(pos, axis=0)
    near = np.sort(np.argsort(np.sum((pos - centre) ** 2, axis=1))[:SEARCH_PATTERNS])
    X = np.asarray(rows(near), np.float32)
    tried: list[dict[str, float]] = []
    best: tuple[float, np.ndarray] | None = None
    for fraction in SEARCH_DIAMETERS:
        for sign in (1, -1):
            guess = estimate_probe(mean_intensity, pos, fraction * N, sign)
            sol = solve(lambda i: X[i], pos[near], guess, shape, options=SolverOptions(seed=seed),
                        epochs=SEARCH_EPOCHS, mask=mask, device=device)
            tried.append({"diameter_px": fraction * N, "defocus_sign": sign, "error": sol.errors[-1]})
            if best is None or sol.errors[-1] < best[0]:
                best = (sol.errors[-1], guess)
    chosen = min(tried, key=lambda t: t["error"])
    return best[1], {"method": "mean pattern + defocus search", "chosen": chosen, "candidates": tried}
