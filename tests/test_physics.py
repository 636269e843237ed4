"""Physics conventions pinned against numpy oracles (SPEC 4)."""

import math

import numpy as np
import pytest
import torch

from ptycho_torch.data.grouping import cover_groups, make_groups
from ptycho_torch.physics.forward import (
    TYPICAL_AMPLITUDE,
    extract_patches,
    far_field,
    fourier_shift,
    group_offsets,
    initial_log_scale,
    normalization_factor,
    overlap_constraint,
    place_patches,
    poisson_nll,
    predicted_amplitude,
)


def smooth_object(H, W, seed=0):
    rng = np.random.default_rng(seed)
    spec = np.fft.fft2(rng.normal(size=(H, W)) + 1j * rng.normal(size=(H, W)))
    ky, kx = np.meshgrid(np.fft.fftfreq(H), np.fft.fftfreq(W), indexing="ij")
    field = np.fft.ifft2(spec * np.exp(-(kx**2 + ky**2) / (2 * 0.05**2)))
    amp = 0.75 + 0.2 * field.real / np.abs(field.real).max()
    phase = 1.0 * field.imag / np.abs(field.imag).max()
    return torch.from_numpy((amp * np.exp(1j * phase)).astype(np.complex64))


def disk_probe(N):
    yy, xx = np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2, indexing="ij")
    pupil = (yy**2 + xx**2) <= (N / 8) ** 2
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    return torch.from_numpy((probe / np.abs(probe).max()).astype(np.complex64))


def test_far_field_matches_numpy():
    rng = np.random.default_rng(1)
    psi = (rng.normal(size=(3, 2, 32, 32)) + 1j * rng.normal(size=(3, 2, 32, 32))).astype(np.complex64)
    ours = far_field(torch.from_numpy(psi)).numpy()
    ref = np.fft.fftshift(np.fft.fft2(psi.astype(np.complex128), norm="ortho"), axes=(-2, -1))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
    # DC lands on pixel N/2 for a constant field
    dc = far_field(torch.ones(1, 1, 32, 32, dtype=torch.complex64)).abs()[0, 0]
    assert torch.argmax(dc).item() == 16 * 32 + 16


def test_fourier_shift_integer_is_roll_and_axes():
    img = torch.zeros(16, 16)
    img[3, 5] = 1.0  # row 3, column 5
    out = fourier_shift(img, torch.tensor([2.0, 1.0])).real  # dx=2 (columns), dy=1 (rows)
    assert torch.argmax(out).item() == 4 * 16 + 7
    half = fourier_shift(img, torch.tensor([0.5, 0.0]))
    back = fourier_shift(half, torch.tensor([-0.5, 0.0]))
    assert torch.allclose(back.real, img, atol=1e-5)


def test_extract_patch_axes_with_asymmetric_object():
    """A patch at scan position (x, y) has object pixel (row y, column x) at its pixel (N/2, N/2)."""
    N = 16
    obj = torch.zeros(64, 80, dtype=torch.complex64)
    obj[20, 50] = 1.0  # row 20 (y), column 50 (x)
    obj[20, 53] = 2.0  # 3 columns to the right
    patch = extract_patches(obj, torch.tensor([[50.0, 20.0]]), N)[0]
    assert patch[N // 2, N // 2].real == pytest.approx(1.0, abs=1e-5)
    assert patch[N // 2, N // 2 + 3].real == pytest.approx(2.0, abs=1e-5)
    # a half-pixel step in x moves the content half a pixel left in the patch
    p_half = extract_patches(smooth_object(64, 80), torch.tensor([[40.5, 30.0]]), N)[0]
    p0 = extract_patches(smooth_object(64, 80), torch.tensor([[40.0, 30.0]]), N)[0]
    p1 = extract_patches(smooth_object(64, 80), torch.tensor([[41.0, 30.0]]), N)[0]
    inner = (slice(4, 12), slice(4, 12))
    assert (p_half[inner] - 0.5 * (p0[inner] + p1[inner])).abs().max() < 0.02


def test_stitching_ground_truth_patches_reproduces_object():
    N, H, W = 32, 120, 140
    obj = smooth_object(H, W, seed=3)
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(24, W - 24, 6.0), np.arange(24, H - 24, 6.0))
    pos = torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], 1) + rng.uniform(-1.5, 1.5, (xs.size, 2))).float()
    probe = disk_probe(N)
    weight = probe.abs().square().float() / probe.abs().square().max()
    patches = extract_patches(obj, pos, N)
    o_sum, w_sum = place_patches(patches[None], pos[None], (H, W), weight)
    w = w_sum[0]
    region = w > 0.05 * w.max()
    rec = o_sum[0][region] / w[region]
    truth = obj[region]
    mse = (rec - truth).abs().square().mean().item()
    psnr = 10 * math.log10(float(truth.abs().max()) ** 2 / mse)
    assert psnr > 40, psnr


