"""ptycho_torch: PtychoPINN on one machine (PyTorch + Lightning). Never imports ray.

The Python API (docs/api.md), loaded on first use so that `import ptycho_torch` stays light:

    import ptycho_torch as pt
    scan = pt.simulate("scan.npz", N=32, n_positions=200)
    run = pt.train(scan, "run", N=32, epochs=2)
    obj = pt.reconstruct(run, diffraction=amplitudes, positions=xy)   # (H, W) complex64
    metrics = pt.evaluate(obj, truth)

`pt.simulate`, `pt.read_scan`, `pt.train`, `pt.reconstruct`, `pt.solve` (iterative object + probe),
`pt.live` (while the scan is acquired), `pt.evaluate` (ptycho_torch.api) and
`pt.RunConfig`, `pt.SimulationConfig` (ptycho_torch.config).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "simulate": "ptycho_torch.api",
    "read_scan": "ptycho_torch.api",
    "train": "ptycho_torch.api",
    "reconstruct": "ptycho_torch.api",
    "evaluate": "ptycho_torch.api",
    "solve": "ptycho_torch.api",
    "live": "ptycho_torch.api",
    "RunConfig": "ptycho_torch.config",
    "SimulationConfig": "ptycho_torch.config",
}
__all__ = ["RunConfig", "SimulationConfig", "__version__", "evaluate", "live", "read_scan", "reconstruct",
           "simulate", "solve", "train"]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from ptycho_torch.api import evaluate, live, read_scan, reconstruct, simulate, solve, train
    from ptycho_torch.config import RunConfig, SimulationConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ptycho_torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
