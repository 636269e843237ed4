"""The scan data contract: round trips, lazy HDF5, upstream files, and one error listing every problem."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from ptycho_torch.data.contract import ScanData, ScanValidationError, read_scan, validate_scan, write_scan
from ptycho_torch.physics import forward as physics

N = 16
M = 12


def _arrays(seed: int = 0, M: int = M) -> dict:
    """Keyword arguments of write_scan for a small valid scan (positions inside a 48x40 object)."""
    rng = np.random.default_rng(seed)
    return dict(
        diffraction=rng.uniform(0, 3, (M, N, N)).astype(np.float32),
        probe=(rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))).astype(np.complex64),
        xcoords=rng.uniform(N / 2, 40 - N / 2, M),
        ycoords=rng.uniform(N / 2, 48 - N / 2, M),
        object_guess=np.exp(1j * rng.uniform(-1, 1, (48, 40))).astype(np.complex64),
        scan_index=np.arange(M) % 2,
        metadata={"nphotons": 1e6, "source": "test"},
    )


def _file_keys(a: dict) -> dict:
    """write_scan keywords -> file keys (for writing broken files with np.savez directly)."""
    return {"diffraction": a["diffraction"], "probeGuess": a["probe"], "xcoords": a["xcoords"],
            "ycoords": a["ycoords"], "objectGuess": a["object_guess"], "scan_index": a["scan_index"]}


def _assert_same(scan: ScanData, a: dict) -> None:
    np.testing.assert_array_equal(scan.diffraction_block(0, M), a["diffraction"])
    np.testing.assert_array_equal(scan.probe, a["probe"][None])
    np.testing.assert_array_equal(scan.xcoords, a["xcoords"])
    np.testing.assert_array_equal(scan.ycoords, a["ycoords"])
    np.testing.assert_array_equal(scan.object_guess, a["object_guess"])
    np.testing.assert_array_equal(scan.scan_index, a["scan_index"])
    assert scan.metadata == a["metadata"]
    assert (scan.n_patterns, scan.N) == (M, N)
    assert scan.probe.dtype == np.complex64 and scan.xcoords.dtype == np.float64
    assert scan.scan_index.dtype == np.int64


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
def test_round_trip(tmp_path, suffix):
    a = _arrays()
    path = write_scan(tmp_path / f"scan{suffix}", **a)
    scan = read_scan(path)
    _assert_same(scan, a)
    assert scan.is_lazy  # HDF5 datasets and uncompressed NPZ members are read on demand
    np.testing.assert_array_equal(scan.positions, np.stack([a["xcoords"], a["ycoords"]], 1))
    expected = float(np.mean(np.sum(a["diffraction"].astype(np.float64) ** 2, axis=(1, 2))))
    assert scan.mean_energy() == pytest.approx(expected, rel=1e-6)
    assert scan.object_shape == (48, 40)
    # the ScanData writes back to an identical file
    _assert_same(read_scan(write_scan(tmp_path / f"again{suffix}", **scan.arrays())), a)


def test_lazy_hdf5_pickles_and_reads_blocks(tmp_path):
    a = _arrays(M=256)
    scan = read_scan(write_scan(tmp_path / "scan.h5", **a))
    assert scan.diffraction is None  # nothing loaded at read time
    np.testing.assert_array_equal(scan.diffraction_block(3, 7), a["diffraction"][3:7])
    blob = pickle.dumps(scan)  # after a read: the open handle must not travel
    assert len(blob) < a["diffraction"].nbytes / 8  # the patterns stay in the file
    clone = pickle.loads(blob)
    assert clone.is_lazy
    for idx in ([9, 2, 2, 0, 11], [0, 200], [255, 3, 100]):  # dense/sparse, unsorted, repeated
        np.testing.assert_array_equal(clone.diffraction_rows(idx), a["diffraction"][idx])
    groups = np.array([[4, 1, 0], [7, 7, 2]])  # (B, C) group members -> (B, C, N, N)
    np.testing.assert_array_equal(clone.diffraction_rows(groups), a["diffraction"][groups])
    sub = clone.subset([5, 1])
    assert not sub.is_lazy and sub.n_patterns == 2
    np.testing.assert_array_equal(sub.diffraction_block(0, 2), a["diffraction"][[5, 1]])
    np.testing.assert_array_equal(sub.xcoords, a["xcoords"][[5, 1]])
    assert clone.mean_energy(block=5) == pytest.approx(scan.mean_energy(), rel=1e-6)
    clone.close()
    scan.close()


def test_upstream_npz_with_diff3d_and_extra_keys(tmp_path):
    a = _arrays()
    keys = _file_keys(a)
    keys["diff3d"] = keys.pop("diffraction").astype(np.float64)  # upstream: float64, diff3d
    keys["probeGuess"] = keys["probeGuess"].astype(np.complex128)
    keys.update(xcoords_start=a["xcoords"], ycoords_start=a["ycoords"], Y=np.zeros((M, N, N, 1)))
    np.savez(tmp_path / "upstream.npz", **keys)
    scan = read_scan(tmp_path / "upstream.npz")
    rows = scan.diffraction_block(0, scan.n_patterns)
    assert rows.dtype == np.float32 and scan.probe.dtype == np.complex64
    np.testing.assert_allclose(rows, a["diffraction"])
    assert scan.metadata == {}


def test_object_shape_without_object_guess_is_the_smallest_canvas():
    a = _arrays()
    scan = ScanData(path=None, probe=a["probe"], xcoords=a["xcoords"], ycoords=a["ycoords"],
                    diffraction=a["diffraction"])
    H, W = scan.object_shape
    pos = torch.from_numpy(scan.positions)[None]
    patches = torch.ones(1, M, N, N, dtype=torch.complex64)
    physics.place_patches(patches, pos, (H, W), torch.ones(N, N))  # fits
    for shape in ((H - 1, W), (H, W - 1)):
        with pytest.raises(ValueError):
            physics.place_patches(patches, pos, shape, torch.ones(N, N))


def _broken(name: str) -> tuple[dict, str]:
    """File-key arrays with one defect, and the key the message must name."""
    a = _file_keys(_arrays())
    if name == "missing":
        del a["probeGuess"]
        return a, "probeGuess"
    if name == "rank":
        a["diffraction"] = a["diffraction"][0]
        return a, "diffraction"
    if name == "length":
        a["ycoords"] = a["ycoords"][:-1]
        return a, "ycoords"
    if name == "odd_n":
        a["diffraction"] = a["diffraction"][:, :15, :15]
        a["probeGuess"] = a["probeGuess"][:15, :15]
        return a, "diffraction"
    if name == "negative_counts":  # integer counts are read as sqrt(counts); negative ones are refused
        a["diffraction"] = np.round(a["diffraction"] ** 2).astype(np.int32)
        a["diffraction"][2, 1, 1] = -3
        return a, "negative"
    if name == "nan":
        a["diffraction"][2, 3, 4] = np.nan
        return a, "NaN"
    if name == "inf":
        a["diffraction"][5, 0, 0] = np.inf
        return a, "Inf"
    if name == "negative":
        a["diffraction"][1, 1, 1] = -0.5
        return a, "negative"
    if name == "zero_probe":
        a["probeGuess"] = np.zeros_like(a["probeGuess"])
        return a, "probeGuess"
    if name == "outside":
        a["xcoords"][[3, 7]] = 39.0
        return a, "objectGuess"
    if name == "negative_position":
        a["xcoords"][4] = -2.0
        return a, "xcoords"
    if name == "probe_size":
        a["probeGuess"] = np.ones((N + 2, N + 2), np.complex64)
        return a, "probeGuess"
    raise KeyError(name)


BROKEN = ["missing", "rank", "length", "odd_n", "negative_counts", "nan", "inf", "negative", "zero_probe",
          "outside", "negative_position", "probe_size"]


@pytest.mark.parametrize("name", BROKEN)
def test_broken_npz_names_the_key(tmp_path, name):
    arrays, key = _broken(name)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ScanValidationError) as err:
        read_scan(tmp_path / "bad.npz")
    assert key in str(err.value)
    assert str(tmp_path / "bad.npz") in str(err.value)
    with pytest.raises(ScanValidationError):  # the same check runs on arrays before writing
        validate_scan(arrays)


@pytest.mark.parametrize("name", ["nan", "negative", "negative_counts", "outside"])
def test_broken_hdf5_names_the_key(tmp_path, name):
    arrays, key = _broken(name)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, chunks=(4, N, N) if k == "diffraction" else None)
    with pytest.raises(ScanValidationError, match=key.replace("(", r"\(").replace(")", r"\)")):
        read_scan(tmp_path / "bad.h5")


def test_one_error_lists_every_problem(tmp_path):
    a = _file_keys(_arrays())
    a["diffraction"][0, 0, 0] = np.nan
    a["diffraction"][1, 0, 0] = -1.0
    a["ycoords"] = a["ycoords"][:5]
    a["probeGuess"] = np.zeros_like(a["probeGuess"])
    a["xcoords"][2] = 100.0
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(ScanValidationError) as err:
        read_scan(tmp_path / "bad.npz")
    problems = err.value.problems
    text = str(err.value)
    assert len(problems) == 5, text
    for needle in ("NaN", "negative", "ycoords: expected length M = 12", "probeGuess: expected a probe, "
                   "found all zeros", "xcoords: 1 of 12 patches fall outside the 48x40 objectGuess"):
        assert needle in text
    assert "\n" not in text and "5 problems" in text and "(5) " in text  # every problem, on one line
    clone = pickle.loads(pickle.dumps(err.value))  # travels from Ray workers intact
    assert clone.problems == problems


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_failed_write_leaves_no_file(tmp_path, suffix):
    a = _arrays()
    a["diffraction"][0, 0, 0] = np.inf
    with pytest.raises(ScanValidationError, match="Inf"):
        write_scan(tmp_path / f"scan{suffix}", **a)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically_and_keeps_old_file_on_failure(tmp_path):
    path = write_scan(tmp_path / "scan.npz", **_arrays(seed=1))
    bad = _arrays(seed=2)
    bad["probe"] = np.zeros_like(bad["probe"])
    with pytest.raises(ScanValidationError):
        write_scan(path, **bad)
    np.testing.assert_array_equal(read_scan(path).diffraction_block(0, M), _arrays(seed=1)["diffraction"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.npz"]


def test_pickled_object_arrays_are_refused(tmp_path):
    a = _file_keys(_arrays())
    a["metadata"] = np.array({"a": 1}, dtype=object)
    np.savez(tmp_path / "pickled.npz", **a)
    with pytest.raises(ScanValidationError, match="metadata"):
        read_scan(tmp_path / "pickled.npz")


def test_metadata_must_be_a_json_object(tmp_path):
    a = _arrays()
    a["metadata"] = "not json {"
    with pytest.raises(ScanValidationError, match="metadata"):
        write_scan(tmp_path / "scan.npz", **a)
    a["metadata"] = json.dumps({"ok": True})
    assert read_scan(write_scan(tmp_path / "scan.npz", **a)).metadata == {"ok": True}


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ScanValidationError, match="suffix"):
        read_scan(tmp_path / "scan.mat")
    with pytest.raises(FileNotFoundError):
        read_scan(tmp_path / "absent.npz")


def test_multimode_probe_and_no_optional_keys(tmp_path):
    a = _arrays()
    a["probe"] = np.stack([a["probe"], 0.5 * a["probe"]])
    for key in ("object_guess", "scan_index", "metadata"):
        a[key] = None
    scan = read_scan(write_scan(tmp_path / "scan.h5", **a))
    assert scan.probe.shape == (2, N, N)
    assert scan.object_guess is None and scan.scan_index is None and scan.metadata == {}
    validate_scan(scan)


def test_diffraction_wins_over_diff3d_and_garbage_files_fail_cleanly(tmp_path):
    a = _file_keys(_arrays())
    np.savez(tmp_path / "both.npz", diff3d=np.zeros_like(a["diffraction"]), **a)
    np.testing.assert_array_equal(read_scan(tmp_path / "both.npz").diffraction_block(0, len(a["diffraction"])), a["diffraction"])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5 either")
    for name, message in (("garbage.npz", r"is not an \.npz \(zip\) archive"), ("garbage.h5", "could not be opened")):
        with pytest.raises(ScanValidationError, match=message):
            read_scan(tmp_path / name)


def test_validate_false_skips_value_checks(tmp_path):
    a = _file_keys(_arrays())
    a["diffraction"][0, 0, 0] = -1.0
    np.savez(tmp_path / "neg.npz", **a)
    assert read_scan(tmp_path / "neg.npz", validate=False).n_patterns == M


class _Rows(torch.utils.data.Dataset):
    def __init__(self, scan: ScanData) -> None:
        self.scan = scan

    def __len__(self) -> int:
        return self.scan.n_patterns

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.scan.diffraction_rows([i]))


def test_lazy_hdf5_reads_in_dataloader_workers(tmp_path):
    a = _arrays()
    scan = read_scan(write_scan(tmp_path / "scan.h5", **a))
    scan.diffraction_block(0, 1)  # the parent holds an open handle when the workers fork
    loader = torch.utils.data.DataLoader(_Rows(scan), batch_size=4, num_workers=2)
    rows = torch.cat(list(loader))[:, 0].numpy()
    np.testing.assert_array_equal(rows, a["diffraction"])
    scan.close()


@pytest.mark.parametrize("shuffle", [False, True])
def test_batched_hdf5_loading_equals_per_item_loading(tmp_path, tiny_scan, shuffle):
    """The DataLoader fetches a batch with one read (GroupDataset.__getitems__); the samples equal the
    per-item ones, for scan-order (inference) and shuffled (training) batches, NPZ and HDF5 alike."""
    from torch.utils.data import DataLoader

    from ptycho_torch.data.dataset import GroupDataset
    from ptycho_torch.data.grouping import make_groups

    npz = read_scan(tiny_scan)
    h5 = read_scan(write_scan(tmp_path / "scan.h5", diffraction=npz.diffraction_block(0, npz.n_patterns), probe=npz.probe,
                              xcoords=npz.xcoords, ycoords=npz.ycoords))
    assert h5.diffraction is None  # lazy
    for gridsize in (1, 2):
        groups = make_groups(npz.positions, gridsize, rng=np.random.default_rng(0))
        per_item = GroupDataset(npz, groups, 2.0)
        batched = GroupDataset(h5, groups, 2.0)
        order = np.random.default_rng(1).permutation(len(groups)) if shuffle else np.arange(len(groups))
        samples = batched.__getitems__(order[:7].tolist())
        for i, sample in zip(order[:7], samples):
            expected = per_item[int(i)]
            for key in expected:
                torch.testing.assert_close(sample[key], expected[key], rtol=0, atol=0)
        batch = next(iter(DataLoader(batched, batch_size=5, shuffle=False)))
        assert batch["x"].shape == (5, gridsize**2, npz.N, npz.N)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_upstream_normalised_amplitudes_are_brought_to_photons(tmp_path, suffix, caplog):
    """Upstream's contract: normalised amplitudes plus intensity_scale (or nphotons). Both read back
    as sqrt(photon counts), equal to the file written in photon units; a plain file is unchanged and
    the log says which interpretation was used."""
    import logging

    a = _arrays()
    photons = write_scan(tmp_path / f"photons{suffix}", **a)
    norm = a["diffraction"] / 7.5  # normalised: photon amplitude = 7.5 x stored
    keys = {**_file_keys({**a, "diffraction": norm}), "intensity_scale": np.float64(7.5)}
    if suffix == ".npz":
        np.savez(tmp_path / f"scaled{suffix}", **keys)
    else:
        with h5py.File(tmp_path / f"scaled{suffix}", "w") as f:
            for k, v in keys.items():
                f[k] = v
    energy = float(np.mean(np.sum(a["diffraction"].astype(np.float64) ** 2, axis=(1, 2))))
    keys_n = {k: v for k, v in keys.items() if k != "intensity_scale"}
    keys_n["nphotons"] = np.float64(energy)
    np.savez(tmp_path / "nphotons.npz", **keys_n)
    with caplog.at_level(logging.DEBUG, logger="ptycho_torch.data.contract"):
        ref = read_scan(photons)
        scaled = read_scan(tmp_path / f"scaled{suffix}")
        by_dose = read_scan(tmp_path / "nphotons.npz")
    assert ref.photon_scale == 1.0 and scaled.photon_scale == pytest.approx(7.5)
    np.testing.assert_allclose(scaled.diffraction_rows(np.arange(5)), ref.diffraction_rows(np.arange(5)), rtol=1e-5)
    np.testing.assert_allclose(by_dose.diffraction_block(0, M), ref.diffraction_block(0, M), rtol=1e-4)
    assert scaled.mean_energy() == pytest.approx(ref.mean_energy(), rel=1e-5)
    assert "intensity_scale" in caplog.text and "sqrt(photon counts)" in caplog.text and "nphotons" in caplog.text


def test_bad_intensity_scale_is_named(tmp_path):
    keys = {**_file_keys(_arrays()), "intensity_scale": np.float64(-1.0)}
    np.savez(tmp_path / "bad.npz", **keys)
    with pytest.raises(ScanValidationError, match="intensity_scale: expected one positive finite number"):
        read_scan(tmp_path / "bad.npz")
