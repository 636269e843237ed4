"""Single-machine training, resume, reconstruction and the ptycho-torch CLI, end to end."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config

from ptycho_torch.cli.main import main
from ptycho_torch.config import SECTIONS, load_run_config
from ptycho_torch.config.flag_names import FLAG_FIELDS as ALIASES
from ptycho_torch.model.bundle import load_bundle
from ptycho_torch.reconstruction.reconstruct import reconstruct
from ptycho_torch.training.train import train


@pytest.fixture(scope="module")
def trained(tiny_scan, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    return train(tiny_config(tiny_scan, **{"trainer.max_epochs": 3}), run_dir)


def test_run_directory_holds_everything(trained):
    run = trained.run_dir
    for name in ("config.yaml", "model.pt", "manifest.json", "loss.png", "metrics.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    bundle = torch.load(run / "model.pt", weights_only=True)
    assert bundle["format"] == "ptycho-dist-bundle/1" and bundle["norm_factor"] > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 42 and manifest["data"]["sha256"] and manifest["versions"]["torch"]
    assert manifest["epochs_completed"] == 3
    assert load_run_config(run / "config.yaml") == load_bundle(run).config
    losses = [row["train_loss"] for row in trained.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    floor = json.loads((run / "metrics.json").read_text())["truth_loss"]  # the simulated truth's own loss
    assert 0 < floor < losses[-1]


def test_truth_loss_is_the_floor_of_the_forward_model(tiny_scan):
    """The true object scores lower than the same object slightly wrong (a 1-px shift of the
    positions) or flattened to its mean: the loss of the truth is the floor training is read against."""
    import dataclasses

    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.evaluation.truth_loss import truth_loss

    scan = read_scan(tiny_scan)
    floor = truth_loss(scan, 2)
    shifted = truth_loss(dataclasses.replace(scan, xcoords=scan.xcoords + 1.0), 2)
    flat = truth_loss(dataclasses.replace(scan, object_guess=np.full_like(scan.object_guess,
                                                                          scan.object_guess.mean())), 2)
    assert 0 < floor < shifted and floor < flat
    assert truth_loss(dataclasses.replace(scan, object_guess=None), 2) is None


def test_reconstruction_files_and_frame(trained, tiny_scan, tmp_path):
    result = reconstruct(trained.run_dir, tiny_scan, tmp_path / "recon")
    with np.load(tmp_path / "recon" / "object.npz") as f:
        obj, weight = f["object"], f["weight"]
        truth_shape = np.load(tiny_scan)["objectGuess"].shape
        assert obj.shape == weight.shape == truth_shape and obj.dtype == np.complex64
        assert json.loads(str(f["metadata"]))["n_patterns"] == 64
    assert (weight > 0).mean() > 0.3 and np.all(obj[weight == 0] == 0)
    for name in ("amplitude.png", "phase.png", "metrics.json"):
        assert (tmp_path / "recon" / name).is_file(), name
    assert result.patterns_per_second > 0


def test_resume_equals_uninterrupted_run(tiny_scan, tmp_path):
    # a constant rate: the default WarmupCosine decays to the last epoch, so extending a run with
    # --epochs restarts its decay part-way (docs/configuration.md) and cannot equal a 4-epoch run
    constant = {"optimizer.scheduler": "Default"}
    full = train(tiny_config(tiny_scan, **{"trainer.max_epochs": 4, **constant}), tmp_path / "full")
    part = tmp_path / "part"
    train(tiny_config(tiny_scan, **{"trainer.max_epochs": 2, **constant}), part)
    assert main(["train", "--resume", str(part), "--epochs", "4", "--no-progress-bar"]) == 0
    resumed = json.loads((part / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(full.history, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6, rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6, rel=1e-6)
    assert load_run_config(part / "config.yaml").trainer.max_epochs == 4


def test_cli_precedence_cli_over_file_over_defaults(tiny_scan, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"N": 32, "n_filters_scale": 0.25},
                                   "training": {"batch_size": 32}, "trainer": {"max_epochs": 1, "accumulate_grad_batches": 2},
                                   "optimizer": {"learning_rate": 0.01}}))
    out = tmp_path / "run"
    rc = main(["train", "--config", str(cfg), "--data", str(tiny_scan), "--out", str(out),
               "--learning-rate", "0.02", "--trainer.gradient_clip_val", "0.5", "--no-progress-bar"])
    assert rc == 0
    resolved = load_run_config(out / "config.yaml")
    assert resolved.optimizer.learning_rate == 0.02  # CLI beats file
    assert resolved.trainer.accumulate_grad_batches == 2  # file beats default
    assert resolved.trainer.gradient_clip_val == 0.5
    assert resolved.optimizer.scheduler == "WarmupCosine"  # default
    # the resolved file is itself a valid --config
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--no-progress-bar"]) == 0
    assert load_run_config(tmp_path / "again" / "config.yaml") == resolved


@pytest.mark.parametrize("argv, message", [
    (["--trainer.bogus", "1"], "unrecognized arguments"),
    (["--scheduler", "Cosine"], "optimizer.scheduler: got 'Cosine'; allowed values are"),
    (["--accumulate-grad-batches", "0"], "trainer.accumulate_grad_batches"),
    (["--dataloader-workers", "0", "--dataloader.persistent_workers", "true"], "persistent_workers: needs num_workers > 0"),
    (["--epochs", "two"], "trainer.max_epochs: got 'two'; expected an integer"),
])
def test_cli_rejects_bad_settings_with_one_line(argv, message, tiny_scan, tmp_path, capsys):
    try:
        rc = main(["train", "--data", str(tiny_scan), "--out", str(tmp_path / "r"), *argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert "Traceback" not in err


def test_config_file_with_unknown_key_names_it(tiny_scan, tmp_path, capsys):
    """A misspelt field of the old execution section: named, with the old field it resembles and its new name."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("execution:\n  acum_steps: 4\n")
    assert main(["train", "--config", str(cfg), "--data", str(tiny_scan), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) acum_steps" in err and "accum_steps (now trainer.accumulate_grad_batches)" in err


def test_help_documents_every_flag_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ALIASES:
        assert flag in text
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f"{section}.{f.name}" != "data.path":
                assert f"--{section}.{f.name}" in text
    assert text.count("default:") >= sum(len(fields(c)) for c in SECTIONS.values())


def test_missing_data_and_bad_scan_file(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, diffraction=np.ones((4, 32, 32), np.float32))
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r2"), "--N", "32"]) == 2
    err = capsys.readouterr().err
    assert "probeGuess" in err and "xcoords" in err and "Traceback" not in err


def test_n_mismatch_is_reported(tiny_scan, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_scan), "--out", str(tmp_path / "r"), "--N", "64"]) == 2
    assert "--N 32" in capsys.readouterr().err


