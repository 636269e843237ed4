"""The physics of ptychography as pure tensor functions (no state, no Lightning, no Ray).

Legend (SPEC section 4):
    N           patch / diffraction size in pixels (even)
    B, C, P     batch, channels (C = gridsize**2), probe modes
    X           measured amplitude = sqrt(photon counts), DC at the centre, float32 (..., N, N)
    x = r * X   network input; r = (N/2) / sqrt(mean_m sum_xy X_m**2) (one factor per dataset)
    O           complex object patch (..., N, N)
    P           probe (P, N, N) complex; a single-mode probe is (1, N, N); a batch of patterns from
                several scans carries one probe per sample, (B, P, N, N)
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
    "predicted_amplitude", "initial_log_scale", "backpropagate", "poisson_nll", "total_variation",
    "TYPICAL_AMPLITUDE",
]

TYPICAL_AMPLITUDE = 0.5  # the sigmoid amplitude head's output at zero logit: where the scale starts


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
    """The Fourier phase ramp (..., H, W) complex64 that translates by shift_xy (..., 2) = (dx, dy).

    The ramp is separable, exp(-2 pi i (ky dy + kx dx)) = exp(-2 pi i ky dy) exp(-2 pi i kx dx), so
    it is built as the outer product of a row and a column ramp: H + W complex exponentials per shift
    instead of H * W (the exponential dominated the partner-frame translations of gridsize > 1)."""
    ky = _frequencies(H, device)  # (H,) cycles/pixel
    kx = _frequencies(W, device)  # (W,)
    dx = shift_xy[..., 0, None].to(torch.float32)  # (..., 1)
    dy = shift_xy[..., 1, None].to(torch.float32)
    row_angle = -2 * math.pi * ky * dy  # (..., H) rad
    col_angle = -2 * math.pi * kx * dx  # (..., W) rad
    row = torch.polar(torch.ones_like(row_angle), row_angle)
    col = torch.polar(torch.ones_like(col_angle), col_angle)
    return row[..., :, None] * col[..., None, :]


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

    patches (B, K, N, N) complex; positions (B, K, 2) (x, y); weight (N, N) real, in the patch frame
    (or (B, 1, N, N), one per row of the batch).
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


def merge_patches(patches: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Weighted average of a group's patches on a shared canvas.

    patches (B, C, N, N) complex; offsets (B, C, 2) pixels from the group centroid; weight (N, N)
    real >= 0 in the patch frame, or (B, 1, N, N) one per group (None = all ones). Returns canvas (B, M, M) complex64 with
    M = N + 2*ceil(max|offset|) + 2, centroid near pixel M/2. Every canvas pixel is the w-weighted
    average of the patches covering it, so patches cut from one object merge back to it exactly
    wherever the weights do not vanish. With w = |P|^2 each patch speaks where its own probe lit
    the object, which is the only place its own pattern says anything about it.
    """
    N = patches.shape[-1]
    M = _canvas_size(offsets, N)
    w = torch.ones(N, N, device=patches.device) if weight is None else weight.to(patches.device)
    obj_sum, w_sum = place_patches(patches, _canvas_positions(offsets, M), (M, M), w)
    floor = 1e-6 * w_sum.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    return obj_sum / torch.maximum(w_sum, floor)


def extract_from_canvas(canvas: torch.Tensor, offsets: torch.Tensor, N: int) -> torch.Tensor:
    """Inverse of merge_patches for consistent patches: canvas (B, M, M), offsets (B, C, 2) ->
    (B, C, N, N) complex64."""
    return extract_patches(canvas, _canvas_positions(offsets, canvas.shape[-1]), N)


