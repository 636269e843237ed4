"""Synthetic ptychography scans (SPEC section 4.8), driven by `SimulationConfig`.

Pipeline: object (H, W) complex64 -> probe (P, N, N) complex64 -> scan positions (M, 2) (x, y) pixels
-> patches O_m = physics.extract_patches -> expected counts lam_m = sum_p |physics.far_field(P_p O_m)|^2
-> counts ~ Poisson(lam_m) -> stored amplitude X_m = sqrt(counts) float32 (M, N, N).

Conventions chosen here (also written into the file's metadata):
  * Probe diameter D: the diameter of the circle, centred on the intensity centroid, that holds 90% of
    the probe intensity (all modes together). The pupil radius is solved so that D = probe_diameter_px
    (default N/2). A raised-cosine field window (1 inside 0.75 * N/2, 0 from N/2 - 0.5) keeps the patch
    edges dark.
  * The stored probe is in photon units: |F(P O)|^2 are the expected counts, and the mean over patterns
    of the total expected counts is `nphotons`. So probeGuess and objectGuess reproduce the data exactly.
  * Scan step = (1 - overlap) * D. Positions are shifted so min floor(x) = N/2 + margin, margin =
    max(2, N // 16) px; the object is H = floor(max y) + N/2 + margin (same for W), so every patch lies
    inside it with `margin` pixels to spare on every side.
  * Procedural objects draw independent fields for amplitude and phase; an image object (.npy) uses the
    same image for both unless `phase_object` is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import erfc

from ptycho_torch.config import ConfigError, SimulationConfig
from ptycho_torch.physics import forward as physics

__all__ = [
    "GENERATORS", "object_field", "make_object", "make_probe", "probe_diameter", "scan_positions",
    "simulate_scan", "simulate_to_file",
]

log = logging.getLogger(__name__)

GENERATORS = ("lines", "dead_leaves", "grf", "soft_lines", "siemens_star", "texture", "mixed")
MIXED = ("lines", "dead_leaves", "grf", "siemens_star", "texture")  # what 'mixed' draws from (one per object)
ONE_MATERIAL = ("siemens_star", "texture")
DIAMETER_FRACTION = 0.9  # the probe diameter holds this fraction of the intensity
BLUR_SIGMA_PX = 0.75  # Gaussian blur applied to every object field (band limit)
_CHUNK = 2048  # patterns per forward-model chunk


# ------------------------------------------------------------------ objects

def _normalise(f: np.ndarray) -> np.ndarray:
    """Map a real field to [0, 1] (min -> 0, max -> 1); a constant field becomes all ones."""
    lo, hi = float(f.min()), float(f.max())
    return np.ones_like(f) if hi - lo <= 0 else (f - lo) / (hi - lo)


def _lines(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random anti-aliased line segments (lengths 8..48 px, widths 0.7..2.5 px, grey levels 0.3..1)."""
    H, W = shape
    out = np.zeros(shape, np.float32)
    for _ in range(max(1, H * W // 250)):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        theta, half_len = rng.uniform(0, np.pi), rng.uniform(4, 24)
        width, value = rng.uniform(0.7, 2.5), rng.uniform(0.3, 1.0)
        ux, uy = np.cos(theta), np.sin(theta)
        r = half_len + width + 1
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, H)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, W)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        along = np.clip((xx - cx) * ux + (yy - cy) * uy, -half_len, half_len)
        dist = np.hypot(xx - cx - along * ux, yy - cy - along * uy)
        ink = value * np.clip(width / 2 + 0.5 - dist, 0, 1)
        np.maximum(out[y0:y1, x0:x1], ink, out=out[y0:y1, x0:x1])
    return out