def test_partial_canvases_add_up():
    N, H, W = 16, 60, 60
    obj = smooth_object(H, W)
    pos = torch.tensor([[20.3, 20.0], [25.0, 31.7], [35.5, 28.2], [40.0, 40.0]])
    patches = extract_patches(obj, pos, N)
    wt = torch.ones(N, N)
    full = place_patches(patches[None], pos[None], (H, W), wt)
    a = place_patches(patches[None, :2], pos[None, :2], (H, W), wt)
    b = place_patches(patches[None, 2:], pos[None, 2:], (H, W), wt)
    assert torch.allclose(full[0], a[0] + b[0], atol=1e-5)
    assert torch.allclose(full[1], a[1] + b[1], atol=1e-5)


@pytest.mark.parametrize("gridsize", [2, 3])
def test_merge_extract_identity_for_patches_of_one_object(gridsize):
    N = 16
    obj = smooth_object(96, 96, seed=2)
    xs, ys = np.meshgrid(np.arange(30, 66, 5.0), np.arange(30, 66, 5.0))
    positions = np.stack([xs.ravel(), ys.ravel()], 1)
    groups = make_groups(positions, gridsize)
    pos = torch.from_numpy(positions[groups.indices]).float()  # (G, C, 2)
    patches = torch.stack([extract_patches(obj, p, N) for p in pos])  # (G, C, N, N)
    out = overlap_constraint(patches, group_offsets(pos))
    assert (out - patches).abs().max() < 1e-4


def test_channel_order_rows_then_columns():
    positions = np.array([[10.0, 10.0], [20.0, 10.0], [10.0, 20.0], [20.0, 20.0]])[[3, 0, 2, 1]]
    groups = make_groups(positions, 2)
    for members in groups.indices:
        p = positions[members]
        # channel c -> row c // 2 (y), column c % 2 (x)
        assert p[0, 1] == p[1, 1] < p[2, 1] == p[3, 1]
        assert p[0, 0] < p[1, 0] and p[2, 0] < p[3, 0]


@pytest.mark.parametrize("gridsize", [2, 3])
@pytest.mark.parametrize("seeded", [True, False])
def test_cover_groups_stitch_every_pattern_once_from_training_like_groups(gridsize, seeded):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(5)
    xs, ys = np.meshgrid(np.arange(20, 120, 6.0), np.arange(20, 100, 6.0))
    positions = np.stack([xs.ravel(), ys.ravel()], 1) + rng.normal(0, 1.0, (xs.size, 2))  # jittered raster
    M, C, k = len(positions), gridsize**2, 6
    groups = cover_groups(positions, gridsize, neighbor_count=k, rng=np.random.default_rng(0) if seeded else None)
    mask = groups.stitch_mask()
    assert mask.shape == groups.indices.shape == (len(groups), C)
    np.testing.assert_array_equal(np.sort(groups.indices[mask]), np.arange(M))  # each pattern exactly once
    assert len(groups) < 0.5 * M  # far fewer network passes than one group per pattern
    assert mask[np.arange(len(groups)), groups.seed_channel].all()  # a group stitches its own seed
    _, nbrs = cKDTree(positions).query(positions, k=max(k, C - 1) + 1)
    for members, seed_ch in zip(groups.indices, groups.seed_channel):
        assert len(set(members)) == C
        assert set(members) <= set(nbrs[members[seed_ch]])  # partners among the seed's neighbours
        p = positions[members].reshape(gridsize, gridsize, 2)  # channel order rows (y) then columns (x)
        assert (p[:-1, :, 1].max(1) <= p[1:, :, 1].min(1)).all() and (np.diff(p[..., 0], axis=1) > 0).all()
    again = cover_groups(positions, gridsize, neighbor_count=k, rng=np.random.default_rng(0) if seeded else None)
    np.testing.assert_array_equal(again.indices, groups.indices)  # reproducible


def test_cover_groups_of_gridsize_1_are_the_patterns():
    positions = np.random.default_rng(1).uniform(0, 50, (12, 2))
    groups = cover_groups(positions, 1)
    np.testing.assert_array_equal(groups.indices[:, 0], np.arange(12))
    assert groups.stitch_mask().all()


def test_noiseless_nll_gradient_vanishes_at_truth():
    N = 32
    obj = smooth_object(N, N)[None, None]  # (1, 1, N, N)
    probe = disk_probe(N)[None]
    log_s = torch.tensor(initial_log_scale(probe))
    true_amp = predicted_amplitude(obj, probe, log_s)
    r = normalization_factor(float(true_amp.square().sum()), N)
    X = true_amp / r  # noiseless "measured" amplitude in sqrt-photons
    o = obj.clone().requires_grad_(True)
    loss = poisson_nll(predicted_amplitude(o, probe, log_s), X, r, eps=1e-12)
    (g_truth,) = torch.autograd.grad(loss, o)
    o2 = (obj * 1.05).requires_grad_(True)
    loss2 = poisson_nll(predicted_amplitude(o2, probe, log_s), X, r, eps=1e-12)
    (g_off,) = torch.autograd.grad(loss2, o2)
    assert g_truth.abs().max() < 1e-4 * g_off.abs().max()
    assert loss2 > loss


