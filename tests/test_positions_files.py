"""Positions (and any other role) from another file than the frames: a second HDF5 file, a text table,
a Ptychodus product (issue 32, item 2). Each gives the positions the same roles give inside the scan file."""

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
    write_adhoc,
)
from conftest import simulate, tiny_config

from ptycho_torch.config import ConfigError, DataConfig
from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.scan_files import read_scans
from ptycho_torch.data.validation import ScanValidationError

N = 32
M = 24
FRAMES = "::/exp/ccd/frames"
GEOMETRY = {k: v for k, v in ADHOC_DATASETS.items() if k not in ("x", "y")}  # energy, distance, pixel, probe


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    path = simulate(tmp_path_factory.mktemp("sim") / "sim.npz", n_positions=M, nphotons=1e5)
    return read_scan(path)


def _frames_only(path, truth):
    """The ad-hoc layout without its motors: frames, geometry and probe, no positions."""
    t = metres(truth.xcoords, truth.ycoords, N)
    write_adhoc(path, detector_frames(truth.diffraction_block(0, truth.n_patterns)), t[:, 0], t[:, 1], truth.probe[0])
    with h5py.File(path, "a") as f:
        del f["exp/motors"]
    return path


@pytest.fixture
def reference(tmp_path, truth):
    """The positions read from the motors inside the scan file (what every other source must give)."""
    t = metres(truth.xcoords, truth.ycoords, N)
    path = write_adhoc(tmp_path / "inside.h5", detector_frames(truth.diffraction_block(0, M)), t[:, 0], t[:, 1],
                       truth.probe[0])
    return read_scan(f"{path}{FRAMES}", options=ReadOptions(datasets=dict(ADHOC_DATASETS)))


def _read(scan, **datasets):
    return read_scan(f"{scan}{FRAMES}", options=ReadOptions(datasets={**GEOMETRY, **datasets}))


def _same(scan, reference):
    np.testing.assert_allclose(scan.xcoords, reference.xcoords, atol=1e-6)
    np.testing.assert_allclose(scan.ycoords, reference.ycoords, atol=1e-6)


def test_positions_and_geometry_in_a_second_hdf5_file(tmp_path, truth, reference):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    t = metres(truth.xcoords, truth.ycoords, N)
    with h5py.File(tmp_path / "motors.h5", "w") as f:
        f["scan/x"], f["scan/y"] = t[:, 0] * 1e6, t[:, 1] * 1e6  # um, as the units attribute says
        f["scan/x"].attrs["units"] = f["scan/y"].attrs["units"] = "um"
        f["scan/translation"] = t * 1e9
        f["scan/translation"].attrs["units"] = "nm"
        f["px/x"], f["px/y"] = reference.xcoords, reference.ycoords  # object pixels
        f["setup/energy"] = ENERGY_EV / 1e3
        f["setup/energy"].attrs["units"] = "keV"
        f["setup/distance"] = DISTANCE_M * 1e3
        f["setup/distance"].attrs["units"] = "mm"
        f["setup/pixel"] = DET_PIXEL_M
    read = _read(scan, x="motors.h5::/scan/x", y="motors.h5::/scan/y")  # relative to the scan's folder
    _same(read, reference)
    assert read.metadata["positions_from"] == (f"{tmp_path / 'motors.h5'}::/scan/x, "
                                               f"{tmp_path / 'motors.h5'}::/scan/y (metres)")
    assert read.metadata["pixel_size_m"] == pytest.approx(reference.metadata["pixel_size_m"], rel=1e-12)
    _same(_read(scan, translation=f"{tmp_path / 'motors.h5'}::scan/translation"), reference)  # absolute
    _same(_read(scan, xcoords="motors.h5::/px/x", ycoords="motors.h5::/px/y"), reference)
    # energy, distance and pixel size from the other file too (keV and mm by their units attributes)
    other = read_scan(f"{scan}{FRAMES}", options=ReadOptions(datasets={
        "probe": ADHOC_DATASETS["probe"], "translation": "motors.h5::/scan/translation",
        "energy": "motors.h5::/setup/energy", "distance": "motors.h5::/setup/distance",
        "detector_pixel": "motors.h5::/setup/pixel"}))
    _same(other, reference)
    assert other.metadata["pixel_size_m"] == pytest.approx(reference.metadata["pixel_size_m"], rel=1e-9)
    # the other file is closed once read (HDF5 refuses to reopen an open file for writing)
    with h5py.File(tmp_path / "motors.h5", "a"):
        pass
    np.testing.assert_allclose(other.diffraction_rows([2]), reference.diffraction_rows([2]))  # frames stay lazy


