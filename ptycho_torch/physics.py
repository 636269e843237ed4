"""The physics of ptychography as pure tensor functions (no state, no Lightning, no Ray).

Legend (SPEC section 4):
    N           patch / diffraction size in pixels (even)
    B, C, P     batch, channels (C = gridsize**2), probe modes
    X           measured amplitude = sqrt(photon counts), DC at the centre, float32 (..., N, N)
    x = r * X   network input; r = (N/2) / sqrt(mean_m sum_xy X_m**2) (one factor per dataset)
    O           complex object patch (..., N, N)
    P           probe (P, N, N) complex; a single-mode probe is (1, N, N)
    F           fft2(norm="ortho") followed by fftshift (DC at pixel N/2)
    positions   (x, y) in object pixels: x = column, y = row, shape (..., 2)

Patch convention: the patch of a scan position (x, y) has its pixel (N/2, N/2) on object pixel (y, x);
patch pixel (i, j) sees object pixel (y - N/2 + i, x - N/2 + j). Sub-pixel positions are honoured by a
periodic Fourier shift of the N x N patch (exactly invertible), integer parts by indexing.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "normalization_factor", "fourier_shift", "extract_patches", "place_patches", "merge_patches",
    "extract_from_canvas", "overlap_constraint", "group_offsets", "exit_wave", "far_field",
    "predicted_amplitude", "initial_log_scale", "poisson_nll", "total_variation",
]


# ------------------------------------------------------------------ normalisation

def normalization_factor(mean_energy: float, N: int) -> float:
    """r = (N/2) / sqrt(mean_energy), with mean_energy = mean over patterns of sum_xy X**2 (photons).

    After x = r * X the mean pattern energy is (N/2)**2.
    """
    if not math.isfinite(mean_energy) or mean_energy <= 0:
        raise ValueError(f"mean diffraction energy must be positive and finite, got {mean_energy}; "
                         "the diffraction data are all zero or invalid")
    return float((N / 2) / math.sqrt(mean_energy))


# ------------------------------------------------------------------ translation

def _frequencies(n: int, device: torch.device) -> torch.Tensor:
    return torch.fft.fftfreq(n, device=device, dtype=torch.float32)


def fourier_shift(img: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Periodic sub-pixel translation: out[..., i, j] = img[..., i - dy, j - dx].

    img (..., H, W) real or complex; shift_xy (..., 2) in pixels as (dx, dy), broadcast over the leading
    dimensions of img. Returns complex64 (...,H,W). Integer shifts are exact circular rolls.
    """
    H, W = img.shape[-2:]
    return torch.fft.ifft2(torch.fft.fft2(img.to(torch.complex64)) * _shift_ramp(shift_xy, H, W, img.device))


def _shift_ramp(shift_xy: torch.Tensor, H: int, W: int, device: torch.device) -> torch.Tensor:
    """The Fourier phase ramp (..., H, W) complex64 that translates by shift_xy (..., 2) = (dx, dy)."""
    ky = _frequencies(H, device)[:, None]  # (H, 1) cycles/pixel
    kx = _frequencies(W, device)[None, :]  # (1, W)
    dx = shift_xy[..., 0, None, None].to(torch.float32)
    dy = shift_xy[..., 1, None, None].to(torch.float32)
    return torch.exp(-2j * math.pi * (ky * dy + kx * dx))


