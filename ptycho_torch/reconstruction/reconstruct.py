"""Reconstruction with a trained model: batched network pass + stitching (SPEC 4.6-4.7, 7).

`PatchPredictor` is the model-side piece (a bundle loaded once, run under inference mode); the local
loop here and the Ray Data path (ptycho_dist.inference) both use it and `write_reconstruction`, so
the two produce the same files.

A reconstruction directory holds object.npz (object complex64 (H, W) in the scan's pixel frame,
weight float32 (H, W), xcoords, ycoords, metadata json), amplitude.png, phase.png, and metrics.json
(+ frc.png, comparison.png) when the scan carries a ground truth `objectGuess`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ptycho_torch.config import RunConfig
from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.dataset import GroupDataset, dataloader_kwargs, dataset_norm_factor
from ptycho_torch.data.grouping import Groups, cover_groups, make_groups
from ptycho_torch.data.plausibility import check_canvas
from ptycho_torch.data.scan import ScanData
from ptycho_torch.data.scan_files import Scan, ScanFiles, ScanPaths, read_scans, scan_parts, scan_paths
from ptycho_torch.errors import UserError
from ptycho_torch.logging_setup import show_progress
from ptycho_torch.model.bundle import LoadedBundle, load_bundle
from ptycho_torch.physics.stitching import StitchAccumulator, stitch_weight
from ptycho_torch.safe_output import writes_whole_dir

log = logging.getLogger("ptycho_torch")


class PatchPredictor:
    """A model bundle ready for inference on one device.

    `predictor(amp, offsets)` maps measured amplitudes X (B, C, N, N) float32 (sqrt counts, not
    normalised) to object patches (B, C, N, N) complex64 on the CPU. For groups (C > 1) with their
    offsets (B, C, 2) it returns the overlap-constrained patches, i.e. exactly what the loss trained;
    without offsets, the network's raw patches. Normalisation uses the bundle's factor unless
    `norm_factor` is given, the probe the bundle's unless `probe` (P, N, N) is (another scan's: see
    `use_probe`). bfloat16 runs the network under autocast (weights stay float32).
    """

    def __init__(self, model: str | Path | LoadedBundle, device: str = "cpu", dtype: str | None = None,
                 norm_factor: float | None = None, probe: np.ndarray | torch.Tensor | None = None) -> None:
        self.bundle = model if isinstance(model, LoadedBundle) else load_bundle(model)
        self.config = self.bundle.config
        self.device = torch.device(device)
        self.dtype = network_dtype(dtype or self.config.inference.dtype, self.device)
        self.norm_factor = float(norm_factor) if norm_factor is not None else self.bundle.norm_factor
        self.module = self.bundle.module.to(self.device).eval()
        self.probe = self.bundle.module.probe.detach().cpu()
        self.gridsize = self.config.model.gridsize
        if probe is not None:
            self.use_probe(probe)

    def use_probe(self, probe: np.ndarray | torch.Tensor) -> None:
        """Read and stitch with `probe` (P, N, N) complex, e.g. a new scan's, instead of the model's:
        the network input is back-propagated with it and the scale follows its units
        (PtychoPINNModule.adopt_probe). The module is copied first, so a bundle other predictors
        share is left as it was; the model's own probe changes nothing."""
        new = torch.as_tensor(np.array(probe)).to(torch.complex64).reshape(-1, *self.probe.shape[-2:])  # a copy: read-only arrays warn
        if new.shape == self.probe.shape and torch.equal(new, self.probe):
            return
        self.module = copy.deepcopy(self.module)
        self.module.adopt_probe(new)
        self.probe = self.module.probe.detach().cpu()

    @property
    def photon_scale(self) -> float:
        """The factor taking a stitched object of this predictor to the probe's photon units (the
        forward model's intensity scale / normalisation factor: exp(log_scale) / r), what refinement
        and the data fit work in."""
        return math.exp(float(self.module.log_scale.detach())) / self.norm_factor

    @torch.inference_mode()
    def __call__(self, amp: torch.Tensor | np.ndarray, offsets: torch.Tensor | np.ndarray | None = None
                 ) -> torch.Tensor:
        x = torch.as_tensor(amp, dtype=torch.float32).to(self.device) * self.norm_factor
        offs = None if offsets is None else torch.as_tensor(offsets, dtype=torch.float32).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            return self.module(x, offs).to(torch.complex64).cpu()


