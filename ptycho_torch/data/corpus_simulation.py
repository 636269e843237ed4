"""Training corpora of simulated scans: K scans of one object kind, optionally varied probes and doses.

`ptycho-torch simulate --n-scans K --out DIR` writes DIR/scan_000.npz ... scan_{K-1}; scan k is
`simulate.simulate_scan` with seed + k (another object, positions and noise) and, when ranges are
given, its own probe defocus, probe diameter and dose. Each file holds scan_index = k, so training
(data.scans: auto) reads the files as K separate scans, each with its own probe and normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.config import ConfigError, SimulationConfig
from ptycho_torch.data.simulate import simulate_scan

__all__ = ["corpus_settings", "simulate_corpus"]

log = logging.getLogger(__name__)


def _spread(lo_hi: tuple[float, float] | None, k: int, n: int, geometric: bool = False) -> float | None:
    """Value k of n evenly spread over [lo, hi] (geometrically for doses); None without a range."""
    if lo_hi is None:
        return None
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    t = k / (n - 1) if n > 1 else 0.0
    return float(lo * (hi / lo) ** t) if geometric else lo + (hi - lo) * t


def corpus_settings(config: SimulationConfig, n_scans: int, *,
                    defocus_range: tuple[float, float] | None = None,
                    diameter_range_px: tuple[float, float] | None = None,
                    nphotons_range: tuple[float, float] | None = None) -> list[SimulationConfig]:
    """The configs of the K scans of a corpus: scan k has seed config.seed + k (another object,
    positions and noise), and, when their ranges are given, a defocus (rad) and probe diameter (px)
    spread evenly over the range and a dose (photons per pattern) spread geometrically over it,
    scan 0 at the low end and scan K-1 at the high end. Other fields are config's."""
    if n_scans < 1:
        raise ConfigError(f"--n-scans: got {n_scans}; must be >= 1")
    for flag, lo_hi in (("--defocus-range", defocus_range), ("--diameter-range", diameter_range_px),
                        ("--nphotons-range", nphotons_range)):
        if lo_hi is not None and (len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]):
            raise ConfigError(f"{flag}: got {list(lo_hi)}; give two values LOW HIGH with LOW <= HIGH")
    if nphotons_range is not None and nphotons_range[0] <= 0:
        raise ConfigError(f"--nphotons-range: got {list(nphotons_range)}; photons per pattern must be > 0")
    out = []
    for k in range(n_scans):
        changes: dict[str, Any] = {"seed": config.seed + k}
        for name, value in (("probe_defocus", _spread(defocus_range, k, n_scans)),
                            ("probe_diameter_px", _spread(diameter_range_px, k, n_scans)),
                            ("nphotons", _spread(nphotons_range, k, n_scans, geometric=True))):
            if value is not None:
                changes[name] = value
        out.append(dataclasses.replace(config, **changes))  # SimulationConfig checks every value
    return out


def simulate_corpus(configs: list[SimulationConfig], out_dir: str | Path, *, suffix: str = ".npz",
                    noise: bool = True) -> list[Path]:
    """Write one scan per config (corpus_settings) as out_dir/scan_000{suffix}, scan_001, ...; file k
    holds scan_index = k (so training tells the scans apart even when they share a probe) and
    metadata["corpus"] = {"index": k, "n_scans": K}. Returns the paths in order."""
    from ptycho_torch.data.contract import write_scan

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, config in enumerate(configs):
        arrays = simulate_scan(config, noise=noise)
        arrays["scan_index"] = np.full(len(arrays["xcoords"]), k, np.int64)
        arrays["metadata"]["corpus"] = {"index": k, "n_scans": len(configs)}
        paths.append(write_scan(out_dir / f"scan_{k:03d}{suffix}", **arrays))
        log.info("wrote scan %d of %d (seed %d, %g photons/pattern) to %s", k + 1, len(configs), config.seed,
                 config.nphotons, paths[-1])
    return paths
