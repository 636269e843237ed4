"""Iterative reconstruction of a scan (`ptycho-torch solve`, `pt.solve`): object, probe, optionally
positions, written as the same products as `reconstruct` (object.npz, probe.npy, pictures, TIFFs,
CXI, data fit) plus probe.png, errors.png and, with `half_scan`, the half-scan FRC (frc.png and the
resolution in metrics.json's place: resolution.json).

The starting probe is the scan's (its file's probeGuess or data.probe), or with probe='estimate' one
estimated from the data (ptycho_torch.reconstruction.solver.probe_init.search_probe). The engine is scale-free
(ptycho_torch.reconstruction.solver.engine), so a probe in any units gives the same reconstruction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.scan import ScanData
from ptycho_torch.data.scan_files import Scan, ScanPaths, read_scans, scan_paths
from ptycho_torch.errors import UserError
from ptycho_torch.logging_setup import show_progress
from ptycho_torch.reconstruction.solver import PROBE_CHOICES
from ptycho_torch.reconstruction.solver.engine import Solution, SolverOptions, canvas_weight, solve
from ptycho_torch.safe_output import writes_whole_dir

log = logging.getLogger("ptycho_torch")



@dataclass
class SolveResult:
    """What `solve_scan` returns: object (H, W) complex64 (bright level ~1), probe (K, N, N)
    complex64 in photon units, weight (H, W) float32 (illumination), positions (M, 2) (x, y) px as
    used (refined with position correction), epochs and seconds of the main run, errors per epoch,
    the data fit summary, metrics against a ground truth (simulated scans), the half-scan FRC record
    (`resolution`) and where the starting probe came from (`probe_origin`)."""

    out_dir: Path | None
    object: np.ndarray
    probe: np.ndarray
    weight: np.ndarray
    positions: np.ndarray
    epochs: int
    seconds: float
    errors: list[float]
    data_fit: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    resolution: dict[str, Any] | None = None
    probe_origin: dict[str, Any] | None = None

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        lines = [f"solved {len(self.positions)} patterns in {self.epochs} epochs ({self.seconds:.1f} s), final "
                 f"amplitude error {self.errors[-1]:.4f}" if self.errors else "no epoch ran"]
        if self.out_dir is not None:
            lines.append(f"wrote {self.out_dir / 'object.npz'} and {self.out_dir / 'probe.npy'} "
                         f"({len(self.probe)} probe mode(s); pictures: probe.png, phase.png, amplitude.png)")
        if self.data_fit:
            lines.append(f"data fit: Poisson deviance {self.data_fit['ratio']:.2f}x the counting-noise floor on "
                         f"{self.data_fit['n_patterns']} patterns (1 = explained to the noise; map: fit.png)")
        if self.resolution:
            r = self.resolution
            nm = (f" = {r['resolution_halfbit_nm']:.1f} nm / {r['resolution_17_nm']:.1f} nm"
                  if "resolution_17_nm" in r else "")
            lines.append(f"half-scan FRC resolution: {r['resolution_halfbit_px']:.2f} px (half-bit) / "
                         f"{r['resolution_17_px']:.2f} px (1/7){nm}")
        if self.metrics:
            lines.append(json.dumps({k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}, indent=1))
        return lines


def starting_probe(scan: Scan, choice: str, options: SolverOptions, device: str = "cpu"
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The probe (K, N, N) the solver starts from and a record of where it came from: the scan's
    ('file': its probeGuess, or data.probe when given) or estimated from the data ('estimate')."""
    if choice not in PROBE_CHOICES:
        raise UserError(f"--probe {choice!r}: expected one of {', '.join(PROBE_CHOICES)}")
    if choice == "file":
        source = scan.metadata.get("probe_source", "the scan file's probeGuess")
        return np.asarray(scan.probe), {"method": "given", "source": source}
    from ptycho_torch.reconstruction.solver.probe_init import search_probe

    t0 = time.perf_counter()
    mean = mean_intensity(scan)
    probe, record = search_probe(scan.diffraction_rows, scan.positions, scan.object_shape, mean,
                                 mask=scan.mask, device=device, seed=options.seed)
    record["seconds"] = time.perf_counter() - t0
    c = record["chosen"]
    log.info("estimated the probe from the data in %.1f s: beam diameter %.0f px, defocus sign %+d (of %d candidates)",
             record["seconds"], c["diameter_px"], c["defocus_sign"], len(record["candidates"]))
    return probe, record


