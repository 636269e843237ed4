"""Reconstruction quality for a fixed CPU training budget, gridsize 1 vs 2 (issue: the foundation).

One run simulates one scan (lines object, N=64 by default, >= 400 positions, 1e6 photons per
pattern, defocused probe, Poisson noise), then for each gridsize trains PtychoPINN with
`ptycho_torch.training.train.train` until the wall-clock budget is spent (trainer.max_time:
Lightning's max_time stops the run at the first step past the budget, and the default WarmupCosine
schedule anneals the learning rate over it; the epoch count is set high enough never to stop it first), reconstructs the whole scan with `ptycho_torch.reconstruction.reconstruct.reconstruct` and
evaluates the stitched object against the ground truth (phase offset removed, amplitude scale
matched, inside the scanned region).

Per gridsize it records: amplitude and phase SSIM / PSNR, FRC 0.5 and 1/7 resolution (px), the
epochs and optimisation steps the budget bought, seconds of training and of reconstruction. Writes
benchmarks/results/quality.json and the "## Reconstruction quality" section of docs/benchmarks.md.

    .venv/bin/python benchmarks/quality.py [--budget-minutes 20] [--gridsizes 1 2] [--n-filters-scale 0.5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from docs_page import write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
SECTION = "## Reconstruction quality"
TARGETS = {"standard": (0.80, 0.60), "upstream-lines": (0.95, 0.85), "upstream-lines-phase": (0.95, 0.85),
           "low-dose": (0.60, 0.0)}
HEADLINE = ("phase_ssim", "phase_psnr", "amplitude_ssim", "amplitude_psnr", "frc_half_resolution_px",
            "frc_17_resolution_px")


PRESETS: dict[str, dict[str, Any]] = {
    # our standard scan: sharp lines, a 9.6 px step, 1e6 photons, scored on the scan it trained on
    "standard": {"object": "lines", "N": 64, "positions": 512, "overlap": 0.7, "nphotons": 1e6,
                 "neighbor_count": 6, "split": "none", "max_phase": 1.5, "min_amplitude": 0.5},
    # upstream PtychoPINN's SIM-LINES-4X setting: soft lines, a 4 px step (overlap 0.875 of a 32 px
    # probe), 1e9 photons, 4 neighbours per group, trained on the left half and scored on the right.
    # Upstream's grid-lines workflow leaves set_phi False, so its object has no phase at all (amplitude
    # = the soft-lines image, whose min/max is about 0.13), and scores phase SSIM over a 2 pi range:
    # its published phase SSIM is that of a flat phase.
    "upstream-lines": {"object": "soft_lines", "N": 64, "positions": 8000, "overlap": 0.875, "nphotons": 1e9,
                       "neighbor_count": 4, "split": "half", "max_phase": 0.0, "min_amplitude": 0.13},
    # the same scan with an independent +-1.5 rad phase: harder than anything upstream reports
    "upstream-lines-phase": {"object": "soft_lines", "N": 64, "positions": 8000, "overlap": 0.875,
                             "nphotons": 1e9, "neighbor_count": 4, "split": "half", "max_phase": 1.5,
                             "min_amplitude": 0.13},
}


def simulate(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """(training scan, scored scan): the same file, or the two halves (by x) of one scan sharing the
    object frame, so a model trained on one half reconstructs the other, which it never saw."""
    import numpy as np

    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.contract import write_scan
    from ptycho_torch.data.simulate import simulate_scan, simulate_to_file

    sim = SimulationConfig(N=args.N, object=args.object, n_positions=args.positions, overlap=args.overlap,
                           nphotons=args.nphotons, max_phase=args.max_phase, min_amplitude=args.min_amplitude,
                           seed=args.seed)
    if args.split == "none":
        path = simulate_to_file(sim, out / "scan.npz")
        return path, path
    full = simulate_scan(sim)
    x = full["xcoords"]
    halves = []
    for name, keep in (("train", x < np.median(x)), ("test", x >= np.median(x))):
        part = {k: (v[keep] if k in ("diffraction", "xcoords", "ycoords", "scan_index") else v)
                for k, v in full.items()}
        halves.append(write_scan(out / f"scan_{name}.npz", **part))
    return halves[0], halves[1]


def run_config(args: argparse.Namespace, scan: Path, gridsize: int) -> Any:
    from ptycho_torch.config import RunConfig

    return RunConfig.from_dict({
        "data": {"path": str(scan), "val_fraction": 0.1, "neighbor_count": args.neighbor_count},
        "model": {"N": args.N, "gridsize": gridsize, "n_filters_scale": args.n_filters_scale},
        "training": {"batch_size": args.batch_size, "seed": args.seed},
        "trainer": {"max_epochs": 100_000, "max_time": args.budget_minutes, "enable_progress_bar": False},
        "optimizer": {"learning_rate": args.learning_rate}, "logging": {"logger": "csv"}})


def truth_loss(scan_path: Path, gridsize: int) -> float:
    """The training loss of the ground truth on this scan (ptycho_torch.evaluation.truth_loss): the noise floor."""
    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.evaluation.truth_loss import truth_loss as floor

    value = floor(read_scan(scan_path), gridsize)
    assert value is not None, f"{scan_path} holds no objectGuess"
    return value


def one_gridsize(args: argparse.Namespace, scans: tuple[Path, Path], gridsize: int, work: Path) -> dict[str, Any]:
    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.training.train import train

    scan, scored = scans
    start = time.perf_counter()
    trained = train(run_config(args, scan, gridsize), work / f"run_g{gridsize}")
    train_s = time.perf_counter() - start
    steps = int(trained.trainer.global_step) if trained.trainer is not None else None
    start = time.perf_counter()
    recon = reconstruct(trained.run_dir, scored, work / f"recon_g{gridsize}", progress=False)
    recon_s = time.perf_counter() - start
    metrics = recon.metrics or {}
    floor = truth_loss(scan, gridsize)
    row = {"gridsize": gridsize, "date": time.strftime("%Y-%m-%d"), "epochs": trained.epochs_completed, "steps": steps,
           "train_s": train_s, "reconstruct_s": recon_s, "final_val_loss": trained.metrics.get("val_loss"),
           "truth_loss": floor, "train_loss_x_truth": trained.metrics.get("train_loss", float("nan")) / floor,
           **{k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))}}
    print(json.dumps(row), flush=True)
    return row


def headline_scores(scan: Any, obj: np.ndarray) -> dict[str, float]:
    """HEADLINE metrics of an (H, W) object against the scan's objectGuess, inside the scanned region
    (the region and metric every row of the tables uses)."""
    from ptycho_torch.evaluation.metrics import evaluate_reconstruction
    from ptycho_torch.reconstruction.refine import coverage

    metrics = evaluate_reconstruction(obj, scan.object_guess, coverage(scan.positions, scan.probe, obj.shape))
    return {k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))}


def iterative(args: argparse.Namespace, scored: Path) -> dict[str, Any]:
    """The iterative baseline on the scored scan: our solver (ptycho_torch.reconstruction.solver), known probe kept
    fixed, flat start, for `--iterative-seconds` of wall clock."""
    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve

    scan = read_scan(scored)
    result = solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_guess.shape,
                   seconds=args.iterative_seconds, options=SolverOptions(refine_probe=False, seed=args.seed))
    row = {"method": "our iterative solver (ptycho_torch.reconstruction.solver, minibatch rPIE), known probe, flat start",
           "steps": result.epochs, "iterations": "epochs", "seconds": result.seconds,
           **headline_scores(scan, result.object)}
    print(json.dumps(row), flush=True)
    return row


PTYCHI_METHODS = {"epie": "Pty-chi ePIE", "lsqml": "Pty-chi LSQML"}
PTYCHI_MISSING = "Pty-chi rows skipped: no ptychi in this Python (pip install -e '.[bench]' or --ptychi-python)"


def ptychi_python(asked: str | None) -> str | None:
    """The Python that runs Pty-chi: --ptychi-python, $PTYCHI_PYTHON, or this one; None when it has no
    ptychi (pip install -e ".[bench]", or a separate environment)."""
    python = asked or os.environ.get("PTYCHI_PYTHON") or sys.executable
    found = subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('ptychi') is None)"],
                           capture_output=True, check=False)
    return python if found.returncode == 0 else None


def run_ptychi(python: str, scan_path: Path, out: Path, method: str, seconds: float, seed: int,
               curve: bool = False, extra: list[str] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """benchmarks/ptychi_solver.py on `scan_path` in `python` (`extra`: more of its flags, e.g.
    --refine-probe): (its JSON summary, the arrays it wrote: 'object', 'probe', 'positions', and with
    `curve` the per-chunk 'snapshots', 'snapshot_seconds', 'snapshot_epochs')."""
    command = [python, str(Path(__file__).with_name("ptychi_solver.py")), str(scan_path), str(out),
               "--method", method, "--seconds", f"{seconds:g}", "--seed", str(seed), *(extra or [])]
    if curve:
        command += ["--curve", "--chunk-epochs", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{PTYCHI_METHODS[method]} failed:\n{proc.stderr[-3000:]}")
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(proc.stdout.strip().splitlines()[-1]), arrays


def ptychi_label(method: str, run: dict[str, Any]) -> str:
    return f"{PTYCHI_METHODS[method]} (batch {run['batch_size']}), known probe, flat start"


def ptychi_rows(args: argparse.Namespace, scored: Path, work: Path) -> list[dict[str, Any]]:
    """Pty-chi ePIE and LSQML on the scored scan (benchmarks/ptychi_solver.py in `ptychi_python`),
    known probe, flat start, `--iterative-seconds` each; scored like the network."""
    from ptycho_torch.data.contract import read_scan

    python = ptychi_python(args.ptychi_python)
    if python is None:
        print(PTYCHI_MISSING, flush=True)
        return []
    scan = read_scan(scored)
    rows = []
    for method in PTYCHI_METHODS:
        run, arrays = run_ptychi(python, scored, work / f"ptychi_{method}.npz", method, args.iterative_seconds,
                                 args.seed)
        row = {"method": ptychi_label(method, run), "iterations": "epochs", "steps": run["epochs"],
               "seconds": run["seconds"], "torchvision_replaced": run["torchvision_replaced"],
               **headline_scores(scan, arrays["object"])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def iterative_rows(args: argparse.Namespace, scored: Path, work: Path) -> list[dict[str, Any]]:
    """Our gradient descent, then Pty-chi's ePIE and LSQML where available, on the scored scan."""
    return [iterative(args, scored), *ptychi_rows(args, scored, work)]


