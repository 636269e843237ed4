"""Detector frames as the model reads them: counts -> amplitudes, crop / bin to N, bad-pixel mask.

Legend: M patterns; stored frames (M, Fr, Fc) as the file holds them (photon counts of any integer
dtype, or float amplitudes); N the model's pattern size; b the binning factor; mask (N, N) bool,
True = an excluded pixel (bad pixel, beamstop, module gap; the CXI and NeXus convention: nonzero =
bad). Excluded pixels read as 0 and are left out of the Poisson loss.

`FrameMap` says how stored frames become (M, N, N) float32 amplitudes; `MappedFrames` applies it
row-block by row-block when rows are read (an h5py dataset stays on disk, only the requested rows
and the N*b x N*b window around the beam centre are read). Integer counts are summed and square-
rooted in float64, so uint16/uint32 values never overflow.

Physics (SI units): wavelength lambda = h c / E; the object pixel of an N x N far-field pattern of
detector pixel Delta at distance z is lambda z / (N Delta) (`object_pixel_m`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

PLANCK_J_S = 6.62607015e-34
LIGHT_M_S = 299792458.0
EV_J = 1.602176634e-19
FrameFit = Literal["crop", "bin"]


def wavelength_m(energy_j: float) -> float:
    """Photon wavelength in metres of a photon energy in joules: h c / E."""
    return PLANCK_J_S * LIGHT_M_S / energy_j


def object_pixel_m(energy_j: float, distance_m: float, N: int, detector_pixel_m: float) -> float:
    """Object (sample-plane) pixel size in metres: lambda z / (N Delta_det)."""
    return wavelength_m(energy_j) * distance_m / (N * detector_pixel_m)


@dataclass(eq=False)
class FrameMap:
    """How stored frames (M, Fr, Fc) become amplitudes (M, N, N) float32.

    counts: stored values are photon counts (integer dtype): amplitude = sqrt(counts) (signed
    integers keep their sign, so negative counts stay visible to validation); window (r0, r1, c0, c1):
    the stored pixels read (None = all); bin: b x b pixels summed (as intensities) into one; mask (N, N)
    bool, True = excluded pixel, read as 0 (None = none), in the frame after `fftshift`; fftshift: the
    frames hold the zero frequency at the array corner (tike's and raw-FFT layouts) and are
    fftshifted to the contract's DC-at-centre as they are read.
    """

    counts: bool = False
    window: tuple[int, int, int, int] | None = None
    bin: int = 1
    mask: np.ndarray | None = None
    fftshift: bool = False  # the stored frames have DC at the corner: moved to the centre on read

    def out_shape(self, stored: Sequence[int]) -> tuple[int, int, int]:
        """(M, N, N) of stored frames of shape (M, Fr, Fc)."""
        M, Fr, Fc = (int(s) for s in stored)
        if self.window is not None:
            r0, r1, c0, c1 = self.window
            Fr, Fc = r1 - r0, c1 - c0
        return (M, Fr // self.bin, Fc // self.bin)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Stored rows (k, h, w) (already windowed) -> amplitudes (k, N, N) float32."""
        if not self.counts and self.bin == 1:
            amp = np.asarray(raw, dtype=np.float32)
        else:
            intensity = np.asarray(raw, dtype=np.float64)
            if not self.counts:
                intensity = intensity * intensity  # amplitudes are binned as intensities
            if self.bin > 1:
                k, h, w = intensity.shape
                b = self.bin
                intensity = intensity.reshape(k, h // b, b, w // b, b).sum(axis=(2, 4))  # (k, N, N)
            amp = (np.sign(intensity) * np.sqrt(np.abs(intensity))).astype(np.float32)
        if self.fftshift:
            amp = np.fft.fftshift(amp, axes=(-2, -1))
        if self.mask is not None:
            amp = np.where(self.mask, np.float32(0), amp)
        return amp

    def describe(self, dtype: Any) -> str:
        """One line: how the stored values were interpreted (for logs and metadata)."""
        parts = [f"photon counts ({np.dtype(dtype)}) read as amplitudes sqrt(counts)" if self.counts
                 else f"amplitudes ({np.dtype(dtype)})"]
        if self.window is not None:
            r0, r1, c0, c1 = self.window
            parts.append(f"rows {r0}:{r1}, columns {c0}:{c1} of the detector")
        if self.bin > 1:
            parts.append(f"binned {self.bin}x{self.bin}")
        if self.mask is not None:
            parts.append(f"{int(self.mask.sum())} masked pixels")
        if self.fftshift:
            parts.append("DC moved from the corner to the centre (fftshift)")
        return ", ".join(parts)


class MappedFrames:
    """Stored frames seen through a FrameMap: `shape` (M, N, N), `dtype` float32, and `[rows]`
    (a slice or increasing integer indices) -> (k, N, N) float32. Reads only the window."""

    dtype = np.dtype(np.float32)

    def __init__(self, stored: Any, frame_map: FrameMap) -> None:
        self.stored = stored
        self.frame_map = frame_map
        self.shape = frame_map.out_shape(stored.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        w = self.frame_map.window
        raw = self.stored[rows] if w is None else self.stored[rows, w[0]:w[1], w[2]:w[3]]
        raw = np.asarray(raw)
        return self.frame_map.apply(raw[None] if raw.ndim == 2 else raw)


# ------------------------------------------------------------------ fitting frames to N

def dc_at_corner(mean_intensity: np.ndarray) -> bool:
    """Whether a mean diffraction pattern (N, N) holds its zero frequency at the array corner (an
    unshifted FFT layout) rather than at the centre: the intensity within N/8 of the corner (all four
    corners, wrapped) is over ten times the intensity within N/8 of the centre. A far-field pattern is
    brightest around its zero frequency, beamstop or not (a beamstop masks the DC pixels only)."""
    m = np.asarray(mean_intensity, np.float64)
    n = max(1, min(m.shape) // 8)
    H, W = m.shape
    centre = m[H // 2 - n:H // 2 + n, W // 2 - n:W // 2 + n].sum()
    corner = np.fft.fftshift(m)[H // 2 - n:H // 2 + n, W // 2 - n:W // 2 + n].sum()
    return bool(corner > 10 * centre)


def mean_pattern(stored: Any, frames: int = 256, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean intensity (Fr, Fc) float64 of up to `frames` stored frames spread over the scan (one
    read each of a few contiguous blocks); amplitudes are squared, masked pixels (full-frame mask
    (Fr, Fc), True = bad) set to 0."""
    M = int(stored.shape[0])
    starts = np.unique(np.linspace(0, max(M - 16, 0), max(1, min(frames, M) // 16)).astype(int))
    total, n = np.zeros(stored.shape[1:], np.float64), 0
    for s in starts:
        block = np.asarray(stored[s:s + 16], dtype=np.float64)
        if np.dtype(stored.dtype).kind == "f":
            block = block * block
        total += block.sum(axis=0)
        n += len(block)
    total /= max(n, 1)
    if mask is not None:
        total[mask] = 0.0
    return total


def centroid(pattern: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (row, column) centre of a (Fr, Fc) pattern (negative values ignored)."""
    w = np.clip(pattern, 0, None)
    total = w.sum()
    if total <= 0:
        return ((pattern.shape[0]) / 2, (pattern.shape[1]) / 2)
    rows = np.arange(pattern.shape[0]) @ w.sum(axis=1) / total
    cols = np.arange(pattern.shape[1]) @ w.sum(axis=0) / total
    return (float(rows), float(cols))


def fit_window(frame: tuple[int, int], N: int, how: FrameFit, center: tuple[float, float]
               ) -> tuple[tuple[int, int, int, int] | None, int, str | None]:
    """(window, bin, problem) that brings (Fr, Fc) frames to N x N with the beam centre (row, col)
    at pattern pixel (N/2, N/2): crop N x N, or bin by b = min(Fr, Fc) // N and crop N*b x N*b.
    `problem` is one line when the frames cannot give N x N (then window/bin are unusable)."""
    Fr, Fc = frame
    if (Fr, Fc) == (N, N):
        return None, 1, None
    if min(Fr, Fc) < N:
        return None, 1, (f"frames: the detector frames are {Fr}x{Fc}, smaller than N = {N}; set model.N "
                         f"(--N) to at most {min(Fr, Fc)} or pad the frames")
    b = min(Fr, Fc) // N if how == "bin" else 1
    size = N * b
    r0 = int(round(center[0] - size / 2))
    c0 = int(round(center[1] - size / 2))
    if r0 < 0 or c0 < 0 or r0 + size > Fr or c0 + size > Fc:
        return None, b, (f"frames: the {size}x{size} window around the beam centre (row {center[0]:.1f}, "
                         f"column {center[1]:.1f}) leaves the {Fr}x{Fc} frame; set data.beam_center "
                         "[row, column], a smaller --N, or data.frame_fit crop")
    return (r0, r0 + size, c0, c0 + size), b, None


def fit_mask(full: np.ndarray, window: tuple[int, int, int, int] | None, b: int) -> np.ndarray:
    """A full-frame mask (Fr, Fc) (True = bad) cut to the window and binned (a binned pixel is
    excluded when any of its b x b pixels is) -> (N, N) bool."""
    m = np.asarray(full, dtype=bool)
    if window is not None:
        m = m[window[0]:window[1], window[2]:window[3]]
    if b > 1:
        m = m.reshape(m.shape[0] // b, b, m.shape[1] // b, b).any(axis=(1, 3))
    return m


def fit_probe(probe: np.ndarray, frame: tuple[int, int], N: int, b: int) -> np.ndarray:
    """A probe sampled for the stored frames (P, Fr, Fc) resampled for N x N patterns binned by b:
    its far field cut to the central N*b x N*b (the sample-plane pixel becomes lambda z / (N b Delta))
    then the central N x N in real space. A probe already N x N is returned as is. (P, N, N) complex64."""
    p = np.asarray(probe, np.complex128)
    p = p[None] if p.ndim == 2 else p
    if p.shape[-2:] == (N, N):
        return p.astype(np.complex64)
    size = N * b
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    r0, c0 = p.shape[-2] // 2 - size // 2, p.shape[-1] // 2 - size // 2
    far = far[:, r0:r0 + size, c0:c0 + size]
    near = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    h0 = size // 2 - N // 2
    return near[:, h0:h0 + N, h0:h0 + N].astype(np.complex64)


def positions_px(x_m: np.ndarray, y_m: np.ndarray, pixel_m: float, N: int, *, transpose: bool = False,
                 flip_x: bool = False, flip_y: bool = False, origin: dict[str, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Scan positions in metres (M,) -> object pixels (x = column, y = row), shifted so the smallest
    lies at N/2 (every patch starts inside the object frame). `transpose` swaps x and y first, then
    `flip_x` / `flip_y` negate an axis. Returns (xcoords, ycoords, origin) where origin holds the
    metres of pixel (N/2, N/2): x_m = (xcoords - N/2) * pixel_m + origin['x_m'] (after the flips).
    A given `origin` is used instead of the smallest positions (later rows of a growing scan in the
    frame of its first rows; they may then lie below N/2)."""
    x, y = np.asarray(x_m, np.float64), np.asarray(y_m, np.float64)
    if transpose:
        x, y = y, x
    x = -x if flip_x else x
    y = -y if flip_y else y
    ox, oy = (float(x.min()), float(y.min())) if origin is None else (float(origin["x_m"]), float(origin["y_m"]))
    half = N / 2
    return (x - ox) / pixel_m + half, (y - oy) / pixel_m + half, {"x_m": ox, "y_m": oy}


LENGTH_UNITS = {"m": 1.0, "metre": 1.0, "meter": 1.0, "mm": 1e-3, "um": 1e-6, "\u00b5m": 1e-6, "micron": 1e-6,
                "microns": 1e-6, "nm": 1e-9, "pm": 1e-12, "cm": 1e-2, "angstrom": 1e-10, "\u00e5": 1e-10}
ENERGY_UNITS = {"j": 1.0, "ev": EV_J, "kev": 1e3 * EV_J}


def to_metres(value: np.ndarray, units: str | None) -> np.ndarray | None:
    """Lengths in `units` (None = metres) -> metres; None for units not known."""
    scale = 1.0 if not units else LENGTH_UNITS.get(units.strip().lower())
    return None if scale is None else np.asarray(value, np.float64) * scale


def to_joules(value: float, units: str | None) -> float | None:
    """A photon energy in `units` (J, eV, keV) -> joules. Without units: values below 1e-12 are
    taken as joules (1e-12 J is 6 MeV, far above any X-ray), larger ones as eV. None when unknown."""
    if units:
        scale = ENERGY_UNITS.get(units.strip().lower())
        return None if scale is None else float(value) * scale
    return float(value) if value < 1e-12 else float(value) * EV_J


def is_finite_positive(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0