def test_model_size_comes_from_the_data(tiny_scan, tmp_path):
    """model.N left unset takes the scan's 32; the resolved config says so."""
    config = tiny_config(tiny_scan, **{"model.N": None, "trainer.max_epochs": 1, "data.max_patterns": 24})
    result = train(config, tmp_path / "auto")
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["model"]["N"] == 32


def test_gridsize2_trains_and_reconstructs_from_the_constrained_output(tiny_scan, tmp_path):
    result = train(tiny_config(tiny_scan, **{"model.gridsize": 2, "trainer.max_epochs": 1}), tmp_path / "g2")
    assert np.isfinite(result.metrics["train_loss"])
    recon = reconstruct(result.run_dir, tiny_scan, tmp_path / "g2recon")
    assert np.isfinite(recon.object).all() and recon.object.any()
    # the default 'cover' groups read each pattern about once; 'every_pattern' reads it C times: both
    # stitch every pattern exactly once, so the weight maps agree and the objects nearly do
    every = reconstruct(result.run_dir, tiny_scan, tmp_path / "g2every", grouping="every_pattern")
    meta = {}
    for name in ("g2recon", "g2every"):
        with np.load(tmp_path / name / "object.npz") as z:
            meta[name] = json.loads(str(z["metadata"]))
    assert meta["g2recon"]["grouping"] == "cover" and meta["g2every"]["grouping"] == "every_pattern"
    assert meta["g2every"]["n_groups"] == meta["g2recon"]["n_patterns"] > 2 * meta["g2recon"]["n_groups"]
    np.testing.assert_allclose(recon.weight, every.weight, rtol=1e-4, atol=1e-5 * every.weight.max())
    support = every.weight > 0
    assert np.abs(recon.object - every.object)[support].mean() < 0.2 * np.abs(every.object)[support].mean()
    # what reconstruction stitches is what the loss trained: the overlap-constrained patches
    import torch

    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.physics.forward import group_offsets, overlap_constraint
    from ptycho_torch.reconstruction.reconstruct import PatchPredictor, inference_groups

    predictor = PatchPredictor(result.run_dir)
    scan = read_scan(tiny_scan)
    groups = inference_groups(scan, 2, predictor.config.data.neighbor_count, predictor.config.training.seed)
    amp = torch.from_numpy(scan.diffraction_rows(groups.indices[:8]))  # (8, 4, N, N)
    offsets = group_offsets(torch.from_numpy(scan.positions[groups.indices[:8]].astype(np.float32)))
    constrained = predictor(amp, offsets)
    with torch.no_grad():
        raw = predictor.module.raw_patches(amp * predictor.norm_factor, offsets)
    weight = predictor.module.merge_weight()  # (N, N) |probe|^2 by default
    torch.testing.assert_close(constrained, overlap_constraint(raw, offsets, weight), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(constrained, raw, atol=1e-3)


@pytest.mark.parametrize("skips", [True, False])
@pytest.mark.parametrize("N", [32, 64, 128])
def test_network_shapes_and_ranges(N, skips):
    from ptycho_torch.model.network import PtychoNet, filter_counts

    net = PtychoNet(N, 4, 0.25, skips=skips)
    amp, phase = net.forward_amp_phase(torch.rand(2, 4, N, N))
    assert amp.shape == phase.shape == (2, 4, N, N)
    assert 0 < amp.min() and amp.max() < 1 and torch.isfinite(phase).all()
    assert filter_counts(64, 0.25) == [8, 16, 32] and filter_counts(64, 1.0) == [32, 64, 128]
    assert len(filter_counts(N, 1.0)) == {32: 2, 64: 3, 128: 4}[N]


def test_unet_decoder_reaches_full_resolution_detail():
    """One input pixel changes the U-Net's output at that pixel far more than the plain decoder's,
    whose every path crosses the N/8 bottleneck and a nearest-neighbour upsampling."""
    from ptycho_torch.model.network import PtychoNet

    torch.manual_seed(0)
    x = torch.rand(1, 2, 32, 32, requires_grad=True)
    ratios = {}
    for skips in (True, False):
        net = PtychoNet(32, 1, 0.25, in_channels=2, skips=skips)
        _, phase = net.forward_amp_phase(x)
        (grad,) = torch.autograd.grad(phase[0, 0, 16, 16], x)
        g = grad.abs().sum(1)[0]  # (32, 32) sensitivity of one output pixel to each input pixel
        ratios[skips] = float(g[15:18, 15:18].sum() / g.sum())  # share of its own 3x3 neighbourhood
    assert ratios[True] > 2 * ratios[False]


def test_partner_input_reads_the_group_and_reconstructs(tiny_scan, tmp_path):
    """model.partner_input: each pattern's network reads 2C channels (its own and its partners'
    estimates); a partner's pattern changes the output, reconstruction runs on groups, and the
    option has no effect where it has no meaning."""
    import numpy as np

    from ptycho_torch.config import ModelConfig
    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.data.grouping import make_groups
    from ptycho_torch.physics.forward import group_offsets

    result = train(tiny_config(tiny_scan, **{"model.gridsize": 2, "model.partner_input": True,
                                             "trainer.max_epochs": 1}), tmp_path / "g2p")
    module = load_bundle(result.run_dir).module.eval()
    assert module.net.blocks[0][0].in_channels == 8
    scan = read_scan(tiny_scan)
    groups = make_groups(scan.positions, 2).indices[:2]
    amp = torch.from_numpy(scan.diffraction_rows(groups))  # (2, 4, N, N)
    offsets = group_offsets(torch.from_numpy(scan.positions[groups].astype(np.float32)))
    with torch.no_grad():
        base = module.raw_patches(amp, offsets)
        other = amp.clone()
        other[:, 1] = amp[:, 1].flip(-1)  # only partner 1's pattern changes
        moved = module.raw_patches(other, offsets)
    assert (moved[:, 0] - base[:, 0]).abs().max() > 1e-6  # pattern 0's patch listens to its partner
    recon = reconstruct(result.run_dir, tiny_scan, tmp_path / "g2p_recon")
    assert np.isfinite(recon.object).all()
    assert not ModelConfig(gridsize=2, group_network="joint").reads_partners
    assert not ModelConfig(gridsize=1).reads_partners and ModelConfig(gridsize=2).reads_partners
