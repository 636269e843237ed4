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

from ptycho_torch.reconstruction.solver.batches import sparse_batches
from ptycho_torch.reconstruction.solver.modes import add_modes, orthogonalise_modes


@dataclass(frozen=True)
class SolverOptions:
    """Settings of `solve` (units in brackets).

    object_alpha, probe_alpha: rPIE regularisation a in [0, 1] (0 = plain least squares per pixel,
    1 = ePIE's max normalisation); object_step, probe_step: beta, the step along the update [1];
    batch: positions per update (spread over the scan); probe_start_epoch: epochs of object-only
    updates before the probe is refined (a wrong probe is better refined against a rough object than
    against none); refine_probe: False keeps the probe fixed; modes: incoherent probe modes;
    positions: correct the scan positions (from `positions_start_epoch` on, at most
    `position_max_step` object pixels per epoch); anneal: the last fraction of the run (of its epochs
    or seconds) over which the steps fall linearly to ANNEAL_FLOOR of their size, so the final object
    averages the updates' noise instead of carrying the last batch's (0 = constant steps); seed:
    batch order and new modes.
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
    anneal: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("object_alpha", "probe_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"solver.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("object_step", "probe_step", "position_max_step", "position_damping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"solver.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.anneal <= 1.0:
            raise ValueError(f"solver.anneal must be in [0, 1], got {self.anneal}")
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


ANNEAL_FLOOR = 0.1


def _anneal(done: float, fraction: float) -> float:
    """Step factor at `done` (0..1) of the run: 1, then linearly down to ANNEAL_FLOOR over the last
    `fraction` of it."""
    if fraction <= 0 or done <= 1 - fraction:
        return 1.0
    return max(ANNEAL_FLOOR, 1.0 - (1.0 - ANNEAL_FLOOR) * (done - (1 - fraction)) / fraction)


def photon_probe(probe: np.ndarray, mean_counts: float) -> np.ndarray:
    """The probe (K, N, N) scaled so that sum over modes and pixels of |P|^2 = mean counts per
    pattern (photon units: a flat object of amplitude 1 carries the data's energy)."""
    power = float(np.sum(np.abs(np.asarray(probe, np.complex128)) ** 2))
    if not math.isfinite(power) or power <= 0:
        raise ValueError("the starting probe is all zero or not finite; give another probe (data.probe) or "
                         "let the solver estimate one from the data")
    factor = math.sqrt(mean_counts / power)
    return (np.asarray(probe, np.complex128) * factor).astype(np.complex64)


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
    starting object (H, W) in any units, scaled to the data's energy (None = flat); mask (N, N) bool, True = excluded detector pixel.
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
    if keep_np is not None:
        meas *= keep_np  # excluded pixels carry no counts (they are read as 0 from files with a mask)
    mean_counts = float(np.mean(np.sum(meas.astype(np.float64) ** 2, axis=(-2, -1))))
    probe_np = photon_probe(probe, mean_counts)
    probe_np = add_modes(probe_np, options.modes, np.random.default_rng(options.seed))
    meas_t = torch.from_numpy(meas).to(device)
    keep = None if keep_np is None else torch.from_numpy(keep_np).to(device)
    P = torch.from_numpy(probe_np).to(device)  # (K, N, N)
    if start is None:
        O = torch.ones(shape, dtype=torch.complex64, device=device)
    else:
        O = torch.from_numpy(np.array(start, np.complex64)).to(device)
        O = (O * _start_scale(O, P, pos, mean_counts)).contiguous()  # a start in any units, to the data's energy
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
        done = max(epoch / epochs if epochs else 0.0, (time.perf_counter() - t0) / seconds if seconds else 0.0)
        gain = _anneal(done, options.anneal)  # full steps first, then smaller ones that average out the noise
        move = options.positions and epoch >= options.positions_start_epoch
        err_num = err_den = 0.0
        shifts = torch.zeros_like(pos_t)
        P_spec = torch.fft.fft2(P)  # (K, N, N): the probe is moved by each position's sub-pixel part
        for idx_np in sparse_batches(pos, options.batch, rng):
            idx = torch.from_numpy(idx_np).to(device)
            p = pos_t[idx]
            whole = torch.floor(p)
            flat = canvas.indices(whole.long() - N // 2)
            ramp = _ramps((p - whole).float(), N)[:, None]  # (B, 1, N, N): translate by +frac
            Ps = torch.fft.ifft2(P_spec[None] * ramp)  # (B, K, N, N) the probe as it sits on the integer crop
            crop = canvas.gather(O, flat)  # (B, N, N)
            psi = Ps * crop[:, None]  # (B, K, N, N)
            Psi = torch.fft.fft2(psi, norm="ortho")
            amp = torch.sqrt(torch.sum(Psi.real ** 2 + Psi.imag ** 2, dim=1, keepdim=True))  # (B, 1, N, N)
            X = meas_t[idx][:, None]
            ratio = X / (amp + eps)
            if keep is not None:
                ratio = torch.where(keep, ratio, torch.ones_like(ratio))
            chi = torch.fft.ifft2(Psi * (ratio - 1), norm="ortho")  # (B, K, N, N) exit-wave correction
            resid = (amp - X).abs() if keep is None else (amp - X).abs() * keep
            err_num += float(resid.sum())
            err_den += float(X.sum())
            # object: sum over modes of conj(P) chi over the summed illumination of the batch's positions
            # (a canvas only for the pixels two positions share), the rPIE floor a * its maximum
            lit = torch.sum(Ps.real ** 2 + Ps.imag ** 2, dim=1)  # (B, N, N)
            num = torch.sum(Ps.conj() * chi, dim=1)  # (B, N, N)
            den = canvas.gather(canvas.scatter(lit, flat), flat)
            a = options.object_alpha
            O.view(-1).index_add_(0, flat.reshape(-1),
                                  (gain * options.object_step * num / ((1 - a) * den + a * den.max() + 1e-12)).reshape(-1))
            if update_probe:  # the mirror image, averaged over the batch, moved back by -frac
                pnum = torch.fft.fft2(crop.conj()[:, None] * chi) * ramp.conj()  # (B, K, N, N) spectra
                pnum = torch.fft.ifft2(pnum.sum(dim=0))  # (K, N, N)
                pden = torch.sum(crop.real ** 2 + crop.imag ** 2, dim=0)  # (N, N); the shift of a sum of
                b = options.probe_alpha                                      # |O|^2 barely matters here
                P = P + gain * options.probe_step * pnum / ((1 - b) * pden + b * pden.max() + 1e-12)
                P_spec = torch.fft.fft2(P)
            if move:
                shifts[idx] = _position_shifts(crop, Ps, chi)
        if move:
            shifts = shifts - shifts.mean(dim=0, keepdim=True)  # a common drift is the object's own shift
            step = (options.position_damping * shifts).clamp(-options.position_max_step, options.position_max_step)
            pos_t = _keep_inside(pos_t + step, shape, N)
            pos = pos_t.cpu().numpy()
        if options.modes > 1 and update_probe:
            P = orthogonalise_modes(P)
        if update_probe:
            P, O = _recentre(P, O)
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


def _start_scale(O: torch.Tensor, P: torch.Tensor, pos: np.ndarray, mean_counts: float) -> float:
    """The factor c that gives a starting object (H, W) the data's energy: the mean over (up to 256)
    positions of sum_xy sum_k |P_k|^2 |c O_patch|^2 = the mean counts per pattern (Parseval)."""
    N = P.shape[-1]
    take = np.unique(np.linspace(0, len(pos) - 1, min(len(pos), 256)).astype(np.int64))
    corners = np.floor(pos[take]).astype(np.int64) - N // 2
    power = torch.sum(P.real ** 2 + P.imag ** 2, dim=0)  # (N, N)
    energy = float(np.mean([float(torch.sum(power * O[y:y + N, x:x + N].abs() ** 2)) for x, y in corners]))
    scale = math.sqrt(mean_counts / energy) if energy > 0 and math.isfinite(energy) else 1.0
    return scale


def _recentre(P: torch.Tensor, O: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move probe (K, N, N) and object (H, W) together so the probe's intensity centroid sits on pixel
    (N/2, N/2), the positions' reference: the data cannot tell a probe shifted by c from an object
    shifted by c (the exit waves only move), and a probe that drifts off centre drags the
    reconstruction out of the positions' frame."""
    N = P.shape[-1]
    power = torch.sum(P.real ** 2 + P.imag ** 2, dim=0)  # (N, N)
    total = power.sum()
    if not torch.isfinite(total) or total <= 0:
        return P, O
    ar = torch.arange(N, device=P.device, dtype=power.dtype)
    c = torch.stack([(power.sum(0) * ar).sum() / total, (power.sum(1) * ar).sum() / total]) - N // 2  # (dx, dy)
    if float(c.abs().max()) < 0.05:
        return P, O
    shift = -c[None].to(torch.float32)  # (1, 2): translate both by -c
    P = torch.fft.ifft2(torch.fft.fft2(P) * _ramps(shift, N))
    H, W = O.shape
    ky, kx = torch.fft.fftfreq(H, device=O.device), torch.fft.fftfreq(W, device=O.device)
    ramp = torch.polar(torch.ones(H, W, device=O.device),
                       -2 * math.pi * (ky[:, None] * float(shift[0, 1]) + kx[None, :] * float(shift[0, 0])))
    return P, torch.fft.ifft2(torch.fft.fft2(O) * ramp).contiguous()


def _position_shifts(patch: torch.Tensor, P: torch.Tensor, chi: torch.Tensor) -> torch.Tensor:
    """First-order shift (B, 2) (dx, dy) pixels that explains the exit-wave correction chi
    (B, K, N, N) of object patches (B, N, N) under probes P (B, K, N, N): the patch of a position moved
    by d is patch + d . grad(patch), so chi ~ P d . grad(patch)."""
    N = patch.shape[-1]
    k = torch.fft.fftfreq(N, device=patch.device)
    spec = torch.fft.fft2(patch)
    gx = torch.fft.ifft2(spec * (2j * math.pi * k)[None, None, :])  # d patch / dx (B, N, N)
    gy = torch.fft.ifft2(spec * (2j * math.pi * k)[None, :, None])
    out = []
    for g in (gx, gy):
        dpsi = P * g[:, None]  # (B, K, N, N)
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
