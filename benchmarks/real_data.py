"""Real-data benchmark: a measured scan reconstructed by our iterative solver (probe retrieved), by
Pty-chi LSQML (probe refined), and by the network trained on the scan with the retrieved probe,
judged without a ground truth: data fit (Poisson deviance / counting-noise floor), half-scan FRC
resolution (1/7 and half-bit), seconds, and a picture of each, side by side.

    python benchmarks/real_data.py --data ../shared/data/velociprobe-siemens-star.npz.bz2

Rows (each a `--seconds` budget for the solvers, `--network-minutes` of training for the network):
  ours, file probe        ptycho_torch.reconstruction.solver from the file's (analytic) probe, probe refined
  ours, estimated probe   the same from a probe estimated from the data alone (no probe given)
  ours, file probe, K modes   with --modes K > 1 (partial coherence)
  Pty-chi LSQML           probe refined (+ positions with --ptychi-positions), through `ptychi_solver.py`
  network                 trained on the scan (gridsize 2, the default model) with our retrieved probe,
                          reconstructed, then refined for --refine-seconds with the solver
The half-scan FRC of every solver row reconstructs the even and the odd patterns with the same settings
(our solver: the same epochs as its full run; Pty-chi: half the seconds each); the network's halves are
its reconstructions of the two halves (no retraining).

Results: benchmarks/results/real_data.json, docs/benchmarks.md "## Real data: ..." and
docs/images/real_data.png (phase and amplitude of every row, same colour ranges).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from docs_page import load_note, write_section
from quality import PTYCHI_MISSING, ptychi_python, run_ptychi

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "real_data.json"
IMAGE = ROOT / "docs" / "images" / "real_data.png"
SECTION = "## Real data: the APS Siemens star"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "velociprobe-siemens-star.npz.bz2"


def scores(obj: np.ndarray, probe: np.ndarray, scan: Any, halves: tuple[np.ndarray, np.ndarray] | None,
           weights: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """Data fit of (obj, probe) on every pattern and the half-scan FRC of two half objects."""
    from ptycho_torch.evaluation.data_fit import data_fit
    from ptycho_torch.reconstruction.solver.half_scan import half_scan_frc

    out: dict[str, Any] = {"data_fit": data_fit(obj, scan, probe, max_patterns=None).ratio}
    if halves is not None:
        frc = half_scan_frc(halves[0], halves[1], weights[0], weights[1])
        out.update(frc_halfbit_px=frc["resolution_halfbit_px"], frc_17_px=frc["resolution_17_px"],
                   frc_crossed=frc["crossed_halfbit"], frc_curve=frc["curve"], frc_freq=frc["freq"])
    return out


def our_row(scan: Any, label: str, probe: str, modes: int, seconds: float, device: str = "cpu"
            ) -> tuple[dict[str, Any], Any]:
    """Our solver on the scan for `seconds` from the file's or an estimated probe, and on each
    interleaved half for the same number of epochs from the same starting probe."""
    from ptycho_torch.reconstruction.solve import solve_scan, starting_probe
    from ptycho_torch.reconstruction.solver.engine import SolverOptions, canvas_weight, solve
    from ptycho_torch.reconstruction.solver.half_scan import interleaved_halves

    options = SolverOptions(modes=modes)
    start, origin = starting_probe(scan, probe, options, device)
    result = solve_scan(scan, None, seconds=seconds, probe=probe, options=options, progress=False, device=device)
    halves, weights = [], []
    for idx in interleaved_halves(scan.n_patterns):
        part = scan.subset(idx)
        half = solve(part.diffraction_rows, part.positions, start, scan.object_shape, options=options,
                     epochs=result.epochs, device=device)
        halves.append(half.object)
        weights.append(canvas_weight(half.positions, half.probe, scan.object_shape))
    row = {"method": label, "seconds": result.seconds, "epochs": result.epochs, "modes": modes,
           "probe_origin": origin, **scores(result.object, result.probe, scan, tuple(halves), tuple(weights))}
    _log(row)
    return row, result


def _on_canvas(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A half's image (its own canvas, cut at its last position) on the full scan's canvas."""
    out = np.zeros(shape, image.dtype)
    h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
    out[:h, :w] = image[:h, :w]
    return out