TABLES = {
    # a CSV whose header names the columns and their unit
    "positions.csv": ("x_um,y_um\n{rows}", lambda x, y: f"{x * 1e6:.9f},{y * 1e6:.9f}", ""),
    # cSAXS: a '# units' line, a header 'Y X' (y first), whitespace
    "positions.txt": ("# scan 17\n# units: nm\nY X\n{rows}", lambda x, y: f"{y * 1e9:.6f} {x * 1e9:.6f}", ""),
    # LYNX: a title line, a header of five columns (two with an x part), um named in the spec
    "positions.dat": ("scan 17, fermat\nDetector_Count Average_x_st_fzp Stdev_x_st_fzp Average_y_st_fzp "
                      "Stdev_y_st_fzp\n{rows}", lambda x, y: f"1 {x * 1e6:.9f} 0.01 {y * 1e6:.9f} 0.02",
                      "::x=Average_x_st_fzp y=Average_y_st_fzp units=um"),
    # a header with bracketed units, spaces
    "spaces.dat": ("x (mm) y (mm)\n{rows}", lambda x, y: f"{x * 1e3:.12f}   {y * 1e3:.12f}", ""),
    # no header, tabs, the unit in the spec
    "plain.tsv": ("{rows}", lambda x, y: f"{x * 1e6:.9f}\t{y * 1e6:.9f}\t0", "::um"),
}


def _table(path, truth, name):
    layout, row, _ = TABLES[name]
    t = metres(truth.xcoords, truth.ycoords, N)
    path.write_text(layout.format(rows="\n".join(row(x, y) for x, y in t[:, :2])) + "\n")
    return path


@pytest.mark.parametrize("name", list(TABLES))
def test_text_tables_of_positions(tmp_path, truth, reference, name):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    _table(tmp_path / name, truth, name)
    read = _read(scan, translation=name + TABLES[name][2])
    _same(read, reference)
    assert read.metadata["positions_from"] == f"{tmp_path / name} (metres)"


def test_text_table_in_object_pixels(tmp_path, truth, reference):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    rows = "\n".join(f"{x:.9f}, {y:.9f}" for x, y in zip(reference.xcoords, reference.ycoords))
    (tmp_path / "coords.csv").write_text(f"x (px), y (px)\n{rows}\n")
    read = _read(scan, xcoords="coords.csv", ycoords="coords.csv")
    _same(read, reference)
    assert "coords.csv column x (px)" in read.metadata["positions_from"]
    with pytest.raises(ScanValidationError, match=r"translation: column x \(px\) of .*coords.csv holds object "
                                                  r"pixels; give the file as data.datasets.xcoords and ycoords"):
        _read(scan, translation="coords.csv")


def test_ptychodus_product_positions(tmp_path, truth, reference):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    t = metres(truth.xcoords, truth.ycoords, N)
    with h5py.File(tmp_path / "product.h5", "w") as f:  # the datasets and attributes Ptychodus writes
        f.attrs.update({"name": "scan", "detector_object_distance_m": 1.0, "photon_energy_eV": 8000.0})
        f["probe_position_indexes"] = np.arange(len(t))
        f["probe_position_x_m"], f["probe_position_y_m"] = t[:, 0], t[:, 1]
        f["probe"] = truth.probe[None]
        f["probe"].attrs["pixel_width_m"] = f["probe"].attrs["pixel_height_m"] = 1e-8
        f["object"] = np.ones((1, 8, 8), np.complex64)
        f["object"].attrs.update({"center_x_m": 0.0, "center_y_m": 0.0, "pixel_width_m": 1e-8, "pixel_height_m": 1e-8})
    _same(_read(scan, translation="product.h5"), reference)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["positions"] = t
    with pytest.raises(ScanValidationError, match=r"other.h5 is not a Ptychodus product \(no root datasets object, "
                                                  r"probe, .*name the dataset: other.h5::/path"):
        _read(scan, translation="other.h5")


