"""Incoherent probe modes: new modes to start from, and their orthogonalisation.

A partially coherent beam is a sum of mutually incoherent modes P_k; the measured intensity is
sum_k |F(P_k O)|^2. Only the span of the modes is determined by the data, so after each update the
modes are made orthogonal (the eigenvectors of their density matrix, as tike and Pty-chi do) and
sorted by power, mode 0 the strongest.
"""

from __future__ import annotations

import numpy as np
import torch

NEW_MODE_POWER = 0.05  # a new mode's share of the first mode's power


def add_modes(probe: np.ndarray, modes: int, rng: np.random.Generator) -> np.ndarray:
    """probe (K, N, N) complex grown (or cut) to `modes` modes. A new mode is the first mode times a
    random low-order phase (a mode of a partially coherent beam looks like the main one, displaced
    and tilted), scaled to NEW_MODE_POWER of its power; the total power is kept. Returns (modes, N, N)."""
    probe = np.asarray(probe, np.complex64)
    if modes <= len(probe):
        return probe[:modes].copy()
    N = probe.shape[-1]
    yy, xx = np.mgrid[-1:1:N * 1j, -1:1:N * 1j]
    total = float(np.sum(np.abs(probe) ** 2))
    out = [m for m in probe]
    for _ in range(modes - len(probe)):
        c = rng.normal(size=5) * np.pi
        phase = c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * (xx ** 2 - yy ** 2) + c[4] * (xx ** 2 + yy ** 2)
        out.append(probe[0] * np.exp(1j * phase) * np.sqrt(NEW_MODE_POWER))
    grown = np.stack(out).astype(np.complex64)
    grown *= np.sqrt(total / float(np.sum(np.abs(grown) ** 2)))
    return orthogonalise_modes(torch.from_numpy(grown)).numpy()


def orthogonalise_modes(probe: torch.Tensor) -> torch.Tensor:
    """Modes (K, N, N) complex -> K orthogonal modes spanning the same space with the same total
    intensity sum_k |P_k|^2 at every pixel, sorted by power (strongest first)."""
    K = probe.shape[0]
    if K == 1:
        return probe
    flat = probe.reshape(K, -1)  # (K, N*N)
    gram = flat.conj() @ flat.T  # (K, K) Hermitian
    values, vectors = torch.linalg.eigh(gram)
    order = torch.argsort(values, descending=True)
    return (vectors[:, order].T @ flat).reshape(probe.shape)
