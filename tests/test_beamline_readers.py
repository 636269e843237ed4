"""CXI, NeXus and ad-hoc HDF5 files read as scans: counts, metres, crops, binning, masks, damage."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from beamline_layouts import (
    ADHOC_DATASETS,
    DET_PIXEL_M,
    DISTANCE_M,
    ENERGY_EV,
    detector_frames,
    metres,
    pixel_m,
    write_adhoc,
    write_cxi,
    write_nexus,
)
from conftest import simulate

from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.detector import EV_J, centroid, fit_probe, object_pixel_m, wavelength_m
from ptycho_torch.data.scan_files import read_scans
from ptycho_torch.data.validation import ScanValidationError

N = 32


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """A simulated 32x32 scan of 24 patterns (amplitudes, probe, positions in object pixels)."""
    path = simulate(tmp_path_factory.mktemp("sim") / "sim.npz", n_positions=24, nphotons=1e5)
    return read_scan(path)


def _amplitudes(truth):
    return truth.diffraction_block(0, truth.n_patterns)


def _expect_positions(truth, x, y):
    """Positions read back equal the truth's, shifted so that the smallest is N/2."""
    np.testing.assert_allclose(x, truth.xcoords - truth.xcoords.min() + N / 2, atol=1e-6)
    np.testing.assert_allclose(y, truth.ycoords - truth.ycoords.min() + N / 2, atol=1e-6)


def test_physics_of_the_pixel_size():
    # 8 keV -> 1.5498 Angstrom; lambda z / (N Delta) at 2 m, 75 um, N = 32 -> 129.15 nm
    assert wavelength_m(8000 * EV_J) == pytest.approx(1.54980e-10, rel=1e-5)
    assert object_pixel_m(8000 * EV_J, 2.0, 32, 75e-6) == pytest.approx(1.54980e-10 * 2 / (32 * 75e-6), rel=1e-5)


@pytest.mark.parametrize("energy_units", [None, "eV"])
def test_cxi_counts_and_metres(tmp_path, truth, energy_units):
    counts = detector_frames(_amplitudes(truth))
    path = write_cxi(tmp_path / "scan.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0],
                     energy_units=energy_units)
    scan = read_scan(path)
    assert scan.is_lazy and scan.n_patterns == 24 and scan.N == N
    meta = scan.metadata
    assert meta["format"] == "cxi" and meta["frames"] == "/entry_1/data_1/data"
    expected = wavelength_m(ENERGY_EV * EV_J) * DISTANCE_M / (N * DET_PIXEL_M)
    assert meta["pixel_size_m"] == pytest.approx(expected, rel=1e-9)
    assert "photon counts (uint16)" in meta["diffraction_read_as"]
    _expect_positions(truth, scan.xcoords, scan.ycoords)
    np.testing.assert_allclose(scan.diffraction_rows([3, 1]), np.sqrt(counts[[3, 1]].astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(scan.probe[0], truth.probe[0], rtol=1e-6)


def test_cxi_larger_detector_cropped_around_beam(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth), frame=80, corner=(20, 30))
    path = write_cxi(tmp_path / "big.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0])
    # beam centre given: DC of the 32x32 pattern (pixel 16) sits at detector (36, 46)
    scan = read_scan(path, options=ReadOptions(N=N, beam_center=(36, 46)))
    assert scan.N == N and scan.metadata["crop_window"] == [20, 52, 30, 62]
    np.testing.assert_allclose(scan.diffraction_block(0, 24), np.sqrt(counts[:, 20:52, 30:62].astype(np.float64)),
                               rtol=1e-6)
    # the probe was sampled for 32x32 patterns, so it is used as it is; the pixel is lambda z / (32 Delta)
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N), rel=1e-9)