def test_positions_from_a_product_written_in_object_pixels(tmp_path, truth):
    """A product this project wrote without a pixel size keeps its lengths in object pixels: its positions
    come back as the scan's own xcoords / ycoords (up to the product's centring), never as metres."""
    from ptycho_torch.reconstruction.exports import write_product_file

    scan = _frames_only(tmp_path / "scan.h5", truth)
    H, W = truth.object_shape
    write_product_file(tmp_path / "product.h5", np.ones((H, W), np.complex64), truth.probe, truth.xcoords,
                       truth.ycoords, N, {})
    read = _read(scan, xcoords="product.h5", ycoords="product.h5")
    np.testing.assert_allclose(read.xcoords, truth.xcoords, atol=1e-9)
    np.testing.assert_allclose(read.ycoords, truth.ycoords, atol=1e-9)
    with pytest.raises(ScanValidationError, match="holds object pixels"):
        _read(scan, translation="product.h5")


def test_row_count_mismatch_is_one_line(tmp_path, truth):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    path = _table(tmp_path / "positions.csv", truth, "positions.csv")
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")  # 21 rows
    with pytest.raises(ScanValidationError) as err:
        _read(scan, translation="positions.csv")
    text = str(err.value)
    assert "\n" not in text and len(err.value.problems) == 1, text
    assert f"at {path}, found shape (21, 2) (21 rows for 24 frames); give one row per frame" in text


@pytest.mark.parametrize("layout", ["# units: parsec\nx y\n1 2\n", "x [parsec], y [parsec]\n1, 2\n"])
def test_unknown_unit_is_one_line_listing_the_units(tmp_path, truth, layout):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    (tmp_path / "positions.txt").write_text(layout)
    with pytest.raises(ScanValidationError) as err:
        _read(scan, translation="positions.txt")
    text = str(err.value)
    assert "\n" not in text and len(err.value.problems) == 1, text
    assert "positions.txt: unknown unit 'parsec'; use one of m, metre" in text and "um" in text and "px" in text


def test_text_table_problems_name_the_fix(tmp_path, truth):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    _table(tmp_path / "positions.dat", truth, "positions.dat")
    with pytest.raises(ScanValidationError, match=r"which column is x\? the header .* gives Average_x_st_fzp, "
                                                  r"Stdev_x_st_fzp; name the columns: positions.dat::x=COLUMN"):
        _read(scan, translation="positions.dat::um")
    (tmp_path / "c.txt").write_text("# units: nm\nx y\n1 2\n")
    with pytest.raises(ScanValidationError, match=r"c.txt says its unit is nm, its data.datasets value says "
                                                  r"units=um; drop one"):
        _read(scan, translation="c.txt::um")
    (tmp_path / "d.txt").write_text("x y\n1 2\n3 oops\n")
    with pytest.raises(ScanValidationError, match=r"d.txt: line 3 is not a row of numbers"):
        _read(scan, translation="d.txt")


def test_missing_files_datasets_and_shapes_are_collected(tmp_path, truth):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    with h5py.File(tmp_path / "motors.h5", "w") as f:
        f["x"], f["y"] = np.zeros((M, 2)), np.zeros(M)
    with pytest.raises(ScanValidationError) as err:
        read_scan(f"{scan}{FRAMES}", options=ReadOptions(datasets={
            **GEOMETRY, "x": "motors.h5::/x", "y": "motors.h5::/y", "energy": "motors.h5::/energy",
            "distance": "nowhere.h5::/z"}))
    text, problems = str(err.value), err.value.problems
    assert "\n" not in text and len(problems) == 3, text
    assert f"energy: {tmp_path / 'motors.h5'} has no dataset /energy; check the path after '::'" in text
    assert f"distance: {tmp_path / 'nowhere.h5'} does not exist (data.datasets.distance = nowhere.h5::/z; a " \
           f"relative path starts at the scan file's folder {tmp_path})" in text
    assert f"x: expected ({M},) values, one per frame, at {tmp_path / 'motors.h5'}::/x, found shape ({M}, 2)" in text