def section(result: dict[str, Any]) -> str:
    s = result["settings"]
    command = f"benchmarks/quality.py --preset {s['preset']} --budget-minutes {s['budget_minutes']:g}"
    if result["section"] != SECTION and s["preset"] == "standard":
        command += f" --nphotons {s['nphotons']:g}"
    scored = ("the right half of the object, which training never saw (trained on the left half)"
              if s["split"] == "half" else "the scan it trained on")
    lines = [result["section"], "",
             f"`{command}`, {result['date']}, "
             f"{result['machine']['cpu_count']} CPU cores (shared with other work), torch "
             f"{result['machine']['torch']}. Object {s['object']} (amplitude in [{s.get('min_amplitude', 0.5):g}, 1], "
             + (f"phase +-{s['max_phase']:g} rad" if s.get("max_phase", 1.5) else "no phase") + f"), N={s['N']}, {s['positions']} positions "
             f"(overlap {s['overlap']}), {s['nphotons']:.0e} photons per pattern, {s['neighbor_count']} "
             f"neighbours per group, scored on {scored}, n_filters_scale={s['n_filters_scale']}, batch "
             f"{s['batch_size']}, lr {s['learning_rate']:g}, training stopped by wall clock after "
             f"{s['budget_minutes']:g} min per gridsize. Metrics of the stitched object inside the scanned "
             "region (phase offset removed, amplitude scale matched). *Loss of the truth* is the same loss for the "
             "ground-truth object (the noise floor): the gap to the final val loss is what training left.", "",
             "| gridsize | epochs | steps | train s | reconstruct s | final val loss | loss of the truth | "
             "phase SSIM | phase PSNR dB | amplitude SSIM | amplitude PSNR dB | FRC 0.5 px | FRC 1/7 px |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        def f(key: str, fmt: str = ".3f", r: dict[str, Any] = r) -> str:
            return format(r[key], fmt) if key in r else "n/a"
        lines.append(f"| {r['gridsize']} | {r['epochs']} | {r['steps']} | {r['train_s']:.0f} | "
                     f"{r['reconstruct_s']:.1f} | {f('final_val_loss', '.1f')} | {f('truth_loss', '.1f')} | "
                     f"{f('phase_ssim')} | {f('phase_psnr', '.1f')} | "
                     f"{f('amplitude_ssim')} | {f('amplitude_psnr', '.1f')} | "
                     f"{f('frc_half_resolution_px', '.1f')} | {f('frc_17_resolution_px', '.1f')} |")
    dates = {r.get("date", result["date"]) for r in result["runs"]}
    if len(dates) > 1:
        lines += ["", "Rows measured on different days (with the code of that day): "
                  + ", ".join(f"gridsize {r['gridsize']} {r.get('date', result['date'])}" for r in result["runs"]) + "."]
    for note in result.get("notes", []):  # what a merged result says about its rows
        lines += ["", note]
    iterative_rows = result.get("iterative", [])
    if iterative_rows:
        lines += ["", "Iterative solvers on the same scored scan, same metric and region"
                  + (f" ({result['iterative_date']})" if result.get("iterative_date") else "") + ":", "",
                  "| solver | iterations | seconds | phase SSIM | amplitude SSIM | FRC 0.5 px |", "|---|---|---|---|---|---|"]
        for r in iterative_rows:
            lines.append(f"| {r['method']} | {r['steps']} {r.get('iterations', 'steps')} | {r['seconds']:.0f} | "
                         f"{r['phase_ssim']:.3f} | {r['amplitude_ssim']:.3f} | {r['frc_half_resolution_px']:.1f} |")
        if any(r.get("torchvision_replaced") for r in iterative_rows):
            lines += ["", "Pty-chi ran with torchvision replaced (benchmarks/ptychi_solver.py: PyPI's torchvision "
                      "for torch 2.13 does not load on a CPU-only torch; Pty-chi needs it only to draw a random "
                      "initial object, which these runs do not use)."]
    g2 = [r for r in result["runs"] if r["gridsize"] == 2 and "phase_ssim" in r]
    phase_target, amp_target = result["targets"]
    if g2:
        met = g2[0]["phase_ssim"] >= phase_target and g2[0].get("amplitude_ssim", 0) >= amp_target
        lines += ["", f"Target (issue 11): gridsize 2 phase SSIM >= {phase_target}, amplitude SSIM >= "
                  f"{amp_target} — " + ("met." if met else f"not met (phase {g2[0]['phase_ssim']:.2f}, amplitude "
                     f"{g2[0].get('amplitude_ssim', float('nan')):.2f}); the final val loss is "
                     f"{g2[0]['final_val_loss'] / g2[0]['truth_loss']:.0f}x the loss of the truth.")]
    return "\n".join(lines) + "\n"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("preset", "budget_minutes", "N", "object", "positions", "overlap", "nphotons",
                                          "neighbor_count", "split", "max_phase", "min_amplitude", "n_filters_scale",
                                          "batch_size", "learning_rate", "seed")}