def network_dtype(dtype: str, device: torch.device | str) -> str:
    """inference.dtype resolved for `device`: 'auto' -> 'bfloat16' where it computes bfloat16 natively (a CUDA GPU
    with bf16; a CPU with AVX512-BF16 or AMX, as oneDNN uses them), else 'float32'; others as given."""
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported")]
        return "bfloat16" if any(check() for check in native) else "float32"
    return "float32"


PROBE_CHOICES = ("auto", "scan", "model")
NORMALIZATION_CHOICES = ("scan", "model")


def choose_probe(bundle: LoadedBundle, scan_probe: np.ndarray, choice: str = "auto") -> tuple[np.ndarray | None, str]:
    """Which probe reconstructs a scan whose file holds `scan_probe` (P, N, N): (the probe to use, or
    None for the model's own; what was chosen). 'scan' = the scan's; 'model' = the model's (its
    training scan's, refined when model.probe_trainable); 'auto' = the scan's, except the model's
    refined probe when the model learned its probe starting from this very probe (its own training
    scan, or one taken with the same optics), or when an older bundle does not say what it started
    from. A model whose probe was fixed holds its training scan's probe, so for that scan 'auto' and
    'model' are the same."""
    if choice not in PROBE_CHOICES:
        raise UserError(f"--probe: got {choice!r}; choose one of {', '.join(PROBE_CHOICES)}")
    if choice == "model":
        return None, "model"
    if choice == "auto" and bundle.config.model.probe_trainable:
        start = bundle.data_probe
        if start is None:
            return None, "model (an older bundle: its starting probe is unknown)"
        start_np = start.numpy()
        scale = float(np.abs(start_np).max())
        if start_np.shape == scan_probe.shape and np.allclose(start_np, scan_probe, rtol=1e-5, atol=1e-6 * scale):
            return None, "model (refined from this scan's probe)"
    return scan_probe, "scan"


def inference_groups(scan: Scan, gridsize: int, neighbor_count: int = 6, seed: int = 0,
                     grouping: str = "cover") -> Groups:
    """The groups a reconstruction runs the network on (global indices), drawn the way training draws
    them: partners among each seed's `neighbor_count` nearest with a seeded generator (so the network
    sees the kind of group it learned on, and the result is reproducible). grouping 'cover'
    (cover_groups): about M / C groups whose stitched channels hold every pattern once; 'every_pattern'
    (make_groups): one group per pattern, its own channel stitched. Groups are formed per file of a
    several-file scan (never across files), each file with the same seed."""
    if grouping not in ("cover", "every_pattern"):
        raise UserError(f"inference.grouping: got {grouping!r}; choose 'cover' or 'every_pattern'")
    indices, seed_channel, stitched, offset = [], [], [], 0
    for part in scan_parts(scan):
        rng = np.random.default_rng(seed) if gridsize > 1 else None
        if grouping == "cover":
            groups = cover_groups(part.positions, gridsize, neighbor_count=neighbor_count, rng=rng)
        else:
            groups = make_groups(part.positions, gridsize, neighbor_count=neighbor_count, rng=rng)
        indices.append(groups.indices + offset)
        seed_channel.append(groups.seed_channel)
        stitched.append(groups.stitch_mask())
        offset += part.n_patterns
    return Groups(np.concatenate(indices), np.concatenate(seed_channel), np.concatenate(stitched))


@dataclass
class ScanForModel:
    """A scan read and checked for a model: what the local loop and the Ray Data path start from."""

    scan: Scan
    groups: Groups  # global indices, `stitched` set (inference_groups)
    normalization: str  # 'scan' (r from these patterns) or 'model' (the model's training r)
    probe: np.ndarray | None  # (P, N, N) the probe to read and stitch with; None = the model's own
    probe_used: str  # what was chosen and why (choose_probe), for the metadata
    grouping: str  # 'cover' or 'every_pattern' (inference_groups)


