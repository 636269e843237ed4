"""`ptycho-dist reconstruct` (Ray Data) against the local reconstruction loop.

One local Ray (4 logical CPUs, no dashboard) for the module; tiny N=32 bundles trained once.
The simulated scan is split into three files (npz, h5, npz), each keeping objectGuess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import simulate, tiny_config

from ptycho_dist.cli.reconstruct import add_parser
from ptycho_dist.inference import reconstruct_distributed
from ptycho_torch.config import ConfigError, apply_overrides
from ptycho_torch.data.contract import ScanValidationError, read_scan, write_scan
from ptycho_torch.data.dataset import GroupDataset
from ptycho_torch.data.scan_files import read_scans
from ptycho_torch.errors import UserError
from ptycho_torch.physics.stitching import (
    CanvasSum,
    StitchAccumulator,
    compact_subsets,
    partial_canvas,
    stitch_weight,
)
from ptycho_torch.reconstruction.batch_predictor import BatchPredictor, RowReader
from ptycho_torch.reconstruction.reconstruct import (
    PatchPredictor,
    inference_groups,
    inference_loader,
    reconstruct,
)
from ptycho_torch.training.train import train

pytestmark = pytest.mark.ray

TOL = 1e-5


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, object]:
    """merged.npz (90 patterns) and the same patterns split into part0.npz, part1.h5, part2.npz."""
    d = tmp_path_factory.mktemp("dist_scans")
    merged = simulate(d / "merged.npz", n_positions=90)
    scan = read_scan(merged)
    parts = []
    for i, idx in enumerate(np.array_split(np.arange(scan.n_patterns), 3)):
        parts.append(write_scan(d / f"part{i}.{'h5' if i == 1 else 'npz'}", **scan.subset(idx).arrays()))
    return {"dir": d, "merged": merged, "parts": parts}


@pytest.fixture(scope="module")
def bundles(scans, tmp_path_factory) -> dict[int, Path]:
    """Tiny trained bundles (1 epoch) for gridsize 1 and 2."""
    out = {}
    for g in (1, 2):
        config = apply_overrides(tiny_config(scans["merged"]), {
            "trainer.max_epochs": 1, "model.gridsize": g, "logging.logger": None,
            "trainer.enable_checkpointing": False})
        out[g] = train(config, tmp_path_factory.mktemp(f"run_g{g}")).bundle_path
    return out


def _local_per_file(bundle: Path, files: list[Path], canvas_hw: tuple[int, int], batch: int = 16):
    """Oracle built from the local loop's pieces: each file grouped on its own, sums added up."""
    pred = PatchPredictor(bundle)
    config = pred.config
    acc = StitchAccumulator(canvas_hw, stitch_weight(pred.probe, config.inference.stitch_weight))
    for path in files:
        scan = read_scan(path)
        groups = inference_groups(scan, pred.gridsize, config.data.neighbor_count, config.training.seed)
        stitched = torch.from_numpy(groups.stitch_mask())
        for b in inference_loader(scan, groups, config, batch):
            patches = pred(b["amp"], b["offsets"])  # overlap-constrained for groups, as reconstruct does
            mask = stitched[b["index"]]
            acc.add(patches[mask], b["positions"][mask])
    return acc.result(config.inference.weight_threshold)


# ------------------------------------------------------------------ equivalence with the local loop