def merged_with_earlier(results: Path, now: dict[str, Any], runs: list[dict[str, Any]],
                        baseline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A run of some gridsizes joins the last results file of the same settings: its rows replace that
    file's rows of the same gridsize, the others (each with its own date), the notes and, when this run
    skipped them (--iterative-seconds 0), the iterative rows are kept. None when there is nothing to join."""
    earlier = json.loads(results.read_text()) if results.is_file() else None
    if not earlier or earlier.get("settings") != now:
        return None
    mine = {r["gridsize"] for r in runs}
    kept = [{"date": earlier["date"], **r} for r in earlier["runs"] if r["gridsize"] not in mine]
    earlier.update(date=time.strftime("%Y-%m-%d"), runs=sorted(kept + runs, key=lambda r: r["gridsize"]))
    if baseline:
        earlier.update(iterative=baseline, iterative_date=time.strftime("%Y-%m-%d"))
    return earlier


def run_identity(args: argparse.Namespace) -> tuple[Path, str, tuple[float, float]]:
    """(results file, docs section title, (phase, amplitude) SSIM targets) of this run: the preset's,
    or, for the standard scan at another dose, its own (the low-dose target below 1e6 photons)."""
    if args.preset != "standard":
        return (RESULTS.with_name(f"quality_{args.preset.replace('-', '_')}.json"), f"{SECTION}: {args.preset}",
                TARGETS[args.preset])
    if args.nphotons == PRESETS["standard"]["nphotons"]:
        return RESULTS, SECTION, TARGETS["standard"]
    return (RESULTS.with_name(f"quality_{args.nphotons:.0e}.json".replace("+", "")),
            f"{SECTION} at {args.nphotons:.0e} photons", TARGETS["low-dose" if args.nphotons < 1e6 else "standard"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="wall-clock training budget per gridsize in minutes (default: 20)")
    parser.add_argument("--gridsizes", type=int, nargs="+", default=[1, 2], help="default: 1 2")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard",
                        help="scan and scoring: 'standard' (lines, 512 positions, 1e6 photons, scored on the "
                             "training scan) or 'upstream-lines' (upstream's SIM-LINES-4X setting: soft lines, "
                             "8000 positions at a 4 px step, 1e9 photons, 4 neighbours, trained on the left half "
                             "and scored on the right half; no phase, as upstream) or 'upstream-lines-phase' "
                             "(the same with an independent +-1.5 rad phase); default: standard")
    parser.add_argument("--nphotons", type=float, default=None, help="photons per pattern (default: the preset's)")
    parser.add_argument("--positions", type=int, default=None, help="scan positions (default: the preset's)")
    parser.add_argument("--n-filters-scale", type=float, default=0.5, help="network width (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=4, help="groups per step (default: 4: 16 patterns at gridsize 2, where small steps learn fastest on CPU)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="default: 2e-3")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--iterative-seconds", type=float, default=60.0,
                        help="wall clock of the iterative baseline on the scored scan; 0 = skip (default: 60)")
    parser.add_argument("--ptychi-python", default=None,
                        help="a Python with ptychi for the Pty-chi rows (default: $PTYCHI_PYTHON, else this one; "
                             "rows skipped when it has no ptychi)")
    parser.add_argument("--iterative-only", action="store_true",
                        help="simulate the preset's scan again (same seed) and rerun only the iterative rows, "
                             "kept with the network rows of the last results file")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the scan, run and reconstruction folders (with their PNGs) here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    results, title, targets = run_identity(args)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PTYCHO_QUIET_LIGHTNING", "1")
    if not args.iterative_only:
        print(f"training budget: {args.budget_minutes:g} min per gridsize, gridsizes {args.gridsizes}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ptycho-quality-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scan = simulate(args, work)
        if args.iterative_only:  # the network rows stay as last measured
            result = json.loads(results.read_text())
            result["iterative"] = iterative_rows(args, scan[1], work)
            result["iterative_date"] = time.strftime("%Y-%m-%d")
        else:
            runs = [one_gridsize(args, scan, g, work) for g in args.gridsizes]
            baseline = iterative_rows(args, scan[1], work) if args.iterative_seconds > 0 else []
            result = merged_with_earlier(results, settings(args), runs, baseline) or {
                "date": time.strftime("%Y-%m-%d"),
                "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()},
                "settings": settings(args),
                "runs": runs, "iterative": baseline, "section": title, "targets": targets,
            }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    text = section(result)
    print(text)
    if not args.no_docs:
        write_section(result["section"], text)


if __name__ == "__main__":
    main()
