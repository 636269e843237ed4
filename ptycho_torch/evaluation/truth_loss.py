"""The loss of the ground truth: the noise floor a trained model's loss is read against.

For a simulated scan (one whose file holds the true object), the true patches go through the same
forward model the network's patches go through (overlap-constrained for gridsize > 1, intensity
scale 1, which is how the simulator made the counts) and are scored with the training loss. A model
whose loss is 40x this number has 40x the floor left to learn; 1.0 is as good as the data allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycho_torch.data.grouping import make_groups
from ptycho_torch.physics import forward as physics


def truth_loss(scan: Any, gridsize: int, n_groups: int = 256, eps: float = 1e-6) -> float | None:
    """Training loss (Poisson deviance per group / mean counts, as train_loss and val_loss) of the
    true object on the first `n_groups` nearest-neighbour groups of `scan`, or None when the scan
    holds no true object. `scan` is a read scan (ScanData or a multi-file scan): positions (M, 2) px,
    object_guess (H, W) complex, probe (P, N, N) or (N, N) complex in photon units, counts as
    amplitudes via diffraction_rows."""
    obj = scan.object_guess
    if obj is None:
        return None
    N = scan.N
    groups = make_groups(scan.positions, gridsize).indices[:n_groups]  # (G, C), deterministic
    positions = torch.from_numpy(scan.positions.astype(np.float32))[torch.from_numpy(groups)]  # (G, C, 2)
    patches = physics.extract_patches(torch.from_numpy(np.asarray(obj, dtype=np.complex64)), positions, N)
    if gridsize > 1:
        patches = physics.overlap_constraint(patches, physics.group_offsets(positions))
    probe = torch.from_numpy(np.asarray(scan.probe, dtype=np.complex64)).reshape(-1, N, N)
    r = physics.normalization_factor(scan.mean_energy(), N)
    pred = physics.predicted_amplitude(patches, probe, torch.tensor(0.0)) * r  # normalised amplitudes
    measured = torch.from_numpy(np.asarray(scan.diffraction_rows(groups), dtype=np.float32))
    return float(physics.poisson_nll(pred, measured, r, eps))