def test_split_files_equal_local_on_merged_file(ray_local, scans, bundles, tmp_path):
    from ptycho_dist.cli import main

    d = scans["dir"]
    out = tmp_path / "dist"
    assert main(["reconstruct", "--model", str(bundles[1].parent), "--data", str(d / "part*"),
                 "--out", str(out), "--concurrency", "2", "--batch-size", "8", "--block-size", "7"]) == 0
    local = reconstruct(bundles[1], scans["merged"], tmp_path / "local", progress=False)
    with np.load(out / "object.npz") as z:
        obj, weight, x = z["object"], z["weight"], z["xcoords"]
        meta = json.loads(str(z["metadata"]))
    assert obj.shape == local.object.shape
    assert np.abs(obj - local.object).max() < TOL
    assert np.abs(weight - local.weight).max() < TOL * local.weight.max()
    np.testing.assert_array_equal(x, read_scan(scans["merged"]).xcoords)  # global order = file order
    assert meta["engine"] == "ray_data" and meta["concurrency"] == 2 and meta["n_blocks"] == 13
    assert meta["patterns_per_second"] > 0 and len(meta["data"]) == 3
    for name in ("amplitude.png", "phase.png", "metrics.json", "fit.png"):
        assert (out / name).is_file()
    assert meta["data_fit"]["ratio"] == pytest.approx(local.data_fit["ratio"], rel=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth"] == str(scans["parts"][0].resolve())


def test_renormalize_equals_local_renormalize(ray_local, scans, bundles, tmp_path):
    dist = reconstruct_distributed(bundles[1], scans["parts"], tmp_path / "dist", concurrency=1,
                                   renormalize=True, progress=False)
    local = reconstruct(bundles[1], scans["merged"], tmp_path / "local", renormalize=True, progress=False)
    assert np.abs(dist.object - local.object).max() < TOL
    with np.load(tmp_path / "dist" / "object.npz") as z:
        r_dist = json.loads(str(z["metadata"]))["norm_factor"]
    with np.load(tmp_path / "local" / "object.npz") as z:
        r_local = json.loads(str(z["metadata"]))["norm_factor"]
    assert r_dist == pytest.approx(r_local, rel=1e-8)  # float64 sums in another order


def test_a_failed_write_keeps_the_old_outputs_whole(ray_local, scans, bundles, tmp_path, monkeypatch):
    """As the local reconstruct: a full disk while writing into an existing --out leaves the old
    reconstruction untouched (before: a new object.npz beside the old run's TIFFs and CXI)."""
    import errno

    import tifffile

    out = tmp_path / "dist"
    reconstruct_distributed(bundles[1], scans["parts"], out, concurrency=1, progress=False)
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    with pytest.raises(OSError, match="No space left"):
        reconstruct_distributed(bundles[1], scans["parts"], out, concurrency=1, progress=False)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]  # no partial or hidden directory left


