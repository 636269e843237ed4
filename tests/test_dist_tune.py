"""Sweeps on a real local Ray (CPU): every trial a Ray Train run of the same worker loop as
`ptycho-dist train`.

One Ray instance (4 logical CPUs, dashboard on 127.0.0.1 — ASHA's early stopping needs it) serves the
module. Tiny model (N=32, n_filters_scale=0.25), 96 positions, 1–3 epochs.

- a 2x2 grid over gradient_clip_val x accumulate_grad_batches under ASHA, where clip 1e-10 (gradients far below
  Adam's eps, so the weights barely move) makes two trials much worse: the sweep finishes, the table
  lists all 4 trials, ASHA stops the bad ones at the first rung, and best_config.yaml round-trips into
  training (tests (a) and (b) of issue 5 merged into one sweep to keep the module near 5 minutes);
- the CLI in a subprocess (joining this module's Ray) is SIGKILLed once a trial has finished, and
  `--resume` completes the sweep without rerunning the finished trial.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import simulate, tiny_config

from ptycho_dist.sweeps.results import BEST_CONFIG, TRIALS_CSV, TRIALS_PNG
from ptycho_dist.sweeps.sweep_config import sweep_config_from_dict
from ptycho_dist.sweeps.tuner import run_sweep
from ptycho_torch.config import apply_overrides, load_run_config
from ptycho_torch.model.bundle import load_bundle
from ptycho_torch.training.train import train

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("scan") / "scan96.npz", n_positions=96)


def _base(scan: Path, **overrides):
    settings = {"trainer.max_epochs": 3, "logging.logger": None, "optimizer.learning_rate": 1e-2}
    settings.update(overrides)
    return tiny_config(scan, **settings)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_grid_sweep_with_asha_early_stopping_and_best_config(ray_local, scan, tmp_path):
    sweep = sweep_config_from_dict({
        "metric": "val_loss", "mode": "min",
        "scheduler": {"name": "asha", "max_epochs": 3, "grace_period": 1, "reduction_factor": 2},
        "search": {"name": "grid"}, "workers_per_trial": 1, "max_concurrent_trials": 2,
        # grid order: the last key varies fastest, so the two good trials (clip 1.0) run first and
        # are recorded at ASHA's first rung before the two bad ones (clip 1e-10) reach it
        "space": {"trainer.gradient_clip_val": {"grid": [1.0, 1e-10]},
                  "trainer.accumulate_grad_batches": {"grid": [1, 2]}}})
    out = tmp_path / "out"
    result = run_sweep(_base(scan), sweep, out, name="grid")

    # every trial is in the table and in trials.csv
    assert result.complete and len(result.trials) == 4
    rows = _rows(out / TRIALS_CSV)
    grid = {(float(r["trainer.gradient_clip_val"]), int(r["trainer.accumulate_grad_batches"])) for r in rows}
    assert grid == {(1.0, 1), (1.0, 2), (1e-10, 1), (1e-10, 2)}
    assert {"trial_id", "status", "epochs", "stopped_early", "last_val_loss", "best_val_loss"} <= set(rows[0])
    for r in result.trials:
        assert r.trial_id in result.table
        # each trial trained through its own Ray Train run, named from the trial id
        assert Path(r.run_dir).name == r.trial_id and (Path(r.run_dir) / "config.yaml").is_file()

    # ASHA stopped the bad trials at the first rung (grace_period = 1 epoch)
    bad = [r for r in result.trials if r.params["trainer.gradient_clip_val"] == 1e-10]
    good = [r for r in result.trials if r.params["trainer.gradient_clip_val"] == 1.0]
    for r in bad:
        assert (r.status, r.epochs, r.stopped_early) == ("stopped", 1, True), r
        assert [e for e, _ in r.curve] == [1]
    assert min(g.curve[0][1] for g in good) < min(b.curve[0][1] for b in bad)
    completed = [r for r in result.trials if r.status == "completed"]
    assert completed and all(r.epochs == 3 and not r.stopped_early for r in completed)
    csv_bad = [r for r in rows if float(r["trainer.gradient_clip_val"]) == 1e-10]
    assert all(r["status"] == "stopped" and r["epochs"] == "1" and r["stopped_early"] == "true" for r in csv_bad)

    # best_config.yaml: the best trial's full config; loads and trains with ptycho-torch
    best = result.best
    assert best is not None and best.status == "completed" and best.params["trainer.gradient_clip_val"] == 1.0
    assert best.last_value == min(r.last_value for r in completed)
    loaded = load_run_config(out / BEST_CONFIG)
    assert loaded == result.best_config
    assert set(yaml.safe_load((out / BEST_CONFIG).read_text())) == {
        "data", "model", "training", "inference", "trainer", "optimizer", "dataloader", "checkpoint", "logging"}
    assert loaded.trainer.gradient_clip_val == best.params["trainer.gradient_clip_val"]
    assert loaded.trainer.accumulate_grad_batches == best.params["trainer.accumulate_grad_batches"]
    assert loaded.trainer.max_epochs == 3 and loaded.model.n_filters_scale == 0.25
    assert Path(loaded.data.path) == scan.resolve()
    trained = train(apply_overrides(loaded, {"trainer.max_epochs": 1}), tmp_path / "retrain")
    assert trained.epochs_completed == 1 and trained.bundle_path.is_file()

    # the best trial's run files, and the curves
    bundle = load_bundle(out / "best")
    assert bundle.config == loaded
    assert (out / "best" / "config.yaml").is_file() and (out / "best" / "manifest.json").is_file()
    assert (out / TRIALS_PNG).stat().st_size > 1000


# ------------------------------------------------------------------ kill the driver, then --resume

def _cli(args: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "ptycho_dist.cli", "tune", *args], cwd=REPO, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _trial_statuses(experiment: Path) -> dict[str, str]:
    """trial id -> status from Tune's newest experiment state file ({} while none is readable)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        return {t["trial_id"]: t["status"] for t in (json.loads(item[0]) for item in data["trial_data"])}
    except (ValueError, KeyError, IndexError):
        return {}  # being rewritten


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray Train has registered for a run (what a restarted run can continue from); a
    checkpoint directory alone is not enough: the snapshot is written just after it."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return len(snapshot["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_local, scan, tmp_path):
    """One trial at a time, 5 epochs each: the driver is killed once Tune has recorded the first trial
    as finished and Ray Train has registered a checkpoint of the second; --resume keeps the first and
    continues the second from its checkpoint."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_base(scan, **{"trainer.max_epochs": 5}).to_dict()))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "scheduler": {"name": "fifo"}, "search": {"name": "grid"}, "max_concurrent_trials": 1,
        "space": {"optimizer.learning_rate": {"grid": [1.0e-2, 3.0e-3]}}}))
    out = tmp_path / "out"
    experiment = out / "resumable"
    common = ["--out", str(out), "--address", ray_local]

    proc = _cli(["--config", str(config), "--sweep", str(sweep), "--data", str(scan), "--name", "resumable",
                 *common], tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            statuses = _trial_statuses(experiment)
            finished = {t for t, s in statuses.items() if s == "TERMINATED"}
            running = {t for t in statuses if t not in finished and _registered_checkpoints(experiment / "runs" / t)}
            if finished and (running or len(finished) == len(statuses)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the sweep driver dies; Ray cleans up its trials
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert finished, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / TRIALS_CSV).exists()
    before = {t: (experiment / "runs" / t / "model.pt").stat().st_mtime_ns for t in finished}
    results_before = {t: (experiment / t / "result.json").read_text() for t in finished}

    resumed = _cli(["--resume", "resumable", *common], tmp_path / "resume.log")
    try:
        assert resumed.wait(timeout=420) == 0, (tmp_path / "resume.log").read_text()[-4000:]
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait(timeout=30)
    rows = _rows(out / TRIALS_CSV)
    assert sorted(float(r["optimizer.learning_rate"]) for r in rows) == [3e-3, 1e-2]
    assert all(r["status"] == "completed" and r["epochs"] == "5" for r in rows), rows
    for t in finished:  # not rerun: same bundle, same reported results
        assert (experiment / "runs" / t / "model.pt").stat().st_mtime_ns == before[t]
        assert (experiment / t / "result.json").read_text() == results_before[t]
    for t in running:  # continued from its checkpoint, not restarted at epoch 0
        manifest = json.loads((experiment / "runs" / t / "manifest.json").read_text())
        assert manifest["ray"]["start_epoch"] >= 1 and manifest["epochs_completed"] == 5, manifest
    assert load_run_config(out / BEST_CONFIG).trainer.max_epochs == 5 and (out / "best" / "model.pt").is_file()
    assert "best trial" in (tmp_path / "resume.log").read_text()
    print(f"killed with finished={sorted(finished)} running={sorted(running)}")