def _split_positions(positions: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2) float (x, y) -> integer top-left corner (..., 2) as (x0, y0) and fractional part."""
    whole = torch.floor(positions)
    frac = positions - whole
    corner = whole.to(torch.long) - N // 2
    return corner, frac


def _flat_indices(corner: torch.Tensor, N: int, W: int) -> torch.Tensor:
    """corner (..., 2) (x0, y0) -> flat canvas indices (..., N, N) of the patch pixels."""
    ar = torch.arange(N, device=corner.device)
    rows = corner[..., 1, None] + ar  # (..., N)
    cols = corner[..., 0, None] + ar
    return rows[..., :, None] * W + cols[..., None, :]


def extract_patches(obj: torch.Tensor, positions: torch.Tensor, N: int) -> torch.Tensor:
    """Cut N x N patches from objects at sub-pixel scan positions.

    obj (H, W) or (B, H, W) complex; positions (K, 2) or (B, K, 2) as (x, y) pixels.
    Returns (K, N, N) or (B, K, N, N) complex64. Positions must keep the patch inside the object:
    N/2 <= floor(x) <= W - N/2 (same for y); callers validate this (see data.contract).
    """
    batched = obj.dim() == 3
    obj_b = obj if batched else obj[None]
    pos_b = positions if batched else positions[None]
    B, H, W = obj_b.shape
    corner, frac = _split_positions(pos_b, N)
    idx = _flat_indices(corner, N, W)  # (B, K, N, N)
    flat = obj_b.reshape(B, H * W)
    crops = torch.gather(flat, 1, idx.reshape(B, -1)).reshape(idx.shape)
    patches = fourier_shift(crops, -frac)  # patch[i] = crop[i + frac]
    return patches if batched else patches[0]


def place_patches(
    patches: torch.Tensor,
    positions: torch.Tensor,
    canvas_hw: tuple[int, int],
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate weighted patches onto canvases (the adjoint-style companion of extract_patches).

    patches (B, K, N, N) complex; positions (B, K, 2) (x, y); weight (N, N) real, in the patch frame.
    Returns (sum of w*O (B, H, W) complex64, sum of w (B, H, W) float32). Both are linear in the
    patches, so partial sums over disjoint sets of patches add up.
    """
    B, K, N, _ = patches.shape
    H, W = canvas_hw
    corner, frac = _split_positions(positions, N)
    idx = _flat_indices(corner, N, W)  # (B, K, N, N)
    if (corner.min() < 0) or (corner[..., 0].max() + N > W) or (corner[..., 1].max() + N > H):
        raise ValueError(f"patch positions fall outside the {H}x{W} canvas; positions must satisfy "
                         f"N/2 <= x <= W - N/2 and N/2 <= y <= H - N/2 (N={N})")
    # back into the integer grid: one ramp for both, and the weight's spectrum computed once
    ramp = _shift_ramp(frac, N, N, patches.device)  # (B, K, N, N)
    shifted = torch.fft.ifft2(torch.fft.fft2(patches.to(torch.complex64)) * ramp)
    w_shift = torch.fft.ifft2(torch.fft.fft2(weight.to(torch.complex64)) * ramp).real.clamp_min(0)
    offsets = (torch.arange(B, device=patches.device) * (H * W))[:, None, None, None]
    flat_idx = (idx + offsets).reshape(-1)
    obj_sum = torch.zeros(B * H * W, dtype=torch.complex64, device=patches.device)
    w_sum = torch.zeros(B * H * W, dtype=torch.float32, device=patches.device)
    obj_sum = obj_sum.index_add(0, flat_idx, (shifted * w_shift).reshape(-1))
    w_sum = w_sum.index_add(0, flat_idx, w_shift.reshape(-1))
    return obj_sum.reshape(B, H, W), w_sum.reshape(B, H, W)


# ------------------------------------------------------------------ overlap constraint (gridsize > 1)

def group_offsets(positions: torch.Tensor) -> torch.Tensor:
    """positions (B, C, 2) -> offsets from the group centroid (B, C, 2), pixels, (dx, dy)."""
    return positions - positions.mean(dim=-2, keepdim=True)


def _canvas_size(offsets: torch.Tensor, N: int) -> int:
    return N + 2 * int(math.ceil(float(offsets.abs().max()) if offsets.numel() else 0.0)) + 2


def _canvas_positions(offsets: torch.Tensor, M: int) -> torch.Tensor:
    """Canvas positions of a group's patches: centroid near M/2, and the first patch on an integer
    pixel, so groups of integer scan positions are placed without any sub-pixel shift."""
    first = offsets[:, :1]
    return M / 2 + offsets - (first - torch.round(first))


