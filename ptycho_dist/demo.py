"""`ptycho-dist demo --out DIR`: the whole product on an embedded local Ray, in about 9 minutes on 2 CPU cores.

simulate -> 2-worker Ray Train run -> 2-trial Ray Tune sweep -> Ray Data reconstruction -> evaluation
-> DIR/summary.md with pictures (ground truth vs reconstruction, loss curves, FRC, sweep curves).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ptycho_torch.config import apply_overrides
from ptycho_torch.demo import (
    DEMO_EPOCHS,
    DEMO_MINUTES,
    DEMO_SWEEP,
    demo_run_config,
    demo_simulation,
    write_summary,
)

log = logging.getLogger("ptycho_dist")


def _step(number: int, text: str) -> float:
    log.info("[%d/5] %s", number, text)
    return time.perf_counter()


def run_demo(out: Path, *, epochs: int = DEMO_EPOCHS, minutes: float | None = DEMO_MINUTES,
             n_positions: int = 1000, sweep_epochs: int = 2,
             workers: int = 2, num_cpus: int | None = None, ray_settings: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Run the pipeline into `out` and return the summary dict (also written as summary.json).
    `ray_settings` are further RayConfig fields (e.g. address, worker_start_timeout_s)."""
    from ptycho_dist.cluster.session import ray_session
    from ptycho_dist.config import RayConfig
    from ptycho_dist.inference import reconstruct_distributed
    from ptycho_dist.sweeps.sweep_config import sweep_config_from_dict
    from ptycho_dist.sweeps.tuner import run_sweep
    from ptycho_dist.training.driver import fit_distributed
    from ptycho_torch.data.simulate import simulate_to_file

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = _step(1, f"simulating {n_positions} diffraction patterns")
    scan = simulate_to_file(demo_simulation(n_positions), out / "scan.npz")
    timings["simulate_s"] = time.perf_counter() - t

    ray_config = RayConfig.from_dict({**(ray_settings or {}), "num_cpus": num_cpus,
                                      "storage_path": str(out / "runs"), "name": "train"})
    with ray_session(ray_config):
        single = demo_run_config(scan, epochs, minutes)
        # batch_size is per worker: split the single-machine batch so the global batch (and so the
        # number of optimisation steps per epoch) matches `ptycho-torch demo`.
        config = apply_overrides(single, {
            "trainer.devices": workers, "trainer.accelerator": "cpu",
            "trainer.enable_progress_bar": False,
            "training.batch_size": max(1, single.training.batch_size // workers),
            "inference.batch_size": 64})
        budget = f"{minutes:g} min (at most {epochs} epochs)" if minutes else f"{epochs} epochs"
        t = _step(2, f"training with {workers} Ray workers for {budget}")
        trained = fit_distributed(config, ray_config)
        timings["train_s"] = time.perf_counter() - t

        t = _step(3, "sweeping the learning rate (2 trials)")
        sweep = sweep_config_from_dict(DEMO_SWEEP)
        sweep_config = apply_overrides(config, {"trainer.max_epochs": sweep_epochs, "trainer.max_time": None,
                                                "trainer.devices": 1})
        swept = run_sweep(sweep_config, sweep, out / "sweep", ray_config=ray_config, name="demo-sweep")
        timings["sweep_s"] = time.perf_counter() - t

        t = _step(4, "reconstructing with Ray Data")
        recon = reconstruct_distributed(trained.run_dir, scan, out / "recon", concurrency=workers,
                                        ray_config=ray_config, progress=False)
        timings["reconstruct_s"] = time.perf_counter() - t
    t = _step(5, "writing the summary")
    summary = write_summary(out, trained, swept, recon, timings)
    timings["summary_s"] = time.perf_counter() - t
    return summary