def scan_for_model(bundle: LoadedBundle, data: ScanPaths | Scan, *, validate: bool = True, probe: str = "auto",
                   normalization: str = "scan", renormalize: bool = False,
                   grouping: str | None = None) -> ScanForModel:
    """Read `data` (a file, a glob or several files; or a scan already in memory) as the model's
    training data were read (ReadOptions.from_config: dataset paths, cropping to N, detector mask,
    geometry), check its pattern size against the model's, group it, and choose the probe
    (choose_probe) and the normalisation (`renormalize` is the old spelling of normalization 'scan').
    `validate` False trusts the pattern values (shapes, probe and positions are still checked).
    `grouping` ('cover' / 'every_pattern', inference_groups) overrides the bundle's inference.grouping."""
    config = bundle.config
    if normalization not in NORMALIZATION_CHOICES:
        raise UserError(f"--normalization: got {normalization!r}; choose one of {', '.join(NORMALIZATION_CHOICES)}")
    if isinstance(data, (ScanData, ScanFiles)):
        scan = data
    else:
        scan = read_scans(data, validate=validate, options=ReadOptions.from_config(config))
    if scan.N != config.model.N:
        where = ", ".join(scan_paths(scan)) if scan.path is not None else "the diffraction given"
        raise UserError(f"the model {bundle.path} was trained on {config.model.N}x{config.model.N} patterns "
                        f"but {where} holds {scan.N}x{scan.N} patterns")
    chosen, probe_used = choose_probe(bundle, scan.probe, probe)
    grouping = grouping or config.inference.grouping
    groups = inference_groups(scan, config.model.gridsize, config.data.neighbor_count, config.training.seed,
                              grouping)
    return ScanForModel(scan, groups, "scan" if renormalize else normalization, chosen, probe_used, grouping)


def inference_loader(scan: Scan, groups: Groups, config: RunConfig, batch_size: int | None = None) -> DataLoader:
    """Loader of raw amplitudes (norm factor 1) in scan order; batch size defaults to the run's
    inference batch size, DataLoader keywords from its dataloader section."""
    return DataLoader(GroupDataset(scan, groups, 1.0), batch_size=batch_size or config.inference_batch_size,
                      shuffle=False, **dataloader_kwargs(config.dataloader))


def write_reconstruction(out_dir: str | Path, obj: np.ndarray, weight: np.ndarray, scan: Scan,
                         metadata: dict[str, Any], probe: np.ndarray | torch.Tensor | None = None,
                         photon_scale: float | None = None, fit_patterns: int = 0) -> dict[str, Any]:
    """Write object.npz (with `pixel_size_m` when the scan's metadata knows it), amplitude.png,
    phase.png (axes in um / nm then), the products of ptycho_torch.reconstruction.exports (probe.npy when `probe`
    (P, N, N) is given, amplitude.tif, phase.tif, reconstruction.cxi, product.h5 for Ptychodus) and, with a ground truth (the
    scan's objectGuess, already in memory), metrics.json: scored from the arrays, nothing is read back.
    With `probe`, `photon_scale` (obj times it is in the probe's photon units) and `fit_patterns` > 0,
    also the data fit (ptycho_torch.evaluation.data_fit) on that many patterns: metadata 'data_fit' and fit.png."""
    from ptycho_torch.evaluation.plots import save_complex_images
    from ptycho_torch.reconstruction.exports import pixel_size_of, write_products
    from ptycho_torch.safe_output import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixel = pixel_size_of(scan.metadata)
    scan_geometry = {k: scan.metadata[k] for k in ("pixel_size_m", "position_origin_m", "energy_j", "wavelength_m",
                                                   "distance_m", "detector_pixel_m") if k in scan.metadata}
    metadata = {**metadata, **scan_geometry} if pixel is not None else dict(metadata)
    if probe is not None and photon_scale is not None and fit_patterns > 0:
        metadata["data_fit"] = write_data_fit(out_dir, obj, scan, probe, photon_scale, fit_patterns)
    extra = {"pixel_size_m": np.float64(pixel)} if pixel is not None else {}
    with atomic_path(out_dir / "object.npz") as tmp:
        np.savez(tmp, object=obj.astype(np.complex64), weight=weight.astype(np.float32),
                 xcoords=scan.xcoords, ycoords=scan.ycoords, metadata=np.array(json.dumps(metadata)), **extra)
    save_complex_images(obj, out_dir, weight=weight, pixel_size_m=pixel)
    probe_np = probe.detach().cpu().numpy() if isinstance(probe, torch.Tensor) else probe
    result: dict[str, Any] = {"object_path": str(out_dir / "object.npz"),
                              "products": write_products(out_dir, obj, weight, probe_np, scan.xcoords, scan.ycoords,
                                                         scan.N, metadata)}
    truth = scan.object_guess
    if truth is not None:
        from ptycho_torch.evaluation.evaluate import score

        truth_path = getattr(scan, "truth_part", scan).path
        result["metrics"] = score(obj, weight, truth, out_dir / "object.npz", truth_path, out_dir / "metrics.json",
                                  pixel_size_m=pixel)
    result["data_fit"] = metadata.get("data_fit")
    return result