def test_scan_from_elsewhere_uses_its_own_probe_and_dose_like_local(ray_local, scans, bundles, tmp_path):
    """A scan taken with another probe at another dose: by default both paths read and stitch with the
    scan's own probe and r, and --probe model / --normalization model both with the model's."""
    arrays = read_scan(scans["merged"]).arrays()
    other = write_scan(tmp_path / "other.npz", **{**arrays, "probe": arrays["probe"] * 1.5,
                                                  "diffraction": arrays["diffraction"] * 2.0})
    dist = reconstruct_distributed(bundles[1], other, tmp_path / "dist", concurrency=1, progress=False)
    local = reconstruct(bundles[1], other, tmp_path / "local", progress=False)
    assert np.abs(dist.object - local.object).max() < TOL
    with np.load(tmp_path / "dist" / "object.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert meta["probe"] == "scan" and meta["normalization"] == "scan"
    np.testing.assert_allclose(np.load(tmp_path / "dist" / "probe.npy").reshape(arrays["probe"].shape),
                               arrays["probe"] * 1.5, rtol=1e-6)
    dist_m = reconstruct_distributed(bundles[1], other, tmp_path / "dist_m", concurrency=1, progress=False,
                                     probe="model", normalization="model")
    local_m = reconstruct(bundles[1], other, tmp_path / "local_m", progress=False, probe="model",
                          normalization="model")
    assert np.abs(dist_m.object - local_m.object).max() < TOL
    assert np.abs(dist_m.object - dist.object).max() > 100 * TOL  # the choice matters
    # the data fit reads each object in the photon units of the probe it was made with (the actors')
    assert dist.data_fit["ratio"] == pytest.approx(local.data_fit["ratio"], rel=1e-4)
    assert dist_m.data_fit["ratio"] == pytest.approx(local_m.data_fit["ratio"], rel=1e-4)


def test_gridsize2_equals_local(ray_local, scans, bundles, tmp_path):
    # one file, blocks of 8: partners of a block's patterns are read from outside the block
    dist = reconstruct_distributed(bundles[2], scans["merged"], tmp_path / "one", concurrency=2,
                                   block_size=8, batch_size=8, progress=False)
    local = reconstruct(bundles[2], scans["merged"], tmp_path / "local", progress=False)
    assert np.abs(dist.object - local.object).max() < TOL
    with np.load(tmp_path / "one" / "object.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert meta["grouping"] == "cover" and meta["n_groups"] < meta["n_patterns"] / 2
    # one group per pattern (--grouping every_pattern): the same on both paths too
    every = reconstruct_distributed(bundles[2], scans["merged"], tmp_path / "every", concurrency=2,
                                    block_size=16, grouping="every_pattern", progress=False)
    every_local = reconstruct(bundles[2], scans["merged"], None, grouping="every_pattern", progress=False)
    assert np.abs(every.object - every_local.object).max() < TOL
    assert np.abs(every.object - dist.object).max() > 100 * TOL  # other groups, another estimate
    # three files: groups are formed per file (never across files), as the per-file oracle does
    multi = reconstruct_distributed(bundles[2], scans["parts"], tmp_path / "multi", concurrency=2,
                                    block_size=8, progress=False)
    obj, weight = _local_per_file(bundles[2], scans["parts"], multi.object.shape)
    assert np.abs(multi.object - obj).max() < TOL
    assert np.abs(multi.weight - weight).max() < TOL * weight.max()


def test_beamline_file_read_as_trained_and_products_as_local(ray_local, tmp_path):
    """A CXI file of 48x48 uint16 frames with a detector mask, trained cropped to N=32 around a
    given beam centre: the Ray path reads it with the bundle's reading options (crop, mask,
    geometry) and writes the products of the local reconstruct (probe.npy, TIFFs, CXI)."""
    import h5py
    import tifffile
    from beamline_layouts import detector_frames, metres, write_cxi

    sim = read_scan(simulate(tmp_path / "sim.npz", n_positions=40))
    counts = detector_frames(sim.diffraction_block(0, sim.n_patterns), frame=48, corner=(8, 8))
    mask = np.zeros((48, 48), bool)
    mask[20:22, 30] = True  # inside the crop: read as 0
    path = str(write_cxi(tmp_path / "big.cxi", counts, metres(sim.xcoords, sim.ycoords, 32), sim.probe[0], mask=mask))
    config = tiny_config(path, **{"trainer.max_epochs": 1, "logging.logger": None,
                                  "trainer.enable_checkpointing": False, "data.beam_center": [24, 24]})
    bundle = train(config, tmp_path / "run").bundle_path
    local = reconstruct(bundle, path, tmp_path / "local", progress=False)
    dist = reconstruct_distributed(bundle, path, tmp_path / "dist", concurrency=1, progress=False)
    assert dist.object.shape == local.object.shape
    assert np.abs(dist.object - local.object).max() < TOL
    for name in ("probe.npy", "amplitude.tif", "phase.tif", "reconstruction.cxi"):
        assert (tmp_path / "dist" / name).is_file(), name
    np.testing.assert_array_equal(np.load(tmp_path / "dist" / "probe.npy"), np.load(tmp_path / "local" / "probe.npy"))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "dist" / "amplitude.tif"), np.abs(dist.object), rtol=1e-6)
    with np.load(tmp_path / "dist" / "object.npz") as z, np.load(tmp_path / "local" / "object.npz") as zl:
        assert float(z["pixel_size_m"]) == float(zl["pixel_size_m"])  # geometry read from the file
    with h5py.File(tmp_path / "dist" / "reconstruction.cxi") as f:
        np.testing.assert_allclose(f["entry_1/image_1/data"][()], dist.object)


# ------------------------------------------------------------------ the predictor without Ray

def _reader(files, gridsize: int) -> RowReader:
    scan = read_scans(files)
    return RowReader(scan.without_object(), inference_groups(scan, gridsize))