def ptychi_row(args: argparse.Namespace, scan: Any, work: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """Pty-chi LSQML with probe refinement (and position correction with --ptychi-positions) for
    --seconds, and on each half for half of it."""
    from ptycho_torch.reconstruction.solver.engine import canvas_weight
    from ptycho_torch.reconstruction.solver.half_scan import interleaved_halves

    python = ptychi_python(args.ptychi_python)
    if python is None:
        print(PTYCHI_MISSING, flush=True)
        return None
    shape = scan.object_shape
    runs = []
    for name, idx, seconds in (("full", np.arange(scan.n_patterns), args.seconds),
                               *[(n, i, args.seconds / 2) for n, i in zip(("even", "odd"),
                                                                          interleaved_halves(scan.n_patterns))]):
        path = work / f"ptychi_{name}.npz"
        np.savez(path, diffraction=scan.diffraction_rows(idx), probeGuess=scan.probe, xcoords=scan.xcoords[idx],
                 ycoords=scan.ycoords[idx], object_shape=np.array(shape))
        flags = ["--refine-probe"] + (["--refine-positions"] if args.ptychi_positions else [])
        run, arrays = run_ptychi(python, path, work / f"ptychi_{name}_out.npz", "lsqml", seconds, args.seed,
                                 extra=flags)
        runs.append((run, arrays))
    (run, full), halves = runs[0], runs[1:]
    weights = [canvas_weight(a["positions"], a["probe"], shape) for _, a in halves]
    row = {"method": "Pty-chi LSQML, file probe, probe refined" + (", positions corrected" if args.ptychi_positions
                                                                      else ""),
           "seconds": run["seconds"], "epochs": run["epochs"], "torchvision_replaced": run["torchvision_replaced"],
           **scores(full["object"], full["probe"], scan, (halves[0][1]["object"], halves[1][1]["object"]),
                    tuple(weights))}
    _log(row)
    return row, full["object"]


def network_rows(args: argparse.Namespace, scan_path: Path, scan: Any, probe_path: Path, work: Path
                 ) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The default model trained on the scan with our retrieved probe for --network-minutes, its
    reconstruction (and of each half, for the FRC), then the reconstruction refined for --refine-seconds."""
    from ptycho_torch.config import RunConfig, apply_overrides
    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.reconstruction.refine import refine_stitched
    from ptycho_torch.reconstruction.solver.half_scan import interleaved_halves
    from ptycho_torch.training.train import train

    config = apply_overrides(RunConfig(), {
        "data.path": str(scan_path), "data.probe": str(probe_path), "trainer.max_epochs": 100_000,
        "trainer.max_time": args.network_minutes, "trainer.enable_progress_bar": False,
        "logging.logger": "csv", "training.seed": args.seed, "model.n_filters_scale": args.n_filters_scale})
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    trained = train(config, work / "run")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon = reconstruct(trained.run_dir, scan, work / "recon", progress=False, device=args.device)
    recon_s = time.perf_counter() - t0  # includes writing the products and measuring the data fit
    halves = [reconstruct(trained.run_dir, scan.subset(idx), None, progress=False, device=args.device)
              for idx in interleaved_halves(scan.n_patterns)]
    probe = np.load(probe_path)
    net = {"method": f"network (default model, retrieved probe) trained {args.network_minutes:g} min",
           "seconds": recon_s, "train_s": train_s, "epochs": trained.epochs_completed,
           **network_scores(recon, scan, halves)}
    _log(net)
    rows = [(net, recon.object)]
    if args.refine_seconds > 0:
        sol = refine_stitched(recon.object, recon.weight, scan, probe, args.refine_seconds, refine_probe=True,
                              device=args.device)
        half_sols = [refine_stitched(_on_canvas(h.object, scan.object_shape), _on_canvas(h.weight, scan.object_shape),
                                     _subset_on(scan, idx), probe, args.refine_seconds / 2, refine_probe=True,
                                     device=args.device)
                     for h, idx in zip(halves, interleaved_halves(scan.n_patterns))]
        from ptycho_torch.reconstruction.solver.engine import canvas_weight

        refined = {"method": f"network, then refined {args.refine_seconds:g} s (solver, probe refined)",
                   "seconds": recon_s + sol.seconds, "train_s": train_s, "epochs": sol.epochs,
                   **scores(sol.object, sol.probe, scan, tuple(s.object for s in half_sols),
                            tuple(canvas_weight(s.positions, s.probe, scan.object_shape) for s in half_sols))}
        _log(refined)
        rows.append((refined, sol.object))
    return rows


def centre_crop(scan: Any, probe: np.ndarray, n: int) -> tuple[Any, np.ndarray]:
    """The scan seen through the central n x n detector pixels (ScanData in memory) and the probe at
    the matching sample pixel: a far-field crop to n keeps the counts in it, makes each sample-plane
    pixel N/n times larger (positions x n/N), and the probe is its far field cropped the same way."""
    from ptycho_torch.data.scan import ScanData

    N = scan.N
    lo = (N - n) // 2
    X = scan.diffraction_block(0, scan.n_patterns)[:, lo:lo + n, lo:lo + n]
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    small = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far[..., lo:lo + n, lo:lo + n], axes=(-2, -1)), norm="ortho"),
                            axes=(-2, -1)).astype(np.complex64)
    scale = n / N
    x = (scan.xcoords - n) * scale + n  # the lowest positions stay inside the canvas
    y = (scan.ycoords - n) * scale + n
    x, y = x - x.min() + n // 2, y - y.min() + n // 2
    return ScanData(path=None, probe=small, xcoords=x, ycoords=y, diffraction=X,
                    metadata={"centre_crop": {"from_N": N, "to_N": n}}), small


def crop_rows(args: argparse.Namespace, scan: Any, probe: np.ndarray, work: Path
              ) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The network at N=64 from the central 64 x 64 detector pixels (4x cheaper per pattern; sample
    pixels twice as large): trained and scored on the cropped scan, the FRC converted to full-size pixels."""
    from ptycho_torch.data.contract import write_scan

    small, small_probe = centre_crop(scan, probe, 64)
    path = work / "scan_64.npz"
    write_scan(path, **small.arrays())
    probe_path = work / "probe_64.npy"
    np.save(probe_path, small_probe)
    rows = network_rows(args, path, small, probe_path, work / "n64")
    factor = scan.N / 64
    for row, _ in rows:
        row["method"] = row["method"].replace("network", "network at N=64 (centre crop)", 1)
        row["data_fit_on"] = "the 64x64 centre crop"
        for key in ("frc_halfbit_px", "frc_17_px"):
            if key in row:
                row[key] *= factor  # in the full scan's (half-size) pixels
    return rows


def network_scores(recon: Any, scan: Any, halves: list[Any]) -> dict[str, Any]:
    """A network reconstruction's data fit (the one `reconstruct` measured with the model's own probe
    and intensity scale, on every pattern) and the FRC of its reconstructions of the two halves."""
    from ptycho_torch.reconstruction.solver.half_scan import half_scan_frc

    frc = half_scan_frc(*(_on_canvas(h.object, scan.object_shape) for h in halves),
                        *(_on_canvas(h.weight, scan.object_shape) for h in halves))
    return {"data_fit": recon.data_fit["ratio"], "frc_halfbit_px": frc["resolution_halfbit_px"],
            "frc_17_px": frc["resolution_17_px"], "frc_crossed": frc["crossed_halfbit"]}


def _subset_on(scan: Any, idx: np.ndarray) -> Any:
    part = scan.subset(idx)
    part.object_guess = None
    return part


def _log(row: dict[str, Any]) -> None:
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
             if not isinstance(v, (list, dict))}
    print(json.dumps(shown), flush=True)


