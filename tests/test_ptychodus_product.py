"""Ptychodus product files both ways, and reconstruction.cxi's geometry at the CXI paths (issue 32, 1 and 3).

A reconstruction writes product.h5 (Ptychodus's product layout) that our reader reads back with the
object, probe modes, positions in metres and pixel size it was written with; a product built here key
by key as Ptychodus's save_product writes one reads with our reader and serves as `data.probe` for
NPZ and CXI scans and for training; reconstruction.cxi's energy, distance, detector pixel and
translations sit where the CXI reader (CXI_ROLES) finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from beamline_layouts import DET_PIXEL_M, DISTANCE_M, ENERGY_EV, detector_frames, metres, pixel_m, write_cxi
from conftest import simulate, tiny_config

from ptycho_torch.data.beamline import ReadOptions, read_array_source
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.cxi_files import CXI_ROLES, cxi_roles, is_cxi
from ptycho_torch.data.detector import EV_J, LIGHT_M_S, PLANCK_J_S, to_joules
from ptycho_torch.data.ptychodus_files import is_product, read_product
from ptycho_torch.errors import UserError

N = 32
SHIFT_M = np.array([3.7e-6, -1.2e-6, 0.0])  # the scan's positions do not start at 0


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return read_scan(simulate(tmp_path_factory.mktemp("sim") / "sim.npz", n_positions=48, nphotons=1e5))


@pytest.fixture(scope="module")
def cxi(tmp_path_factory, sim):
    """(path, scan read from it, its translations (M, 3) metres): a CXI file with the full geometry."""
    t = metres(sim.xcoords, sim.ycoords, N) + SHIFT_M
    path = write_cxi(tmp_path_factory.mktemp("cxi") / "scan.cxi", detector_frames(sim.diffraction_block(0, 48)), t,
                     sim.probe[0])
    return path, read_scan(path), t


def _reconstruction(out: Path, scan, seed: int = 1, modes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """write_reconstruction of a random object with a `modes`-mode probe: (object (H, W), probe (P, N, N))."""
    from ptycho_torch.reconstruction.reconstruct import write_reconstruction

    rng = np.random.default_rng(seed)
    H, W = scan.object_shape
    obj = (rng.normal(size=(H, W)) + 1j * rng.normal(size=(H, W))).astype(np.complex64)
    ramp = np.exp(2j * np.pi * np.arange(N) / N)[None, :]
    probe = np.stack([scan.probe[0] * (0.5 ** k) * ramp ** k for k in range(modes)]).astype(np.complex64)
    meta = {"engine": "test", "data": [str(scan.path)]}
    write_reconstruction(out, obj, rng.random((H, W)).astype(np.float32), scan, meta, probe=probe)
    return obj, probe


def test_a_reconstruction_product_reads_back(tmp_path, cxi):
    _, scan, t = cxi
    obj, probe = _reconstruction(tmp_path, scan)
    path = tmp_path / "product.h5"
    assert is_product(path) and is_product(str(path))
    assert not is_product(tmp_path / "reconstruction.cxi") and not is_product(tmp_path / "object.npz")
    assert not is_product(tmp_path / "missing.h5")
    product = read_product(path)
    np.testing.assert_array_equal(product.object[0], obj)
    assert product.object.shape == (1, *obj.shape) and product.object.dtype == np.complex64
    np.testing.assert_array_equal(product.probe, probe)  # both modes
    assert product.probe.shape == (2, N, N) and product.probe.dtype == np.complex64 and product.opr_modes == 1
    # pixel size and positions in metres, in the frame of the scan file
    assert product.pixel_size_m == pytest.approx(pixel_m(N), rel=1e-12)
    assert product.object_pixel == pytest.approx((pixel_m(N),) * 2, rel=1e-12)
    assert product.probe_pixel == pytest.approx((pixel_m(N),) * 2, rel=1e-12)
    np.testing.assert_allclose(product.position_x, t[:, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(product.position_y, t[:, 1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(product.position_indexes, np.arange(len(t)))
    # Ptychodus's mapping (centre at pixel (W-1)/2) takes the positions back to our object pixels
    np.testing.assert_allclose(product.xcoords, scan.xcoords, atol=1e-6)
    np.testing.assert_allclose(product.ycoords, scan.ycoords, atol=1e-6)
    meta = product.metadata
    assert meta["photon_energy_eV"] == pytest.approx(ENERGY_EV, rel=1e-9)
    assert meta["energy_j"] == pytest.approx(ENERGY_EV * EV_J, rel=1e-9)
    assert meta["wavelength_m"] == pytest.approx(PLANCK_J_S * LIGHT_M_S / (ENERGY_EV * EV_J), rel=1e-9)
    assert meta["detector_distance_m"] == pytest.approx(DISTANCE_M, rel=1e-12)
    assert meta["detector_pixel_m"] == pytest.approx(DET_PIXEL_M, rel=1e-12)
    assert meta["probe_photon_count"] == pytest.approx(float(np.sum(np.abs(probe.astype(np.complex128)) ** 2)),
                                                       rel=1e-6)
    assert meta["name"] == "scan" and meta["length_units"] == "m" and meta["far_field"] is True


def test_a_product_without_a_pixel_size_is_in_object_pixels(tmp_path, sim):
    assert "pixel_size_m" not in sim.metadata
    obj, probe = _reconstruction(tmp_path, sim, modes=1)
    product = read_product(tmp_path / "product.h5")
    assert product.length_units == "pixel" and product.pixel_size_m is None
    assert product.object_pixel == (1.0, 1.0)
    np.testing.assert_array_equal(product.object[0], obj)
    np.testing.assert_array_equal(product.probe, probe)
    np.testing.assert_allclose(product.xcoords, sim.xcoords, atol=1e-9)
    np.testing.assert_allclose(product.ycoords, sim.ycoords, atol=1e-9)
    assert "OBJECT PIXELS" in product.metadata["comments"]
    assert product.metadata["energy_j"] is None and product.metadata["detector_distance_m"] is None


def _ptychodus_product(path: Path, probe: np.ndarray, *, energy_key: str = "photon_energy_eV",
                       opr_modes: int = 2, H: int = 90, W: int = 100) -> dict:
    """A product written key by key as ptychodus.api.io.save_product writes one (1.7): root attributes,
    probe (O, P, N, N) complex128 with its pixel size, object (1, H, W) with pixel size and centre,
    positions in metres, layer spacing and losses. Returns what was written."""
    rng = np.random.default_rng(5)
    px, py, cx, cy = 12e-9, 15e-9, 4.2e-6, -7.5e-6
    xc, yc = rng.uniform(N / 2, W - N / 2, 20), rng.uniform(N / 2, H - N / 2, 20)  # object pixels
    x_m, y_m = cx + px * (xc - (W - 1) / 2), cy + py * (yc - (H - 1) / 2)
    probe = np.asarray(probe).reshape(-1, N, N)  # (P, N, N) incoherent modes
    probes = np.stack([probe * (1 + k) for k in range(opr_modes)]).astype(np.complex128)  # (O, P, N, N)
    obj = np.exp(1j * rng.normal(size=(1, H, W)))
    with h5py.File(path, "w") as f:
        f.attrs.update({"name": "ptychodus scan 17", "comments": "from pty-chi", "detector_object_distance_m": 1.5,
                        energy_key: 10000.0, "probe_photon_count": 1e9, "exposure_time_s": 0.0,
                        "mass_attenuation_m2_per_kg": 0.0, "tomography_angle_deg": 0.0,
                        "focus_object_distance_m": 0.0, "tilt_angle_deg": 0.0, "far_field": True})
        f["probe_position_indexes"] = np.arange(20) * 3
        f["probe_position_x_m"], f["probe_position_y_m"] = x_m, y_m
        f["probe"] = probes
        f["probe"].attrs["pixel_width_m"], f["probe"].attrs["pixel_height_m"] = px, py
        if opr_modes > 1:
            f["opr_weights"] = rng.random((20, opr_modes))
        f["object"] = obj
        f["object"].attrs.update({"center_x_m": cx, "center_y_m": cy, "pixel_width_m": px, "pixel_height_m": py})
        f["object_layer_spacing_m"] = np.zeros(0)
        f["loss_epochs"], f["loss_values"] = np.arange(3), np.array([3.0, 2.0, 1.0])
    return {"xcoords": xc, "ycoords": yc, "probes": probes, "object": obj, "pixel": (px, py), "center": (cx, cy)}


def test_a_product_written_with_ptychodus_keys_reads(tmp_path, sim):
    probe = np.stack([sim.probe[0], 0.2 * sim.probe[0].conj()])  # two incoherent modes
    written = _ptychodus_product(tmp_path / "p.h5", probe)
    assert is_product(tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5") as f:
        assert is_product(f)
    product = read_product(tmp_path / "p.h5")
    assert product.opr_modes == 2
    np.testing.assert_array_equal(product.probe, written["probes"][0].astype(np.complex64))  # the first OPR mode
    np.testing.assert_array_equal(product.object, written["object"].astype(np.complex64))
    assert product.object_pixel == written["pixel"] and product.probe_pixel == written["pixel"]
    assert product.object_center == written["center"] and product.pixel_size_m == 12e-9
    np.testing.assert_allclose(product.xcoords, written["xcoords"], atol=1e-6)
    np.testing.assert_allclose(product.ycoords, written["ycoords"], atol=1e-6)
    np.testing.assert_array_equal(product.position_indexes, np.arange(20) * 3)
    assert product.metadata["name"] == "ptychodus scan 17" and product.metadata["detector_distance_m"] == 1.5
    assert product.metadata["energy_j"] == pytest.approx(1e4 * EV_J, rel=1e-12)
    # older products name the energy probe_energy_eV
    _ptychodus_product(tmp_path / "old.h5", probe, energy_key="probe_energy_eV", opr_modes=1)
    assert read_product(tmp_path / "old.h5").metadata["photon_energy_eV"] == 10000.0
    # a product is a probe source, with or without '::/probe'; not a mask
    for spec in (str(tmp_path / "p.h5"), f"{tmp_path / 'p.h5'}::/probe"):
        np.testing.assert_array_equal(read_array_source(spec, "data.probe"), product.probe)
    np.testing.assert_array_equal(read_array_source(f"{tmp_path / 'p.h5'}::/object", "data.probe"), written["object"])
    with pytest.raises(UserError, match=r"^data.mask: .* is a Ptychodus product .* holds no mask"):
        read_array_source(str(tmp_path / "p.h5"), "data.mask")


def test_a_damaged_product_is_one_line(tmp_path, sim):
    _ptychodus_product(tmp_path / "p.h5", sim.probe[0], opr_modes=1)
    with h5py.File(tmp_path / "p.h5", "a") as f:
        del f["probe"]
        f["probe"] = np.ones((N, N), np.int32)
        del f["object"].attrs["pixel_width_m"]
    with pytest.raises(UserError) as e:
        read_array_source(str(tmp_path / "p.h5"), "data.probe")
    text = str(e.value)
    assert text.startswith("data.probe: ") and "\n" not in text
    assert "probe: expected a finite complex" in text and "no 'pixel_width_m' attribute" in text
    h5py.File(tmp_path / "plain.h5", "w").close()
    with pytest.raises(UserError, match=r"data.probe: .*plain.h5 is neither a .npy file nor a Ptychodus product"):
        read_array_source(str(tmp_path / "plain.h5"), "data.probe")
    with pytest.raises(UserError, match="not a Ptychodus product: no root dataset object, probe"):
        read_product(tmp_path / "plain.h5")


def test_a_product_is_the_probe_of_npz_and_cxi_scans(tmp_path, sim, cxi):
    probe = (sim.probe * np.exp(0.4j) * 0.9).astype(np.complex64)
    _ptychodus_product(tmp_path / "p.h5", probe, opr_modes=2)
    spec = str(tmp_path / "p.h5")
    npz = read_scan(sim.path, options=ReadOptions(probe=spec))
    np.testing.assert_array_equal(npz.probe, probe)
    assert npz.metadata["probe_source"] == spec
    beam = read_scan(cxi[0], options=ReadOptions(probe=spec))
    np.testing.assert_array_equal(beam.probe, probe)
    assert not np.allclose(cxi[1].probe, probe)  # the file's own probe was another


def test_a_model_trains_with_a_product_as_its_probe(tmp_path, sim):
    """The probe of a reconstruction's product.h5 (written in object pixels) is what training reads."""
    from ptycho_torch.model.bundle import load_bundle
    from ptycho_torch.reconstruction.exports import write_product_file
    from ptycho_torch.training.train import train

    probe = (sim.probe * np.exp(0.4j) * 0.9).astype(np.complex64)
    H, W = sim.object_shape
    write_product_file(tmp_path / "product.h5", np.ones((H, W), np.complex64), probe, sim.xcoords, sim.ycoords, N,
                       {})
    config = tiny_config(sim.path, **{"trainer.max_epochs": 1, "logging.logger": "none",
                                      "trainer.enable_checkpointing": False,
                                      "data.probe": str(tmp_path / "product.h5")})
    run = train(config, tmp_path / "run")
    assert run.epochs_completed == 1 and np.isfinite(run.metrics["train_loss"])
    bundle = load_bundle(run.run_dir)
    np.testing.assert_array_equal(bundle.data_probe.numpy(), probe)
    assert bundle.config.data.probe == str(tmp_path / "product.h5")


