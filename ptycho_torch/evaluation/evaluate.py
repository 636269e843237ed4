"""`ptycho-torch evaluate`: score a reconstruction (object.npz) against a ground-truth object.

Inputs (SPEC 3, 7):
    recon   object.npz with `object` (H, W) complex64 in the scan's pixel frame and `weight` (H, W)
            float32, the stitching weight (its support is the scanned region)
    truth   a scan file (.npz / .h5 / .hdf5) with `objectGuess` (H, W), or a plain object:
            .npy (H, W) complex, or .npz with one of `objectGuess`, `object`, or a single array
Outputs, next to `out` (default: metrics.json beside the recon): metrics.json, frc.png,
comparison.png. metrics.json is strict JSON: non-finite numbers (PSNR of a perfect match) are null.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import UserError
from ptycho_torch.evaluation.metrics import evaluate_reconstruction

log = logging.getLogger("ptycho_torch")

RECON_KEYS = ("object", "weight")
SCAN_MARKERS = ("diffraction", "diff3d")
H5_SUFFIXES = (".h5", ".hdf5")


def load_recon(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(object (H, W) complex64, weight (H, W) float32) from an object.npz; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reconstruction file {path} does not exist")
    from ptycho_torch.data.npz_files import open_npz, read_member

    with open_npz(path) as z:
        missing = [k for k in RECON_KEYS if k not in z.files]
        if missing:
            raise UserError(f"{path} is not a reconstruction: missing key(s) {missing} "
                             f"(found {sorted(z.files)}); expected the object.npz of `ptycho-torch reconstruct`")
        obj, weight = np.asarray(read_member(z, "object", path)), np.asarray(read_member(z, "weight", path))
    if obj.ndim != 2 or weight.shape != obj.shape:
        raise UserError(f"{path}: `object` must be (H, W) and `weight` the same shape, got "
                         f"{obj.shape} and {weight.shape}")
    return obj.astype(np.complex64, copy=False), weight.astype(np.float32, copy=False)


def recon_pixel_size(path: Path) -> float | None:
    """The object pixel size in metres an object.npz records (`pixel_size_m`), or None."""
    from ptycho_torch.data.npz_files import open_npz

    with open_npz(Path(path)) as z:
        if "pixel_size_m" not in z.files:
            return None
        value = float(np.asarray(z["pixel_size_m"]).reshape(-1)[0])
    return value if math.isfinite(value) and value > 0 else None


def _no_truth(path: Path) -> ValueError:
    return ValueError(f"the scan {path} has no ground truth (objectGuess); evaluate needs a simulated scan "
                      "or a reference object (.npy, or .npz with objectGuess/object)")


def load_truth(path: Path) -> np.ndarray:
    """The ground-truth object (H, W) complex64 from a scan file or an object .npy/.npz."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        return _truth_from_scan(path)
    if suffix == ".npy":
        try:
            obj = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path}: could not be read as a .npy array ({e}); save the object with "
                             "numpy.save of a plain complex array") from None
    else:
        from ptycho_torch.data.npz_files import open_npz, read_member

        with open_npz(path) as z:
            files = list(z.files)
            if any(k in files for k in SCAN_MARKERS):
                obj = None  # a full scan: read it through the data contract below
            elif "objectGuess" in files:
                obj = read_member(z, "objectGuess", path)
            elif "object" in files:
                obj = read_member(z, "object", path)
            elif len(files) == 1:
                obj = read_member(z, files[0], path)
            else:
                raise _no_truth(path)
        if obj is None:
            return _truth_from_scan(path)
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise UserError(f"the ground truth in {path} must be a 2-D object (H, W), got shape {obj.shape}")
    return obj.astype(np.complex64, copy=False)