def _dead_leaves(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Occluding disks, radii ~ r^-3 on [2, 24] px, uniform grey levels (painter's order)."""
    H, W = shape
    rmin, rmax = 2.0, 24.0
    out = np.full(shape, rng.uniform(), np.float32)
    mean_area = np.pi * np.log(rmax / rmin) / (0.5 * (rmin ** -2 - rmax ** -2))
    for _ in range(int(min(3 * H * W / mean_area, 20000))):
        u = rng.uniform()
        r = (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5
        cy, cx, value = rng.uniform(-r, H + r), rng.uniform(-r, W + r), rng.uniform()
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, H)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, W)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        out[y0:y1, x0:x1][inside] = value
    return out


def _soft_lines(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Upstream PtychoPINN's lines study object, re-made: one-pixel random lines (about 400 per
    (2*392)^2 px, ends anywhere) seen through the sum of Gaussian blurs gf(1) + 2 gf(5) + 5 gf(10), so
    sharp cores sit on broad halos. Amplitude and phase use independent draws (as our other kinds)."""
    H, W = shape
    img = np.zeros((2 * H, 2 * W), np.float64)
    n_lines = max(1, int(round(400 * (4 * H * W) / (2 * 392) ** 2)))
    for _ in range(n_lines):
        (y0, y1), (x0, x1) = rng.integers(0, 2 * H, 2), rng.integers(0, 2 * W, 2)
        n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
        img[np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)] = 1.0
    soft = ndimage.gaussian_filter(img, 1) + 2 * ndimage.gaussian_filter(img, 5) + 5 * ndimage.gaussian_filter(img, 10)
    return soft[H // 2: H // 2 + H, W // 2: W // 2 + W].astype(np.float32)


def _grf(shape: tuple[int, int], rng: np.random.Generator, corr_px: float = 8.0) -> np.ndarray:
    """Gaussian random field with power spectrum (k^2 + k0^2)^(-3/2), k0 = 1 / corr_px."""
    H, W = shape
    k2 = np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2
    amplitude = (k2 + (1.0 / corr_px) ** 2) ** -0.75
    noise = np.fft.fft2(rng.standard_normal(shape))
    return np.fft.ifft2(noise * amplitude).real.astype(np.float32)


def _siemens_star(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A resolution test pattern as beamlines image it: a Siemens star (24..48 spokes, random centre
    in the middle half of the field, random rotation, a solid central disc, an outer ring), its spokes
    anti-aliased by supersampling 2x2."""
    H, W = shape
    n = int(rng.integers(12, 25)) * 2
    cy, cx = rng.uniform(0.25 * H, 0.75 * H), rng.uniform(0.25 * W, 0.75 * W)
    rot = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.45, 0.8) * max(H, W)
    yy, xx = np.mgrid[0:H:0.5, 0:W:0.5]
    r, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx) + rot
    ink = (np.cos(n / 2 * theta) > 0) & (r < radius)
    ink |= r < rng.uniform(0.04, 0.08) * radius
    ink |= np.abs(r - radius) < 1.5
    return ink.reshape(H, 2, W, 2).mean(axis=(1, 3)).astype(np.float32)


def _texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A natural-looking texture (fibres, cells): band-pass noise with a random dominant orientation
    and scale, its ridges sharpened, over a few soft blobs of other density."""
    H, W = shape
    ky, kx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    k = np.hypot(ky, kx)
    angle = np.arctan2(ky, kx)
    k0, spread = rng.uniform(0.04, 0.15), rng.uniform(0.3, 1.2)
    orient = rng.uniform(0, np.pi)
    band = np.exp(-((k - k0) / (0.4 * k0)) ** 2) * np.exp(-(np.sin(angle - orient) / spread) ** 2)
    ridges = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * band).real
    ridges = 1.0 - np.abs(ridges) / (np.abs(ridges).max() + 1e-12)  # ridge lines where the field crosses 0
    blobs = ndimage.gaussian_filter(rng.standard_normal(shape), max(H, W) / 12)
    return (ridges ** 3 + 0.5 * _normalise(blobs)).astype(np.float32)


def _image(path: str, shape: tuple[int, int], field_name: str) -> np.ndarray:
    """A 2-D real .npy image resampled (bilinear) to `shape`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"simulation.{field_name}: got {path!r}; expected one of "
                          f"{', '.join(GENERATORS)} or an existing .npy file")
    img = np.load(p, allow_pickle=False)
    if img.ndim != 2 or img.dtype.kind not in "iuf" or not np.isfinite(img).all():
        raise ConfigError(f"simulation.{field_name}: {path} must hold a finite real 2-D image, found "
                          f"shape {img.shape} dtype {img.dtype}")
    h, w = img.shape
    rows = (np.arange(shape[0]) + 0.5) * h / shape[0] - 0.5
    cols = (np.arange(shape[1]) + 0.5) * w / shape[1] - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(img.astype(np.float64), grid, order=1, mode="nearest")


