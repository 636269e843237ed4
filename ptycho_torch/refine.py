"""Iterative reconstruction with the project's own forward model: gradient descent on the object.

The same differentiable physics the network trains through (patch extraction at the scan positions,
probe, far field, Poisson loss), but the unknowns are the pixels of the whole object instead of a
network's weights. Two uses: an iterative baseline next to PtychoPINN on the same scan (known probe,
a flat start), and refinement of a network's reconstruction (start from its stitched object) to win
the last few dB for a few seconds of work.

Units: positions in object pixels (x, y); the probe in photon units (a unit object reproduces the
counts, the contract's convention), so no intensity scale is learned; diffraction as amplitudes
(sqrt counts) (M, N, N).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ptycho_torch import physics


@dataclass
class Refined:
    """Result of `refine_object`: the object (H, W) complex64, the steps and seconds spent, and
    the loss per 100 steps (Poisson deviance per pattern / mean counts, as the training loss)."""

    object: np.ndarray
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def flat_start(mean_energy: float, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A flat object (H, W) whose exit waves carry the data's mean energy (Parseval, orthonormal
    FFT): |O| = sqrt(mean counts per pattern / sum |P|^2), phase 0."""
    power = float(np.sum(np.abs(np.asarray(probe)) ** 2))
    return np.full(shape, math.sqrt(mean_energy / max(power, 1e-30)), dtype=np.complex64)


def refine_object(rows: Callable[[np.ndarray], np.ndarray], positions: np.ndarray, probe: np.ndarray,
                  start: np.ndarray, *, seconds: float | None = None, steps: int | None = None,
                  batch: int = 32, learning_rate: float = 0.01, seed: int = 0,
                  stop: Callable[[], bool] | None = None, mask: np.ndarray | None = None,
                  device: str | torch.device = "cpu") -> Refined:
    """Adam on the object pixels through the forward model, minibatches of `batch` patterns.

    rows(indices) -> measured amplitudes (B, N, N) for pattern indices (B,); positions (M, 2) float
    object pixels; probe (N, N) or (P, N, N) complex photon units; start (H, W) complex (a flat object
    from `flat_start`, or a stitched reconstruction). Runs until `steps` steps or `seconds` of wall
    clock (at least one of them), or until `stop()` is true. The patterns are drawn at random with
    the generator of `seed`. `mask` (N, N) bool, True = an excluded detector pixel (the scan's
    detector mask): left out of the loss, as in training. `device`: where the object and the forward
    model live (e.g. 'cuda', to compare with a network on the same GPU); the patterns are read on
    the CPU and moved there per step; the result comes back to the CPU."""
    if steps is None and seconds is None:
        raise ValueError("refine_object needs steps or seconds")
    device = torch.device(device)
    probe_t = torch.from_numpy(np.asarray(probe, dtype=np.complex64)).reshape(-1, *np.shape(probe)[-2:]).to(device)
    N = probe_t.shape[-1]
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float32)).to(device)
    M = len(pos)
    first = np.square(rows(np.arange(min(M, 256))), dtype=np.float64)
    if mask is not None:
        first = first * ~np.asarray(mask, dtype=bool)  # excluded pixels hold no counts
    r = physics.normalization_factor(float(np.mean(np.sum(first, axis=(-2, -1)))), N)
    obj = torch.nn.Parameter(torch.view_as_real(torch.from_numpy(np.asarray(start, dtype=np.complex64))).clone().to(device))
    optimizer = torch.optim.Adam([obj], lr=learning_rate)
    rng = np.random.default_rng(seed)
    zero = torch.tensor(0.0, device=device)
    excluded = None if mask is None else \
        torch.from_numpy(np.asarray(mask, dtype=bool)).reshape(1, 1, N, N).to(device)
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - t0 < seconds):
        if stop is not None and stop():
            break
        idx = np.sort(rng.choice(M, size=min(batch, M), replace=False))
        patches = physics.extract_patches(torch.view_as_complex(obj), pos[torch.from_numpy(idx).to(device)], N)[:, None]
        pred = physics.predicted_amplitude(patches, probe_t, zero) * r  # normalised amplitudes (B, 1, N, N)
        measured = torch.from_numpy(np.asarray(rows(idx), dtype=np.float32))[:, None].to(device)
        loss = physics.poisson_nll(pred, measured, r, mask=excluded)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            losses.append(float(loss.detach()))
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the seconds include the queued kernels
    return Refined(torch.view_as_complex(obj.detach().cpu()).numpy().copy(), step, time.perf_counter() - t0, losses)


def coverage(positions: np.ndarray, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stitching weight (H, W) of the scan: the sum of |probe|^2 over the positions, the region
    metrics score (as reconstruct's weight map)."""
    from ptycho_torch.stitching import stitch, stitch_weight

    probe_t = torch.from_numpy(np.asarray(probe, dtype=np.complex64))
    N = probe_t.shape[-1]
    ones = torch.ones(len(positions), N, N, dtype=torch.complex64)
    _, weight = stitch(ones, torch.from_numpy(np.asarray(positions, dtype=np.float32)), shape, stitch_weight(probe_t))
    return weight


def refine_stitched(obj: np.ndarray, weight: np.ndarray, scan: Any, probe: np.ndarray, scale: float,
                    seconds: float, seed: int = 0, device: str | torch.device = "cpu") -> tuple[np.ndarray, Refined]:
    """Refine a network's stitched object (H, W) on its own scan: bring it to the probe's photon units
    (times `scale` = the model's intensity scale / normalisation factor), fill pixels no patch covered
    (weight 0) with the mean of the covered ones, then `refine_object` for `seconds`. Returns the
    refined object (H, W) complex64, in the scan's physical units (the probe reproduces the counts),
    and the run's record. `device`: where the gradient descent runs (the network's device)."""
    start = np.asarray(obj, dtype=np.complex64) * np.float32(scale)
    covered = weight > 0
    if covered.any() and not covered.all():
        start[~covered] = start[covered].mean()
    result = refine_object(scan.diffraction_rows, scan.positions, probe, start, seconds=seconds, seed=seed,
                           mask=getattr(scan, "mask", None), device=device)
    return result.object, result
