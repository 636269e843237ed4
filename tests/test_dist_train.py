"""Distributed training on a real local Ray (CPU, gloo): DDP convergence and replica consistency,
equality with single-machine training, recovery from a SIGKILLed worker, and the CLI end to end.

One Ray instance (4 logical CPUs, no dashboard) serves the module; the CLI test runs `ptycho-dist`
in a subprocess with its own embedded Ray. Tiny model (N=32, n_filters_scale=0.25), 200 positions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from ptycho_dist.config import RayConfig
from ptycho_dist.training.driver import fit_distributed
from ptycho_torch.config import ConfigError
from ptycho_torch.model.bundle import load_bundle
from ptycho_torch.reconstruction.reconstruct import reconstruct
from ptycho_torch.training.launcher import state_checksum
from ptycho_torch.training.train import train

pytestmark = pytest.mark.ray

def _config(scan: Path, **overrides):
    base = {"trainer.max_epochs": 3, "trainer.devices": 2, "logging.logger": None}
    base.update(overrides)
    return tiny_config(scan, **base)


@pytest.fixture(scope="module")
def ddp_run(ray_local, small_scan, tmp_path_factory):
    """2 workers x 1 CPU, 3 epochs, uninterrupted."""
    storage = tmp_path_factory.mktemp("ray_runs")
    return fit_distributed(_config(small_scan), RayConfig(storage_path=str(storage), name="ddp"))


def test_two_worker_ddp_converges_with_identical_replicas(ddp_run, small_scan, tmp_path):
    r = ddp_run
    assert r.world_size == 2 and r.epochs_completed == 3 and r.start_epoch == 0
    losses = [row["train_loss"] for row in r.history]
    assert [row["epoch"] for row in r.history] == [0, 1, 2] and losses[-1] < losses[0], losses
    assert len(r.replica_checksums) == 2 and len(set(r.replica_checksums)) == 1
    run = Path(r.run_dir)
    for name in ("config.yaml", "ray.yaml", "model.pt", "manifest.json", "metrics.json", "loss.png"):
        assert (run / name).is_file(), name
    assert state_checksum(load_bundle(run).module) == r.replica_checksums[0]  # the bundle = trained weights
    scaling = yaml.safe_load((run / "ray.yaml").read_text())["scaling"]  # what Ray made of trainer.devices
    assert (scaling["workers"], scaling["trainer_devices_per_worker"], scaling["strategy"]) == (2, 1, "ddp")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["ray"]["replica_checksums"] == r.replica_checksums
    assert r.ray_result.error is None and r.ray_result.checkpoint is not None
    result = reconstruct(run, small_scan, tmp_path / "recon")
    assert (tmp_path / "recon" / "object.npz").is_file() and result.patterns_per_second > 0


def test_one_ray_worker_equals_plain_lightning(ray_local, small_scan, tmp_path):
    """Both paths sample through a DistributedSampler (world size 1, seed + epoch), use one torch
    thread, and seed the same way, so the losses and final weights must match exactly. Checkpointing
    is off here, which also covers the metrics-only Ray report path."""
    config = _config(small_scan, **{"trainer.max_epochs": 2, "trainer.devices": 1,
                                    "trainer.enable_checkpointing": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = train(config, tmp_path / "plain")
    finally:
        torch.set_num_threads(threads)
    ray_run = fit_distributed(config, RayConfig(storage_path=str(tmp_path), name="one"))
    for key in ("train_loss", "val_loss"):
        assert [row[key] for row in ray_run.history] == [row[key] for row in plain.history], key
    assert ray_run.replica_checksums == [state_checksum(load_bundle(plain.run_dir).module)]
    assert ray_run.ray_result.checkpoint is None and not list(Path(ray_run.run_dir).glob("checkpoint_*"))


def test_busy_cluster_fails_fast_instead_of_hanging(ray_local, small_scan, tmp_path):
    """The request fits the cluster's totals, but another job holds the CPUs: the worker group cannot
    start, and the run raises one clear error after worker_start_timeout_s instead of waiting forever."""
    import ray

    @ray.remote(num_cpus=3)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    try:
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=r"did not start within 3 s.*1 CPUs .* free now"):
            fit_distributed(_config(small_scan), RayConfig(storage_path=str(tmp_path), name="busy",
                                                           worker_start_timeout_s=3))
        assert time.perf_counter() - t0 < 60
        assert not (tmp_path / "busy").exists()  # the failed new run left no directory behind
    finally:
        ray.kill(hog)


class KillOnce(Callback):
    """SIGKILLs the rank-`rank` worker in epoch `epoch` (after its 2nd batch) unless `marker` exists."""

    def __init__(self, marker: str, epoch: int = 1, rank: int = 1) -> None:
        self.marker, self.epoch, self.rank = marker, epoch, rank

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx, trainer.global_rank) != (self.epoch, 1, self.rank):
            return
        if os.path.exists(self.marker):
            return
        Path(self.marker).write_text(str(os.getpid()))
        time.sleep(3.0)  # > the controller poll interval (2 s): the epoch-0 checkpoint is registered
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_restarts_from_the_last_checkpoint(ray_local, ddp_run, small_scan, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    marker = tmp_path / "killed"
    r = fit_distributed(_config(small_scan), RayConfig(storage_path=str(tmp_path), name="faulty", max_failures=1),
                        callbacks=[KillOnce(str(marker))])
    assert marker.is_file(), "the fault was never injected"
    assert r.start_epoch >= 1, "the restarted workers began from scratch"
    assert [row["epoch"] for row in r.history] == [0, 1, 2] and r.epochs_completed == 3
    manifest = json.loads((Path(r.run_dir) / "manifest.json").read_text())
    assert manifest["ray"]["start_epoch"] == r.start_epoch
    # resuming at an epoch boundary reproduces the uninterrupted run
    assert r.replica_checksums == ddp_run.replica_checksums
    assert r.metrics["train_loss"] == ddp_run.metrics["train_loss"]


def test_cli_driver_sigterm_mid_run_then_resume_by_name(ray_local, small_scan, tmp_path):
    """`ptycho-dist train` in a fresh process (embedded local Ray) gets SIGTERM mid-run, after Ray
    registered a checkpoint: it names that checkpoint and the resume command and exits 143. Then
    `ptycho-dist train --resume NAME` (in-process, on this module's Ray) continues after that epoch,
    not from epoch 0, and `ptycho-torch reconstruct` reads the finished run. The embedded Ray's token
    file is private (0600)."""
    from ptycho_dist.cli import main as dist_main
    from ptycho_torch.cli.main import main as torch_main

    run = tmp_path / "runs" / "cli"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no address: embedded Ray
    env["HOME"] = str(home)  # where the embedded Ray keeps its auth token
    cmd = [sys.executable, "-m", "ptycho_dist.cli", "train", "--data", str(small_scan), "--out", str(run),
           "--N", "32", "--n-filters-scale", "0.25", "--epochs", "300", "--devices", "2", "--num-cpus", "2",
           "--no-progress-bar", "--logger", "none", "--batch-size", "16"]
    err_path = tmp_path / "stderr.txt"
    snapshot = run / "checkpoint_manager_snapshot.json"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 240
            while not snapshot.is_file() and time.monotonic() < deadline:  # a checkpoint is registered
                assert proc.poll() is None, err_path.read_text()[-3000:]
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err_path.read_text()
    assert rc == 143, stderr[-3000:]
    assert "Reporting training result" not in stderr  # Ray's chatter is kept down
    # no traceback from the driver (lines of Ray's own actors start with "(Name pid=...)": with a second
    # Ray on the machine, this module's, Ray Train's PlacementGroupCleaner logs one of its own)
    assert not [line for line in stderr.splitlines() if "Traceback" in line and "pid=" not in line]
    assert "epoch 1/300" in stderr and "samples/s" in stderr  # per-epoch progress lines
    last_line = stderr.rstrip().splitlines()[-1]
    assert last_line.startswith(f"error: interrupted by SIGTERM: resumable checkpoint {run}/checkpoint_")
    assert last_line.endswith(f"resume with: ptycho-dist train --resume cli --storage-path {run.parent}")
    token = home / ".ray" / "auth_token"
    assert token.is_file() and token.stat().st_mode & 0o777 == 0o600
    registered = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["epoch"]
    assert registered >= 0 and not (run / "model.pt").exists()

    stop = registered + 3
    assert dist_main(["train", "--resume", "cli", "--storage-path", str(run.parent), "--epochs", str(stop)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["epochs_completed"] == stop
    assert manifest["ray"]["start_epoch"] >= registered + 1  # continued after the checkpoint, not from 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == list(range(stop))
    assert torch_main(["reconstruct", "--model", str(run), "--data", str(small_scan),
                       "--out", str(tmp_path / "recon")]) == 0
    assert (tmp_path / "recon" / "object.npz").is_file()
    assert dist_main(["train", "--data", str(small_scan), "--out", str(run)]) == 2  # exists: needs --resume


def test_a_ray_run_that_is_training_cannot_be_resumed_by_a_second_driver(small_scan, tmp_path):
    """The driver training a local Ray run holds its lock (as `ptycho-torch train` does): a second
    `--resume` meanwhile is one line naming that driver's pid, before Ray starts or any file of the run
    (an unregistered checkpoint directory, config.yaml) is touched."""
    import yaml

    from ptycho_dist.cluster.run_files import CONFIG_FILE
    from ptycho_torch.safe_output import LOCK_FILE

    run = tmp_path / "busy"
    run.mkdir()
    (run / CONFIG_FILE).write_text(yaml.safe_dump(tiny_config(small_scan).to_dict()))
    in_progress = run / "checkpoint_2026-01-01_00-00-00.000000"
    in_progress.mkdir()  # what a training driver is writing now, not yet registered
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from ptycho_torch.safe_output import hold_run_lock; "
                               "hold_run_lock(sys.argv[1], '--name'); print('held', flush=True); sys.stdin.read()",
                               str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"--resume {run}: another process is training this run now "
                                              rf"\(pid {holder.pid}\)"):
            fit_distributed(tiny_config(small_scan), RayConfig(storage_path=str(tmp_path), name="busy"), resume=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    left = sorted(p.name for p in run.iterdir() if p.name != LOCK_FILE)  # a dead holder leaves an unlocked file
    assert in_progress.is_dir() and left == sorted([CONFIG_FILE, in_progress.name])