def picture(objects: list[tuple[str, np.ndarray]], weight: np.ndarray, path: Path) -> None:
    """Phase (top) and amplitude (bottom) of every row, each brought to its bright level 1 and its mean
    phase 0 over the well-lit region, one colour range per kind across the rows."""
    from ptycho_torch.evaluation.metrics import scanned_region
    from ptycho_torch.evaluation.plots import _figure, _save

    region = scanned_region(weight, 0.3)
    shown = []
    for label, obj in objects:
        o = np.asarray(obj, np.complex128)
        mean = np.sum(o[region])
        o = o * np.exp(-1j * np.angle(mean)) / max(float(np.percentile(np.abs(o[region]), 95)), 1e-30)
        shown.append((label, np.where(region, np.angle(o), np.nan), np.where(region, np.abs(o), np.nan)))
    phases = np.concatenate([p[np.isfinite(p)] for _, p, _ in shown])
    lo, hi = np.percentile(phases, [1, 99])
    fig, ax = _figure(2, len(shown), size=(3.6 * len(shown), 7.0))
    for k, (label, phase, amp) in enumerate(shown):
        for r, (img, cmap, lim) in enumerate(((phase, "viridis", (lo, hi)), (amp, "gray", (0.0, 1.2)))):
            a = ax[r, k]
            im = a.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
            a.set_title(label if r == 0 else "amplitude", fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
        fig.colorbar(im, ax=ax[1, k], shrink=0.7)
    _save(fig, path)


def section(result: dict[str, Any]) -> str:
    s = result["settings"]
    command = (f"benchmarks/real_data.py --data {s['data_name']} --seconds {s['seconds']:g} --modes {s['modes']} "
               f"--network-minutes {s['network_minutes']:g} --refine-seconds {s['refine_seconds']:g}")
    command += " --crop-row" if any("data_fit_on" in r for r in result["rows"]) else ""
    lines = [SECTION, "",
             f"`{command}`, {result['date']}, {result['machine']['cpu_count']} CPU cores, torch "
             f"{result['machine']['torch']} with {result['machine'].get('torch_threads', '?')} thread(s) per process "
             f"(Pty-chi's subprocess alike); {result['load']} The scan: {s['n_patterns']} measured patterns of "
             f"{s['N']}x{s['N']} photon counts of a Siemens star (APS Velociprobe, tike's test data), an analytic "
             "zone-plate probe model in the file, no ground truth. *Data fit*: Poisson deviance of the "
             "reconstruction's predicted patterns over the counting-noise floor, on every pattern (1 = explained to "
             "the noise). *Half-scan FRC*: the even and the odd patterns reconstructed apart, registered, FRC "
             "over their common well-lit region; the resolution in pixels (one period) where the curve falls below "
             "the half-bit / 1/7 threshold. Seconds: the reconstruction's own time (for the network: inference, "
             "and refinement; its training time in the method's name).", "",
             "| method | seconds | epochs | data fit | FRC half-bit px | FRC 1/7 px |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fit = f"{r['data_fit']:.2f}" + (" (on the crop)" if "data_fit_on" in r else "")
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r.get('epochs', '')} | {fit} | "
                     f"{r.get('frc_halfbit_px', float('nan')):.2f} | {r.get('frc_17_px', float('nan')):.2f} |")
    lines += ["", "![the Siemens star by every method](images/real_data.png)", ""]
    lines += [n for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"measured scan (default: {DEFAULT_DATA})")
    parser.add_argument("--seconds", type=float, default=60.0, help="solver budget per row (default: 60)")
    parser.add_argument("--modes", type=int, default=3, help="probe modes of the modes row; 1 = no such row (default: 3)")
    parser.add_argument("--network-minutes", type=float, default=10.0,
                        help="training budget of the network row; 0 = no network row (default: 10)")
    parser.add_argument("--refine-seconds", type=float, default=10.0, help="refinement of the network row (default: 10)")
    parser.add_argument("--crop-row", action="store_true",
                        help="also the network at N=64 from the central 64x64 detector pixels (default: off)")
    parser.add_argument("--ptychi-python", default=None, help="a Python with ptychi (default: $PTYCHI_PYTHON or this one)")
    parser.add_argument("--ptychi-positions", action="store_true", help="Pty-chi also corrects positions (default: off)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--device", default="cpu", help="where our solver and the network's inference run (default: cpu)")
    parser.add_argument("--n-filters-scale", type=float, default=0.5, help="network width of the network row (default: 0.5)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md or the picture")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: --data {args.data} does not exist (the real scan lives in ../shared/data/)")
    torch.manual_seed(args.seed)
    from ptycho_torch.data.contract import read_scan

    load_start = os.getloadavg()[0]
    scan = read_scan(args.data)
    rows: list[dict[str, Any]] = []
    objects: list[tuple[str, np.ndarray]] = []
    work = Path(tempfile.mkdtemp(prefix="real_data_"))
    file_row, file_result = our_row(scan, "ours, file probe (refined)", "file", 1, args.seconds, args.device)
    rows.append(file_row)
    objects.append(("ours, file probe", file_result.object))
    est_row, est_result = our_row(scan, "ours, probe estimated from the data", "estimate", 1, args.seconds, args.device)
    rows.append(est_row)
    objects.append(("ours, estimated probe", est_result.object))
    if args.modes > 1:
        modes_row, modes_result = our_row(scan, f"ours, file probe, {args.modes} modes", "file", args.modes,
                                          args.seconds, args.device)
        rows.append(modes_row)
        objects.append((f"ours, {args.modes} modes", modes_result.object))
    ptychi = ptychi_row(args, scan, work)
    if ptychi is not None:
        rows.append(ptychi[0])
        objects.append(("Pty-chi LSQML", ptychi[1]))
    if args.network_minutes > 0:
        probe_path = work / "retrieved_probe.npy"
        np.save(probe_path, file_result.probe)
        scan_path = work / "scan.npz"
        from ptycho_torch.data.contract import write_scan

        write_scan(scan_path, **{**scan.arrays(), "probe": file_result.probe})
        for row, obj in network_rows(args, scan_path, scan, probe_path, work / "n128"):
            rows.append(row)
            objects.append(("network" if "refined" not in row["method"] else "network + refined", obj))
        if args.crop_row:
            rows += [row for row, _ in crop_rows(args, scan, file_result.probe, work)]
    result = {"date": time.strftime("%Y-%m-%d"), "settings": {
        "data": str(args.data), "data_name": f"../shared/data/{args.data.name}", "seconds": args.seconds,
        "modes": args.modes, "network_minutes": args.network_minutes, "refine_seconds": args.refine_seconds,
        "n_patterns": scan.n_patterns, "N": scan.N, "seed": args.seed, "device": args.device,
        "n_filters_scale": args.n_filters_scale},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads()},
        "load": load_note(load_start, os.getloadavg()[0], os.cpu_count()), "rows": rows}
    ours = rows[0]
    if ptychi is not None:
        p = ptychi[0]
        result["notes"] = [
            f"Targets (issue 28): our solver's data fit within 1.2x of Pty-chi LSQML's: {ours['data_fit']:.2f} vs "
            f"{p['data_fit']:.2f} ({ours['data_fit'] / p['data_fit']:.2f}x); half-scan FRC (half-bit) within 10%: "
            f"{ours.get('frc_halfbit_px', float('nan')):.2f} px vs {p.get('frc_halfbit_px', float('nan')):.2f} px."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    if not args.no_docs:
        picture(objects, file_result.weight, IMAGE)
        write_section(SECTION, section(result))
        print(f"wrote {IMAGE} and the section '{SECTION}' of docs/benchmarks.md")


if __name__ == "__main__":
    main()
