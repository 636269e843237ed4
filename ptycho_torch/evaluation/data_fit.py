"""How well a reconstruction explains its own scan, without a ground truth.

A measured scan has no true object to score against, so SSIM and FRC say nothing there. What every
reconstruction can be read against is its data: the object's patches at the scan positions, through
the forward model (probe, far field), predict each pattern's counts, and the Poisson deviance between
predicted and measured counts says how much of the data the object leaves unexplained. Counting noise
alone leaves a deviance too: for a pixel whose counts are Poisson with mean lambda, the expected value of
lambda - k log lambda - (k - k log k) is about 1/2 (exactly: `expected_deviance`), less for dim pixels.
The *noise floor* of a pattern is that expectation summed over its pixels at the predicted means, and

    ratio = deviance / noise floor

is 1 for an object that explains the patterns as well as counting noise allows and grows with what it
gets wrong (a model that misses structure, a wrong probe, a badly stitched region). It is the number to
read when deciding whether a model trained elsewhere is good enough for a new scan, or whether to
fine-tune or refine. Per-pattern ratios map where the object fails (plots.save_fit_map).

Units: the object in the probe's photon units (a unit object reproduces the counts, the contract's
convention; a network's stitched object times `PatchPredictor.photon_scale`); deviances per pattern
divided by the mean counts per pixel, as the training loss (whose gridsize-C value sums C patterns).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptycho_torch.physics import forward as physics

EXACT_BELOW = 200.0  # counts: expected_deviance sums the Poisson series below, uses its expansion above
DEFAULT_MAX_PATTERNS = 2048


@functools.lru_cache(maxsize=1)
def _floor_table() -> tuple[np.ndarray, np.ndarray]:
    """(log lambda grid, E[deviance term] on it) for lambda in [1e-8, EXACT_BELOW], summed exactly."""
    lam = np.geomspace(1e-8, EXACT_BELOW, 800)
    k = np.arange(int(EXACT_BELOW + 12 * math.sqrt(EXACT_BELOW) + 40), dtype=np.float64)
    log_fact = torch.lgamma(torch.from_numpy(k + 1.0)).numpy()
    pmf = np.exp(k[None] * np.log(lam[:, None]) - lam[:, None] - log_fact[None])
    k_log_k = k * np.log(np.maximum(k, 1.0))
    return np.log(lam), (pmf * k_log_k[None]).sum(axis=1) - lam * np.log(lam)


def expected_deviance(lam: np.ndarray) -> np.ndarray:
    """E over k ~ Poisson(lam) of lam - k log lam - (k - k log k), elementwise (lam in counts, any
    shape, >= 0): the per-pixel loss term a correct model leaves. 1/2 + 1/(12 lam) + 1/(12 lam^2) for
    bright pixels, about -lam log lam for dim ones, 0 at lam = 0."""
    lam = np.asarray(lam, dtype=np.float64)
    log_grid, values = _floor_table()
    safe = np.maximum(lam, 1e-300)
    dim = np.interp(np.log(safe), log_grid, values, left=0.0)
    big = np.maximum(lam, EXACT_BELOW)
    bright = 0.5 + 1.0 / (12.0 * big) + 1.0 / (12.0 * big * big)
    out = np.where(lam > EXACT_BELOW, bright, dim)
    return np.where(lam > 0, out, 0.0)


@dataclass
class DataFit:
    """The fit of an object to `n_patterns` patterns of its scan (a subset of a large scan, evenly
    spread through it). deviance and noise_floor: mean per pattern / mean counts per pixel; ratio =
    deviance / noise_floor (1 = as good as counting noise allows). indices (K,) the patterns used,
    pattern_ratio (K,) each one's own deviance / floor."""

    deviance: float
    noise_floor: float
    ratio: float
    n_patterns: int
    indices: np.ndarray
    pattern_ratio: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The JSON-ready numbers (what object.npz's metadata records as data_fit)."""
        return {"deviance": self.deviance, "noise_floor": self.noise_floor, "ratio": self.ratio,
                "n_patterns": self.n_patterns,
                "pattern_ratio_percentiles": {str(q): float(np.percentile(self.pattern_ratio, q))
                                              for q in (10, 50, 90)}}


def fit_indices(n_patterns: int, max_patterns: int | None = DEFAULT_MAX_PATTERNS) -> np.ndarray:
    """Every pattern, or `max_patterns` of them evenly spread through the scan (deterministic)."""
    if max_patterns is None or n_patterns <= max_patterns:
        return np.arange(n_patterns)
    return np.unique(np.linspace(0, n_patterns - 1, max_patterns).round().astype(np.int64))


def data_fit(obj: np.ndarray, scan: Any, probe: np.ndarray | torch.Tensor, *, scale: float = 1.0,
             max_patterns: int | None = DEFAULT_MAX_PATTERNS, batch: int = 64, eps: float = 1e-6) -> DataFit:
    """The fit of `obj` (H, W) complex in `scan`'s object frame, times `scale` (to the probe's photon
    units), to the scan's patterns. `scan` is a read scan: positions (M, 2) px, diffraction_rows,
    N, and its detector mask when it has one (excluded pixels count in neither number). `probe`
    (N, N) or (P, N, N) complex, photon units. At most `max_patterns` patterns (None = all)."""
    N = scan.N
    probe_t = torch.as_tensor(np.asarray(probe)).to(torch.complex64).reshape(-1, N, N)
    obj_t = torch.from_numpy(np.asarray(obj, dtype=np.complex64) * np.complex64(scale))
    positions = torch.from_numpy(np.asarray(scan.positions, dtype=np.float32))
    mask = getattr(scan, "mask", None)
    keep = None if mask is None else torch.from_numpy(~np.asarray(mask, dtype=bool))
    indices = fit_indices(scan.n_patterns, max_patterns)
    deviance, floor, counts = [], [], []
    zero = torch.tensor(0.0)
    with torch.inference_mode():
        for start in range(0, len(indices), batch):
            idx = indices[start:start + batch]
            patches = physics.extract_patches(obj_t, positions[torch.from_numpy(idx)], N)[:, None]
            lam = physics.predicted_amplitude(patches, probe_t, zero)[:, 0].double().square()  # (B, N, N) counts
            k = torch.from_numpy(np.asarray(scan.diffraction_rows(idx), dtype=np.float64)).square()
            terms = physics.poisson_deviance_terms(lam + eps, k)
            expected = torch.from_numpy(expected_deviance(lam.numpy()))
            if keep is not None:
                terms, expected, k = terms * keep, expected * keep, k * keep
            deviance.append(terms.sum(dim=(1, 2)).numpy())
            floor.append(expected.sum(dim=(1, 2)).numpy())
            counts.append(k.sum(dim=(1, 2)).numpy())
    dev, flo = np.concatenate(deviance), np.concatenate(floor)
    pixels = N * N if keep is None else max(int(keep.sum()), 1)
    per_pixel = max(float(np.concatenate(counts).mean()) / pixels, 1e-12)
    ratio = float(dev.mean() / max(flo.mean(), 1e-12))
    return DataFit(float(dev.mean() / per_pixel), float(flo.mean() / per_pixel), ratio, len(indices), indices,
                   dev / np.maximum(flo, 1e-12))
