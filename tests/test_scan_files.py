"""One scan from several files (`ptycho_torch.data.scan_files`): reading, reconstruction, evaluation."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import simulate, tiny_config

from ptycho_torch.config import apply_overrides
from ptycho_torch.data.contract import read_scan, write_scan
from ptycho_torch.data.scan_files import ScanFiles, read_scans, resolve_scan_paths


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> dict[str, object]:
    """whole.npz (60 patterns) and the same patterns in part0.npz, part1.h5, part2.npz."""
    d = tmp_path_factory.mktemp("split")
    whole = simulate(d / "whole.npz", n_positions=60)
    scan = read_scan(whole)
    parts = [write_scan(d / f"part{i}.{'h5' if i == 1 else 'npz'}", **scan.subset(idx).arrays())
             for i, idx in enumerate(np.array_split(np.arange(scan.n_patterns), 3))]
    return {"dir": d, "whole": whole, "parts": parts}


def test_globs_and_lists_resolve_in_order(split, tmp_path):
    d = split["dir"]
    assert resolve_scan_paths(str(d / "part*")) == [p.resolve() for p in split["parts"]]
    assert resolve_scan_paths([split["parts"][2], str(d / "part0.*")]) == [split["parts"][2].resolve(),
                                                                           split["parts"][0].resolve()]
    with pytest.raises(FileNotFoundError, match="no files match"):
        resolve_scan_paths(str(tmp_path / "none*.npz"))


def test_several_files_read_as_the_whole_scan(split):
    whole, parts = read_scan(split["whole"]), read_scans(str(split["dir"] / "part*"))
    assert isinstance(parts, ScanFiles) and parts.n_patterns == whole.n_patterns and parts.N == whole.N
    np.testing.assert_array_equal(parts.positions, whole.positions)
    idx = np.array([[59, 0], [21, 20], [39, 40]])  # rows from every file, any order
    np.testing.assert_array_equal(parts.diffraction_rows(idx), whole.diffraction_rows(idx))
    np.testing.assert_array_equal(parts.diffraction_block(15, 45), whole.diffraction_block(15, 45))
    assert parts.mean_energy() == pytest.approx(whole.mean_energy(), rel=1e-9)
    assert parts.object_shape == whole.object_shape
    np.testing.assert_array_equal(parts.object_guess, whole.object_guess)


def test_photon_units_apply_to_every_reader(split, tmp_path):
    """A file in the upstream convention (normalised amplitudes + intensity_scale) reads in photons
    through the lazy NPZ reader, alone or as part of several files."""
    arrays = dict(np.load(split["parts"][0], allow_pickle=False))
    arrays["diffraction"] = arrays["diffraction"] / 4.0
    np.savez(tmp_path / "upstream.npz", **arrays, intensity_scale=np.array(4.0))
    scan = read_scan(tmp_path / "upstream.npz")
    assert scan.is_lazy and scan.photon_scale == 4.0
    expected = read_scan(split["parts"][0]).diffraction_rows([3, 1])
    np.testing.assert_allclose(scan.diffraction_rows([3, 1]), expected, rtol=1e-6)
    both = read_scans([tmp_path / "upstream.npz", split["parts"][1]])
    np.testing.assert_allclose(both.diffraction_rows([3, 1]), expected, rtol=1e-6)


def test_reconstruct_split_files_equals_whole_file(split, tmp_path):
    from ptycho_torch.cli.main import main
    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.training.train import train

    config = apply_overrides(tiny_config(split["whole"]), {
        "trainer.max_epochs": 1, "logging.logger": None, "trainer.enable_checkpointing": False})
    run = train(config, tmp_path / "run").run_dir
    whole = reconstruct(run, split["whole"], tmp_path / "whole", progress=False)
    assert main(["reconstruct", "--model", str(run), "--data", str(split["dir"] / "part*.*"),
                 "--out", str(tmp_path / "parts")]) == 0
    with np.load(tmp_path / "parts" / "object.npz") as z:
        obj, weight, meta = z["object"], z["weight"], json.loads(str(z["metadata"]))
    np.testing.assert_allclose(obj, whole.object, rtol=0, atol=1e-6)
    np.testing.assert_allclose(weight, whole.weight, rtol=0, atol=1e-6)
    assert len(meta["data"]) == 3
    metrics = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert metrics["truth"] == str(split["parts"][0].resolve())
    assert metrics["phase_ssim"] == pytest.approx(whole.metrics["phase_ssim"], abs=1e-6)


def test_evaluation_never_reads_diffraction(split, tmp_path):
    """The truth file's diffraction member is damaged: evaluation reads objectGuess alone and works."""
    from ptycho_torch.evaluation.evaluate import evaluate

    data = bytearray(Path(split["whole"]).read_bytes())
    with zipfile.ZipFile(split["whole"]) as zf:
        info = zf.getinfo("diffraction.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0xFF
    truth = tmp_path / "damaged.npz"
    truth.write_bytes(bytes(data))
    obj = read_scan(split["whole"]).object_guess
    np.savez(tmp_path / "object.npz", object=obj, weight=np.ones(obj.shape, np.float32))
    metrics = evaluate(tmp_path / "object.npz", truth, plots=False)
    assert metrics["phase_ssim"] == pytest.approx(1.0, abs=1e-6)


def test_train_takes_several_files_and_globs(split, tmp_path):
    import yaml

    from ptycho_torch.cli.main import main

    common = ["--out", str(tmp_path / "run"), "--epochs", "1", "--n-filters-scale", "0.25", "--batch-size", "16",
              "--logger", "none", "--no-progress-bar"]
    assert main(["train", "--data", *map(str, split["parts"]), *common]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == [str(p) for p in split["parts"]]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["n_patterns"] == 60
    common[1] = str(tmp_path / "glob")
    assert main(["train", "--data", str(split["dir"] / "part*"), *common]) == 0