def test_reconstruction_cxi_geometry_reads_at_the_cxi_paths(tmp_path, cxi):
    """energy, distance, detector pixel and translations of reconstruction.cxi sit where CXI_ROLES looks:
    the CXI reader's own geometry and position steps recover the pixel size and the positions."""
    from ptycho_torch.data.beamline import _geometry, _positions, _Roles

    _, scan, t = cxi
    _reconstruction(tmp_path, scan, modes=1)
    with h5py.File(tmp_path / "reconstruction.cxi") as f:
        assert is_cxi(f)
        roles = _Roles(f, cxi_roles(f), "cxi")
        assert f[CXI_ROLES["energy"][0]].attrs["units"] == "J"
        assert roles.scalar("energy", to_joules, "energy") == pytest.approx(ENERGY_EV * EV_J, rel=1e-12)
        meta: dict = {}
        pixel = _geometry(roles, ReadOptions(), N, 1, meta)
        assert not roles.problems
        assert pixel == pytest.approx(pixel_m(N), rel=1e-9)
        assert meta["distance_m"] == pytest.approx(DISTANCE_M, rel=1e-12)
        assert meta["detector_pixel_m"] == pytest.approx(DET_PIXEL_M, rel=1e-12)
        assert f["entry_1/image_1/x_pixel_size"][()] == pytest.approx(pixel, rel=1e-12)
        x, y = _positions(roles, ReadOptions(), len(t), N, pixel, meta)
        assert not roles.problems and meta["positions_from"].startswith(CXI_ROLES["translation"][0])
        np.testing.assert_allclose(x, scan.xcoords, atol=1e-6)
        np.testing.assert_allclose(y, scan.ycoords, atol=1e-6)
        for where in CXI_ROLES["translation"]:  # geometry_1/translation and the data_1 link
            assert f[where].attrs["units"] == "m"
            np.testing.assert_allclose(f[where][()], t, rtol=0, atol=1e-15)
        # what earlier versions wrote is still there
        assert f["entry_1/instrument_1/energy_j"][()] == pytest.approx(ENERGY_EV * EV_J, rel=1e-12)
        np.testing.assert_array_equal(f["entry_1/data_1/xcoords_px"][()], scan.xcoords)