def merge_patches(patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Weighted average of a group's patches on a shared canvas.

    patches (B, C, N, N) complex; offsets (B, C, 2) pixels from the group centroid.
    Returns canvas (B, M, M) complex64 with M = N + 2*ceil(max|offset|) + 2, centroid near pixel M/2.
    Weights are the translated all-ones patch, so every covered canvas pixel is an average.
    """
    N = patches.shape[-1]
    M = _canvas_size(offsets, N)
    obj_sum, w_sum = place_patches(patches, _canvas_positions(offsets, M), (M, M),
                                   torch.ones(N, N, device=patches.device))
    return obj_sum / w_sum.clamp_min(1e-6)


def extract_from_canvas(canvas: torch.Tensor, offsets: torch.Tensor, N: int) -> torch.Tensor:
    """Inverse of merge_patches for consistent patches: canvas (B, M, M), offsets (B, C, 2) ->
    (B, C, N, N) complex64."""
    return extract_patches(canvas, _canvas_positions(offsets, canvas.shape[-1]), N)


def overlap_constraint(patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Make a group's patches agree where they overlap: extract(merge(patches))."""
    if patches.shape[1] == 1:
        return patches
    return extract_from_canvas(merge_patches(patches, offsets), offsets, patches.shape[-1])


# ------------------------------------------------------------------ forward model

def exit_wave(obj: torch.Tensor, probe: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Psi = s * P * O. obj (B, C, N, N) complex; probe (P, N, N) complex; log_scale scalar.
    Returns (B, C, P, N, N) complex64."""
    scale = torch.exp(log_scale).to(torch.complex64)
    return scale * probe[None, None] * obj[:, :, None]


def far_field(psi: torch.Tensor) -> torch.Tensor:
    """F(psi) = fftshift(fft2(psi, norm='ortho')) over the last two axes."""
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def predicted_amplitude(obj: torch.Tensor, probe: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Normalised predicted amplitude sqrt(sum_p |F(s P_p O)|^2): (B, C, N, N) float32."""
    intensity = far_field(exit_wave(obj, probe, log_scale)).abs().square().sum(dim=2)
    return torch.sqrt(intensity + 1e-12)


def initial_log_scale(probe: torch.Tensor) -> float:
    """log s0 with s0**2 = (N/2)**2 / sum|P|**2, so a unit object matches the normalised energy."""
    N = probe.shape[-1]
    energy = float(probe.abs().square().sum())
    if energy <= 0:
        raise ValueError("probe is all zeros")
    return 0.5 * math.log((N / 2) ** 2 / energy)


# ------------------------------------------------------------------ losses

def poisson_nll(pred_amp: torch.Tensor, meas_amp: torch.Tensor, r: float, eps: float = 1e-6) -> torch.Tensor:
    """Poisson negative log-likelihood in photon counts (SPEC 4.5), a scalar.

    pred_amp: normalised predicted amplitude (B, C, N, N); meas_amp: measured amplitude X (sqrt counts)
    of the same shape; r: the dataset normalisation factor. lambda = (pred/r)^2 + eps, k = X^2;
    L = mean_b sum_{c,x,y} (lambda - k log lambda - (k - k log k)) / mean(k).
    The constant k - k log k (the saturated likelihood, with 0 log 0 = 0) changes no gradient; it
    makes L >= 0 with L = 0 for a perfect fit, so losses read as a deviance and plot on a log axis.
    """
    lam = (pred_amp / r).square() + eps
    k = meas_amp.square()
    saturated = k - torch.xlogy(k, k)
    per_sample = (lam - k * torch.log(lam) - saturated).flatten(1).sum(dim=1)
    return per_sample.mean() / k.mean().detach().clamp_min(1e-12)


def total_variation(obj: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference of a complex patch stack (..., N, N), a scalar."""
    dy = (obj[..., 1:, :] - obj[..., :-1, :]).abs().mean()
    dx = (obj[..., :, 1:] - obj[..., :, :-1]).abs().mean()
    return dx + dy

