"""ptycho_dist: thin Ray adapters (Train, Tune, Data) over ptycho_torch.

The Python API (docs/api.md), loaded on first use so that `import ptycho_dist` does not start
importing Ray:

    import ptycho_dist as pd
    run = pd.train("scan.npz", "runs/ddp", N=32, epochs=5, devices=2)      # Ray Train
    sweep = pd.tune("sweep.yaml", "sweep_out", data="scan.npz")            # Ray Tune
    obj = pd.reconstruct(run, "scan_*.h5", "recon", concurrency=4)         # Ray Data, (H, W) complex64
    live = pd.live(run, "scan.h5", "live_out", concurrency=2)               # while the scan is acquired
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "live", "reconstruct", "train", "tune"]
_EXPORTS = ("train", "tune", "reconstruct", "live")  # functions of ptycho_dist.api

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from ptycho_dist.api import live, reconstruct, train, tune


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module("ptycho_dist.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ptycho_dist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