def write_data_fit(out_dir: Path, obj: np.ndarray, scan: Scan, probe: np.ndarray | torch.Tensor, photon_scale: float,
                   fit_patterns: int) -> dict[str, Any]:
    """Measure how well `obj` (times `photon_scale`) explains `fit_patterns` of the scan's patterns
    through `probe` (ptycho_torch.evaluation.data_fit), draw out_dir/fit.png and return the numbers for the
    metadata."""
    from ptycho_torch.evaluation.data_fit import data_fit
    from ptycho_torch.evaluation.plots import save_fit_map

    probe_np = probe.detach().cpu().numpy() if isinstance(probe, torch.Tensor) else np.asarray(probe)
    fit = data_fit(obj, scan, probe_np, scale=photon_scale, max_patterns=fit_patterns)
    save_fit_map(np.asarray(scan.positions)[fit.indices], fit.pattern_ratio, fit.ratio, out_dir / "fit.png")
    log.info("data fit: Poisson deviance %.2fx the counting-noise floor (%d patterns; 1 = explained to the "
             "noise; fit.png maps it)", fit.ratio, fit.n_patterns)
    return fit.summary()


@dataclass
class ReconResult:
    out_dir: Path | None  # None: reconstructed in memory, nothing written
    object: np.ndarray
    weight: np.ndarray
    patterns_per_second: float
    metrics: dict[str, Any] | None
    data_fit: dict[str, Any] | None = None  # DataFit.summary() of the written object, when measured
    photon_scale: float = 1.0  # object times this is in the probe's photon units (ptycho_torch.evaluation.data_fit)

    def summary_lines(self) -> list[str]:
        """What the CLIs print: where the object went, its data fit, the numeric metrics (with a truth)."""
        lines = [f"wrote {self.out_dir / 'object.npz'} ({self.patterns_per_second:.0f} patterns/s)"]
        if self.data_fit:
            lines.append(f"data fit: Poisson deviance {self.data_fit['ratio']:.2f}x the counting-noise floor on "
                         f"{self.data_fit['n_patterns']} patterns (1 = explained to the noise; map: fit.png)")
        if self.metrics:
            from ptycho_torch.evaluation.evaluate import frc_text

            lines.append(f"FRC against the ground truth: {frc_text(self.metrics, 'half')} (0.5), "
                         f"{frc_text(self.metrics, '17')} (1/7)")
            lines.append(json.dumps({k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}, indent=1))
        return lines


