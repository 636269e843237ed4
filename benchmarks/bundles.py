"""Model bundles for the speed benchmarks: trained one epoch (the weights' quality does not matter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def one_epoch_bundle(work: Path, N: int, scale: float, **overrides: Any) -> Path:
    """A bundle of width `scale` trained one epoch on a small simulated N x N scan in `work`;
    `overrides` sets further dotted fields (e.g. {"inference.batch_size": 64})."""
    from ptycho_torch.config import (
        DataConfig,
        ModelConfig,
        RunConfig,
        SimulationConfig,
        TrainerConfig,
        TrainingConfig,
        apply_overrides,
    )
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.training.train import train

    scan = work / f"train_{N}.npz"
    if not scan.exists():
        simulate_to_file(SimulationConfig(N=N, n_positions=64, seed=0, nphotons=1e5), scan)
    config = RunConfig(data=DataConfig(path=str(scan), val_fraction=0.25),
                       model=ModelConfig(N=N, n_filters_scale=scale),
                       training=TrainingConfig(batch_size=16), trainer=TrainerConfig(max_epochs=1))
    config = apply_overrides(config, {"trainer.enable_progress_bar": False, "logging.logger": None,
                                      "trainer.enable_checkpointing": False,
                                      **overrides})
    return train(config, work / f"run_{N}_{scale}").bundle_path