def test_beam_centre_from_the_mean_pattern(tmp_path):
    rows, cols = np.mgrid[0:96, 0:96]
    blob = 1e4 * np.exp(-((rows - 41.0) ** 2 + (cols - 57.0) ** 2) / (2 * 3.0 ** 2))
    frames = np.repeat(np.round(blob)[None], 10, axis=0).astype(np.uint16)
    assert centroid(blob) == pytest.approx((41.0, 57.0), abs=1e-6)
    probe = np.ones((N, N), np.complex64)
    path = write_cxi(tmp_path / "blob.cxi", frames, np.stack([np.arange(10) * 1e-7] * 2 + [np.zeros(10)], 1), probe)
    scan = read_scan(path, options=ReadOptions(N=N))
    assert scan.metadata["beam_center_from"] == "mean pattern centroid"
    assert scan.metadata["crop_window"] == [25, 57, 41, 73]
    pattern = scan.diffraction_rows([0])[0]
    assert np.unravel_index(np.argmax(pattern), pattern.shape) == (N // 2, N // 2)  # DC at N/2


def test_binning_sums_counts_and_doubles_the_detector_pixel(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.poisson(50, (6, 64, 64)).astype(np.uint16)
    path = write_cxi(tmp_path / "bin.cxi", frames, np.stack([np.arange(6) * 1e-7] * 2 + [np.zeros(6)], 1),
                     np.ones((N, N), np.complex64))
    scan = read_scan(path, options=ReadOptions(N=N, frame_fit="bin", beam_center=(32, 32)))
    assert scan.metadata["binning"] == 2 and scan.N == N
    binned = frames.astype(np.float64).reshape(6, 32, 2, 32, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(scan.diffraction_block(0, 6), np.sqrt(binned), rtol=1e-6)
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N, binning=2), rel=1e-9)
    assert scan.metadata["detector_pixel_m"] == pytest.approx(2 * DET_PIXEL_M)


def test_probe_for_the_full_detector_is_resampled():
    # a Gaussian probe of sigma 4 px sampled for 64x64 frames is sigma 2 px on the grid of 32x32 patterns
    # (the object pixel doubles when only the central 32x32 of the detector is kept)
    r, c = np.mgrid[0:64, 0:64] - 32
    probe = np.exp(-(r ** 2 + c ** 2) / (2 * 4.0 ** 2)).astype(np.complex64)
    out = fit_probe(probe, (64, 64), N, 1)[0]
    r2, c2 = np.mgrid[0:N, 0:N] - N // 2
    expect = np.exp(-(r2 ** 2 + c2 ** 2) / (2 * 2.0 ** 2))
    np.testing.assert_allclose(np.abs(out) / np.abs(out).max(), expect, atol=1e-3)


def test_mask_from_the_file_zeroes_pixels(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    mask = np.zeros((N, N), bool)
    mask[16, 16] = mask[3, 5] = True  # beamstop / hot pixel
    path = write_cxi(tmp_path / "m.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0], mask=mask)
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.mask, mask)
    rows = scan.diffraction_rows([0, 1])
    assert (rows[:, mask] == 0).all() and (rows[:, ~mask] > 0).any()
    assert "2 masked pixels" in scan.metadata["diffraction_read_as"]


def test_mask_from_npy_for_a_contract_file(tmp_path, truth):
    mask = np.zeros((N, N), np.uint8)
    mask[0, :] = 1
    np.save(tmp_path / "mask.npy", mask)
    scan = read_scan(truth.path, options=ReadOptions(mask=str(tmp_path / "mask.npy")))
    assert scan.mask[0].all() and not scan.mask[1:].any()
    assert (scan.diffraction_rows([2])[0, 0] == 0).all()
    with pytest.raises(ScanValidationError, match=r"data.mask: expected 32x32"):
        np.save(tmp_path / "bad.npy", np.zeros((4, 4)))
        read_scan(truth.path, options=ReadOptions(mask=str(tmp_path / "bad.npy")))


@pytest.mark.parametrize("positions_in", ["axes", "positioners"])
def test_nexus_found_by_nx_class(tmp_path, truth, positions_in):
    counts = detector_frames(_amplitudes(truth))
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_nexus(tmp_path / "scan.nxs", counts, t[:, 0], t[:, 1], truth.probe[0], positions_in=positions_in)
    scan = read_scan(path)
    assert scan.metadata["format"] == "nexus" and scan.metadata["frames"] == "/scan/measurement/counts"
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N), rel=1e-9)
    _expect_positions(truth, scan.xcoords, scan.ycoords)
    np.testing.assert_allclose(scan.diffraction_rows([0]), np.sqrt(counts[[0]].astype(np.float64)), rtol=1e-6)


