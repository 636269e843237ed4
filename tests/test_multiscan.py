"""Training on several scans: a simulated corpus, per-scan probes and normalisation, groups per scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import simulate, tiny_config

from ptycho_torch.cli.main import main
from ptycho_torch.config import ConfigError, apply_overrides
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.corpus import ScanCorpus, read_training_scans
from ptycho_torch.data.dataset import PtychoDataModule, dataset_norm_factor
from ptycho_torch.data.scan_files import ScanFiles
from ptycho_torch.errors import UserError
from ptycho_torch.physics import forward as physics
from ptycho_torch.training.train import build_module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two 40-pattern scans written by `simulate --n-scans 2`: other objects, defocus 4 and 12 rad,
    1e4 and 1e6 photons per pattern."""
    out = tmp_path_factory.mktemp("corpus") / "scans"
    assert main(["simulate", "--n-scans", "2", "--out", str(out), "--N", "32", "--n-positions", "40",
                 "--nphotons-range", "1e4", "1e6", "--defocus-range", "4", "12"]) == 0
    return sorted(out.glob("scan_*.npz"))


def _config(corpus, **overrides):
    base = {"model.gridsize": 2, "trainer.max_epochs": 1, "training.batch_size": 8,
            "logging.logger": None, "trainer.enable_checkpointing": False}
    base.update(overrides)
    return apply_overrides(tiny_config(corpus[0]), {"data.path": [str(p) for p in corpus], **base})


def test_simulated_corpus_varies_objects_probes_and_doses(corpus):
    assert [p.name for p in corpus] == ["scan_000.npz", "scan_001.npz"]
    a, b = read_scan(corpus[0]), read_scan(corpus[1])
    assert set(a.scan_index) == {0} and set(b.scan_index) == {1}
    assert a.metadata["corpus"] == {"index": 0, "n_scans": 2}
    assert a.metadata["simulation"]["probe_defocus"] == 4 and b.metadata["simulation"]["probe_defocus"] == 12
    assert not np.allclose(a.object_guess, b.object_guess)
    assert a.mean_energy() == pytest.approx(1e4, rel=0.05) and b.mean_energy() == pytest.approx(1e6, rel=0.05)
    assert not np.allclose(a.probe / np.abs(a.probe).max(), b.probe / np.abs(b.probe).max(), atol=1e-2)


def test_files_become_scans_as_data_scans_says(corpus, tmp_path):
    auto = read_training_scans([str(p) for p in corpus])
    assert isinstance(auto, ScanCorpus) and auto.n_scans == 2 and auto.n_patterns == 80
    np.testing.assert_array_equal(auto.pattern_scan, np.repeat([0, 1], 40))
    np.testing.assert_array_equal(auto.diffraction_rows([[41, 2]]),
                                  np.stack([read_scan(corpus[1]).diffraction_rows([1])[0],
                                            read_scan(corpus[0]).diffraction_rows([2])[0]])[None])
    with pytest.raises(UserError, match="different probes"):
        read_training_scans([str(p) for p in corpus], scans="one")
    # parts of one scan (same probe, scan_index and objectGuess) stay one scan under auto
    whole = read_scan(corpus[0])
    from ptycho_torch.data.contract import write_scan

    parts = [write_scan(tmp_path / f"part{i}.npz", **whole.subset(idx).arrays())
             for i, idx in enumerate(np.array_split(np.arange(40), 2))]
    assert isinstance(read_training_scans(parts), ScanFiles)
    assert isinstance(read_training_scans(parts, scans="per_file"), ScanCorpus)
    with pytest.raises(ConfigError, match="data.scans"):
        read_training_scans(parts, scans="separate")


def test_groups_never_mix_scans_and_each_scan_keeps_its_r(corpus):
    dm = PtychoDataModule(_config(corpus, **{"data.val_fraction": 0.0}))
    scan = dm.scan
    assert isinstance(scan, ScanCorpus)
    owner = scan.pattern_scan[dm.train_groups.indices]  # (G, 4)
    assert (owner == owner[:, :1]).all()  # one scan per group
    assert set(owner[:, 0]) == {0, 1}
    expected = [dataset_norm_factor(read_scan(p)) for p in corpus]
    assert dm.norm_factors == pytest.approx(expected, rel=1e-12)
    assert expected[0] / expected[1] == pytest.approx(10, rel=0.1)  # 100x the dose: r / 10
    batch = next(iter(dm.train_dataloader()))
    ratio = (batch["x"] / batch["amp"].clamp_min(1e-12)).flatten(1).amax(1)  # x = r_k * X per group
    np.testing.assert_allclose(ratio.numpy(), np.asarray(expected)[batch["scan"].numpy()], rtol=1e-5)


def test_per_sample_physics_equals_the_shared_path():
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 1, 16, 16, dtype=torch.complex64, generator=g)
    obj = torch.randn(2, 4, 16, 16, dtype=torch.complex64, generator=g)
    x = torch.rand(2, 4, 16, 16, generator=g)
    scales = torch.tensor([0.5, 2.0])
    both = physics.predicted_amplitude(obj, probe, scales.log())
    est = physics.backpropagate(x, probe, scales)
    for b in range(2):
        torch.testing.assert_close(both[b], physics.predicted_amplitude(obj[b:b + 1], probe[b], scales[b].log())[0])
        torch.testing.assert_close(est[b], physics.backpropagate(x[b:b + 1], probe[b], scales[b])[0])
    r = torch.tensor([3.0, 0.25])
    per = physics.poisson_nll(both, x, r)
    manual = sum(physics.poisson_nll(both[b:b + 1], x[b:b + 1], float(r[b])) * x[b:b + 1].square().mean()
                 for b in range(2)) / 2 / x.square().mean()
    torch.testing.assert_close(per, manual)