def test_initial_scale_reproduces_normalised_energy():
    """The start of the scale makes the head's typical output (0.5, not 1) carry the data's energy."""
    N = 32
    probe = disk_probe(N)[None]
    typical = torch.full((1, 1, N, N), TYPICAL_AMPLITUDE, dtype=torch.complex64)
    amp = predicted_amplitude(typical, probe, torch.tensor(initial_log_scale(probe)))
    assert amp.square().sum().item() == pytest.approx((N / 2) ** 2, rel=1e-4)
    unit = predicted_amplitude(torch.ones(1, 1, N, N, dtype=torch.complex64), probe,
                               torch.tensor(initial_log_scale(probe, typical_amplitude=1.0)))
    assert unit.square().sum().item() == pytest.approx((N / 2) ** 2, rel=1e-4)
    assert normalization_factor(4.0, 8) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="all zero"):
        normalization_factor(0.0, 8)


def test_initial_scale_matches_a_simulated_scans_true_scale():
    """On a simulated scan the true scale is r (the stored probe is in photon units, so the truth
    reproduces r * X). The start s0 must put the truth's rms amplitude under the probe at the head's
    typical output: s0 * 0.5 == r * rms(|O|), exactly for noiseless data."""
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.simulate import simulate_scan

    sim = simulate_scan(SimulationConfig(N=32, n_positions=30, object="grf", seed=3), noise=False)
    X = torch.from_numpy(sim["diffraction"])
    probe = torch.from_numpy(sim["probe"]).reshape(-1, 32, 32)
    pos = torch.from_numpy(np.stack([sim["xcoords"], sim["ycoords"]], 1))
    patches = extract_patches(torch.from_numpy(sim["object_guess"]), pos, 32)  # (M, N, N)
    r = normalization_factor(float(X.square().sum((1, 2)).mean()), 32)
    power = probe.abs().square().sum(0)
    rms = math.sqrt(float((patches.abs().square() * power).sum((1, 2)).mean() / power.sum()))
    s0 = math.exp(initial_log_scale(probe))
    assert s0 * TYPICAL_AMPLITUDE == pytest.approx(r * rms, rel=2e-3)
    # and the truth, scaled to the head's typical level, reproduces the data's energy at s0
    pred = predicted_amplitude(patches[:, None] * (TYPICAL_AMPLITUDE / rms), probe, torch.tensor(math.log(s0)))
    assert float(pred.square().sum((1, 2, 3)).mean()) == pytest.approx((32 / 2) ** 2, rel=2e-3)


def test_backpropagation_returns_a_flat_object_under_the_probe():
    """For a flat object the probe's far-field phase is the true phase up to the object's (free)
    global phase, so back-propagating the measured amplitude returns the object, up to that constant
    phase, wherever the probe is bright."""
    from ptycho_torch.physics.forward import backpropagate

    N = 32
    probe = disk_probe(N)[None].to(torch.complex64) * 3.0
    obj = torch.full((1, 1, N, N), 0.6 * np.exp(0.4j), dtype=torch.complex64)
    log_s = torch.tensor(0.7)
    x = predicted_amplitude(obj, probe, log_s)  # (1, 1, N, N)
    est = backpropagate(x, probe, float(torch.exp(log_s)))
    bright = probe[0].abs() > 0.5 * probe[0].abs().max()
    ratio = (est[0, 0][bright] / obj[0, 0][bright])
    # |P|^2 / (|P|^2 + 0.05 max|P|^2) >= 0.83 where |P| >= max/2; the phase of a flat object is kept
    assert float(ratio.abs().min()) > 0.8 and float(ratio.abs().max()) <= 1.0 + 1e-4
    phase = ratio.angle()
    assert float(phase.max() - phase.min()) < 1e-3  # one global phase over the whole bright region


def test_partner_frames_translate_each_patch_into_every_partner_frame():
    """[c, k] shows patch (c + k) % C where it overlaps patch c, and zero where it never looked."""
    from ptycho_torch.physics.forward import extract_patches, group_offsets, partner_frames

    torch.manual_seed(0)
    obj = torch.randn(80, 80, dtype=torch.complex64)
    pos = torch.tensor([[[30.0, 30.0], [36.0, 30.0], [30.0, 37.0], [36.0, 37.0]]])  # (1, 4, 2)
    patches = extract_patches(obj, pos[0], 32)[None]  # (1, 4, 32, 32)
    frames = partner_frames(patches, group_offsets(pos))
    assert frames.shape == (1, 4, 4, 32, 32)
    torch.testing.assert_close(frames[0, :, 0], patches[0], atol=1e-4, rtol=0)  # k = 0: itself
    # frame 0 reading patch 1 (6 px to the right): columns 6.. overlap, columns < 6 were never seen
    torch.testing.assert_close(frames[0, 0, 1][:, 6:], patches[0, 0][:, 6:], atol=1e-4, rtol=0)
    assert frames[0, 0, 1][:, :6].abs().max() < 1e-4
    # frame 3 reading patch 0 (k = 1: (3 + 1) % 4 = 0), 6 px left and 7 px up
    torch.testing.assert_close(frames[0, 3, 1][:-7, :-6], patches[0, 3][:-7, :-6], atol=1e-4, rtol=0)
