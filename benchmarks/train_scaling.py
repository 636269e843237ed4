"""Training scaling: plain Lightning vs Ray Train with 1 and 2 workers (SPEC 8).

One run trains the same model on the same simulated scan, same seed and per-worker batch size, in:

1. plain Lightning (`ptycho_torch.training.train.train`) with 1 torch thread (the fair comparison with
   a 1-CPU Ray worker) and with all this machine's threads;
2. `ptycho_dist.training.driver.fit_distributed` with 1 worker and with 2 workers (1 CPU, 1 thread each, DDP over
   gloo) on an already started local Ray (its start-up time is reported separately);
3. a bare `TorchTrainer.fit` of a no-op function with 1 worker (Ray's defaults, best of 2): Ray's own
   fixed cost, so that what ptycho-dist adds on top of it is measured in the same run; and of a function
   that only imports Lightning, with the controller polling as often as ptycho-dist's (ray.poll_interval_s):
   the part of that addition any Lightning module run by Ray pays in its fresh worker process.

Measured per run (a rank-0 callback writes wall-clock timestamps):
    samples/s       training samples (all ranks) / training time of the epochs after the first
                    (first batch start -> last batch end of each epoch; validation and checkpoints
                    excluded), i.e. steady-state throughput
    first step s    from the call (train() / fit_distributed()) to the first training batch
    wall s          the whole call, including validation, checkpoints, teardown and bundle writing

Writes benchmarks/results/train_scaling.json and the "## Training scaling" section of
docs/benchmarks.md (other sections are kept). Usage:

    .venv/bin/python benchmarks/train_scaling.py [--N 64] [--positions 400] [--epochs 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
from docs_page import load_note, write_section
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_scaling.json"
SECTION = "## Training scaling"


class Timing(Callback):
    """Rank 0 records, per epoch, the time of the first batch start, the last batch end and the
    samples seen by all ranks; rewritten to `path` (JSON) after every epoch. Times are time.time()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.first_step: float | None = None
        self.epochs: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.time()
        if self.first_step is None:
            self.first_step = now
        if batch_idx == 0:
            self.epochs.append({"start": now, "end": now, "samples": 0})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.epochs[-1]["end"] = time.time()
        self.epochs[-1]["samples"] += int(batch["x"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({"first_step": self.first_step, "epochs": self.epochs}))


def summarise(name: str, timing_file: Path, t0: float, wall: float, loss: float, **extra: Any) -> dict[str, Any]:
    data = json.loads(timing_file.read_text())
    epochs = data["epochs"][1:] or data["epochs"]
    seconds = sum(e["end"] - e["start"] for e in epochs)
    return {"mode": name, "samples_per_s": sum(e["samples"] for e in epochs) / max(seconds, 1e-9),
            "first_step_s": data["first_step"] - t0, "wall_s": wall, "final_train_loss": loss,
            "epochs_timed": len(epochs), **extra}


def run_plain(config: Any, work: Path, threads: int) -> dict[str, Any]:
    import torch

    from ptycho_torch.training.train import train

    timing = work / f"plain{threads}.json"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        result = train(config, work / f"plain{threads}", callbacks=[Timing(str(timing))])
        wall = time.time() - t0
    finally:
        torch.set_num_threads(previous)
    return summarise(f"plain Lightning, {threads} thread(s)", timing, t0, wall, result.metrics["train_loss"],
                     workers=1, threads=threads)


def run_ray(config: Any, work: Path, workers: int) -> dict[str, Any]:
    from ptycho_dist.config import RayConfig
    from ptycho_dist.training.driver import fit_distributed
    from ptycho_torch.config import apply_overrides

    timing = work / f"ray{workers}.json"
    config = apply_overrides(config, {"trainer.devices": workers})
    t0 = time.time()
    result = fit_distributed(config, RayConfig(storage_path=str(work / "ray_runs"), name=f"w{workers}",
                                               cpus_per_worker=1), callbacks=[Timing(str(timing))])
    wall = time.time() - t0
    return summarise(f"Ray Train, {workers} worker(s) x 1 CPU", timing, t0, wall, result.metrics["train_loss"],
                     workers=workers, threads=1, fit_s=result.fit_seconds)


def _noop(config: dict[str, Any]) -> None:
    return None


def _import_lightning(config: dict[str, Any]) -> None:
    import lightning  # noqa: F401 - the import is what is timed


def run_noop(work: Path, fn: Any = _noop, poll_interval_s: float | None = None, repeats: int = 2) -> float:
    """Wall seconds of a bare TorchTrainer.fit with 1 worker running `fn`, the best of `repeats`;
    Ray's defaults, or its controller polling the workers every `poll_interval_s` as ptycho-dist's does."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ptycho_dist.cluster.scaling import POLL_INTERVAL_ENV

    best = float("inf")
    for i in range(repeats):
        with mock.patch.dict(os.environ):  # the environment is restored on leaving
            os.environ.pop(POLL_INTERVAL_ENV, None)
            if poll_interval_s is not None:
                os.environ[POLL_INTERVAL_ENV] = f"{poll_interval_s:g}"
            t0 = time.perf_counter()
            TorchTrainer(fn, scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(storage_path=str(work / "ray_runs"), name=f"{fn.__name__.strip('_')}{i}")).fit()
            best = min(best, time.perf_counter() - t0)
    return best


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = result["runs"]
    base = next(r for r in rows if r["mode"].startswith("plain") and r["threads"] == 1)
    ray1 = next((r for r in rows if r["mode"].startswith("Ray") and r["workers"] == 1), None)
    lines = [SECTION, "",
             f"`benchmarks/train_scaling.py`, {result['date']}, {result['machine']['cpu_count']} CPU cores "
             f"(shared with other work: read ratios, not absolute rates), torch {result['machine']['torch']}, "
             f"lightning {result['machine']['lightning']}, ray {result['machine']['ray']}. Simulated scan, "
             f"N={s['N']}, n_filters_scale={s['n_filters_scale']}, {s['positions']} positions, "
             f"{s['epochs']} epochs, batch {s['batch_size']} per worker, seed {s['seed']}; plain 1 thread and "
             f"1 Ray worker ran {s.get('repeats', 1)} times, interleaved, and the faster run of each is shown. "
             f"samples/s counts training steps of epochs 2..{s['epochs']} (steady state); first step is "
             f"the time from the call to the first training batch; `ray.init` ({result['ray_init_s']:.1f} s) "
             "happened before the Ray runs and is not included. "
             + load_note(result["load_average_1min"]["start"], result["load_average_1min"]["end"],
                         result["machine"]["cpu_count"]), "",
             "| run | samples/s | vs plain 1 thread | first step s | wall s | final train loss |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x "
                     f"| {r['first_step_s']:.2f} | {r['wall_s']:.1f} | {r['final_train_loss']:.5g} |")
    ray2 = next((r for r in rows if r["mode"].startswith("Ray") and r["workers"] == 2), None)
    if ray1 and ray2:
        speedup = ray2["samples_per_s"] / ray1["samples_per_s"]
        lines += ["", f"2 Ray workers vs 1: {speedup:.2f}x throughput (scaling efficiency {speedup / 2:.0%}); "
                  f"a Ray run pays {ray1['first_step_s'] - base['first_step_s']:.1f} s more than plain Lightning "
                  "before its first step (controller, placement group, worker processes, process group). "
                  "With 2 workers the global batch doubles, so the 2-worker loss after the same epochs "
                  "differs from the 1-worker one (half the optimiser steps); 1 Ray worker and plain Lightning "
                  "with 1 thread give the same losses (tests/test_dist_train.py)."]
    if ray1 and result.get("noop_torchtrainer_s"):
        noop, plain = result["noop_torchtrainer_s"], base["wall_s"]
        ours = ray1["wall_s"] - noop - plain
        lines += ["", f"Fixed cost: a bare `TorchTrainer.fit` of a no-op function with 1 worker took {noop:.1f} s; "
                  f"1 Ray worker took {ray1['wall_s']:.1f} s where plain Lightning took {plain:.1f} s, so what "
                  f"ptycho-dist adds on top of Ray's and the training's own cost is {ours:.1f} s "
                  f"({ours / noop:.0%} of the bare TorchTrainer)."]
        light = result.get("lightning_torchtrainer_s")
        if light:
            lines[-1] += (f" A bare `TorchTrainer.fit` whose function only imports Lightning, its controller polling "
                          f"the workers every {result['poll_interval_s']:g} s as ptycho-dist's does (Ray's "
                          f"default: 2 s), took {light:.1f} s: {light - noop:+.1f} s is that import in the fresh "
                          "worker process, which every Lightning module run by Ray pays, less what the shorter "
                          "polling saves; the rest, "
                          f"{ray1['wall_s'] - light - plain:.1f} s ({(ray1['wall_s'] - light - plain) / noop:.0%}), "
                          "is ptycho-dist's own.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=64, help="pattern size (default: 64)")
    parser.add_argument("--n-filters-scale", type=float, default=0.5, help="network width (default: 0.5)")
    parser.add_argument("--positions", type=int, default=400, help="scan positions (default: 400)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, the first is not timed (default: 4)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch per worker (default: 16)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="plain 1-thread and 1-worker Ray runs, interleaved; the faster kept (default: 2)")
    parser.add_argument("--quick", action="store_true", help="N=32, 200 positions, 2 epochs (default: off)")
    args = parser.parse_args()
    if args.quick:
        args.N, args.positions, args.epochs = 32, 200, 2
    import lightning
    import ray
    import torch

    from ptycho_torch.cli.main import setup_logging
    from ptycho_torch.config import (
        DataConfig,
        LoggingConfig,
        ModelConfig,
        RunConfig,
        SimulationConfig,
        TrainerConfig,
        TrainingConfig,
    )
    from ptycho_torch.data.simulate import simulate_to_file

    setup_logging(False, names=("ptycho_torch", "ptycho_dist"))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train-scaling-") as tmp:
        work = Path(tmp)
        scan = simulate_to_file(SimulationConfig(N=args.N, n_positions=args.positions, seed=0), work / "scan.npz")
        config = RunConfig(data=DataConfig(path=str(scan), val_fraction=0.1),
                           model=ModelConfig(N=args.N, n_filters_scale=args.n_filters_scale),
                           training=TrainingConfig(batch_size=args.batch_size),
                           trainer=TrainerConfig(max_epochs=args.epochs, enable_progress_bar=False),
                           logging=LoggingConfig(logger=None))
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        ray_init = time.perf_counter() - t0
        try:
            from ptycho_dist.config import RayConfig

            run_noop(work, repeats=1)  # warm-up: the first TorchTrainer of a session starts its processes slower
            noop = run_noop(work)
            light = run_noop(work, _import_lightning, poll_interval_s=RayConfig().poll_interval_s)
            # the two runs the fixed cost compares, interleaved `repeats` times, the faster of each kept
            pairs = []
            for i in range(args.repeats):
                (work / f"r{i}").mkdir()
                pairs.append((run_plain(config, work / f"r{i}", 1), run_ray(config, work / f"r{i}", 1)))
            runs = [min((p[k] for p in pairs), key=lambda r: r["wall_s"]) for k in (0, 1)]
            for k, row in enumerate(runs):
                row["walls_s"] = [p[k]["wall_s"] for p in pairs]
            if (os.cpu_count() or 1) > 1:
                runs.insert(1, run_plain(config, work, os.cpu_count() or 1))
            runs.append(run_ray(config, work, 2))
        finally:
            ray.shutdown()
    result = {"date": time.strftime("%Y-%m-%d"), "ray_init_s": ray_init, "noop_torchtrainer_s": noop,
              "lightning_torchtrainer_s": light, "poll_interval_s": RayConfig().poll_interval_s,
              "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
              "settings": {"N": args.N, "n_filters_scale": args.n_filters_scale, "positions": args.positions,
                           "epochs": args.epochs, "batch_size": args.batch_size, "seed": config.training.seed,
                           "repeats": args.repeats},
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "lightning": lightning.__version__, "ray": ray.__version__},
              "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    section = markdown(result)
    write_section(SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