def test_reconstruction_cxi_without_geometry_has_no_metres(tmp_path, sim):
    _reconstruction(tmp_path, sim, modes=1)
    with h5py.File(tmp_path / "reconstruction.cxi") as f:
        for role in ("translation", "energy", "distance", "detector_pixel"):
            assert not any(path in f for path in CXI_ROLES[role])
        assert "entry_1/image_1/x_pixel_size" not in f
        assert json.loads(str(np.load(tmp_path / "object.npz")["metadata"]))["engine"] == "test"


def test_ptychodus_own_reader_opens_our_product(tmp_path, cxi):
    """Ptychodus's H5 product reader (when ptychodus is installed) opens a reconstruction's product.h5."""
    pytest.importorskip("ptychodus")
    from ptychodus.plugins.h5_product_file import H5ProductFileIO

    _, scan, t = cxi
    obj, probe = _reconstruction(tmp_path, scan)
    product = H5ProductFileIO().read(tmp_path / "product.h5")
    np.testing.assert_array_equal(product.object_.get_array()[0], obj)
    np.testing.assert_array_equal(product.probes.get_array()[0], probe)
    np.testing.assert_allclose(product.probe_positions.get_coordinates_x_m(), t[:, 0], rtol=0, atol=1e-15)
    geometry = product.object_.get_geometry()
    assert geometry.pixel_width_m == pytest.approx(pixel_m(N), rel=1e-12)
    np.testing.assert_allclose(geometry.map_probe_positions_to_object_x_px(product.probe_positions), scan.xcoords,
                               atol=1e-6)
    assert product.metadata.photon_energy_eV == pytest.approx(ENERGY_EV, rel=1e-9)
    assert product.metadata.detector_distance_m == pytest.approx(DISTANCE_M, rel=1e-12)
