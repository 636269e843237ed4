"""Refinement of a network's reconstruction by the iterative solver, and the scan's coverage map.

`reconstruct --refine-seconds` hands the network's stitched object to the same engine as
`ptycho-torch solve` (ptycho_torch.reconstruction.solver): the network's answer is the starting object, the probe
the model's (or the scan's), refined too on request. The engine is scale-free, so the object's units
(a network's stitched object is in its own normalised units) do not matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycho_torch.reconstruction.solver.engine import Solution, SolverOptions, solve


def coverage(positions: np.ndarray, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stitching weight (H, W) of the scan: the sum of |probe|^2 over the positions, the region
    metrics score (as reconstruct's weight map)."""
    from ptycho_torch.physics.stitching import stitch, stitch_weight

    probe_t = torch.from_numpy(np.asarray(probe, dtype=np.complex64))
    N = probe_t.shape[-1]
    ones = torch.ones(len(positions), N, N, dtype=torch.complex64)
    _, weight = stitch(ones, torch.from_numpy(np.asarray(positions, dtype=np.float32)), shape, stitch_weight(probe_t))
    return weight


def refine_stitched(obj: np.ndarray, weight: np.ndarray, scan: Any, probe: np.ndarray, seconds: float, *,
                    refine_probe: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> Solution:
    """Refine a network's stitched object (H, W) on its own scan for `seconds`: pixels no patch
    covered (weight 0) start at the mean of the covered ones; the probe (K, N, N) stays fixed unless
    `refine_probe`. Returns the solver's Solution (object with its bright level ~1, the probe in
    photon units: the pair reproduces the counts)."""
    start = np.array(obj, dtype=np.complex64)
    covered = weight > 0
    if covered.any() and not covered.all():
        start[~covered] = start[covered].mean()
    options = SolverOptions(refine_probe=refine_probe, probe_start_epoch=1, seed=seed)
    return solve(scan.diffraction_rows, scan.positions, probe, start.shape, options=options, seconds=seconds,
                 start=start, mask=getattr(scan, "mask", None), device=device)