def object_field(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A real (H, W) field in [0, 1] from a generator name ('mixed': one of MIXED drawn by `rng`) or
    a .npy image path, blurred by BLUR_SIGMA_PX pixels before normalisation."""
    makers = {"lines": _lines, "dead_leaves": _dead_leaves, "grf": _grf, "soft_lines": _soft_lines,
              "siemens_star": _siemens_star, "texture": _texture}
    if kind == "mixed":  # a corpus that is not one family's specialist: each field a family of its own
        kind = MIXED[int(rng.integers(len(MIXED)))]
    raw = makers[kind](shape, rng) if kind in makers else _image(kind, shape, "object")
    return _normalise(ndimage.gaussian_filter(raw.astype(np.float64), BLUR_SIGMA_PX))


def make_object(
    kind: str,
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_amplitude: float = 0.5,
    max_phase: float = 1.5,
    phase_image: str | None = None,
) -> np.ndarray:
    """Complex64 (H, W) object: amplitude in [min_amplitude, 1], phase in [-max_phase, max_phase] rad.

    Procedural kinds draw a second, independent field for the phase, except the ONE_MATERIAL kinds
    (a test pattern, a texture: one material, so the phase follows the amplitude's structure); an image
    (.npy) reuses itself as the phase unless `phase_image` is given; 'mixed' picks one family of MIXED.
    """
    if kind == "mixed":  # one family for both fields of this object
        kind = MIXED[int(rng.integers(len(MIXED)))]
    amp_field = object_field(kind, shape, rng)
    if phase_image is not None:
        raw = _image(phase_image, shape, "phase_object")
        ph_field = _normalise(ndimage.gaussian_filter(raw, BLUR_SIGMA_PX))
    elif kind in ONE_MATERIAL:  # a sample of one material: its phase follows its amplitude's structure
        ph_field = amp_field
    elif kind in GENERATORS:
        ph_field = object_field(kind, shape, rng)
    else:
        ph_field = amp_field
    amplitude = min_amplitude + (1.0 - min_amplitude) * amp_field
    phase = max_phase * (2.0 * ph_field - 1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


# ------------------------------------------------------------------ probe

def probe_diameter(probe: np.ndarray, fraction: float = DIAMETER_FRACTION) -> float:
    """Diameter (px) of the circle around the intensity centroid holding `fraction` of sum|P|^2.
    probe (N, N) or (P, N, N)."""
    intensity = np.abs(np.asarray(probe)) ** 2
    intensity = intensity.reshape(-1, *intensity.shape[-2:]).sum(axis=0)
    total = intensity.sum()
    yy, xx = np.indices(intensity.shape)
    cy, cx = (intensity * yy).sum() / total, (intensity * xx).sum() / total
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    cum = np.cumsum(intensity.ravel()[order]) / total
    return float(2 * np.interp(fraction, cum, r[order]))


def _field_window(N: int) -> np.ndarray:
    """Raised-cosine window (N, N): 1 for r <= 0.75 N/2, 0 for r >= N/2 - 0.5 (r from pixel N/2)."""
    yy, xx = np.indices((N, N)) - N // 2
    r = np.hypot(yy, xx)
    r1, r2 = 0.75 * N / 2, N / 2 - 0.5
    t = np.clip((r - r1) / (r2 - r1), 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))


def _focused_probe(N: int, pupil_radius: float, defocus: float, extra_phase: np.ndarray | None = None
                   ) -> np.ndarray:
    """Windowed sample-plane field (N, N) complex128 of a soft-edged disk pupil of radius
    `pupil_radius` frequency pixels with quadratic phase `defocus` rad at the pupil edge."""
    k = np.arange(N) - N // 2
    rho = np.hypot(k[:, None], k[None, :])
    pupil = 0.5 * erfc((rho - pupil_radius) / 0.7)
    phase = defocus * (rho / pupil_radius) ** 2
    if extra_phase is not None:
        phase = phase + extra_phase
    pupil = pupil * np.exp(1j * phase)
    field = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil), norm="ortho"))
    return field * _field_window(N)


def _modes(N: int, radius: float, defocus: float, perturb: np.ndarray) -> np.ndarray:
    """Orthonormal-power probe modes (P, N, N) complex64, sum|P|^2 = 1, for pupil `radius`.

    perturb (P-1, 4): per extra mode a sample-plane shift (sx, sy) in px and the coefficients of the
    pupil phases (k/radius)^2 and kx^2 - ky^2 (rad at the pupil edge).
    """
    k = (np.arange(N) - N // 2) / radius
    ky, kx = np.meshgrid(k, k, indexing="ij")
    fields = [_focused_probe(N, radius, defocus)]
    for sx, sy, c_quad, c_astig in perturb:
        phase = 2 * np.pi * radius / N * (sx * kx + sy * ky)  # tilt = shift in the sample plane
        phase = phase + c_quad * (kx ** 2 + ky ** 2) + c_astig * (kx ** 2 - ky ** 2)
        fields.append(_focused_probe(N, radius, defocus, phase))
    stack = np.stack([f.ravel() for f in fields], axis=1)  # (N*N, P)
    q, r = np.linalg.qr(stack)  # Gram-Schmidt, mode 0 first
    q = q * np.exp(-1j * np.angle(np.diag(r)))[None, :]  # column k along +field k
    power = 0.5 ** np.arange(len(fields))
    power = power / power.sum()
    return (q.T * np.sqrt(power)[:, None]).reshape(-1, N, N).astype(np.complex64)


def make_probe(
    N: int,
    diameter_px: float | None = None,
    *,
    defocus: float = 0.0,
    modes: int = 1,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Focused disk-aperture probe (modes, N, N) complex64 with total power sum|P|^2 = 1.

    Mode 0 is the designed probe. Further modes are the same pupil with random tilts (sample-plane
    shifts ~ D/10) and random quadratic/astigmatic phases, Gram-Schmidt orthogonalised (mode 0 first)
    with powers proportional to 0.5**k. The pupil radius is bisected so that the 90% diameter of all
    modes together is `diameter_px` (default N/2). Returns (probe, info): pupil radius, measured D.
    """
    diameter = float(diameter_px if diameter_px is not None else N / 2)
    rng = rng if rng is not None else np.random.default_rng(0)
    perturb = np.concatenate([rng.normal(0, diameter / 10, (modes - 1, 2)),
                              rng.normal(0, 1.0, (modes - 1, 2))], axis=1)
    lo, hi = np.log(0.25), np.log(N / 2)  # log pupil radius; the diameter falls as the radius grows
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if probe_diameter(_modes(N, float(np.exp(mid)), defocus, perturb)) > diameter:
            lo = mid
        else:
            hi = mid
    radius = float(np.exp(0.5 * (lo + hi)))
    probe = _modes(N, radius, defocus, perturb)
    return probe, {"pupil_radius_px": radius, "measured_diameter_px": probe_diameter(probe)}


# ------------------------------------------------------------------ scan

def scan_positions(kind: str, n: int, step: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float64 (x, y) positions in pixels with minimum 0 along each axis.

    raster: ceil(sqrt(n)) columns, row-major, each position jittered uniformly by +-jitter*step.
    spiral: Fermat spiral r = c sqrt(k), angle k * golden angle, c set so the mean nearest-neighbour
    distance equals `step`.
    """
    if kind == "raster":
        cols = int(np.ceil(np.sqrt(n)))
        k = np.arange(n)
        pos = np.stack([k % cols, k // cols], axis=1) * step
        pos = pos + rng.uniform(-jitter, jitter, size=(n, 2)) * step
    elif kind == "spiral":
        k = np.arange(n)
        golden = np.pi * (3 - np.sqrt(5))
        pos = np.stack([np.sqrt(k) * np.cos(k * golden), np.sqrt(k) * np.sin(k * golden)], axis=1)
        if n > 1:
            from scipy.spatial import cKDTree
            nn = cKDTree(pos).query(pos, k=2)[0][:, 1].mean()
            pos = pos * (step / nn)
    else:
        raise ConfigError(f"simulation.scan: got {kind!r}; allowed values are 'raster', 'spiral'")
    return pos - pos.min(axis=0)


# ------------------------------------------------------------------ forward model

def bilinear_patches(obj: torch.Tensor, positions: torch.Tensor, N: int) -> torch.Tensor:
    """N x N patches of obj (H, W) complex at positions (K, 2) (x, y) pixels, (K, N, N) complex64,
    by bilinear interpolation: patch[i, j] = obj at (y0 + i + fy, x0 + j + fx) with the corner
    (x0, y0) = floor(position) - N/2 and (fx, fy) the fractional parts, the same frame as
    physics.extract_patches but interpolated the way pixel-space simulators do it."""
    parts = [torch.nn.functional.pad(part[None, None], (0, 1, 0, 1), mode="replicate")[0, 0]
             for part in (obj.real.float(), obj.imag.float())]
    padded = torch.complex(*parts)  # (H + 1, W + 1): the last row and column repeated
    corner, frac = physics._split_positions(positions, N)  # (K, 2) as (x, y): the same frame as extract_patches
    frac = frac.to(torch.float32)
    rows = corner[:, 1, None] + torch.arange(N + 1)  # (K, N+1)
    cols = corner[:, 0, None] + torch.arange(N + 1)
    crops = padded[rows[:, :, None], cols[:, None, :]]  # (K, N+1, N+1)
    fx, fy = frac[:, 0, None, None], frac[:, 1, None, None]
    top = crops[:, :-1, :-1] * (1 - fx) + crops[:, :-1, 1:] * fx
    bottom = crops[:, 1:, :-1] * (1 - fx) + crops[:, 1:, 1:] * fx
    return (top * (1 - fy) + bottom * fy).to(torch.complex64)


def _intensity(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, N: int,
               progress: bool, extraction: str = "fourier") -> np.ndarray:
    """Expected intensity sum_p |F(P_p O_m)|^2 for every position: (M, N, N) float32; patches cut
    by `extraction` ('fourier' = physics.extract_patches, 'bilinear' = bilinear_patches)."""
    cut = physics.extract_patches if extraction == "fourier" else bilinear_patches
    M = len(positions)
    out = np.empty((M, N, N), np.float32)
    obj_t, probe_t = torch.from_numpy(obj), torch.from_numpy(probe)
    starts = range(0, M, _CHUNK)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="simulate", unit="chunk")
    for s in starts:
        pos_t = torch.from_numpy(positions[s:s + _CHUNK])
        patches = cut(obj_t, pos_t, N)  # (k, N, N)
        psi = probe_t[None] * patches[:, None]  # (k, P, N, N)
        out[s:s + _CHUNK] = physics.far_field(psi).abs().square().sum(dim=1).numpy()
    return out


def simulate_scan(config: SimulationConfig, *, noise: bool = True, progress: bool | None = None
                  ) -> dict[str, Any]:
    """Simulate one scan. Returns the keyword arguments of `contract.write_scan`:
    diffraction (M, N, N) float32 amplitudes sqrt(counts); probe (P, N, N) complex64 in sqrt-photon
    units; xcoords, ycoords (M,) float64; object_guess (H, W) complex64; scan_index (M,) int64 zeros;
    metadata dict. `noise=False` stores sqrt of the expected counts (no Poisson draw).
    """
    from ptycho_torch import __version__

    N = config.N
    obj_rng, pos_rng, probe_rng, noise_rng = np.random.default_rng(config.seed).spawn(4)
    probe, info = make_probe(N, config.probe_diameter_px, defocus=config.probe_defocus,
                             modes=config.probe_modes, rng=probe_rng)
    diameter = float(config.probe_diameter_px or N / 2)
    if abs(info["measured_diameter_px"] - diameter) > 0.1 * diameter:
        log.warning("probe diameter %.1f px requested, %.1f px reached (the field window limits it "
                    "to about 0.8 N)", diameter, info["measured_diameter_px"])
    step = (1.0 - config.overlap) * diameter
    margin = max(2, N // 16)
    positions = scan_positions(config.scan, config.n_positions, step, config.jitter, pos_rng)
    positions = positions + (N // 2 + margin)
    H = int(np.floor(positions[:, 1].max())) + N // 2 + margin
    W = int(np.floor(positions[:, 0].max())) + N // 2 + margin
    obj = make_object(config.object, (H, W), obj_rng, min_amplitude=config.min_amplitude,
                      max_phase=config.max_phase, phase_image=config.phase_object)
    M = len(positions)
    intensity = _intensity(obj, probe, positions, N, progress if progress is not None else M >= 20000,
                           config.patch_extraction)
    kappa = config.nphotons / float(intensity.sum(dtype=np.float64) / M)  # photons per unit intensity
    intensity *= kappa
    probe = (probe * np.sqrt(kappa)).astype(np.complex64)
    if noise:
        for s in range(0, M, _CHUNK):
            counts = noise_rng.poisson(intensity[s:s + _CHUNK].astype(np.float64))
            intensity[s:s + _CHUNK] = counts
    diffraction = np.sqrt(intensity, dtype=np.float32)
    metadata = {
        "simulation": config.to_dict(),
        "generator": config.object,
        "noise": noise,
        "probe_diameter_px": diameter,
        "probe_diameter_measured_px": info["measured_diameter_px"],
        "probe_diameter_definition": "diameter of the circle around the intensity centroid holding "
                                     f"{DIAMETER_FRACTION:.0%} of the probe intensity (all modes)",
        "probe_pupil_radius_px": info["pupil_radius_px"],
        "probe_units": "sqrt(photons): sum_p |F(P_p O)|^2 are the expected counts",
        "scan_step_px": step,
        "margin_px": margin,
        "object_shape": [H, W],
        "mean_photons": float(np.square(diffraction, dtype=np.float64).sum() / M),
        "created_by": "ptycho_torch.data.simulate",
        "version": __version__,
    }
    return {"diffraction": diffraction, "probe": probe, "xcoords": positions[:, 0].copy(),
            "ycoords": positions[:, 1].copy(), "object_guess": obj,
            "scan_index": np.zeros(M, np.int64), "metadata": metadata}


def simulate_to_file(config: SimulationConfig, path: str | Path, *, noise: bool = True,
                     progress: bool | None = None) -> Path:
    """Simulate and write a contract-valid .npz/.h5 scan (with objectGuess and metadata)."""
    from ptycho_torch.data.contract import write_scan

    return write_scan(path, **simulate_scan(config, noise=noise, progress=progress))