def _truth_from_scan(path: Path) -> np.ndarray:
    """objectGuess of a scan file, read alone (the diffraction is never loaded)."""
    from ptycho_torch.data.contract import read_object_guess

    try:
        obj = read_object_guess(path)
    except OSError as e:
        raise UserError(f"{path}: could not be read as a scan file ({e})") from None
    if obj is None:
        raise _no_truth(path)
    return np.asarray(obj, dtype=np.complex64)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(recon_path: Path, truth_path: Path, out: Path | None = None, plane_fit: bool = False, *,
             weight_threshold: float = 0.1, erode_px: int = 0, plots: bool = True) -> dict[str, Any]:
    """Compare the reconstruction at `recon_path` with the ground truth at `truth_path`.

    Metrics are those of `metrics.evaluate_reconstruction` inside the scanned region (stitching
    weight > weight_threshold * max, eroded by `erode_px`), plus the input paths. Writes `out`
    (default: metrics.json next to the recon) and, with `plots`, frc.png and comparison.png in the
    same folder. Returns the metrics dict (PSNR may be inf there; it is null in the file).
    """
    recon_path, truth_path = Path(recon_path), Path(truth_path)
    obj, weight = load_recon(recon_path)
    return score(obj, weight, load_truth(truth_path), recon_path, truth_path, out, plane_fit,
                 weight_threshold=weight_threshold, erode_px=erode_px, plots=plots,
                 pixel_size_m=recon_pixel_size(recon_path))


def score(obj: np.ndarray, weight: np.ndarray, truth: np.ndarray, recon_path: Path, truth_path: Path | None,
          out: Path | None = None, plane_fit: bool = False, *, weight_threshold: float = 0.1, erode_px: int = 0,
          plots: bool = True, pixel_size_m: float | None = None) -> dict[str, Any]:
    """`evaluate` on arrays already in memory: object and weight (H, W) of a reconstruction, truth
    (H, W) complex; the paths only label the result (and place metrics.json when `out` is None). With
    the object pixel size (metres) the FRC resolutions are in nm as well (metrics and frc.png)."""
    recon_path = Path(recon_path)
    if obj.shape != truth.shape:
        raise UserError(f"reconstruction {recon_path} has shape {obj.shape} but the ground truth {truth_path} "
                         f"has shape {truth.shape}; both must be in the scan's pixel frame (docs/data_format.md)")
    metrics = evaluate_reconstruction(obj, truth, weight, plane_fit, weight_threshold=weight_threshold,
                                      erode_px=erode_px, pixel_size_m=pixel_size_m)
    metrics = {**metrics, "recon": str(recon_path), "truth": str(truth_path)}
    out = Path(out) if out is not None else recon_path.parent / "metrics.json"
    from ptycho_torch.safe_output import atomic_write_text

    atomic_write_text(out, json.dumps(_json_safe(metrics), indent=2, allow_nan=False))
    if plots:
        from ptycho_torch.evaluation.plots import save_comparison, save_frc_plot

        save_frc_plot(metrics["frc"], out.parent / "frc.png",
                      title=f"FRC of the reconstruction vs ground truth ({metrics['n_pixels']} px)")
        save_comparison(obj, truth, out.parent / "comparison.png", weight=weight, plane_fit=plane_fit,
                        weight_threshold=weight_threshold, erode_px=erode_px)
    log.info("evaluated %s: amplitude SSIM %.3f, phase SSIM %.3f, FRC(0.5) %s", recon_path,
             metrics["amplitude_ssim"], metrics["phase_ssim"], frc_text(metrics))
    return metrics


def frc_text(metrics: dict[str, Any], key: str = "half") -> str:
    """'3.2 px' or '3.2 px = 41.0 nm': the FRC resolution at threshold `key` ('half', '17') of a metrics dict."""
    px = metrics.get(f"frc_{key}_resolution_px")
    if px is None:
        return "n/a"
    nm = metrics.get(f"frc_{key}_resolution_nm")
    return f"{px:.1f} px" + (f" = {nm:.1f} nm" if nm is not None else "")
