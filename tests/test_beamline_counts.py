"""Integer photon counts are read as amplitudes sqrt(counts), lazily per row, in every file kind."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ptycho_torch.data.contract import ScanData, read_scan, write_scan
from ptycho_torch.data.validation import ScanValidationError

N = 16


def _counts(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    c = rng.poisson(300.0, (6, N, N)).astype(dtype)
    c[0, 3, 4] = np.iinfo(dtype).max  # squaring this in its own dtype would overflow
    return c


def _common() -> dict:
    return dict(probe=np.ones((N, N), np.complex64), xcoords=np.arange(6) + 8.0, ycoords=np.full(6, 8.0))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "int64"])
@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_counts_read_as_sqrt_lazily(tmp_path, dtype, suffix):
    counts = _counts(dtype)
    path = write_scan(tmp_path / f"c{suffix}", diffraction=counts, **_common())
    with h5py.File(path) if suffix == ".h5" else np.load(path) as f:
        assert f["diffraction"].dtype == np.dtype(dtype)  # stored as counts, not converted on write
    scan = read_scan(path)
    assert scan.is_lazy and scan.N == N and scan.n_patterns == 6
    rows = scan.diffraction_rows([5, 0, 0])
    assert rows.dtype == np.float32
    expect = np.sqrt(counts.astype(np.float64))
    np.testing.assert_allclose(rows, expect[[5, 0, 0]], rtol=1e-6)
    assert rows[1, 3, 4] == pytest.approx(np.sqrt(float(np.iinfo(dtype).max)), rel=1e-6)
    np.testing.assert_allclose(scan.diffraction_block(1, 4), expect[1:4], rtol=1e-6)
    assert scan.mean_energy() == pytest.approx(counts.astype(np.float64).sum() / 6, rel=1e-5)
    assert f"photon counts ({dtype})" in scan.metadata["diffraction_read_as"]


def test_counts_in_memory_and_subset():
    counts = _counts("uint16")
    scan = ScanData(path=None, diffraction=counts, **{("probe" if k == "probe" else k): v
                                                     for k, v in _common().items()})
    np.testing.assert_allclose(scan.diffraction_block(0, 6), np.sqrt(counts.astype(np.float64)), rtol=1e-6)
    sub = scan.subset([2, 3])
    assert sub.diffraction.dtype == np.float32
    np.testing.assert_allclose(sub.diffraction, np.sqrt(counts[2:4].astype(np.float64)), rtol=1e-6)


def test_negative_counts_are_one_clear_error(tmp_path):
    counts = _counts("int32")
    counts[4, 0, 1] = -7
    with h5py.File(tmp_path / "neg.h5", "w") as f:
        f["diffraction"] = counts
        for k, v in _common().items():
            f["probeGuess" if k == "probe" else k] = v
    with pytest.raises(ScanValidationError, match=r"diffraction: expected amplitudes \(or counts\) >= 0.*"
                                                  r"first in pattern 4"):
        read_scan(tmp_path / "neg.h5")
