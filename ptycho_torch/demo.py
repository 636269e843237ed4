"""The main single-machine job on built-in defaults: simulate -> train -> reconstruct -> evaluate.

`ptycho-torch demo --out DIR` trains for 6 minutes of wall clock (DEMO_MINUTES) and leaves DIR/scan.npz,
DIR/run (training run), DIR/recon (reconstruction with metrics.json and pictures). The Ray demo
(`ptycho-dist demo`) uses the same scan and config, its sweep DEMO_SWEEP and `write_summary`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ptycho_torch.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    SimulationConfig,
    TrainerConfig,
    TrainingConfig,
)

log = logging.getLogger("ptycho_torch")


DEMO_N = 32
# the 2-trial learning-rate sweep of `ptycho-dist demo` (a sweep file as a mapping, ptycho_dist.sweeps.sweep_config)
DEMO_SWEEP = {
    "metric": "val_loss",
    "mode": "min",
    "num_samples": 1,
    "scheduler": {"name": "fifo"},
    "search": {"name": "grid"},
    "workers_per_trial": 1,
    "max_concurrent_trials": 2,
    "space": {"optimizer.learning_rate": {"grid": [1.0e-3, 3.0e-3]}},
}


DEMO_MINUTES = 6.0  # training budget of the demos (wall clock); the epochs are only a cap
DEMO_EPOCHS = 200


def demo_simulation(n_positions: int) -> SimulationConfig:
    """The lines object of benchmarks/quality.py (amplitude in [0.5, 1], phase +-1.5 rad) scanned with a
    defocused probe, 32 x 32 patterns at 1e6 photons. (A Gaussian-random-field object, the demo's
    earlier choice, is a harder texture: phase / amplitude SSIM 0.59 / 0.45 after 15 epochs.)"""
    return SimulationConfig(N=DEMO_N, object="lines", n_positions=n_positions, seed=0)


def demo_run_config(scan_path: Path, epochs: int, minutes: float | None = DEMO_MINUTES) -> RunConfig:
    """A small but real configuration: N=32, gridsize 2 (groups of 4 overlapping patterns, trained
    through the overlap constraint: gridsize 1 cannot tell the object from its ambiguities on this
    scan), a half-width network, batch 4 groups (16 patterns; many small steps learn faster on 2 CPU
    cores than few large ones), lr 3e-3 annealed (WarmupCosine) over `minutes` of training or
    `epochs`, whichever ends first."""
    return RunConfig(data=DataConfig(path=str(scan_path), val_fraction=0.1),
                     model=ModelConfig(N=DEMO_N, gridsize=2, n_filters_scale=0.5),
                     training=TrainingConfig(batch_size=4),
                     trainer=TrainerConfig(max_epochs=epochs, max_time=minutes),
                     optimizer=OptimizerConfig(learning_rate=3e-3))


def run_demo(out: Path, epochs: int = DEMO_EPOCHS, n_positions: int = 1000,
             minutes: float | None = DEMO_MINUTES) -> dict[str, Any]:
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.training.train import train

    out.mkdir(parents=True, exist_ok=True)
    log.info("[1/3] simulating %d patterns", n_positions)
    scan = simulate_to_file(demo_simulation(n_positions), out / "scan.npz")
    log.info("[2/3] training for %s", f"{minutes:g} min (at most {epochs} epochs)" if minutes else f"{epochs} epochs")
    trained = train(demo_run_config(scan, epochs, minutes), out / "run")
    log.info("[3/3] reconstructing and evaluating")
    recon = reconstruct(out / "run", scan, out / "recon")
    metrics = recon.metrics or {}
    summary = {"scan": str(scan), "run": str(trained.run_dir), "recon": str(recon.out_dir),
               "val_loss": trained.metrics.get("val_loss"),
               **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return summary


def headline_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The PSNR, SSIM and FRC resolutions of a reconstruction's metrics (those that are numbers)."""
    keys = ("amplitude_psnr", "amplitude_ssim", "phase_psnr", "phase_ssim", "frc_half_resolution_px",
            "frc_17_resolution_px")
    return {k: float(metrics[k]) for k in keys if metrics and isinstance(metrics.get(k), (int, float))}


def write_summary(out: Path, trained: Any, swept: Any, recon: Any, timings: dict[str, float]) -> dict[str, Any]:
    """summary.md + summary.json of `ptycho-dist demo` in `out`, with the pictures copied next to them.
    `trained`, `swept` and `recon` are the results of its training run, sweep and reconstruction
    (DistTrainResult, SweepResult, ReconResult); `timings` the seconds of each step."""
    pictures = {
        "comparison.png": out / "recon" / "comparison.png",
        "loss.png": Path(trained.run_dir) / "loss.png",
        "frc.png": out / "recon" / "frc.png",
        "trials.png": out / "sweep" / "trials.png",
    }
    for name, source in pictures.items():
        if source.is_file():
            shutil.copyfile(source, out / name)
    metrics = headline_metrics(recon.metrics)
    best = getattr(swept, "best_config", None)
    summary = {
        "run": str(trained.run_dir), "epochs": trained.epochs_completed, "world_size": trained.world_size,
        "final_val_loss": trained.metrics.get("val_loss"), "metrics": metrics,
        "best_learning_rate": best.optimizer.learning_rate if best is not None else None,
        "reconstruction_patterns_per_s": recon.patterns_per_second, "timings_s": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())
    times = "\n".join(f"| {k[:-2]} | {v:.1f} |" for k, v in timings.items())
    (out / "summary.md").write_text(f"""# ptycho-dist demo

Simulated scan `scan.npz` -> {trained.world_size}-worker Ray Train run ({trained.epochs_completed} epochs,
final val_loss {summary['final_val_loss']:.4g}) -> 2-trial Ray Tune sweep of the learning rate (best:
{summary['best_learning_rate']}) -> Ray Data reconstruction ({recon.patterns_per_second:.0f} patterns/s)
-> evaluation against the ground truth.

## Ground truth vs reconstruction

![comparison](comparison.png)

| metric | value |
|---|---|
{rows}

## Training

![loss curves](loss.png)

## Resolution (Fourier ring correlation)

![FRC](frc.png)

## Sweep

![trials](trials.png)

## Time (s)

| step | seconds |
|---|---|
{times}
""")
    return summary