def test_adhoc_hdf5_by_dataset_paths(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_adhoc(tmp_path / "adhoc.h5", counts, t[:, 0], t[:, 1], truth.probe[0])
    options = ReadOptions(datasets=dict(ADHOC_DATASETS))
    scan = read_scans(f"{path}::/exp/ccd/frames", options=options)
    assert scan.metadata["format"] == "hdf5" and scan.metadata["frames"] == "/exp/ccd/frames"
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N), rel=1e-9)
    _expect_positions(truth, scan.xcoords, scan.ycoords)
    # the same with frames named among the datasets, and with flips / transposes
    flipped = read_scan(path, options=ReadOptions(datasets={**ADHOC_DATASETS, "frames": "/exp/ccd/frames"},
                                                  positions_transpose=True, positions_flip_x=True))
    np.testing.assert_allclose(flipped.xcoords, -(truth.ycoords - truth.ycoords.max()) + N / 2, atol=1e-6)
    np.testing.assert_allclose(flipped.ycoords, truth.xcoords - truth.xcoords.min() + N / 2, atol=1e-6)


def test_damaged_cxi_is_one_error_listing_everything(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    path = write_cxi(tmp_path / "bad.cxi", counts, metres(truth.xcoords, truth.ycoords, N)[:-3], None)
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/source_1/energy"]
    with pytest.raises(ScanValidationError) as err:
        read_scan(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    assert "translation: expected (M, 3) = (24, 3)" in text and "found shape (21, 3)" in text
    assert "probe: no probe in the file (looked at /entry_1/instrument_1/source_1/illumination" in text
    assert len(err.value.problems) == 2, text
    # missing frames, and frames of the wrong rank
    with h5py.File(path, "a") as f:
        del f["entry_1/data_1/data"], f["entry_1/instrument_1/detector_1/data"]
    with pytest.raises(ScanValidationError, match=r"frames: no detector frames found \(looked at /entry_1/data_1/data"):
        read_scan(path)
    with h5py.File(path, "a") as f:
        f["entry_1/data_1/data"] = counts[0]
    with pytest.raises(ScanValidationError, match=r"frames: expected an \(M, rows, columns\) dataset.*found shape \(32, 32\)"):
        read_scan(path)


def test_metres_without_geometry_names_the_config_keys(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_adhoc(tmp_path / "adhoc.h5", counts, t[:, 0], t[:, 1], truth.probe[0])
    datasets = {k: v for k, v in ADHOC_DATASETS.items() if k not in ("energy", "distance")}
    with pytest.raises(ScanValidationError, match=r"needs energy .*data.energy_ev.*distance .*data.distance_m"):
        read_scan(f"{path}::/exp/ccd/frames", options=ReadOptions(datasets=datasets))
    scan = read_scan(f"{path}::/exp/ccd/frames", options=ReadOptions(datasets=datasets, energy_ev=ENERGY_EV,
                                                                     distance_m=DISTANCE_M))
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N), rel=1e-9)


def test_unknown_layout_says_how_to_name_the_datasets(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["stuff"] = np.zeros((3, 4, 4))
    with pytest.raises(ScanValidationError, match=r"FILE.h5::/path/to/frames and data.datasets"):
        read_scan(tmp_path / "x.h5")


def test_the_data_format_example_runs(tmp_path, truth, monkeypatch):
    """The Python example of docs/data_format.md ('Beamline files') on files written in its layouts."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "data_format.md").read_text()
    section = text[text.index("## Beamline files"):text.index("## Reconstruction products")]
    code = section[section.index("```python") + len("```python"):section.rindex("```")]
    counts = detector_frames(_amplitudes(truth))
    write_cxi(tmp_path / "scan_1234.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0])
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "eiger.h5", "w") as f:  # non-square frames, beam off centre
        frames = rng.poisson(5, (4, 70, 90)).astype(np.uint32)
        frames[:, 30:40, 50:60] += 5000
        f["entry/data/data"] = frames
        f["entry/sample/x"], f["entry/sample/y"] = np.arange(4) * 1e-7, np.zeros(4)
        f["entry/energy"], f["entry/z"], f["entry/pixel"] = 8000.0, 5.0, 75e-6
        f["entry/probe"] = np.ones((64, 64), np.complex64)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "data_format.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["scan"].metadata["format"] == "cxi"
    big = namespace["big"]
    assert big.N == 64 and big.metadata["crop_window"] == [3, 67, 22, 86]
    assert big.metadata["pixel_size_m"] == pytest.approx(object_pixel_m(8000 * EV_J, 5.0, 64, 75e-6), rel=1e-9)


def test_damaged_nexus_names_what_is_missing(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_nexus(tmp_path / "bad.nxs", counts, t[:-1, 0], t[:-1, 1], truth.probe[0])  # one position short
    with h5py.File(path, "a") as f:
        del f["scan/beamline/mono"]  # no energy
    with pytest.raises(ScanValidationError) as err:
        read_scan(path)
    text = str(err.value)
    assert "positions: no scan positions found" in text and "data.datasets.translation" in text
    with h5py.File(path, "a") as f:  # positions of the right length, still no energy
        del f["scan/measurement/x"], f["scan/measurement/y"]
        f["scan/measurement/x"], f["scan/measurement/y"] = t[:, 0], t[:, 1]
    with pytest.raises(ScanValidationError, match=r"needs energy \(the nexus layout names none; or set data.energy_ev\)"):
        read_scan(path)
    assert read_scan(path, options=ReadOptions(energy_ev=ENERGY_EV)).metadata["pixel_size_m"] == pytest.approx(
        pixel_m(N), rel=1e-9)


def test_plots_get_physical_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptycho_torch.evaluation.plots import _show, physical_unit

    assert physical_unit(5e-6) == ("\u00b5m", 1e-6) and physical_unit(5e-7) == ("nm", 1e-9)
    fig, ax = plt.subplots()
    _show(fig, ax, np.ones((40, 80)), "t", "gray", "a", pixel_size_m=50e-9)  # 80 px x 50 nm = 4 um
    assert ax.get_xlabel() == "x (\u00b5m)" and ax.get_ylabel() == "y (\u00b5m)"
    x0, x1 = ax.get_xlim()
    assert x1 - x0 == pytest.approx(80 * 0.05)
    fig2, ax2 = plt.subplots()
    _show(fig2, ax2, np.ones((4, 8)), "t", "gray", "a")
    assert ax2.get_xlabel() == "x (px)"
    plt.close("all")


def test_cxi_with_nexus_attributes_and_no_version_is_read_as_cxi(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    path = write_cxi(tmp_path / "nx.cxi", counts, metres(truth.xcoords, truth.ycoords, N), truth.probe[0])
    with h5py.File(path, "a") as f:
        del f["cxi_version"]
        f["entry_1"].attrs["NX_class"] = "NXentry"
        f["entry_1/data_1"].attrs["NX_class"] = "NXdata"
        f["entry_1/data_1"].attrs["signal"] = "data"
    scan = read_scan(path)
    assert scan.metadata["format"] == "cxi"
    _expect_positions(truth, scan.xcoords, scan.ycoords)


def test_nexus_wavelength_instead_of_energy(tmp_path, truth):
    counts = detector_frames(_amplitudes(truth))
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_nexus(tmp_path / "wl.nxs", counts, t[:, 0], t[:, 1], truth.probe[0])
    with h5py.File(path, "a") as f:  # NXptycho style: NXbeam incident_wavelength in angstrom
        del f["scan/beamline/mono"]
        beam = f.create_group("scan/beamline/beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam["incident_wavelength"] = wavelength_m(ENERGY_EV * EV_J) * 1e10
        beam["incident_wavelength"].attrs["units"] = "Angstrom"
    scan = read_scan(path)
    assert scan.metadata["pixel_size_m"] == pytest.approx(pixel_m(N), rel=1e-9)
    assert scan.metadata["energy_ev"] == pytest.approx(ENERGY_EV, rel=1e-9)
