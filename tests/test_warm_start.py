"""Warm start and fine-tuning (train --init-from, --freeze) and which probe / normalisation a model
trained on one scan uses on another (reconstruct --probe, --normalization)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import simulate, tiny_config

from ptycho_torch.cli.main import main
from ptycho_torch.config import ConfigError, apply_overrides
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.dataset import PtychoDataModule, dataset_norm_factor
from ptycho_torch.model.bundle import load_bundle
from ptycho_torch.reconstruction.reconstruct import PatchPredictor, reconstruct
from ptycho_torch.training.train import build_module, train
from ptycho_torch.training.warm_start import init_from_bundle

COMMON = ["--epochs", "1", "--batch-size", "8", "--logger", "none", "--no-progress-bar"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Scan A (defocus 4 rad, 1e5 photons) and scan B (another object, defocus 12 rad, 1e6 photons)."""
    d = tmp_path_factory.mktemp("warm")
    return {"A": simulate(d / "a.npz", n_positions=48, probe_defocus=4.0),
            "B": simulate(d / "b.npz", n_positions=48, seed=1, probe_defocus=12.0, nphotons=1e6)}


@pytest.fixture(scope="module")
def run_a(scans, tmp_path_factory):
    """A gridsize-2 model (partner input: its first layer reads 4 patterns) trained on scan A."""
    config = apply_overrides(tiny_config(scans["A"]), {
        "trainer.max_epochs": 1, "training.batch_size": 8, "model.gridsize": 2,
        "logging.logger": None, "trainer.enable_checkpointing": False})
    return train(config, tmp_path_factory.mktemp("run_a") / "run").run_dir


