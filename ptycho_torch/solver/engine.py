"""Iterative ptychography: object, probe (incoherent modes) and optionally positions from a scan.

The algorithm is a minibatch projection method in the PIE family (rPIE / LSQML-like), chosen for
what converges fastest per second on a CPU and vectorises on a GPU:

1. The patterns are split into *sparse* batches: each batch takes one position from each of
   `batch` spatial clusters, so the positions of a batch rarely overlap and their object updates
   do not fight (Odstrcil et al. 2018 recommend the same for LSQML).
2. For a batch: exit waves psi_k = P_k * O_patch for every probe mode k; far field Psi = F psi; the
   modulus constraint replaces |Psi| by the measured amplitude (masked detector pixels keep Psi);
   chi = F^-1(Psi') - psi is the exit-wave correction.
3. Object update, regularised PIE (Maiden, Johnson & Li 2017):
       O += beta_O * sum_b,k conj(P_k) chi / ((1 - a) sum_b,k |P_k|^2 + a max sum|P|^2)
   accumulated over the batch on the object canvas; probe update the same with the roles swapped,
   averaged over the batch's patterns.
4. Positions (optional): the shift that best explains chi to first order,
       dr = Re(sum conj(P dO/dr) chi) / sum |P dO/dr|^2,
   applied with a damping and a cap of one pixel per epoch, the mean shift removed.
5. Probe modes are orthogonalised and sorted by power after every epoch.

Every update is a ratio of two quantities of the same units (conj(P) chi / |P|^2 ...), so the
algorithm is invariant to the units of the probe; on top of that the probe is brought to photon units
at the start (sum_xy |P|^2 = the mean counts per pattern, so a flat object of amplitude 1 carries the
data's energy) and the result is returned in a canonical frame (see `normalise_pair`): multiplying
the starting probe by any constant gives the same reconstruction.

Legend: M patterns of N x N; K probe modes; object (H, W) complex64; probe (K, N, N) complex64;
positions (M, 2) float object pixels as (x, y) (the contract's convention: the patch of (x, y) has
its pixel (N/2, N/2) on object pixel (y, x)); amplitudes = sqrt(photon counts), DC at the centre.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ptycho_torch.solver.batches import sparse_batches
from ptycho_torch.solver.modes import add_modes, orthogonalise_modes


@dataclass(frozen=True)
class SolverOptions:
    """Settings of `solve` (units in brackets).

    object_alpha, probe_alpha: rPIE regularisation a in [0, 1] (0 = plain least squares per pixel,
    1 = ePIE's max normalisation); object_step, probe_step: beta, the step along the update [1];
    batch: positions per update (spread over the scan); probe_start_epoch: epochs of object-only
    updates before the probe is refined (a wrong probe is better refined against a rough object than
    against none); refine_probe: False keeps the probe fixed; modes: incoherent probe modes;
    positions: correct the scan positions (from `positions_start_epoch` on, at most
    `position_max_step` object pixels per epoch); seed: batch order and new modes.
    """

    object_alpha: float = 0.1
    probe_alpha: float = 1.0
    object_step: float = 1.0
    probe_step: float = 1.0
    batch: int = 16
    refine_probe: bool = True
    probe_start_epoch: int = 1
    modes: int = 1
    positions: bool = False
    positions_start_epoch: int = 5
    position_max_step: float = 1.0
    position_damping: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("object_alpha", "probe_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"solver.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("object_step", "probe_step", "position_max_step", "position_damping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"solver.{name} must be > 0, got {getattr(self, name)}")
        if self.batch < 1:
            raise ValueError(f"solver.batch must be >= 1, got {self.batch}")
        if self.modes < 1:
            raise ValueError(f"solver.modes must be >= 1, got {self.modes}; 1 = a coherent probe")


@dataclass
class Solution:
    """What `solve` returns: object (H, W) complex64 and probe (K, N, N) complex64 in the canonical
    frame (`normalise_pair`: the probe in photon units, the object's bright level 1); positions
    (M, 2) (x, y) object pixels as refined (the input ones when not corrected); epochs and seconds
    spent; errors: the mean relative amplitude error per epoch, sum | |Psi| - X | / sum X over the
    epoch's patterns (the classic ePIE error metric, 0 = a perfect fit)."""

    object: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    epochs: int
    seconds: float
    errors: list[float] = field(default_factory=list)


class _Canvas:
    """Integer patch placement on an (H, W) canvas: gather and scatter-add of N x N crops."""

    def __init__(self, shape: tuple[int, int], N: int, device: torch.device) -> None:
        self.H, self.W, self.N = shape[0], shape[1], N
        ar = torch.arange(N, device=device)
        self._offsets = (ar[:, None] * self.W + ar[None, :]).reshape(-1)  # (N*N,)

    def indices(self, corners: torch.Tensor) -> torch.Tensor:
        """corners (B, 2) long (x0, y0) -> flat canvas indices (B, N*N)."""
        return (corners[:, 1] * self.W + corners[:, 0])[:, None] + self._offsets[None]

    def gather(self, canvas: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return canvas.reshape(-1)[idx].reshape(-1, self.N, self.N)

    def scatter(self, values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.H * self.W, dtype=values.dtype, device=values.device)
        out.index_add_(0, idx.reshape(-1), values.reshape(-1))
        return out.reshape(self.H, self.W)


def _ramps(frac: torch.Tensor, N: int) -> torch.Tensor:
    """Fourier ramps (B, N, N) complex64 that translate by frac (B, 2) = (dx, dy) pixels."""
    k = torch.fft.fftfreq(N, device=frac.device)
    ry = torch.polar(torch.ones(len(frac), N, device=frac.device), -2 * math.pi * k * frac[:, 1:2])
    rx = torch.polar(torch.ones(len(frac), N, device=frac.device), -2 * math.pi * k * frac[:, 0:1])
    return ry[:, :, None] * rx[:, None, :]


def _shift(img: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(torch.fft.fft2(img) * ramp)


def photon_probe(probe: np.ndarray, mean_counts: float) -> tuple[np.ndarray, float]:
    """The probe (K, N, N) scaled so that sum over modes and pixels of |P|^2 = mean counts per
    pattern (photon units: a flat object of amplitude 1 carries the data's energy), and the factor."""
    power = float(np.sum(np.abs(np.asarray(probe, np.complex128)) ** 2))
    if not math.isfinite(power) or power <= 0:
        raise ValueError("the starting probe is all zero or not finite; give another probe (data.probe) or "
                         "let the solver estimate one from the data")
    factor = math.sqrt(mean_counts / power)
    return (np.asarray(probe, np.complex128) * factor).astype(np.complex64), factor


def normalise_pair(obj: np.ndarray, probe: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the object/probe scale ambiguity: the object divided by its bright level (the 95th
    percentile of |O| where the illumination `weight` (H, W) is above a tenth of its maximum), the
    probe multiplied by it, so a transparent region of the sample reads amplitude ~1 and the probe
    is in photon units. The object's global phase is set so that its mean phase over that region is
    0. Returns (object, probe), complex64."""
    lit = weight > 0.1 * weight.max()
    if not lit.any():
        return obj, probe
    bright = float(np.percentile(np.abs(obj[lit]), 95))
    if not math.isfinite(bright) or bright <= 0:
        return obj, probe
    ref = np.sum(obj[lit])
    phase = ref / abs(ref) if abs(ref) > 0 else 1.0
    return ((obj / bright) * np.conj(phase)).astype(np.complex64), (probe * bright * phase).astype(np.complex64)


def solve(rows: Callable[[np.ndarray], np.ndarray], positions: np.ndarray, probe: np.ndarray,
          shape: tuple[int, int], *, options: SolverOptions = SolverOptions(), seconds: float | None = None,
          epochs: int | None = None, start: np.ndarray | None = None, mask: np.ndarray | None = None,
          device: str | torch.device = "cpu", progress: Callable[[int, float, float], None] | None = None,
          stop: Callable[[], bool] | None = None) -> Solution:
    """Reconstruct object and probe from a scan.

    rows(indices) -> measured amplitudes (B, N, N) float (sqrt photon counts, DC at the centre) of
    pattern indices (B,); positions (M, 2) (x, y) object pixels; probe (N, N) or (K, N, N) complex, any
    units (a starting guess); shape (H, W) of the object canvas (every patch inside it); start: a
    starting object (H, W) in any units (None = flat); mask (N, N) bool, True = excluded detector pixel.
    Runs `epochs` passes over the scan or `seconds` of wall clock (at least one), or until `stop()`.
    `progress(epoch, error, elapsed_s)` is called after each epoch. Returns a `Solution`.
    """
    if epochs is None and seconds is None:
        raise ValueError("solve needs epochs or seconds")
    device = torch.device(device)
    t0 = time.perf_counter()
    pos = np.asarray(positions, np.float64)
    M = len(pos)
    probe = np.asarray(probe)
    probe = probe[None] if probe.ndim == 2 else probe
    N = probe.shape[-1]
    # every measured amplitude in memory, DC at the corner (the FFT's own order): (M, N, N) float32
    meas = np.empty((M, N, N), np.float32)
    for s in range(0, M, 256):
        meas[s:s + 256] = np.fft.ifftshift(np.asarray(rows(np.arange(s, min(M, s + 256))), np.float32), axes=(-2, -1))
    keep_np = None if mask is None else np.fft.ifftshift(~np.asarray(mask, bool))
    mean_counts = float(np.mean(np.sum(meas.astype(np.float64) ** 2, axis=(-2, -1))))
    probe_np, _ = photon_probe(probe, mean_counts)
    probe_np = add_modes(probe_np, options.modes, np.random.default_rng(options.seed))
    meas_t = torch.from_numpy(meas).to(device)
    keep = None if keep_np is None else torch.from_numpy(keep_np).to(device)
    P = torch.from_numpy(probe_np).to(device)  # (K, N, N)
    if start is None:
        O = torch.ones(shape, dtype=torch.complex64, device=device)
    else:
        O = torch.from_numpy(np.array(start, np.complex64)).to(device)
        O = (O / _start_level(O, pos, N)).contiguous()  # a start in any units, brought to the probe's frame
    canvas = _Canvas(shape, N, device)
    pos_t = torch.from_numpy(pos).to(device)
    rng = np.random.default_rng(options.seed)
    errors: list[float] = []
    epoch = 0
    eps = 1e-8 * mean_counts / (N * N)
    while (epochs is None or epoch < epochs) and (seconds is None or time.perf_counter() - t0 < seconds):
        if stop is not None and stop():
            break
        update_probe = options.refine_probe and epoch >= options.probe_start_epoch
        move = options.positions and epoch >= options.positions_start_epoch
        err_num = err_den = 0.0
        shifts = torch.zeros_like(pos_t)
        for idx_np in sparse_batches(pos, options.batch, rng):
            idx = torch.from_numpy(idx_np).to(device)
            p = pos_t[idx]
            whole = torch.floor(p)
            corners = whole.long() - N // 2
            ramp = _ramps((p - whole).float(), N)  # patch = crop shifted by -frac
            flat = canvas.indices(corners)
            crop = canvas.gather(O, flat)  # (B, N, N)
            patch = _shift(crop, ramp.conj())
            psi = P[None] * patch[:, None]  # (B, K, N, N)
            Psi = torch.fft.fft2(psi, norm="ortho")
            amp = torch.sqrt(torch.sum(Psi.real ** 2 + Psi.imag ** 2, dim=1, keepdim=True))  # (B, 1, N, N)
            X = meas_t[idx][:, None]
            ratio = X / (amp + eps)
            if keep is not None:
                ratio = torch.where(keep, ratio, torch.ones_like(ratio))
            chi = torch.fft.ifft2(Psi * (ratio - 1), norm="ortho")  # (B, K, N, N)
            resid = (amp - X).abs() if keep is None else (amp - X).abs() * keep
            err_num += float(resid.sum())
            err_den += float(X.sum())
            # object: sum over modes of conj(P) chi, back to the crop frame; the rPIE denominator is the
            # batch's summed illumination at each pixel (a canvas only for pixels two positions share)
            P_power = torch.sum(P.real ** 2 + P.imag ** 2, dim=0)  # (N, N)
            num = _shift(torch.sum(P.conj()[None] * chi, dim=1), ramp)  # (B, N, N)
            den = canvas.gather(canvas.scatter(P_power.expand(len(idx), N, N), flat), flat)  # (B, N, N)
            a = options.object_alpha
            step = num / ((1 - a) * den + a * den.max() + 1e-12)
            O.view(-1).index_add_(0, flat.reshape(-1), options.object_step * step.reshape(-1))
            if update_probe:
                patch_power = patch.real ** 2 + patch.imag ** 2  # (B, N, N)
                pnum = torch.sum(patch.conj()[:, None] * chi, dim=0)  # (K, N, N)
                pden = patch_power.sum(dim=0)
                b = options.probe_alpha
                P = P + options.probe_step * pnum / ((1 - b) * pden + b * pden.max() + 1e-12)
            if move:
                shifts[idx] = _position_shifts(patch, P, chi)
        if move:
            shifts = shifts - shifts.mean(dim=0, keepdim=True)  # a common drift is the object's own shift
            step = (options.position_damping * shifts).clamp(-options.position_max_step, options.position_max_step)
            pos_t = _keep_inside(pos_t + step, shape, N)
            pos = pos_t.cpu().numpy()
        if options.modes > 1 and update_probe:
            P = orthogonalise_modes(P)
        err = err_num / max(err_den, 1e-30)
        errors.append(err)
        epoch += 1
        if progress is not None:
            progress(epoch, err, time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    obj_np, probe_out = O.cpu().numpy(), P.cpu().numpy()
    weight = canvas_weight(pos, probe_out, shape)
    obj_np, probe_out = normalise_pair(obj_np, probe_out, weight)
    return Solution(obj_np, probe_out, pos_t.cpu().numpy(), epoch, time.perf_counter() - t0, errors)


def _start_level(O: torch.Tensor, pos: np.ndarray, N: int) -> float:
    """The bright level of a starting object (95th percentile of |O| inside the scanned box)."""
    y0, x0 = int(max(pos[:, 1].min() - N // 4, 0)), int(max(pos[:, 0].min() - N // 4, 0))
    y1, x1 = int(pos[:, 1].max() + N // 4), int(pos[:, 0].max() + N // 4)
    inside = O[y0:y1, x0:x1].abs().reshape(-1)
    level = float(torch.quantile(inside[: 2 ** 24].float(), 0.95)) if inside.numel() else 1.0
    return level if math.isfinite(level) and level > 0 else 1.0


def _position_shifts(patch: torch.Tensor, P: torch.Tensor, chi: torch.Tensor) -> torch.Tensor:
    """First-order shift (B, 2) (dx, dy) pixels that explains the exit-wave correction chi
    (B, K, N, N): the patch of a position moved by d is patch + d . grad(patch), so chi ~ P d . grad."""
    N = patch.shape[-1]
    k = torch.fft.fftfreq(N, device=patch.device)
    spec = torch.fft.fft2(patch)
    gx = torch.fft.ifft2(spec * (2j * math.pi * k)[None, None, :])  # d patch / dx (B, N, N)
    gy = torch.fft.ifft2(spec * (2j * math.pi * k)[None, :, None])
    out = []
    for g in (gx, gy):
        dpsi = P[None] * g[:, None]  # (B, K, N, N)
        num = torch.sum((dpsi.conj() * chi).real, dim=(1, 2, 3))
        den = torch.sum(dpsi.real ** 2 + dpsi.imag ** 2, dim=(1, 2, 3))
        out.append(num / (den + 1e-12))
    return torch.stack(out, dim=1).to(torch.float64)


def _keep_inside(pos: torch.Tensor, shape: tuple[int, int], N: int) -> torch.Tensor:
    """Positions clamped so every patch stays on the canvas."""
    half = N // 2
    x = pos[:, 0].clamp(half, shape[1] - half - 1e-3)
    y = pos[:, 1].clamp(half, shape[0] - half - 1e-3)
    return torch.stack([x, y], dim=1)


def canvas_weight(positions: np.ndarray, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Illumination (H, W) float32: the sum over positions of sum_k |P_k|^2 at integer placement."""
    probe = np.asarray(probe)
    power = np.sum(np.abs(probe.reshape(-1, *probe.shape[-2:])) ** 2, axis=0).astype(np.float32)
    N = power.shape[-1]
    out = np.zeros(shape, np.float32)
    corners = np.floor(np.asarray(positions)).astype(np.int64) - N // 2
    for x0, y0 in corners:
        out[y0:y0 + N, x0:x0 + N] += power
    return out