@pytest.mark.parametrize("variant", [{}, {"model.partner_input": False}, {"model.group_network": "joint"}],
                         ids=["partners", "per_pattern", "joint"])
def test_each_group_reaches_the_forward_model_with_its_own_scan(corpus, variant):
    """The module's scan tables hold every file's probe; a mixed batch gives each group exactly the
    patches and predicted amplitudes of a one-scan module that was handed that scan's probe (for each
    way the network reads a group)."""
    dm = PtychoDataModule(_config(corpus, **variant))
    module = build_module(dm.config, dm).eval()
    for k, path in enumerate(corpus):
        np.testing.assert_array_equal(torch.view_as_complex(module.scan_probes_ri[k]).numpy(), read_scan(path).probe)
    assert module.scan_norm.tolist() == pytest.approx(dm.norm_factors, rel=1e-6)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["scan"].tolist()) == {0, 1}
    with torch.no_grad():
        mixed = module(batch["x"], batch["offsets"], batch["scan"])
        _, _, log_scale, _ = module.scan_physics(batch["scan"])
        pred = physics.predicted_amplitude(mixed, module.scan_physics(batch["scan"])[0], log_scale)
        for k, path in enumerate(corpus):
            alone = build_module(dm.config, dm).eval()
            alone.load_state_dict(module.state_dict())
            alone.adopt_probe(torch.from_numpy(read_scan(path).probe))
            hit = batch["scan"] == k
            own = alone(batch["x"][hit], batch["offsets"][hit])
            torch.testing.assert_close(mixed[hit], own, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(pred[hit], physics.predicted_amplitude(own, alone.probe, alone.log_scale),
                                       atol=1e-3, rtol=1e-4)
    # the dose ratio is carried by the per-scan scale: s_1 / s_0 = s0(P_1) / s0(P_0)
    ratio = float(torch.exp(module.scan_log_offset[1]))
    assert ratio == pytest.approx(float(module.scan_input_scale[1] / module.scan_input_scale[0]), rel=1e-5)
    assert ratio == pytest.approx(dm.norm_factors[1] / dm.norm_factors[0], rel=0.1)


def test_train_on_a_corpus_from_the_command_line(corpus, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus[0].parent / "scan_*.npz"), "--out", str(run), "--epochs", "1",
                 "--gridsize", "2", "--n-filters-scale", "0.25", "--batch-size", "8", "--logger", "none",
                 "--no-progress-bar"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["n_patterns"] == 80 and len(manifest["norm_factors"]) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["final"]["train_loss"]) and metrics["truth_loss"] > 0


def test_corpus_errors_are_one_line(corpus, tmp_path, capsys):
    big = simulate(tmp_path / "big.npz", N=64, n_positions=9, seed=3)
    common = ["--epochs", "1", "--logger", "none", "--no-progress-bar", "--n-filters-scale", "0.25"]
    assert main(["train", "--data", str(corpus[0]), str(big), "--out", str(tmp_path / "a"), *common]) == 2
    assert "different sizes" in capsys.readouterr().err
    assert main(["train", "--data", *map(str, corpus), "--out", str(tmp_path / "b"), "--probe-trainable", "true",
                 *common]) == 2
    assert "model.probe_trainable" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["simulate", "--out", str(tmp_path / "c.npz"), "--nphotons-range", "1", "2"]) == 2
    assert "--n-scans" in capsys.readouterr().err


def test_a_corpus_trains_with_one_detector_mask(corpus, tmp_path):
    mask = np.zeros((32, 32), bool)
    mask[15:17, :] = True  # a masked detector row pair
    np.save(tmp_path / "mask.npy", mask)
    dm = PtychoDataModule(_config(corpus, **{"data.mask": str(tmp_path / "mask.npy")}))
    assert isinstance(dm.scan, ScanCorpus)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["scan"].tolist()) == {0, 1}
    np.testing.assert_array_equal(batch["mask"][0, 0].numpy(), mask)
    assert float(batch["amp"][:, :, 15:17].abs().max()) == 0.0  # masked pixels read as 0 in every scan


def test_a_corpus_run_resumes_with_its_scans_and_their_factors(corpus, tmp_path):
    """--resume of a run trained on a glob of scans reads the same files and keeps each scan's r."""
    run = tmp_path / "run"
    common = ["--gridsize", "2", "--n-filters-scale", "0.25", "--batch-size", "8", "--logger", "none",
              "--no-progress-bar"]
    assert main(["train", "--data", str(corpus[0].parent / "scan_*.npz"), "--out", str(run), "--epochs", "1",
                 *common]) == 0
    first = json.loads((run / "manifest.json").read_text())
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    resumed = json.loads((run / "manifest.json").read_text())
    assert resumed["epochs_completed"] == 2 and resumed["n_patterns"] == 80
    assert resumed["norm_factors"] == first["norm_factors"] and len(resumed["norm_factors"]) == 2
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [int(r["epoch"]) for r in history] == [0, 1]