def test_predictor_on_one_batch_without_ray_equals_patch_predictor(scans, bundles):
    reader = _reader(scans["parts"], 1)
    rows = reader.rows(np.arange(33, 50))  # rows 3..19 of part1.h5
    assert rows["amp"].shape == (17, 1, 32, 32) and rows["index"][0] == 33
    canvas_hw = reader.scan.object_shape
    predictor = BatchPredictor(bundles[1], canvas_hw=canvas_hw)
    patches, positions, index = predictor.predict(rows)
    expected = PatchPredictor(bundles[1])(rows["amp"])[:, 0]
    torch.testing.assert_close(patches, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(index, np.arange(33, 50))  # gridsize 1: group id = pattern index
    np.testing.assert_array_equal(positions, reader.scan.positions[33:50])
    # __call__: one partial canvas that adds up to what the local accumulator builds
    out = predictor(rows)
    total = CanvasSum(canvas_hw, predictor.weight, reader.scan.n_patterns)
    total.add_batch(out)
    local = StitchAccumulator(canvas_hw, predictor.weight)
    local.add(patches, torch.from_numpy(positions.astype(np.float32)))
    torch.testing.assert_close(total.acc.obj_sum, local.obj_sum, rtol=0, atol=1e-6)
    torch.testing.assert_close(total.acc.w_sum, local.w_sum, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="arrived twice"):
        total.add_batch(out)
    bf16 = BatchPredictor(bundles[1], canvas_hw=canvas_hw, dtype="bfloat16").predict(rows)[0]
    assert bf16.dtype == torch.complex64 and (bf16 - patches).abs().max() < 0.1


def test_gridsize2_rows_hold_the_local_groups(scans):
    scan = read_scan(scans["parts"][1])
    rows = _reader([scans["parts"][1]], 2).rows(np.arange(2, 6))
    groups = inference_groups(scan, 2)
    items = [GroupDataset(scan, groups, 1.0)[i] for i in range(2, 6)]
    np.testing.assert_array_equal(rows["amp"], np.stack([it["amp"].numpy() for it in items]))
    np.testing.assert_array_equal(rows["members"], groups.indices[2:6])
    np.testing.assert_array_equal(rows["stitched"], groups.stitch_mask()[2:6])
    np.testing.assert_array_equal(rows["positions"], scan.positions[groups.indices[2:6]])
    with pytest.raises(UserError, match="inference.grouping: got 'every'; choose 'cover' or 'every_pattern'"):
        inference_groups(scan, 2, grouping="every")


def test_groups_never_cross_files_and_rows_span_them(scans):
    reader = _reader(scans["parts"], 2)  # 30 + 30 + 30 patterns
    groups = reader.groups
    members = groups.indices
    assert (members // 30 == members[:, :1] // 30).all()  # every group inside one file
    stitched = members[groups.stitch_mask()]
    np.testing.assert_array_equal(np.sort(stitched), np.arange(90))  # every pattern stitched once
    G = len(groups)
    assert G < 90  # cover grouping: fewer groups than patterns
    ids = np.array([G - 1, 5, 1, 0])
    rows = reader.rows(ids)  # any order: rows come sorted by group id
    np.testing.assert_array_equal(rows["index"], np.sort(ids))
    whole = read_scan(scans["merged"])
    np.testing.assert_array_equal(rows["amp"], whole.diffraction_rows(members[np.sort(ids)]))


def test_scattered_batches_split_into_small_partial_canvases():
    rng = np.random.default_rng(0)
    N, canvas = 32, (400, 400)
    weight = stitch_weight(torch.ones(N, N, dtype=torch.complex64))
    compact = np.stack([np.arange(16) * 3.0 + 20.5, np.full(16, 40.25)], 1)  # one raster row
    assert len(compact_subsets(compact, N)) == 1
    scattered = rng.uniform(N / 2 + 1, 400 - N / 2 - 1, size=(16, 2))  # random scan order
    parts = compact_subsets(scattered, N)
    assert len(parts) > 1 and sorted(np.concatenate(parts).tolist()) == list(range(16))
    patches = torch.polar(torch.rand(16, N, N), torch.rand(16, N, N))
    total = CanvasSum(canvas, weight, 16)
    for sel in parts:
        y0, x0, c = partial_canvas(patches[torch.from_numpy(sel)], scattered[sel], canvas, weight)
        assert c.shape[1] * c.shape[2] <= len(sel) * N * N
        total.add(y0, x0, c, sel)
    local = StitchAccumulator(canvas, weight)
    local.add(patches, torch.from_numpy(scattered.astype(np.float32)))
    torch.testing.assert_close(total.acc.obj_sum, local.obj_sum, rtol=0, atol=1e-5)
    torch.testing.assert_close(total.acc.w_sum, local.w_sum, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ reading

def test_lazy_npz_rows_and_what_validation_checks(scans, tmp_path):
    full = read_scan(scans["parts"][0])
    assert full.is_lazy  # an uncompressed member is memory-mapped
    arrays = dict(np.load(scans["parts"][0], allow_pickle=False))
    idx = np.array([25, 3, 3, 0, 29, 17])
    np.testing.assert_array_equal(full.diffraction_rows(idx), arrays["diffraction"][idx])
    arrays["diffraction"][5, 1, 1] = np.nan
    np.savez_compressed(tmp_path / "bad.npz", **arrays)  # compressed: read into memory
    with pytest.raises(ScanValidationError, match="NaN"):
        read_scans(tmp_path / "bad.npz")
    assert read_scans(tmp_path / "bad.npz", validate=False).n_patterns == 30
    # without validation the patterns are trusted, but positions and shapes are still checked
    arrays = dict(np.load(scans["parts"][0], allow_pickle=False))
    np.savez(tmp_path / "off.npz", **{**arrays, "xcoords": arrays["xcoords"] - 1000.0})
    with pytest.raises(ScanValidationError, match="xcoords: .* patches fall outside"):
        read_scans(tmp_path / "off.npz", validate=False)
    np.savez(tmp_path / "short.npz", **{**arrays, "ycoords": arrays["ycoords"][:-1]})
    with pytest.raises(ScanValidationError, match="ycoords"):
        read_scans(tmp_path / "short.npz", validate=False)


# ------------------------------------------------------------------ errors and CLI

def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from ptycho_dist.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_clear_errors(ray_local, scans, bundles, tmp_path, capsys):
    model = str(bundles[1].parent)
    out = str(tmp_path / "out")
    code, err = _run_cli(["reconstruct", "--model", model, "--data", str(tmp_path / "none*.h5"), "--out", out], capsys)
    assert code == 2 and "no files match" in err and len(err.splitlines()) == 1
    small = simulate(tmp_path / "n64.npz", N=64, n_positions=16)
    code, err = _run_cli(["reconstruct", "--model", model, "--data", str(small), "--out", out], capsys)
    assert code == 2 and "trained on 32x32 patterns" in err and "64x64" in err
    code, err = _run_cli(["reconstruct", "--model", model, "--data", str(scans["parts"][0]), str(small),
                          "--out", out], capsys)
    assert code == 2 and "different sizes" in err
    arrays = read_scan(scans["parts"][2]).arrays()
    other = write_scan(tmp_path / "other_probe.npz", **{**arrays, "probe": arrays["probe"] * 1.5})
    code, err = _run_cli(["reconstruct", "--model", model, "--data", str(scans["parts"][0]), str(other),
                          "--out", out], capsys)
    assert code == 2 and "different probes" in err
    code, err = _run_cli(["reconstruct", "--model", str(tmp_path), "--data", str(scans["merged"]),
                          "--out", out], capsys)
    assert code == 2 and "no model bundle" in err
    with pytest.raises(ConfigError, match="do not fit"):
        reconstruct_distributed(bundles[1], scans["merged"], out, concurrency=64, progress=False)
    assert not (tmp_path / "out").exists()


def test_help_documents_every_flag_with_default():
    import argparse

    parser = argparse.ArgumentParser()
    p = add_parser(parser.add_subparsers())
    for action in p._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in action.help or "required" in action.help, action.option_strings
    args = p.parse_args(["--model", "m", "--data", "a.h5", "b.npz", "--out", "o"])
    assert args.data == ["a.h5", "b.npz"] and args.concurrency is None and args.num_cpus_per_actor == 1.0


# ------------------------------------------------------------------ live reconstruction on Ray actors

def _acquire(path: str, hz: float) -> None:
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.simulate import simulate_scan
    from ptycho_torch.live.acquisition import acquire

    acquire(simulate_scan(SimulationConfig(N=32, n_positions=256, seed=5, nphotons=1e5)), path, hz)


@pytest.mark.parametrize("gridsize", [1, 2])
def test_live_on_ray_actors_publishes_and_ends_as_reconstruct(ray_local, bundles, tmp_path, gridsize, capsys):
    """A writer process streams 256 frames at 64 Hz; `ptycho-dist live` runs the network on 2 actors,
    publishes pictures on the way and ends with reconstruct's object of the finished file."""
    import multiprocessing

    from ptycho_dist.cli import main

    acq = tmp_path / "scan.h5"
    writer = multiprocessing.get_context("spawn").Process(target=_acquire, args=(str(acq), 64.0))
    writer.start()
    try:
        rc = main(["live", "--model", str(bundles[gridsize]), "--watch", str(acq), "--out", str(tmp_path / "out"),
                   "--publish-seconds", "0.5", "--concurrency", "2", "--inference-batch-size", "16"])
    finally:
        writer.join(60)
    assert rc == 0 and writer.exitcode == 0
    assert "live: 256 frames (end mark)" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "live" / "history").glob("phase_*.png"))) >= 2
    offline = reconstruct(bundles[gridsize], acq, tmp_path / "offline", progress=False)
    with np.load(tmp_path / "out" / "object.npz") as z:
        np.testing.assert_allclose(z["object"], offline.object, atol=TOL, rtol=0)