def mean_intensity(scan: Scan, max_patterns: int = 1024) -> np.ndarray:
    """Mean diffraction intensity (N, N) float64 (counts, DC at the centre) of up to `max_patterns`
    patterns spread over the scan."""
    idx = np.unique(np.linspace(0, scan.n_patterns - 1, min(scan.n_patterns, max_patterns)).astype(np.int64))
    X = np.asarray(scan.diffraction_rows(idx), np.float64)
    return np.mean(X * X, axis=0)


def _run(scan: Scan, probe: np.ndarray, options: SolverOptions, seconds: float | None, epochs: int | None,
         device: str, progress: bool | None, desc: str, shape: tuple[int, int] | None = None) -> Solution:
    total = epochs if epochs is not None else seconds
    unit = "epoch" if epochs is not None else "s"
    with tqdm(total=total, unit=unit, desc=desc, disable=not show_progress(progress),
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]") as bar:
        def report(epoch: int, error: float, elapsed: float) -> None:
            bar.n = epoch if epochs is not None else min(elapsed, total)
            bar.set_postfix_str(f"epoch {epoch}, error {error:.4f}")

        return solve(scan.diffraction_rows, scan.positions, probe, shape or scan.object_shape, options=options,
                     seconds=seconds, epochs=epochs, mask=scan.mask, device=device, progress=report)


@writes_whole_dir("out_dir")  # the old outputs or the new ones, never a mix; other folders refused before solving
def solve_scan(data: ScanPaths | Scan, out_dir: str | Path | None = None, *, seconds: float | None = 60.0,
               epochs: int | None = None, probe: str = "file", options: SolverOptions | None = None,
               read_options: ReadOptions | None = None, device: str = "cpu", progress: bool | None = None,
               half_scan: bool = False, fit_patterns: int = 2048) -> SolveResult:
    """Reconstruct object and probe of `data` (file(s), a glob, or a scan already read) iteratively
    for `seconds` of wall clock or `epochs` passes (the first reached; None = no limit of that kind),
    and write the products to `out_dir` (None = nothing written). `probe`: 'file' or 'estimate';
    `options`: the engine's settings (modes, position correction, steps); `half_scan`: also
    reconstruct the two interleaved halves for the same number of epochs and measure the FRC
    resolution; `fit_patterns`: patterns the data fit reads (0 = none)."""
    if seconds is None and epochs is None:
        raise UserError("solve needs a budget: seconds or epochs")
    if seconds is not None and seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds:g}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    options = options or SolverOptions()
    scan = data if hasattr(data, "diffraction_rows") else read_scans(data, options=read_options)
    start_probe, origin = starting_probe(scan, probe, options, device)
    sol = _run(scan, start_probe, options, seconds, epochs, device, progress, "solve")
    log.info("solved in %d epochs (%.1f s), amplitude error %.4f", sol.epochs, sol.seconds,
             sol.errors[-1] if sol.errors else float("nan"))
    weight = canvas_weight(sol.positions, sol.probe, scan.object_shape)
    resolution = _half_scan(scan, start_probe, options, sol.epochs, device, progress) if half_scan else None
    meta = {"engine": "iterative", "algorithm": "minibatch rPIE (ptycho_torch.reconstruction.solver)", "epochs": sol.epochs,
            "seconds": sol.seconds, "final_error": sol.errors[-1] if sol.errors else None,
            "options": dataclasses.asdict(options), "probe_origin": origin, "n_patterns": scan.n_patterns,
            "data": scan_paths(scan) if scan.path is not None else "in-memory arrays"}
    if options.positions:
        moved = np.linalg.norm(sol.positions - scan.positions, axis=1)
        meta["positions_corrected"] = {"max_shift_px": float(moved.max()), "mean_shift_px": float(moved.mean())}
        log.info("positions corrected: mean shift %.2f px, largest %.2f px", moved.mean(), moved.max())
    result = SolveResult(None, sol.object, sol.probe, weight, sol.positions, sol.epochs, sol.seconds, sol.errors,
                         resolution=resolution, probe_origin=origin)
    if out_dir is None:
        return result
    written_scan = _with_positions(scan, sol.positions) if options.positions else scan
    if resolution is not None:
        meta["half_scan_frc"] = {k: v for k, v in resolution.items() if not isinstance(v, list)}
    written = _write(Path(out_dir), sol, weight, written_scan, meta, resolution, fit_patterns)
    result.out_dir, result.metrics, result.data_fit = Path(out_dir), written.get("metrics"), written.get("data_fit")
    return result