def test_frames_stay_in_the_scan_file(tmp_path, truth):
    scan = _frames_only(tmp_path / "scan.h5", truth)
    with pytest.raises(ScanValidationError, match=r"frames: data.datasets.frames = other.h5 names another file; "
                                                  r"frames are read from the scan file itself"):
        read_scan(scan, options=ReadOptions(datasets={**GEOMETRY, "frames": "other.h5", "translation": "p.csv"}))
    with pytest.raises(ConfigError, match=r"data.datasets.*frames: got 'other.h5::/d'; frames are read from the "
                                          r"scan file itself: give --data other.h5::/d"):
        DataConfig(datasets={"frames": "other.h5::/d"})
    with pytest.raises(ConfigError, match=r"x: got 'pos.h5::'; give a dataset path, OTHER.h5::/path/in/it"):
        DataConfig(datasets={"x": "pos.h5::"})
    DataConfig(datasets={"translation": "positions.dat::x=2 y=4 units=um", "energy": "meta.h5::/e"})


def test_several_files_each_read_their_own_positions(tmp_path, truth):
    """read_scans over files in two folders: each file's relative positions.csv is the one beside it."""
    halves = [np.arange(0, 12), np.arange(12, M)]
    for k, rows in enumerate(halves):
        folder = tmp_path / f"part{k}"
        folder.mkdir()
        _frames_only(folder / "scan.h5", truth.subset(rows))
        t = metres(truth.xcoords[rows], truth.ycoords[rows], N)
        lines = "\n".join(f"{x * 1e6:.9f} {y * 1e6:.9f}" for x, y in t[:, :2])
        (folder / "positions.csv").write_text(f"x_um y_um\n{lines}\n")
    scan = read_scans(f"{tmp_path}/part*/scan.h5{FRAMES}",
                      options=ReadOptions(datasets={**GEOMETRY, "translation": "positions.csv"}))
    assert len(scan.parts) == 2 and scan.n_patterns == M
    for part, rows in zip(scan.parts, halves):
        x = truth.xcoords[rows]
        np.testing.assert_allclose(part.xcoords, x - x.min() + N / 2, atol=1e-6)
        assert part.metadata["positions_from"].startswith(str(part.path.parent / "positions.csv"))


def test_cli_value_forms_reach_the_reader(tmp_path):
    """--data.datasets takes a YAML mapping: values with '::' and spaces survive the flow style."""
    from ptycho_torch.cli.flags import cli_overrides
    from ptycho_torch.cli.main import build_parser

    value = "{translation: positions.dat::x=Average_x_st_fzp y=Average_y_st_fzp units=um, energy: m.h5::/e}"
    args = build_parser().parse_args(["train", "--data", "scan.h5", "--out", str(tmp_path), "--data.datasets", value])
    config = tiny_config("scan.h5", **cli_overrides(args))
    assert ReadOptions.from_config(config).datasets == {
        "translation": "positions.dat::x=Average_x_st_fzp y=Average_y_st_fzp units=um", "energy": "m.h5::/e"}


def test_a_scan_whose_positions_live_in_a_second_file_trains(tmp_path, truth):
    """No conversion step: the frames file and a positions table train as they are."""
    from ptycho_torch.training.train import train

    scan = _frames_only(tmp_path / "scan.h5", truth)
    _table(tmp_path / "positions.csv", truth, "positions.csv")
    config = tiny_config(f"{scan}{FRAMES}", **{
        "trainer.max_epochs": 1, "logging.logger": "none", "trainer.enable_checkpointing": False,
        "data.datasets": {**GEOMETRY, "translation": "positions.csv"}})
    run = train(config, tmp_path / "run")
    assert run.epochs_completed == 1 and np.isfinite(run.metrics["train_loss"])