@writes_whole_dir("out_dir")  # the old outputs or the new ones, never a mix (a full disk keeps the old)
def reconstruct(model: str | Path | LoadedBundle, data: ScanPaths | Scan, out_dir: str | Path | None, *,
                batch_size: int | None = None,
                device: str = "cpu", renormalize: bool = False, progress: bool | None = None,
                refine_seconds: float = 0.0, align_phases: bool = False, probe: str = "auto",
                normalization: str = "scan", grouping: str | None = None, refine_probe: bool = False,
                dtype: str | None = None) -> ReconResult:
    """Reconstruct the scan `data` (a file, a glob, or several files of one scan) with the bundle
    `model` into `out_dir` (local, one process). With `refine_seconds` > 0 the network's stitched
    object (kept in out_dir/network/) is then refined by the iterative solver on the same patterns
    (ptycho_torch.reconstruction.refine; the probe too with `refine_probe`), and out_dir holds the refined object
    and probe. With
    `align_phases` every patch first gets the global phase that agrees with its neighbours
    (stitching.align_phases; the patches are held in memory for it). `data` may also be a scan
    already read or built in memory (ScanData / ScanFiles: the in-memory path of ptycho_torch.api);
    with `out_dir` None nothing is written (a refinement then keeps no network/ copy). `grouping`
    (None = the bundle's inference.grouping) chooses the groups of gridsize > 1 (inference_groups). `dtype`
    (None = the bundle's inference.dtype) is the network's: 'auto', 'float32' or 'bfloat16' (network_dtype)."""
    predictor = PatchPredictor(model, device=device, dtype=dtype)
    config = predictor.config
    ready = scan_for_model(predictor.bundle, data, probe=probe, normalization=normalization, renormalize=renormalize,
                           grouping=grouping)
    scan, groups, normalization, probe_used = ready.scan, ready.groups, ready.normalization, ready.probe_used
    if normalization == "scan":  # the scan's own dose (for its training scan: the model's r)
        predictor.norm_factor = dataset_norm_factor(scan)
    if ready.probe is not None:
        predictor.use_probe(ready.probe)
    check_canvas(scan)  # positions in the wrong unit: one line naming the canvas in GB, nothing allocated
    loader = inference_loader(scan, groups, config, batch_size)
    acc = StitchAccumulator(scan.object_shape, stitch_weight(predictor.probe, config.inference.stitch_weight))
    stitch_mask = torch.from_numpy(groups.stitch_mask())  # (G, C): every pattern once
    held: list[tuple[torch.Tensor, torch.Tensor]] = []  # (patches, positions) when aligning phases
    n = scan.n_patterns
    start = time.perf_counter()
    with tqdm(total=n, unit="pattern", desc="reconstruct", disable=not show_progress(progress)) as bar:
        for batch in loader:
            patches = predictor(batch["amp"], batch["offsets"])  # (B, C, N, N), constrained for groups
            mask = stitch_mask[batch["index"]]  # (B, C) -> the K stitched patches and positions
            own = (patches[mask], batch["positions"][mask])
            if align_phases:
                held.append(own)
            else:
                acc.add(*own)
            bar.update(len(own[0]))
    if held:
        from ptycho_torch.physics.stitching import align_phases as align

        held_positions = torch.cat([q for _, q in held]).float()
        aligned, record = align(torch.cat([p for p, _ in held]), held_positions, acc.weight)
        acc.add(aligned, held_positions)
        log.info("aligned the phases of %d patches over %d overlapping pairs (%d iterations)",
                 len(aligned), record["pairs"], record["iterations"])
    seconds = time.perf_counter() - start
    obj, weight = acc.result(config.inference.weight_threshold)
    rate = n / max(seconds, 1e-9)
    log.info("reconstructed %d patterns (%d groups, grouping %s) in %.2f s (%.0f patterns/s)", n, len(groups),
             ready.grouping, seconds, rate)
    meta = {"model": str(predictor.bundle.path), "n_patterns": n, "n_groups": len(groups),
            "grouping": ready.grouping,
            "data": scan_paths(scan) if scan.path is not None else "in-memory arrays",
            "norm_factor": predictor.norm_factor, "patterns_per_second": rate, "engine": "local",
            "dtype": predictor.dtype,
            "align_phases": align_phases, "probe": probe_used, "normalization": normalization}
    probe_out = predictor.probe.numpy()
    if refine_seconds > 0:
        obj, probe_out, meta = refine_network_object(obj, weight, scan, predictor, refine_seconds, out_dir, meta,
                                                     refine_probe)
    scale = 1.0 if refine_seconds > 0 else predictor.photon_scale  # a refined object is in photon units
    if out_dir is None:
        return ReconResult(None, obj, weight, rate, None, photon_scale=scale)
    written = write_reconstruction(out_dir, obj, weight, scan, meta, probe=probe_out, photon_scale=scale,
                                   fit_patterns=config.inference.fit_patterns)
    return ReconResult(Path(out_dir), obj, weight, rate, written.get("metrics"), written.get("data_fit"), scale)


def refine_network_object(obj: np.ndarray, weight: np.ndarray, scan: Scan, predictor: PatchPredictor,
                          seconds: float, out_dir: str | Path | None, meta: dict[str, Any], refine_probe: bool = False
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Write the network's own object to out_dir/network/ (unless out_dir is None), refine it for
    `seconds` with the iterative solver (ptycho_torch.reconstruction.solver; the probe too with `refine_probe`) and
    return the refined object, the probe it goes with (photon units) and the metadata."""
    from ptycho_torch.reconstruction.refine import refine_stitched

    if out_dir is not None:
        write_reconstruction(Path(out_dir) / "network", obj, weight, scan, meta, probe=predictor.probe,
                             photon_scale=predictor.photon_scale, fit_patterns=predictor.config.inference.fit_patterns)
    log.info("refining the network's object for %.0f s (iterative solver%s)", seconds,
             ", probe refined too" if refine_probe else "")
    sol = refine_stitched(obj, weight, scan, predictor.probe.numpy(), seconds, refine_probe=refine_probe,
                          seed=predictor.config.training.seed, device=predictor.device)
    log.info("refined in %d epochs (%.1f s), amplitude error %.4f", sol.epochs, sol.seconds,
             sol.errors[-1] if sol.errors else float("nan"))
    network = str(Path(out_dir) / "network" / "object.npz") if out_dir is not None else None
    return sol.object, sol.probe, {**meta, "refine": {"epochs": sol.epochs, "seconds": sol.seconds,
                                                      "refine_probe": refine_probe, "network_object": network}}
