"""Property tests of the physics algebra (in the spirit of deepinv's operator tests).

Random inputs, several seeds and sizes, tight tolerances. What is pinned here:

1. Patch extraction E (`extract_patches`: crop on the integer grid, then a periodic Fourier shift of the
   N x N crop by -frac) and placement (`place_patches`, `StitchAccumulator`: shift by +frac, then
   scatter-add) are exact adjoints with a unit weight, for integer *and* sub-pixel positions, because the
   Fourier shift is unitary with S(d)^H = S(-d). With a weight w the placement is the adjoint of
   "extract, shift back onto the integer grid, multiply by the shifted weight w_f, shift again" (exactly
   what the code does); the overlap constraint extract(merge(.)) is therefore an orthogonal projection
   with unit weights, and a projection (idempotent, fixing consistent patches) with any weight.
2. `fourier_shift` is a unitary group action: S(0) = I, S(-d) S(d) = I, S(d2) S(d1) = S(d1 + d2),
   S(d + (W, H)) = S(d), norms and inner products are preserved, and it moves band-limited content
   in the documented direction (out[i, j] = img[i - dy, j - dx]).
3. `far_field` (fft2 norm="ortho" + fftshift, SPEC 4) is unitary: Parseval with factor exactly 1, DC on
   pixel (N/2, N/2); `predicted_amplitude` carries energy s^2 sum_p sum |P_p O|^2, and
   `initial_log_scale` makes a uniform object of amplitude 0.5 carry the normalised mean energy (N/2)^2.

`fourier_shift`, `extract_patches` and `place_patches` compute in complex64 whatever the input dtype, so
their tolerances are float32 ones (relative ~1e-5, observed errors ~1e-7); `far_field` keeps
complex128 and is checked to 1e-12. Inner products are always accumulated in complex128.
"""

from __future__ import annotations

import math

import pytest
import torch

from ptycho_torch.physics.forward import (
    exit_wave,
    extract_from_canvas,
    extract_patches,
    far_field,
    fourier_shift,
    group_offsets,
    initial_log_scale,
    merge_patches,
    overlap_constraint,
    place_patches,
    predicted_amplitude,
)
from ptycho_torch.physics.stitching import StitchAccumulator, partial_canvas

RTOL32 = 1e-5  # relative tolerance for the complex64 operators (observed errors are ~1e-7)
# |<a, b>_1 - <a, b>_2| / (||a|| ||b||) for complex64 operators: observed ~2e-9 (random vectors have
# |<a, b>| ~ ||a|| ||b|| / sqrt(size) ~ 3e-3 here, so a wrong adjoint shows at ~1e-3)
ITOL32 = 1e-6
RTOL64 = 1e-12  # far_field in complex128

SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only contend with other work on a busy machine
    (the module runs in ~1.5 s on one thread, several times that with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ helpers

def crandn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard complex normal, complex128."""
    re = torch.randn(*shape, generator=gen, dtype=torch.float64)
    im = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return torch.complex(re, im)


def inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    """<a, b> = sum conj(a) * b, accumulated in complex128."""
    a = a.to(torch.complex128)
    b = b.to(torch.complex128)
    return complex((a.conj() * b).sum())


def norm(a: torch.Tensor) -> float:
    return float(a.to(torch.complex128).abs().square().sum().sqrt())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.to(torch.complex128)
    b = b.to(torch.complex128)
    return norm(a - b) / max(norm(b), 1e-300)


def random_positions(gen: torch.Generator, B: int, K: int, N: int, H: int, W: int, subpixel: bool
                     ) -> torch.Tensor:
    """(B, K, 2) (x, y) with N/2 <= floor(x) <= W - N/2 and N/2 <= floor(y) <= H - N/2 (the whole valid
    range, edges included), float32 as the code uses them."""
    x = torch.randint(N // 2, W - N // 2 + 1, (B, K), generator=gen).double()
    y = torch.randint(N // 2, H - N // 2 + 1, (B, K), generator=gen).double()
    pos = torch.stack([x, y], dim=-1)
    if subpixel:
        pos = pos + torch.rand(B, K, 2, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    return pos.float()


def frac_of(positions: torch.Tensor) -> torch.Tensor:
    return positions - torch.floor(positions)


def gaussian_weight(N: int, sigma: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2, indexing="ij")
    return torch.exp(-(xx.double() ** 2 + yy.double() ** 2) / (2 * sigma**2)).float()


# ------------------------------------------------------------------ 1. extraction / placement adjointness

@pytest.mark.parametrize("subpixel", [False, True], ids=["integer", "subpixel"])
@pytest.mark.parametrize("N", [8, 16])
@pytest.mark.parametrize("seed", SEEDS)
def test_place_with_unit_weight_is_the_adjoint_of_extract(seed, N, subpixel):
    """<E x, y> = <x, E^H y> with E = extract_patches and E^H = place_patches(., weight=1).obj_sum.

    E = S(-frac) o Crop and place = Scatter o S(+frac) (times the shifted weight, which is 1 for a unit
    weight: a constant has only a DC component, which no ramp changes). Since S is unitary with
    S(-d)^H = S(d), the two are exact adjoints for any sub-pixel frac, not just integer positions."""
    gen = torch.Generator().manual_seed(seed)
    B, K = 2, 5
    H, W = 3 * N + 5, 2 * N + 7  # non-square, so a swapped x/y shows
    x = crandn(gen, B, H, W)
    y = crandn(gen, B, K, N, N)
    pos = random_positions(gen, B, K, N, H, W, subpixel)

    Ex = extract_patches(x, pos, N)  # (B, K, N, N)
    EHy, w_sum = place_patches(y, pos, (H, W), torch.ones(N, N))
    lhs, rhs = inner(Ex, y), inner(x, EHy)
    assert abs(lhs - rhs) <= ITOL32 * norm(x) * norm(y), (lhs, rhs)
    # the weight sum of a unit weight is the coverage count E^H 1 (an integer per pixel)
    count = place_patches(torch.ones(B, K, N, N, dtype=torch.complex64), pos, (H, W), torch.ones(N, N))[0]
    assert torch.allclose(w_sum.double(), count.real.double(), atol=1e-5)
    assert torch.allclose(w_sum.double(), torch.round(w_sum.double()), atol=1e-5)

    # the unbatched form of extract_patches is the same operator
    Ex0 = extract_patches(x[0], pos[0], N)
    assert torch.equal(Ex0, Ex[0])


@pytest.mark.parametrize("N", [8, 16])
@pytest.mark.parametrize("seed", SEEDS)
def test_place_with_a_weight_in_the_patch_frame_is_the_adjoint_at_integer_positions(seed, N):
    """Integer positions: place_patches(y, w).obj_sum = E^H (w * y), the adjoint of x -> w * E x."""
    gen = torch.Generator().manual_seed(seed)
    B, K = 2, 4
    H, W = 2 * N + 3, 3 * N + 1
    x = crandn(gen, B, H, W)
    y = crandn(gen, B, K, N, N)
    w = torch.rand(N, N, generator=gen, dtype=torch.float64).float()
    pos = random_positions(gen, B, K, N, H, W, subpixel=False)

    obj_sum, w_sum = place_patches(y, pos, (H, W), w)
    lhs, rhs = inner(w * extract_patches(x, pos, N), y), inner(x, obj_sum)
    assert abs(lhs - rhs) <= ITOL32 * norm(x) * norm(y), (lhs, rhs)
    # and the weight sum is E^H w (w broadcast to every patch)
    w_all = w.expand(B, K, N, N).to(torch.complex64)
    assert rel_err(w_sum, place_patches(w_all, pos, (H, W), torch.ones(N, N))[0].real) < RTOL32


@pytest.mark.parametrize("N", [8, 16])
@pytest.mark.parametrize("seed", SEEDS)
def test_place_with_a_weight_at_subpixel_positions_is_the_adjoint_of_its_own_weighted_extraction(seed, N):
    """Sub-pixel positions: the weight is applied on the integer grid, after shifting it by +frac:

        place(y, w).obj_sum = Scatter(w_f * S(frac) y),   w_f = max(Re S(frac) w, 0),
        place(y, w).w_sum   = Scatter(w_f),

    so place(., w) is the adjoint of A x = S(-frac)(w_f * S(frac) E x) = S(-frac)(w_f * Crop x).

    What does NOT hold: for a non-constant w and a non-integer frac, place(., w) is not the adjoint of
    x -> w * E x (weight in the patch frame). That would need S(frac)(w * y) = S(frac) w * S(frac) y,
    and the Fourier shift of a product is not the product of the Fourier shifts (it is for integer
    shifts, which are rolls: previous test). Also w_f is the real part of the shifted weight, clamped at
    0 (a sub-pixel shift of a sampled weight rings), so w_f is not even an exactly shifted w."""
    gen = torch.Generator().manual_seed(seed)
    B, K = 2, 4
    H, W = 2 * N + 3, 3 * N + 1
    x = crandn(gen, B, H, W)
    y = crandn(gen, B, K, N, N)
    w = gaussian_weight(N, N / 5)
    w = w * (0.5 + torch.rand(N, N, generator=gen))  # not symmetric, not smooth
    pos = random_positions(gen, B, K, N, H, W, subpixel=True)
    f = frac_of(pos)
    w_f = fourier_shift(w, f).real.clamp_min(0)  # (B, K, N, N)

    obj_sum, w_sum = place_patches(y, pos, (H, W), w)
    A_x = fourier_shift(w_f * fourier_shift(extract_patches(x, pos, N), f), -f)
    lhs, rhs = inner(A_x, y), inner(x, obj_sum)
    assert abs(lhs - rhs) <= ITOL32 * norm(x) * norm(y), (lhs, rhs)
    # w_sum = Scatter(w_f) = E^H S(-frac) w_f
    ref_w = place_patches(fourier_shift(w_f, -f), pos, (H, W), torch.ones(N, N))[0]
    assert rel_err(w_sum, ref_w.real) < RTOL32
    assert float(ref_w.imag.abs().max()) < 1e-5 * float(ref_w.real.abs().max())


@pytest.mark.parametrize("seed", SEEDS)
def test_stitch_accumulator_sums_are_the_adjoint_and_partial_canvases_add_up(seed):
    """StitchAccumulator.add (unit weight) accumulates E^H y, chunk by chunk or as partial canvases."""
    gen = torch.Generator().manual_seed(seed)
    N, K, H, W = 16, 12, 61, 47
    x = crandn(gen, H, W)
    y = crandn(gen, K, N, N).to(torch.complex64)
    pos = random_positions(gen, 1, K, N, H, W, subpixel=True)[0]

    acc = StitchAccumulator((H, W), torch.ones(N, N))
    acc.add(y[:5], pos[:5])
    acc.add(y[5:], pos[5:])
    lhs, rhs = inner(extract_patches(x, pos, N), y), inner(x, acc.obj_sum)
    assert abs(lhs - rhs) <= ITOL32 * norm(x) * norm(y), (lhs, rhs)
    assert acc.count == K

    parts = StitchAccumulator((H, W), torch.ones(N, N))
    for sl in (slice(0, 4), slice(4, 9), slice(9, K)):
        y0, x0, canvas = partial_canvas(y[sl], pos[sl].numpy(), (H, W), torch.ones(N, N))
        obj = torch.complex(torch.from_numpy(canvas[0]), torch.from_numpy(canvas[1]))
        parts.add_partial(y0, x0, obj, torch.from_numpy(canvas[2]), len(y[sl]))
    assert rel_err(parts.obj_sum, acc.obj_sum) < RTOL32
    assert rel_err(parts.w_sum, acc.w_sum) < RTOL32
    assert parts.count == K


def group(gen: torch.Generator, B: int, C: int, spread: float, subpixel: bool) -> torch.Tensor:
    """(B, C, 2) offsets of C neighbouring positions around their centroid (as group_offsets gives)."""
    pos = (torch.rand(B, C, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread + 50.0
    if not subpixel:
        pos = torch.round(pos)
    return group_offsets(pos.float())


@pytest.mark.parametrize("subpixel", [False, True], ids=["integer", "subpixel"])
@pytest.mark.parametrize("C", [4, 9])
@pytest.mark.parametrize("seed", SEEDS)
def test_overlap_constraint_with_unit_weight_is_an_orthogonal_projection(seed, C, subpixel):
    """Q = extract(merge(.)) = E D^-1 E^H with D = E^H E = diag(coverage) (S unitary), so Q is
    self-adjoint (<Q a, b> = <a, Q b>) and idempotent (Q Q = Q), and fixes patches cut from one canvas.
    (C = 9 with offsets up to 3 px leaves canvas pixels that no patch covers: D^-1 must skip them.)"""
    gen = torch.Generator().manual_seed(seed)
    B, N = 2, 8
    offsets = group(gen, B, C, spread=3.0, subpixel=subpixel)
    a = crandn(gen, B, C, N, N).to(torch.complex64)
    b = crandn(gen, B, C, N, N).to(torch.complex64)

    Qa, Qb = overlap_constraint(a, offsets), overlap_constraint(b, offsets)
    lhs, rhs = inner(Qa, b), inner(a, Qb)
    assert abs(lhs - rhs) <= ITOL32 * norm(a) * norm(b), (lhs, rhs)
    assert rel_err(overlap_constraint(Qa, offsets), Qa) < RTOL32
    # a projection that is not the identity (the patches overlap, so random ones are inconsistent) ...
    assert rel_err(Qa, a) > 0.1
    # ... and whose range is the consistent patches: those cut from one canvas
    M = merge_patches(a, offsets).shape[-1]
    canvas = crandn(gen, B, M, M)
    consistent = extract_from_canvas(canvas, offsets, N)
    assert rel_err(overlap_constraint(consistent, offsets), consistent) < RTOL32


@pytest.mark.parametrize("subpixel", [False, True], ids=["integer", "subpixel"])
@pytest.mark.parametrize("seed", SEEDS)
def test_overlap_constraint_with_a_probe_weight_is_a_projection(seed, subpixel):
    """With a weight w, merge(extract(canvas)) = canvas wherever w_sum > 0 (SPEC 4.3) for any sub-pixel
    offsets, so Q = extract(merge(.)) is still idempotent and fixes consistent patches. It is no longer
    self-adjoint in the plain inner product (it is a w-weighted average, an oblique projection)."""
    gen = torch.Generator().manual_seed(seed)
    B, C, N = 2, 4, 16
    w = gaussian_weight(N, N / 4)
    offsets = group(gen, B, C, spread=3.0, subpixel=subpixel)
    a = crandn(gen, B, C, N, N).to(torch.complex64)

    Qa = overlap_constraint(a, offsets, w)
    assert rel_err(overlap_constraint(Qa, offsets, w), Qa) < RTOL32
    assert rel_err(Qa, a) > 0.1
    M = merge_patches(a, offsets, w).shape[-1]
    canvas = crandn(gen, B, M, M)
    consistent = extract_from_canvas(canvas, offsets, N)
    assert rel_err(overlap_constraint(consistent, offsets, w), consistent) < RTOL32


# ------------------------------------------------------------------ 2. the sub-pixel (Fourier) shift

SHAPES = [(8, 8), (12, 10), (9, 14)]  # even and odd, non-square


def random_shifts(gen: torch.Generator, B: int, scale: float = 3.0) -> torch.Tensor:
    return (torch.rand(B, 2, generator=gen, dtype=torch.float64) * 2 - 1) * scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fourier_shift_zero_is_identity_and_minus_d_inverts_d(seed, shape):
    """S(0) = I and S(-d) S(d) = I for *any* input: the shift is a unit-modulus phase ramp on the DFT
    grid (a periodic translation), so no band limit is needed for exact invertibility."""
    gen = torch.Generator().manual_seed(seed)
    B = 3
    x = crandn(gen, B, *shape)
    d = random_shifts(gen, B)
    assert rel_err(fourier_shift(x, torch.zeros(B, 2)), x) < RTOL32
    there = fourier_shift(x, d)
    assert rel_err(there, x) > 0.1  # it does move
    assert rel_err(fourier_shift(there, -d), x) < RTOL32
    assert rel_err(fourier_shift(fourier_shift(x, -d), d), x) < RTOL32
    # a real input stays real under S(0)
    xr = x.real
    assert float(fourier_shift(xr, torch.zeros(B, 2)).imag.abs().max()) < 1e-6 * float(xr.abs().max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fourier_shifts_compose_and_are_periodic(seed, shape):
    """S(d2) S(d1) = S(d1 + d2) (ramps multiply, phases add), and S(d + (W, H)) = S(d)."""
    gen = torch.Generator().manual_seed(seed)
    B = 3
    H, W = shape
    x = crandn(gen, B, H, W)
    d1, d2 = random_shifts(gen, B), random_shifts(gen, B)
    assert rel_err(fourier_shift(fourier_shift(x, d1), d2), fourier_shift(x, d1 + d2)) < RTOL32
    period = torch.tensor([float(W), float(H)], dtype=torch.float64)
    assert rel_err(fourier_shift(x, d1 + period), fourier_shift(x, d1)) < RTOL32


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fourier_shift_is_unitary_with_adjoint_minus_d(seed, shape):
    """||S(d) x|| = ||x||, <S(d) a, S(d) b> = <a, b>, and <S(d) a, b> = <a, S(-d) b>."""
    gen = torch.Generator().manual_seed(seed)
    B = 3
    a, b = crandn(gen, B, *shape), crandn(gen, B, *shape)
    d = random_shifts(gen, B)
    Sa, Sb = fourier_shift(a, d), fourier_shift(b, d)
    for i in range(B):
        assert norm(Sa[i]) == pytest.approx(norm(a[i]), rel=RTOL32)
    scale = norm(a) * norm(b)
    assert abs(inner(Sa, Sb) - inner(a, b)) <= ITOL32 * scale
    assert abs(inner(Sa, b) - inner(a, fourier_shift(b, -d))) <= ITOL32 * scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fourier_shift_translates_band_limited_content_in_the_documented_direction(seed, shape):
    """out[i, j] = img[i - dy, j - dx]: integer shifts are rolls, and a plane wave / cosine below Nyquist
    is translated exactly, e.g. cos(2 pi k j / W) -> cos(2 pi k (j - dx) / W). (The inverse, composition
    and unitarity tests above cannot see the sign of the shift; this one can.)"""
    gen = torch.Generator().manual_seed(seed)
    H, W = shape
    x = crandn(gen, H, W)
    dx, dy = int(torch.randint(-W, W, (), generator=gen)), int(torch.randint(-H, H, (), generator=gen))
    rolled = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    assert rel_err(fourier_shift(x, torch.tensor([float(dx), float(dy)])), rolled) < RTOL32

    d = random_shifts(gen, 1)[0]
    ii, jj = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    ky = int(torch.randint(-((H - 1) // 2), (H - 1) // 2 + 1, (), generator=gen))  # |k| < H/2
    kx = int(torch.randint(1, (W - 1) // 2 + 1, (), generator=gen))  # 0 < k < W/2

    def wave(di, dj):
        return torch.exp(2j * math.pi * (ky * (ii - di) / H + kx * (jj - dj) / W))

    assert rel_err(fourier_shift(wave(0, 0), d), wave(float(d[1]), float(d[0]))) < RTOL32
    cos = torch.cos(2 * math.pi * kx * jj / W)
    out = fourier_shift(cos, d)
    assert float((out - torch.cos(2 * math.pi * kx * (jj - float(d[0])) / W)).abs().max()) < 1e-5


# ------------------------------------------------------------------ 3. Parseval for the far field

@pytest.mark.parametrize("N", [8, 16, 32])
@pytest.mark.parametrize("seed", SEEDS)
def test_far_field_is_unitary_parseval_with_factor_one(seed, N):
    """SPEC 4: F = fftshift(fft2(., norm="ortho")), so sum |psi|^2 = sum |F psi|^2 exactly (factor 1, per
    pattern), inner products are preserved, and complex128 stays complex128."""
    gen = torch.Generator().manual_seed(seed)
    a = crandn(gen, 2, 3, 2, N, N)  # (B, C, P, N, N)
    b = crandn(gen, 2, 3, 2, N, N)
    Fa, Fb = far_field(a), far_field(b)
    assert Fa.dtype == torch.complex128
    e_in = a.abs().square().sum(dim=(-2, -1))
    e_out = Fa.abs().square().sum(dim=(-2, -1))
    assert torch.allclose(e_out, e_in, rtol=RTOL64, atol=0)
    assert abs(inner(Fa, Fb) - inner(a, b)) <= RTOL64 * norm(a) * norm(b)
    # complex64, as the model runs it
    e32 = far_field(a.to(torch.complex64)).abs().square().double().sum(dim=(-2, -1))
    assert torch.allclose(e32, e_in, rtol=RTOL32, atol=0)
    # DC on pixel (N/2, N/2): a constant c maps to c * N there (ortho: sum / sqrt(N*N)) and 0 elsewhere
    c = complex(crandn(gen, 1))
    Fc = far_field(torch.full((N, N), c, dtype=torch.complex128))
    expected = torch.zeros(N, N, dtype=torch.complex128)
    expected[N // 2, N // 2] = c * N
    assert torch.allclose(Fc, expected, rtol=0, atol=RTOL64 * N * abs(c))


@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_predicted_amplitude_carries_the_exit_wave_energy(seed, P):
    """sum_xy A^2 = s^2 sum_p sum_xy |P_p O|^2 per pattern (Parseval through exit_wave + far_field; the
    +1e-12 under the square root adds N^2 * 1e-12), for a shared probe and for one probe per sample."""
    gen = torch.Generator().manual_seed(seed)
    B, C, N = 2, 4, 16
    obj = crandn(gen, B, C, N, N).to(torch.complex64)
    probe = crandn(gen, P, N, N).to(torch.complex64)
    log_s = torch.tensor(0.3)
    amp = predicted_amplitude(obj, probe, log_s)  # (B, C, N, N)
    energy = amp.double().square().sum(dim=(-2, -1))
    psi = exit_wave(obj, probe, log_s)  # (B, C, P, N, N)
    expected = math.exp(2 * 0.3) * (probe[None, None].abs().double() ** 2
                                    * obj[:, :, None].abs().double() ** 2).sum(dim=(2, 3, 4))
    assert torch.allclose(psi.abs().double().square().sum(dim=(2, 3, 4)), expected, rtol=RTOL32, atol=0)
    assert torch.allclose(energy, expected + N * N * 1e-12, rtol=RTOL32, atol=0)

    probes = crandn(gen, B, P, N, N).to(torch.complex64)  # one probe and scale per sample
    log_sb = torch.tensor([-0.2, 0.5])
    energy_b = predicted_amplitude(obj, probes, log_sb).double().square().sum(dim=(-2, -1))
    expected_b = (torch.exp(2 * log_sb.double())[:, None]
                  * (probes[:, None].abs().double() ** 2 * obj[:, :, None].abs().double() ** 2).sum(dim=(2, 3, 4)))
    assert torch.allclose(energy_b, expected_b + N * N * 1e-12, rtol=RTOL32, atol=0)


@pytest.mark.parametrize("N", [16, 32])
@pytest.mark.parametrize("seed", SEEDS)
def test_initial_scale_gives_a_uniform_half_amplitude_object_the_normalised_energy(seed, N):
    """SPEC 4.1 + 4.4: s0^2 * 0.5^2 * sum|P|^2 = (N/2)^2, so by Parseval an object of amplitude 0.5 (any
    phase) under s0 has predicted pattern energy (N/2)^2, the normalised data's mean energy."""
    gen = torch.Generator().manual_seed(seed)
    P = 2
    probe = crandn(gen, P, N, N).to(torch.complex64) * 7.0
    phase = torch.rand(3, 1, N, N, generator=gen, dtype=torch.float64) * 2 * math.pi
    obj = (0.5 * torch.exp(1j * phase)).to(torch.complex64)
    log_s0 = torch.tensor(initial_log_scale(probe))
    energy = predicted_amplitude(obj, probe, log_s0).double().square().sum(dim=(-2, -1))
    assert torch.allclose(energy, torch.full_like(energy, (N / 2) ** 2), rtol=RTOL32, atol=0)

