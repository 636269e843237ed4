"""SIGTERM / SIGINT during `ptycho-torch train`: a resumable checkpoint, one line saying how to resume,
exit status 143 / 130, and a resume that runs to completion.

The SIGTERM test sends a real signal to a `ptycho-torch train` process in the middle of its run (as
SLURM does at a time limit); the SIGINT test raises the signal inside the training process itself
(as Ctrl-C does) from a callback, at a known step. Tiny model and scan; ~30 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from ptycho_torch.cli.main import main
from ptycho_torch.training.interrupt import TrainingInterrupted
from ptycho_torch.training.train import train

TRAIN = ["--N", "32", "--n-filters-scale", "0.25", "--batch-size", "16", "--no-progress-bar", "--logger", "none"]


def test_sigterm_mid_run_saves_a_checkpoint_and_resume_completes(tiny_scan, tmp_path):
    run = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ptycho_torch.cli.main", "train", "--data", str(tiny_scan),
                                 "--out", str(run), "--epochs", "500", *TRAIN],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 180
            while "epoch 1/500" not in err_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, err_path.read_text()[-2000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)  # mid-run: epoch 2 of 500 has started
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err_path.read_text()
    assert rc == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    last_line = stderr.rstrip().splitlines()[-1]
    assert last_line.startswith("error: interrupted by SIGTERM: resumable checkpoint ")
    assert last_line.endswith(f"resume with: ptycho-torch train --resume {run}")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] >= 1 and checkpoint["global_step"] >= 3  # after epoch 1, not a fresh start
    assert not (run / "model.pt").exists()  # an interrupted run is not a finished one

    stop = int(checkpoint["epoch"]) + 2
    assert main(["train", "--resume", str(run), "--epochs", str(stop)]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [int(r["epoch"]) for r in history] == list(range(stop))
    assert json.loads((run / "manifest.json").read_text())["epochs_completed"] == stop
    assert (run / "model.pt").is_file()


class SigintAt(Callback):
    """Sends SIGINT to this process after training batch `step` (what Ctrl-C does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_sigint_saves_the_step_it_stopped_at(tiny_scan, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_scan, **{"trainer.max_epochs": 50, "logging.logger": None})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, run, callbacks=[SigintAt(step=2)])
    assert caught.value.exit_code == 130
    assert str(caught.value).endswith(f"resume with: ptycho-torch train --resume {run}")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and saved["epoch"] == 0  # mid-epoch, at the step it stopped
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_two_process_ddp_claims_the_run_directory_once(tiny_scan, tmp_path):
    """Lightning's DDP subprocess re-runs the command line: only rank 0 may claim the new run directory
    (the second rank would otherwise find it taken and refuse)."""
    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "ptycho_torch.cli.main", "train", "--data", str(tiny_scan), "--out",
                           str(run), "--epochs", "1", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
                           *TRAIN], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already holds a run" not in proc.stderr
    assert (run / "model.pt").is_file() and json.loads((run / "manifest.json").read_text())["world_size"] == 2


def test_run_interruptibly_hands_the_signal_to_its_caller():
    """fn runs in a helper thread; a SIGTERM reaches the caller at once, a second one is ignored while
    on_signal decides (here: wait for fn and return its result); without a signal fn's result or
    exception comes back as from a plain call."""
    import threading

    from ptycho_torch.training.interrupt import run_interruptibly

    release = threading.Event()
    seen = []

    def on_signal(error, call):
        seen.append((error.signum, call.done.is_set()))
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the caller is deciding
        release.set()
        assert call.done.wait(5) and call.succeeded
        return f"{call.get()} after {signal.Signals(error.signum).name}"

    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert run_interruptibly(lambda: "done" if release.wait(10) else "timed out", on_signal) == "done after SIGTERM"
    assert seen == [(signal.SIGTERM, False)]
    assert run_interruptibly(lambda: 7, on_signal) == 7
    with pytest.raises(ZeroDivisionError):
        run_interruptibly(lambda: 1 / 0, on_signal)
    assert signal.getsignal(signal.SIGTERM) is not None and seen == [(signal.SIGTERM, False)]


class SigintAtEpochEnd(Callback):
    """Sends SIGINT after the last training batch of the first epoch, before its validation."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx + 1 == trainer.num_training_batches:
            os.kill(os.getpid(), signal.SIGINT)


def test_signal_after_an_epochs_last_batch_keeps_that_epoch_in_the_history(tiny_scan, tmp_path):
    """The race CI once hit: SIGTERM between an epoch's last batch and its end hooks. The saved epoch
    must have its validation and history row, and the resumed run every epoch's."""
    run = tmp_path / "run"
    config = tiny_config(tiny_scan, **{"trainer.max_epochs": 3, "logging.logger": None})
    with pytest.raises(TrainingInterrupted):
        train(config, run, callbacks=[SigintAtEpochEnd()])
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert [int(r["epoch"]) for r in saved["callbacks"]["History"]["rows"]] == [0]
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]
    assert all("val_loss" in r for r in history)
