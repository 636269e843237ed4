"""The main single-machine job on built-in defaults: simulate -> train -> reconstruct -> evaluate.

`ptycho-torch demo --out DIR` runs it in a few minutes on 2 CPU cores and leaves DIR/scan.npz,
DIR/run (training run), DIR/recon (reconstruction with metrics.json and pictures).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ptycho_torch.config import (
    DataConfig,
    ModelConfig,
    PyTorchExecutionConfig,
    RunConfig,
    SimulationConfig,
    TrainingConfig,
)

log = logging.getLogger("ptycho_torch")


DEMO_N = 32


def demo_simulation(n_positions: int) -> SimulationConfig:
    """A Gaussian-random-field object scanned with a defocused probe (32 x 32 patterns)."""
    return SimulationConfig(N=DEMO_N, object="grf", n_positions=n_positions, seed=0)


def demo_run_config(scan_path: Path, epochs: int) -> RunConfig:
    """A small but real configuration: N=32, gridsize 2 (groups of 4 overlapping patterns, trained
    through the overlap constraint: gridsize 1 cannot tell the object from its ambiguities on this
    scan), a half-width network, batch 4 groups (16 patterns; many small steps learn faster on 2 CPU
    cores than few large ones), lr 3e-3."""
    return RunConfig(data=DataConfig(path=str(scan_path), val_fraction=0.1),
                     model=ModelConfig(N=DEMO_N, gridsize=2, n_filters_scale=0.5),
                     training=TrainingConfig(nepochs=epochs, batch_size=4),
                     execution=PyTorchExecutionConfig(learning_rate=3e-3))


def run_demo(out: Path, epochs: int = 15, n_positions: int = 1000) -> dict[str, Any]:
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.workflows.reconstruct import reconstruct
    from ptycho_torch.workflows.train import train

    out.mkdir(parents=True, exist_ok=True)
    log.info("[1/3] simulating %d patterns", n_positions)
    scan = simulate_to_file(demo_simulation(n_positions), out / "scan.npz")
    log.info("[2/3] training for %d epochs", epochs)
    trained = train(demo_run_config(scan, epochs), out / "run")
    log.info("[3/3] reconstructing and evaluating")
    recon = reconstruct(out / "run", scan, out / "recon")
    metrics = recon.metrics or {}
    summary = {"scan": str(scan), "run": str(trained.run_dir), "recon": str(recon.out_dir),
               "val_loss": trained.metrics.get("val_loss"),
               **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return summary