def _net(state: dict[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_init_from_copies_the_network_and_keeps_the_new_scans_physics(scans, run_a):
    bundle = load_bundle(run_a)
    config = apply_overrides(tiny_config(scans["B"]), {"model.gridsize": 2})
    dm = PtychoDataModule(config)
    module = build_module(dm.config, dm)
    init_from_bundle(module, run_a)
    for k, v in _net(bundle.module.state_dict()).items():
        torch.testing.assert_close(module.state_dict()[k], v, rtol=0, atol=0)
    np.testing.assert_array_equal(module.probe.detach().numpy(), read_scan(scans["B"]).probe)
    assert float(module.norm_factor) == dataset_norm_factor(read_scan(scans["B"]))
    learned = float(bundle.module.log_scale.detach()) - math.log(float(bundle.module.input_scale))
    assert float(module.log_scale.detach()) - math.log(float(module.input_scale)) == pytest.approx(learned, abs=1e-6)


def test_fine_tune_from_the_command_line_with_a_frozen_encoder(scans, run_a, tmp_path):
    run = tmp_path / "tuned"
    assert main(["train", "--init-from", str(run_a), "--data", str(scans["B"]), "--out", str(run),
                 "--freeze", "encoder", *COMMON]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["init_from"] == str(run_a) and saved["training"]["freeze"] == ["encoder"]
    assert saved["model"]["gridsize"] == 2 and saved["model"]["n_filters_scale"] == 0.25  # the bundle's model
    before, after = load_bundle(run_a).module.state_dict(), load_bundle(run).module.state_dict()
    for k, v in _net(before, "net.blocks.").items():  # the encoder: not one bit changed
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    moved = [k for k, v in _net(before, "net.phase_decoder.").items() if not torch.equal(after[k], v)]
    assert moved  # the decoders were trained
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["init_from"] == str(run_a) and manifest["frozen_parameters"] > 0
    # resuming continues from the run's checkpoint (not the bundle) with the same parts frozen
    assert main(["train", "--resume", str(run), "--epochs", "2", "--logger", "none", "--no-progress-bar"]) == 0
    resumed = load_bundle(run).module.state_dict()
    for k, v in _net(before, "net.blocks.").items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)
    assert any(not torch.equal(resumed[k], after[k]) for k in _net(after, "net.phase_decoder."))


def test_incompatible_models_and_freezing_alone_are_refused(scans, run_a, tmp_path, capsys):
    assert main(["train", "--init-from", str(run_a), "--data", str(scans["B"]), "--out", str(tmp_path / "g1"),
                 "--gridsize", "1", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "training.init_from" in err and "model.gridsize=2 (this run: 1)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g1").exists()
    big = simulate(tmp_path / "big.npz", N=64, n_positions=9)
    config = apply_overrides(tiny_config(big), {"model.N": None, "model.gridsize": 2,
                                                "training.init_from": str(run_a), "logging.logger": None})
    with pytest.raises(ConfigError, match=r"model.N=32\) but this run's are 64x64"):
        train(config, tmp_path / "n64")
    assert main(["train", "--data", str(scans["B"]), "--out", str(tmp_path / "f"), "--freeze", "encoder",
                 *COMMON]) == 2
    assert "training.freeze" in capsys.readouterr().err
    assert main(["train", "--init-from", str(tmp_path / "none"), "--data", str(scans["B"]), "--out",
                 str(tmp_path / "m"), *COMMON]) == 2
    assert "training.init_from: no model bundle" in capsys.readouterr().err


def test_a_new_scan_is_read_with_its_own_probe_and_dose_by_default(scans, run_a, tmp_path):
    scan_b = read_scan(scans["B"])
    bundle = load_bundle(run_a)
    own = reconstruct(bundle, scans["B"], tmp_path / "own", progress=False)
    with np.load(tmp_path / "own" / "object.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert meta["probe"] == "scan" and meta["normalization"] == "scan"
    assert meta["norm_factor"] == dataset_norm_factor(scan_b)
    np.testing.assert_array_equal(bundle.module.probe.detach().numpy(), read_scan(scans["A"]).probe)  # not mutated
    predictor = PatchPredictor(bundle, probe=scan_b.probe)
    np.testing.assert_array_equal(predictor.probe.numpy(), scan_b.probe)
    assert float(predictor.module.input_scale) != float(bundle.module.input_scale)  # B's units
    theirs = reconstruct(run_a, scans["B"], tmp_path / "model", probe="model", normalization="model", progress=False)
    with np.load(tmp_path / "model" / "object.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert meta["probe"] == "model" and meta["norm_factor"] == bundle.norm_factor != dataset_norm_factor(scan_b)
    assert np.abs(theirs.object - own.object).max() > 1e-3


def test_on_its_own_training_scan_the_defaults_are_the_models(scans, run_a, tmp_path):
    default = reconstruct(run_a, scans["A"], tmp_path / "d", progress=False)
    model = reconstruct(run_a, scans["A"], tmp_path / "m", probe="model", normalization="model", progress=False)
    np.testing.assert_array_equal(default.object, model.object)


def test_auto_keeps_a_learned_probe_only_for_the_probe_it_started_from(scans, tmp_path):
    config = apply_overrides(tiny_config(scans["A"]), {
        "trainer.max_epochs": 1, "model.probe_trainable": True, "logging.logger": None,
        "trainer.enable_checkpointing": False})
    run = train(config, tmp_path / "learned").run_dir
    for name, expected in (("A", "model (refined from this scan's probe)"), ("B", "scan")):
        reconstruct(run, scans[name], tmp_path / name, progress=False)
        with np.load(tmp_path / name / "object.npz") as z:
            assert json.loads(str(z["metadata"]))["probe"] == expected


def test_ray_train_flags_take_the_bundles_model_section_like_local(scans, run_a, tmp_path):
    """ptycho-dist train --init-from without --config resolves the same run config as ptycho-torch
    train: the bundle's network shape (gridsize 2 here, the default being 1), flags still winning."""
    from ptycho_dist.api import resolve_run
    from ptycho_dist.cli import build_parser
    from ptycho_dist.cli.train import run_keywords

    def resolve_dist_configs(args):  # as `ptycho-dist train` resolves its flags
        return resolve_run(**run_keywords(args))

    argv = ["train", "--init-from", str(run_a), "--data", str(scans["B"]), "--out", str(tmp_path / "r")]
    config, _, resume = resolve_dist_configs(build_parser().parse_args(argv))
    assert not resume and config.model.gridsize == 2
    assert config.model == load_bundle(run_a / "model.pt").config.model
    config, _, _ = resolve_dist_configs(build_parser().parse_args(argv + ["--model.n_filters_scale", "0.5"]))
    assert config.model.gridsize == 2 and config.model.n_filters_scale == 0.5


def test_the_python_api_takes_the_bundles_model_section_like_the_cli(scans, run_a, tmp_path):
    """pt.train(init_from=...) without a config keeps the bundle's network shape (gridsize 2 here, the
    default being 1), as `ptycho-torch train --init-from` does; an explicit keyword still wins."""
    from ptycho_torch import api

    result = api.train(scans["B"], tmp_path / "ft", init_from=str(run_a), epochs=1, batch_size=8, logger="none",
                       progress_bar=False)
    assert load_bundle(result.bundle_path).config.model == load_bundle(run_a / "model.pt").config.model
    with pytest.raises(ConfigError, match="gridsize"):
        api.train(scans["B"], tmp_path / "bad", init_from=str(run_a), gridsize=1, epochs=1, logger="none")