def _write(out: Path, sol: Solution, weight: np.ndarray, scan: Scan, meta: dict[str, Any],
           resolution: dict[str, Any] | None, fit_patterns: int) -> dict[str, Any]:
    from ptycho_torch.evaluation.plots import save_frc_plot, save_probe, save_solver_errors
    from ptycho_torch.reconstruction.exports import pixel_size_of
    from ptycho_torch.reconstruction.reconstruct import write_reconstruction
    from ptycho_torch.safe_output import atomic_write_text

    written = write_reconstruction(out, sol.object, weight, scan, meta, probe=sol.probe, photon_scale=1.0,
                                   fit_patterns=fit_patterns)
    save_probe(sol.probe, out / "probe.png", pixel_size_of(scan.metadata))
    if sol.errors:
        save_solver_errors(sol.errors, out / "errors.png")
    if resolution is not None:
        atomic_write_text(out / "resolution.json", json.dumps(resolution, indent=1))
        save_frc_plot(resolution, out / "frc_half_scan.png", title="half-scan FRC (two interleaved halves)")
    return written


def _half_scan(scan: Scan, probe: np.ndarray, options: SolverOptions, epochs: int, device: str,
               progress: bool | None) -> dict[str, Any]:
    """Reconstruct the even and the odd patterns for `epochs` each and return their FRC record."""
    from ptycho_torch.reconstruction.exports import pixel_size_of
    from ptycho_torch.reconstruction.solver.half_scan import half_scan_frc, interleaved_halves

    halves = []
    for name, idx in zip(("even", "odd"), interleaved_halves(scan.n_patterns)):
        part = scan.subset(idx)
        part.object_guess = None
        sol = _run(part, probe, options, None, max(epochs, 1), device, progress, f"half scan ({name})",
                   scan.object_shape)
        halves.append((sol.object, canvas_weight(sol.positions, sol.probe, scan.object_shape)))
    (a, wa), (b, wb) = halves
    result = half_scan_frc(a, b, wa, wb, pixel_size_of(scan.metadata))
    log.info("half-scan FRC: %.2f px (half-bit), %.2f px (1/7)", result["resolution_halfbit_px"],
             result["resolution_17_px"])
    return result


def _with_positions(scan: Scan, positions: np.ndarray) -> Scan:
    """The scan with corrected positions (M, 2) (x, y), for the written products; a scan of several
    files keeps its own (the corrected ones are in the metadata's summary only)."""
    if isinstance(scan, ScanData):
        return dataclasses.replace(scan, xcoords=positions[:, 0], ycoords=positions[:, 1])
    log.warning("position correction: a scan of several files keeps its positions in the written products")
    return scan