def overlap_constraint(patches: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Make a group's patches agree where they overlap: extract(merge(patches)).
    patches (B, C, N, N), offsets (B, C, 2), weight (N, N) or None -> (B, C, N, N) complex64."""
    if patches.shape[1] == 1:
        return patches
    return extract_from_canvas(merge_patches(patches, offsets, weight), offsets, patches.shape[-1])


# ------------------------------------------------------------------ forward model

def exit_wave(obj: torch.Tensor, probe: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Psi = s * P * O. obj (B, C, N, N) complex; probe (P, N, N) complex shared by the batch, or
    (B, P, N, N) one per sample (several scans); log_scale a scalar, or (B,) one per sample.
    Returns (B, C, P, N, N) complex64."""
    scale = torch.exp(log_scale).to(torch.complex64)
    if probe.dim() == 4:  # one probe (and scale) per sample
        return scale.reshape(-1, 1, 1, 1, 1) * probe[:, None] * obj[:, :, None]
    return scale * probe[None, None] * obj[:, :, None]


def far_field(psi: torch.Tensor) -> torch.Tensor:
    """F(psi) = fftshift(fft2(psi, norm='ortho')) over the last two axes."""
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def predicted_amplitude(obj: torch.Tensor, probe: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Normalised predicted amplitude sqrt(sum_p |F(s P_p O)|^2): (B, C, N, N) float32 (probe and
    log_scale shared or per sample, as in exit_wave)."""
    intensity = far_field(exit_wave(obj, probe, log_scale)).abs().square().sum(dim=2)
    return torch.sqrt(intensity + 1e-12)


def initial_log_scale(probe: torch.Tensor, typical_amplitude: float = TYPICAL_AMPLITUDE) -> float:
    """log s0 with s0**2 * a**2 * sum|P|**2 = (N/2)**2, a = `typical_amplitude`.

    The normalised data have mean energy (N/2)**2 (SPEC 4.1), so an object of uniform amplitude a
    under the scale s0 reproduces it. a is the amplitude head's output at zero logit (sigmoid: 0.5),
    where training starts, so the data's energy is reachable from the middle of the head's range; a
    start sized for a = 1 (which a sigmoid never reaches) saturated the amplitude (a flat grey).
    """
    N = probe.shape[-1]
    energy = float(probe.abs().square().sum())
    if energy <= 0:
        raise ValueError("probe is all zeros")
    if not 0 < typical_amplitude:
        raise ValueError(f"typical_amplitude must be > 0, got {typical_amplitude}")
    return 0.5 * math.log((N / 2) ** 2 / energy) - math.log(typical_amplitude)


def backpropagate(x: torch.Tensor, probe: torch.Tensor, scale: float | torch.Tensor, floor: float = 0.05
                  ) -> torch.Tensor:
    """A real-space first estimate of each object patch from its normalised amplitude alone.

    x (B, C, N, N) normalised amplitudes; probe (P, N, N), mode 0 is used, or (B, P, N, N) one per
    sample with scale (B,); scale the intensity scale s. The measured amplitude is given the phase of the probe's own far field F(P) (the
    phase a flat object would give), propagated back to the sample plane and divided by s P (s a
    float or a 0-d tensor)
    (regularised: conj(P) / (|P|^2 + floor * max|P|^2)). Returns (B, C, N, N) complex64.

    For an object that is a background plus structure, F(P) acts as a reference wave: the estimate
    holds the object's structure (and its twin) in the patch frame, so the network maps real space
    to real space, which convolutions do well, instead of learning a Fourier transform.
    """
    if probe.dim() == 4:  # one probe and scale per sample: (B, 1, N, N) and (B, 1, 1, 1)
        p0, scale = probe[:, :1], torch.as_tensor(scale).reshape(-1, 1, 1, 1)
    else:
        p0 = probe.reshape(-1, *probe.shape[-2:])[0]  # (N, N)
    ref = far_field(p0)
    ref = ref / ref.abs().clamp_min(1e-12)
    field = torch.fft.ifft2(torch.fft.ifftshift(x.to(torch.complex64) * ref, dim=(-2, -1)), norm="ortho")
    power = p0.abs().square()
    inverse = p0.conj() / (power + floor * power.amax(dim=(-2, -1), keepdim=True))
    return field * inverse / scale


def partner_frames(patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Every patch of a group seen from every other patch's frame.

    patches (B, C, N, N) complex, one group per row; offsets (B, C, 2) their positions (x, y) px
    (group_offsets). Returns (B, C, C, N, N) complex64 where [b, c, k] is patch j = (c + k) mod C
    translated into the frame of patch c (so k = 0 is patch c itself): pixel q of frame c shows the
    object point that pixel q + offset_c - offset_j of patch j shows. The translation is a Fourier
    shift inside a zero-padded 2N canvas, so what leaves the patch does not wrap around: pixels
    patch j never saw are zero.
    """
    B, C, N, _ = patches.shape
    order = (torch.arange(C, device=patches.device)[:, None] + torch.arange(C, device=patches.device)) % C
    source = patches[:, order]  # (B, C, C, N, N): [b, c, k] = patch (c + k) % C
    shift = offsets[:, order] - offsets[:, :, None]  # (B, C, C, 2) = offset_j - offset_c
    pad = N // 2
    canvas = torch.nn.functional.pad(source.to(torch.complex64), (pad, pad, pad, pad))
    return fourier_shift(canvas, shift)[..., pad:pad + N, pad:pad + N]


# ------------------------------------------------------------------ losses

def poisson_deviance_terms(lam: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-pixel Poisson deviance / 2 of counts k against means lam (same shapes, lam > 0):
    lam - k log lam - (k - k log k), with 0 log 0 = 0; >= 0, 0 where lam = k."""
    return lam - k * torch.log(lam) - (k - torch.xlogy(k, k))


def poisson_nll(pred_amp: torch.Tensor, meas_amp: torch.Tensor, r: float | torch.Tensor, eps: float = 1e-6,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Poisson negative log-likelihood in photon counts (SPEC 4.5), a scalar.

    pred_amp: normalised predicted amplitude (B, C, N, N); meas_amp: measured amplitude X (sqrt counts)
    of the same shape; r: the dataset normalisation factor (a float, or (B,) one per sample when the
    batch holds patterns of several scans). lambda = (pred/r)^2 + eps, k = X^2;
    L = mean_b sum_{c,x,y} (lambda - k log lambda - (k - k log k)) / mean(k).
    The constant k - k log k (the saturated likelihood, with 0 log 0 = 0) changes no gradient; it
    makes L >= 0 with L = 0 for a perfect fit, so losses read as a deviance and plot on a log axis.
    mask: bool, broadcastable to pred_amp (e.g. (B, 1, N, N)), True = an excluded detector pixel (bad
    pixel, beamstop): its term is left out of the sum and its counts out of mean(k) (None = every
    pixel counts, the plain path).
    """
    if isinstance(r, torch.Tensor) and r.dim() == 1:
        r = r.to(pred_amp.dtype).reshape(-1, *([1] * (pred_amp.dim() - 1)))
    k = meas_amp.square()
    terms = poisson_deviance_terms((pred_amp / r).square() + eps, k)
    if mask is None:
        return terms.flatten(1).sum(dim=1).mean() / k.mean().detach().clamp_min(1e-12)
    excluded = mask.to(torch.bool).expand_as(terms)
    terms = terms.masked_fill(excluded, 0.0)
    counted = k.masked_fill(excluded, 0.0).sum() / (~excluded).sum().clamp_min(1)  # what excluded pixels hold counts nowhere
    return terms.flatten(1).sum(dim=1).mean() / counted.detach().clamp_min(1e-12)


def total_variation(obj: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference of a complex patch stack (..., N, N), a scalar."""
    dy = (obj[..., 1:, :] - obj[..., :-1, :]).abs().mean()
    dx = (obj[..., :, 1:] - obj[..., :, :-1]).abs().mean()
    return dx + dy

