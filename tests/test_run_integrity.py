"""Nothing trained is lost and nothing trains on the wrong data (issue 29): last.ckpt at every epoch
end, a run bound to its scan, an atomic claim of the run directory that no stray RANK disables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from ptycho_torch.cli.main import main
from ptycho_torch.training.data_binding import file_checksum
from ptycho_torch.training.train import train


def test_last_checkpoint_is_written_every_epoch_whatever_the_metric_does(tiny_scan, tmp_path):
    """checkpoint.mode max on a falling val_loss: the monitored metric never improves after epoch 0, so
    Lightning's save_last (tied to top-k saves) would leave last.ckpt at epoch 0. Ours follows every
    epoch, and extending the finished run continues after its last epoch."""
    run = tmp_path / "run"
    result = train(tiny_config(tiny_scan, **{"trainer.max_epochs": 3, "checkpoint.mode": "max",
                                             "checkpoint.save_top_k": 1}), run)
    best = [p.name for p in (run / "checkpoints").glob("epoch*.ckpt")]
    assert best == ["epoch000-val_loss" + best[0].split("val_loss")[1]], best  # the metric peaked at epoch 0
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == result.trainer.global_step
    assert [r["epoch"] for r in last["callbacks"]["History"]["rows"]] == [0, 1, 2]  # the epoch's row is in it
    assert main(["train", "--resume", str(run), "--epochs", "5", "--no-progress-bar"]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3, 4]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4


def _other_scan(source: Path, target: Path, scale: float = 1.01) -> Path:
    """A valid scan that is not `source`: its diffraction scaled by `scale`."""
    with np.load(source) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["diffraction"] = (arrays["diffraction"] * scale).astype(arrays["diffraction"].dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **arrays)
    return target


def test_a_run_is_bound_to_its_scan(tiny_scan, tmp_path, monkeypatch, capsys):
    """data.path is absolute in config.yaml; a resume from another directory trains on the run's own
    scan; a different scan under the recorded path (or a run whose config kept a relative path) is
    refused in one line, unless --allow-other-data, which manifest.json records."""
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    shutil.copy(tiny_scan, home / "scan.npz")
    _other_scan(tiny_scan, other / "scan.npz")
    monkeypatch.chdir(home)
    args = ["--no-progress-bar", "--N", "32", "--n-filters-scale", "0.25", "--batch-size", "16"]
    assert main(["train", "--data", "scan.npz", "--out", "run", "--epochs", "1", *args]) == 0
    run = home / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["path"] == str(home / "scan.npz")
    bound = json.loads((run / "data_files.json").read_text())["files"]
    assert bound[0]["path"] == str(home / "scan.npz") and len(bound[0]["sha256"]) == 64

    monkeypatch.chdir(other)  # the run's own scan, wherever the resume starts
    assert main(["train", "--resume", "../home/run", "--epochs", "2", "--no-progress-bar"]) == 0
    assert json.loads((run / "manifest.json").read_text())["data"]["path"] == str(home / "scan.npz")
    capsys.readouterr()

    legacy = dict(config, data=dict(config["data"], path="scan.npz"))  # as runs before this change kept it
    (run / "config.yaml").write_text(yaml.safe_dump(legacy))
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on " + str(home / "scan.npz") in err[0] and "--allow-other-data" in err[0]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before

    _other_scan(tiny_scan, home / "scan.npz", scale=0.99)  # the recorded file rewritten in place
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar"]) == 2
    assert "data.path now gives " + str(home / "scan.npz") in capsys.readouterr().err
    assert main(["train", "--resume", "../home/run", "--epochs", "3", "--no-progress-bar", "--allow-other-data"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["data_changes"]) == 1 and manifest["epochs_completed"] == 3
    change = manifest["data_changes"][0]
    assert change["from"][0]["sha256"] == bound[0]["sha256"] == file_checksum(tiny_scan)["sha256"]
    assert change["to"][0]["sha256"] == manifest["data"]["sha256"] != bound[0]["sha256"]


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "SLURM_PROCID"])
def test_a_stray_rank_variable_does_not_disable_the_overwrite_protection(variable, tiny_scan, tmp_path, monkeypatch,
                                                                        capsys):
    """RANK=1 (or LOCAL_RANK / SLURM_PROCID) left in a torchrun shell or a PyTorchJob pod, with no
    multi-process launch: the existing run is refused, not trained over."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "1")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.pt").write_bytes(b"the trained model")
    rc = main(["train", "--data", str(tiny_scan), "--out", str(run), "--epochs", "1", "--no-progress-bar",
               "--N", "32", "--n-filters-scale", "0.25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already holds a run" in err[0], err
    assert (run / "model.pt").read_bytes() == b"the trained model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing moved aside or created


def test_a_follower_rank_needs_the_claim_of_its_own_launch(tmp_path):
    from ptycho_torch.config import ConfigError
    from ptycho_torch.safe_output import await_claim, claim_run_dir

    run = tmp_path / "run"
    claim_run_dir(run, launch_id="launch-a")
    await_claim(run, "launch-a", rank=1, timeout_s=0.1)  # rank 0 of its launch claimed it: returns
    for other in ("launch-b", None):  # an earlier launch's directory, or no launch at all
        with pytest.raises(ConfigError, match="rank 1 of a multi-process launch.*unset those variables"):
            await_claim(run, other, rank=1, timeout_s=0.3)


def test_two_claims_at_once_exactly_one_wins(tmp_path):
    """The check-then-create race of two `train --out SAME` started together: mkdir + O_EXCL claim."""
    import threading

    from ptycho_torch.config import ConfigError
    from ptycho_torch.safe_output import claim_run_dir

    def claim(run: Path, name: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
        barrier.wait()
        try:
            claim_run_dir(run, launch_id=name)
            outcomes.append("won")
        except ConfigError as e:
            outcomes.append(str(e))

    for round_ in range(20):
        run = tmp_path / f"run{round_}" / "out"
        if round_ % 2:
            run.mkdir(parents=True)  # an existing empty directory is claimed the same way
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [threading.Thread(target=claim, args=(run, f"launch-{i}", barrier, outcomes)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes)[-1] == "won" and outcomes.count("won") == 1, outcomes
        assert "already holds a run" in next(o for o in outcomes if o != "won")


@pytest.mark.parametrize("frame, advice", [
    (1024, "set --N 128 --data.frame_fit bin (the frames binned 8x8"),
    (200, "set --N 128 (the central 128x128 pixels"),
    (48, "set --N 32 (the central 32x32 pixels"),
    (20, "pad the patterns to 32x32"),
])
def test_the_size_advice_for_beamline_frames_names_one_working_choice(frame, advice):
    """Beamline files are cropped or binned at read time (data.frame_fit): the advice names the --N that
    fits, never the frame size itself (which no network takes)."""
    from types import SimpleNamespace

    from ptycho_torch.data.dataset import size_advice
    from ptycho_torch.data.detector import fit_window

    advice_given = size_advice(SimpleNamespace(N=frame, metadata={"format": "cxi"}))
    assert advice_given.startswith(advice), advice_given
    if frame >= 32:  # the advised setting does fit the frames
        n = 128 if frame >= 128 else 32
        how = "bin" if "bin" in advice else "crop"
        window, _, problem = fit_window((frame, frame), n, how, (frame / 2, frame / 2))
        assert problem is None and window is not None


@pytest.fixture(scope="module")
def tiny_model(tiny_scan, tmp_path_factory) -> Path:
    """A 1-epoch run directory (its model.pt) for the reconstruct tests."""
    run = tmp_path_factory.mktemp("model") / "run"
    train(tiny_config(tiny_scan, **{"trainer.max_epochs": 1}), run)
    return run


def test_a_run_that_is_training_cannot_be_resumed_by_a_second_process(tiny_scan, tmp_path, capsys):
    """Two processes training one run directory would write the same checkpoints: the one training it
    holds a lock (flock, dropped by the kernel when it dies); a --resume meanwhile is one line naming
    its pid, and works once that process has ended. Held here by a second process, as in life."""
    import subprocess
    import sys

    run = tmp_path / "run"
    train(tiny_config(tiny_scan, **{"trainer.max_epochs": 1}), run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from ptycho_torch.safe_output import hold_run_lock; "
                               "hold_run_lock(sys.argv[1], '--out'); print('held', flush=True); sys.stdin.read()",
                               str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert errors == [f"error: --resume {run}: another process is training this run now (pid {holder.pid}); "
                          "wait for it to end (or stop it: it saves a resumable checkpoint on SIGTERM), then resume"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # untouched
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # the holder ended: free again
    assert json.loads((run / "manifest.json").read_text())["epochs_completed"] == 2


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_during_reconstruct_keeps_the_old_outputs_and_names_the_file(tiny_model, tiny_scan, tmp_path,
                                                                                 monkeypatch, capsys):
    import errno

    import tifffile

    out = tmp_path / "recon"
    args = ["reconstruct", "--model", str(tiny_model), "--data", str(tiny_scan), "--out", str(out)]
    assert main(args) == 0
    before = _files(out)
    assert {"object.npz", "amplitude.tif", "reconstruction.cxi"} <= set(before)

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [f"error: {out / 'amplitude.tif'}: No space left on device"], err
    assert _files(out) == before  # the old outputs, all of them, untouched (no new object.npz beside them)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon"]  # no partial or hidden directory left

    monkeypatch.undo()
    (out / "stale-from-an-old-version.txt").write_text("x")  # a reconstruction's folder: replaced whole
    assert main(args) == 0
    assert "stale-from-an-old-version.txt" not in _files(out) and "object.npz" in _files(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon"]


def test_reconstruct_refuses_a_folder_that_is_not_a_reconstruction(tiny_model, tiny_scan, tmp_path):
    from ptycho_torch.config import ConfigError
    from ptycho_torch.reconstruction.reconstruct import reconstruct

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files that are not a reconstruction"):
        reconstruct(tiny_model, tiny_scan, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_reconstruct_names_the_canvas_of_absurd_positions_before_allocating(tiny_model, tiny_scan, tmp_path):
    from ptycho_torch.errors import UserError
    from ptycho_torch.reconstruction.reconstruct import reconstruct

    with np.load(tiny_scan) as f:
        arrays = {k: f[k] for k in f.files if k != "objectGuess"}
    arrays["xcoords"], arrays["ycoords"] = arrays["xcoords"] * 3000, arrays["ycoords"] * 3000
    np.savez(tmp_path / "far.npz", **arrays)
    with pytest.raises(UserError, match=r"a 157\d+x157\d+ canvas that needs 29\d\.\d GB, more than the"):
        reconstruct(tiny_model, tmp_path / "far.npz", tmp_path / "recon")
    assert not (tmp_path / "recon").exists()


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tiny_scan, tmp_path, monkeypatch,
                                                                                 capsys):
    """torch's writer on a full disk raises RuntimeError('... unexpected pos ...'); the run stops with one
    line naming last.ckpt, exit 2, and the checkpoint of the epoch before is intact."""
    import ptycho_torch.model.checkpoints as checkpoints

    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, path, *a, **k):
        calls.append(path)
        if len(calls) >= 3:  # epoch 0: top-k + last.ckpt; then the disk is full
            Path(path).write_bytes(b"PK\3\4 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoints.torch, "save", save_then_fill_the_disk)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_scan), "--out", str(run), "--epochs", "3", "--no-progress-bar",
               "--N", "32", "--n-filters-scale", "0.25", "--batch-size", "16"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in errors[0], errors
    assert "could not write the checkpoint (" in errors[0] and "the previous checkpoint is kept" in errors[0]
    assert errors[0].startswith("error: " + str(run / "checkpoints")), errors
    monkeypatch.undo()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no partial file left


class _DamageAfterFirstEpoch(Callback):
    """Truncates (or rewrites) the scan file at the end of epoch 0, as another process might."""

    def __init__(self, path: Path, rewrite: bool = False) -> None:
        self.path, self.rewrite = path, rewrite

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            data = self.path.read_bytes()
            if self.rewrite:  # same size, other bytes in the second half
                self.path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
            else:
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(data) // 2)


def test_an_hdf5_scan_truncated_while_training_stops_with_one_line(tmp_path):
    """Without the watch, h5py served zero-filled patterns and the run finished with exit 0."""
    from conftest import simulate

    from ptycho_torch.data.file_watch import DataFileChanged

    scan = simulate(tmp_path / "scan.h5")
    run = tmp_path / "run"
    with pytest.raises(DataFileChanged) as caught:
        train(tiny_config(scan, **{"trainer.max_epochs": 3}), run, callbacks=[_DamageAfterFirstEpoch(scan)])
    message = str(caught.value)
    assert message.startswith(f"{scan}: changed size from ") and "(truncated) while training read it" in message
    assert "\n" not in message and "the last checkpoint is kept" in message
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (run / "model.pt").exists()  # no model trained on damaged data


def test_a_memory_mapped_npz_truncated_while_training_is_one_line_not_sigbus(tiny_scan, tmp_path):
    """The NPZ diffraction is a memory map: reading a page the truncation removed is SIGBUS (exit 135,
    no message). In a subprocess, so a regression cannot take the test runner down with it."""
    import subprocess
    import sys

    scan = tmp_path / "scan.npz"
    shutil.copy(tiny_scan, scan)
    script = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "from pathlib import Path\n"
        "from conftest import tiny_config\n"
        "from test_run_integrity import _DamageAfterFirstEpoch\n"
        "from ptycho_torch.cli.main import run_cli\n"
        "from ptycho_torch.training.train import train\n"
        "scan, run = Path(sys.argv[2]), Path(sys.argv[3])\n"
        "fit = lambda args: train(tiny_config(scan, **{'trainer.max_epochs': 3}), run,"
        " callbacks=[_DamageAfterFirstEpoch(scan, rewrite=sys.argv[4] == 'rewrite')])\n"
        "sys.exit(run_cli(fit, None))\n")
    for how in ("truncate", "rewrite"):
        shutil.copy(tiny_scan, scan)
        run = tmp_path / f"run-{how}"
        proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(scan), str(run), how],
                              capture_output=True, text=True, timeout=180)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        expected = "(truncated) while" if how == "truncate" else "was rewritten (same size, new modification time)"
        assert len(errors) == 1 and errors[0].startswith(f"error: {scan}: ") and expected in errors[0], errors
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("delay", [1.0, 2.0, 3.0])
def test_ctrl_c_twice_during_start_up_is_one_line(delay, tiny_scan, tmp_path):
    """Two SIGINTs 50 ms apart while the command imports torch and reads the scan: before, the second
    (or a library import the first cut short) printed a traceback; now one line and exit 130. (The
    ~0.1 s in which Python starts and imports the command-line module itself stays uncovered: the
    handler is installed when `main` runs.)"""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ptycho_torch.cli.main", "train", "--data", str(tiny_scan), "--out",
                             str(tmp_path / "run"), "--epochs", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("error: interrupted"), err[-1000:]


def test_ctrl_c_inside_exec_of_a_string_still_exits_130_under_python_m(tmp_path):
    """A Ctrl-C whose KeyboardInterrupt passes through exec() of a string (dataclasses and namedtuple
    build methods that way while torch and Lightning import) made `python -m ptycho_torch.cli.main` die by
    SIGINT (returncode -2) after the one-line message: CPython marks such an interrupt as unhandled.
    Deterministic version of the start-up race above."""
    import subprocess
    import sys

    (tmp_path / "interrupted_command.py").write_text(
        "import sys\n"
        "from ptycho_torch.cli.main import run_cli\n"
        "def command(args):\n"
        "    exec('import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(30)')\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(run_cli(command, None))\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_command"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stderr.strip()) == (130, "error: interrupted (SIGINT)"), proc


def test_the_fault_table_of_the_troubleshooting_page_names_tests_that_exist():
    """docs/troubleshooting.md's fault rows each name the test proving them; the stated counts hold."""
    import re

    from test_bad_inputs import CASES

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "docs" / "troubleshooting.md").read_text()
    table = text[text.index("<!-- faults:begin"):text.index("<!-- faults:end -->")]
    named = re.findall(r"`tests/(\w+\.py)::(\w+)`", table)
    assert len(named) >= 17
    for file, test in named:
        assert f"def {test}(" in (repo / "tests" / file).read_text(), f"{file}::{test}"
    assert f"**{len(CASES)} bad-input classes**" in text and f"**{len(named)} fault" in text
    assert f"{len(CASES) + len(named)} in all" in text
