"""How good and how fast on a scan the model never saw: pretrained vs fine-tuned vs from scratch vs iterative (issue 15).

One run simulates a training corpus of K scans of one object kind (`ptycho_torch.api.simulate(...,
n_scans=K)`: scan k has seed --seed + k; by default the quality benchmark's standard scan: lines,
N=64, 512 positions, overlap 0.7, 1e6 photons, one probe) and one held-out scan of the same kind with
seed --seed + K, which no training run of (a) sees. Then, all on the held-out scan:

  (a) pretrained: one gridsize-2 model trained on the corpus for --pretrain-minutes of wall clock
      (Lightning's Timer), reconstructing the held-out scan with the scan's own probe and
      normalisation (reconstruct's defaults: 'cover' groups, each pattern read about once); also
      with one group per pattern (grouping 'every_pattern', 4x the network passes) side by side;
  (b) fine-tuned: (a)'s weights (training.init_from, a new optimiser) trained on the held-out scan for
      --finetune-minutes, then reconstructing it;
  (c) from scratch: a fresh model trained on the held-out scan for --scratch-minutes (default: the
      pretraining budget), scored at the end only;
  (d) iterative: gradient descent on the object pixels through our own forward model
      (ptycho_torch.reconstruction.refine), known probe, flat start, in chunks of --chunk-seconds, each continuing
      from the previous chunk's object, scored after every chunk, up to --iterative-seconds; and
      Pty-chi's ePIE and LSQML (benchmarks/ptychi_solver.py, where ptychi is installed: the `bench`
      extra or --ptychi-python), known probe, flat start, scored after every 2 epochs;
  (e) refined: (a)'s stitched object refined by the same gradient descent for --refine-seconds
      (reconstruct(..., refine_seconds=)).

Each row: phase / amplitude SSIM, FRC 0.5 resolution (px) inside the scanned region (phase offset
removed, amplitude scale matched), wall-clock seconds, and for (c) and (d) the time to reach (a)'s
phase SSIM. Reconstruction seconds are load the bundle + network pass + stitching in memory (writing
files is not counted, reading the scan neither: the iterative solver gets it read too). Writes
benchmarks/results/generalize.json and the "## Generalization to unseen scans" section of
docs/benchmarks.md.

    .venv/bin/python benchmarks/generalize.py [--n-scans 6] [--pretrain-minutes 10] [--finetune-minutes 2]
    .venv/bin/python benchmarks/generalize.py --smoke     # the whole pipeline in about a minute, no docs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from docs_page import load_note, write_section
from lightning.pytorch.callbacks import Timer
from quality import (
    HEADLINE,
    PRESETS,
    PTYCHI_METHODS,
    PTYCHI_MISSING,
    headline_scores,
    ptychi_label,
    ptychi_python,
    run_ptychi,
)

from ptycho_torch.evaluation.data_fit import DEFAULT_MAX_PATTERNS, data_fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "generalize.json"
SECTION = "## Generalization to unseen scans"
# a run whose network and gradient descent ran on a GPU keeps its own file and section beside the CPU one
RESULTS_GPU = ROOT / "benchmarks" / "results" / "generalize_gpu.json"
SECTION_GPU = "## Generalization to unseen scans on a GPU"


TRAINING_DEFAULTS = {"n_filters_scale": 0.5, "batch_size": 4, "learning_rate": 2e-3}  # the flags' defaults


def section_title(result: dict[str, Any]) -> str:
    return SECTION_GPU if result["settings"].get("recon_device") == "cuda" else SECTION
STANDARD = PRESETS["standard"]
# (flag default, --smoke value); None in the smoke column keeps the default
SIZES: dict[str, tuple[Any, Any]] = {
    "N": (STANDARD["N"], 32), "positions": (STANDARD["positions"], 64), "n_scans": (6, 2),
    "pretrain_minutes": (10.0, 0.15), "finetune_minutes": (2.0, 0.05), "scratch_minutes": (None, 0.1),
    "iterative_seconds": (60.0, 6.0), "chunk_seconds": (2.0, 2.0), "refine_seconds": (10.0, 2.0),
}


def simulate(args: argparse.Namespace, work: Path) -> tuple[list[Path], Path]:
    """(corpus files, held-out file): K scans with seeds seed .. seed+K-1, and one with seed seed+K."""
    from ptycho_torch import api

    fields = {"N": args.N, "object": args.object, "n_positions": args.positions, "overlap": args.overlap,
              "nphotons": args.nphotons, "max_phase": args.max_phase, "min_amplitude": args.min_amplitude}
    corpus = api.simulate(work / "corpus", n_scans=args.n_scans, seed=args.seed, **fields)
    heldout = api.simulate(work / "heldout.npz", seed=args.seed + args.n_scans, **fields)
    return list(corpus), Path(heldout)


def run_config(args: argparse.Namespace, data: str, init_from: str | None = None) -> Any:
    from ptycho_torch.config import RunConfig

    return RunConfig.from_dict({
        "data": {"path": data, "val_fraction": 0.1, "neighbor_count": args.neighbor_count, "scans": "per_file"},
        "model": {"N": args.N, "gridsize": 2, "n_filters_scale": args.n_filters_scale},
        "training": {"batch_size": args.batch_size, "init_from": init_from, "seed": args.seed},
        "trainer": {"max_epochs": 100_000, "accelerator": args.device, "enable_progress_bar": False},
        "optimizer": {"learning_rate": args.learning_rate}, "logging": {"logger": "csv"}})


def train_for(args: argparse.Namespace, data: str, minutes: float, run_dir: Path,
              init_from: str | None = None) -> dict[str, Any]:
    """Train until `minutes` of wall clock are spent (the Timer stops at the first step past it)."""
    from ptycho_torch.training.train import train

    timer = Timer(duration=timedelta(seconds=minutes * 60.0), interval="step")
    start = time.perf_counter()
    trained = train(run_config(args, data, init_from), run_dir, callbacks=[timer])
    seconds = time.perf_counter() - start
    steps = int(trained.trainer.global_step) if trained.trainer is not None else None
    print(f"  trained {run_dir.name}: {trained.epochs_completed} epochs, {steps} steps, {seconds:.0f} s, "
          f"val loss {trained.metrics.get('val_loss', float('nan')):.1f}", flush=True)
    return {"run_dir": str(trained.run_dir), "epochs": trained.epochs_completed, "steps": steps,
            "train_s": seconds, "final_val_loss": trained.metrics.get("val_loss")}


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))}


def network_row(args: argparse.Namespace, method: str, run_dir: str, scan: Any, work: Path,
                refine_seconds: float = 0.0, grouping: str | None = None) -> dict[str, Any]:
    """Reconstruct the held-out scan (in memory, the scan's own probe and normalisation; `grouping`
    None = the bundle's, 'cover') and score it."""
    from ptycho_torch.evaluation.metrics import evaluate_reconstruction
    from ptycho_torch.reconstruction.reconstruct import reconstruct, write_reconstruction

    start = time.perf_counter()
    recon = reconstruct(run_dir, scan, None, device=args.recon_device, progress=False, refine_seconds=refine_seconds,
                        grouping=grouping)
    seconds = time.perf_counter() - start
    if args.keep is not None:  # not timed; writes fit.png and measures the fit
        fit = write_reconstruction(work / f"recon_{method}", recon.object, recon.weight, scan, {"model": run_dir},
                                   probe=scan.probe, photon_scale=recon.photon_scale,
                                   fit_patterns=DEFAULT_MAX_PATTERNS)["data_fit"]["ratio"]
    else:  # not timed
        fit = data_fit(recon.object, scan, scan.probe, scale=recon.photon_scale).ratio
    return {"method": method, "reconstruct_s": seconds,
            **headline(evaluate_reconstruction(recon.object, scan.object_guess, recon.weight)), "data_fit": fit}


def iterative(args: argparse.Namespace, scan: Any, target: float) -> dict[str, Any]:
    """The iterative solver (ptycho_torch.reconstruction.solver), known probe (fixed), flat start, in chunks (each a
    solver run continuing from the previous object, constant steps) of 0.25, 0.5, 1, ... s up to
    --chunk-seconds, scored after each chunk; the first cumulative solver time whose phase SSIM
    reaches `target` (an upper bound at the chunks' resolution)."""
    from ptycho_torch.evaluation.metrics import evaluate_reconstruction
    from ptycho_torch.reconstruction.refine import coverage
    from ptycho_torch.reconstruction.solver.engine import SolverOptions, solve

    obj = None
    weight = coverage(scan.positions, scan.probe, scan.object_guess.shape)
    curve: list[dict[str, float]] = []
    solver_s, steps, chunk, reached = 0.0, 0, 0, None
    while args.iterative_seconds - solver_s >= min(0.25, args.iterative_seconds) or chunk == 0:
        seconds = min(args.chunk_seconds, 0.25 * 2 ** chunk, args.iterative_seconds - solver_s)
        result = solve(scan.diffraction_rows, scan.positions, scan.probe, scan.object_guess.shape, start=obj,
                       seconds=seconds, device=args.recon_device,
                       options=SolverOptions(refine_probe=False, anneal=0.0, seed=args.seed + chunk))
        obj, solver_s, steps, chunk = result.object, solver_s + result.seconds, steps + result.epochs, chunk + 1
        point = {"seconds": solver_s, "steps": steps, **headline(evaluate_reconstruction(obj, scan.object_guess, weight))}
        curve.append(point)
        if reached is None and point.get("phase_ssim", -1.0) >= target:
            reached = solver_s
        print(f"  iterative {solver_s:5.1f} s, {steps} epochs: phase SSIM {point.get('phase_ssim', float('nan')):.3f}, "
              f"amplitude SSIM {point.get('amplitude_ssim', float('nan')):.3f}", flush=True)
    last = curve[-1] if curve else {}
    if args.keep is not None:
        np.save(args.keep / "iterative_object.npy", obj)
    return {"method": "iterative", "seconds": solver_s, "steps": steps, "reach_s": reached, "curve": curve,
            **{k: v for k, v in last.items() if k in HEADLINE}, "data_fit": data_fit(obj, scan, result.probe).ratio}


def ptychi_curves(args: argparse.Namespace, heldout: Path, scan: Any, target: float, work: Path) -> list[dict[str, Any]]:
    """Pty-chi ePIE and LSQML on the held-out scan for --iterative-seconds each, the object scored after
    every 2 epochs (snapshot copies not timed); the first solver time whose phase SSIM reaches `target`."""
    python = ptychi_python(args.ptychi_python)
    if python is None:
        print(PTYCHI_MISSING, flush=True)
        return []
    rows = []
    for method in PTYCHI_METHODS:
        run, arrays = run_ptychi(python, heldout, work / f"ptychi_{method}.npz", method, args.iterative_seconds,
                                 args.seed, curve=True)
        curve = [{"seconds": float(t), "steps": int(e), **headline_scores(scan, obj)}
                 for t, e, obj in zip(arrays["snapshot_seconds"], arrays["snapshot_epochs"], arrays["snapshots"])]
        reached = next((p["seconds"] for p in curve if p.get("phase_ssim", -1.0) >= target), None)
        row = {"method": f"ptychi_{method}", "label": ptychi_label(method, run), "seconds": run["seconds"],
               "steps": run["epochs"], "reach_s": reached, "curve": curve,
               "torchvision_replaced": run["torchvision_replaced"],
               **{k: v for k, v in curve[-1].items() if k in HEADLINE}}  # no data fit: see section()
        print(f"  {row['label']}: {run['epochs']} epochs, {run['seconds']:.0f} s, phase SSIM "
              f"{row.get('phase_ssim', float('nan')):.3f}, reached (a) at {reached}", flush=True)
        rows.append(row)
    return rows


def fastest_solver(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The iterative row that reached (a)'s phase SSIM first (None when none did)."""
    reached = [r for r in rows if r.get("reach_s") is not None]  # only iterative rows carry reach_s
    return min(reached, key=lambda r: r["reach_s"], default=None)


def section(result: dict[str, Any]) -> str:
    s, rows = result["settings"], {r["method"]: r for r in result["rows"]}
    pre, ratio = rows["pretrained"], result["speed_ratio"]
    target = pre.get("phase_ssim", float("nan"))
    gpu = s.get("recon_device") == "cuda"
    command = (f"benchmarks/generalize.py --n-scans {s['n_scans']} --pretrain-minutes {s['pretrain_minutes']:g} "
               f"--finetune-minutes {s['finetune_minutes']:g} --scratch-minutes {s['scratch_minutes']:g} "
               f"--iterative-seconds {s['iterative_seconds']:g} --refine-seconds {s['refine_seconds']:g}"
               + "".join(f" --{flag.replace('_', '-')} {s[flag]:g}" for flag, default in TRAINING_DEFAULTS.items()
                         if s.get(flag, default) != default)
               + (" --device cuda" if gpu else ""))
    m = result["machine"]
    lines = [section_title(result), "",
             f"`{command}`, {result['date']}, {m['cpu_count']} CPU cores (shared with other work), "
             + (f"GPU {m['gpu']}, " if m.get("gpu") else "") + f"torch {m['torch']}, "
             f"device {s['device']} (network on {s['recon_device']}); " + load_note(*result["load_average_1min"], m["cpu_count"]), "",
             f"Training corpus: {s['n_scans']} simulated scans of one object kind ({s['object']}, amplitude in "
             f"[{s['min_amplitude']:g}, 1], phase +-{s['max_phase']:g} rad; N={s['N']}, {s['positions']} positions, "
             f"overlap {s['overlap']}, {s['nphotons']:.0e} photons per pattern, one probe), seeds {s['seed']}.."
             f"{s['seed'] + s['n_scans'] - 1} (`ptycho_torch.api.simulate(n_scans=K)`). Held-out scan: the same "
             f"settings with seed {s['seed'] + s['n_scans']}, another object, never seen by the pretraining. "
             f"Gridsize 2, {s['neighbor_count']} neighbours, n_filters_scale {s['n_filters_scale']}, batch "
             f"{s['batch_size']}, lr {s['learning_rate']:g}, training stopped by wall clock. Every row scores the "
             "held-out scan's stitched object inside the scanned region (phase offset removed, amplitude scale "
             "matched). Reconstruct seconds: load the bundle, network pass, stitching, in memory. *Data fit*: "
             "the object's Poisson deviance on the scan's own patterns / the counting-noise floor "
             "(ptycho_torch.evaluation.data_fit; 1 = explained to the noise), the one column a measured scan without a "
             "truth also has; not for Pty-chi's objects, which do not come back in the counts' units (LSQML's "
             "amplitude was 1.9x the truth's on 2026-12-04, where our forward model needs 1x).", "",
             "| method | phase SSIM | amplitude SSIM | FRC 0.5 px | data fit | wall-clock s | time to reach (a)'s phase SSIM |",
             "|---|---|---|---|---|---|---|"]

    def f(r: dict[str, Any], key: str, fmt: str = ".3f") -> str:
        return format(r[key], fmt) if key in r else "n/a"

    ft, sc, it, rf = rows["fine-tuned"], rows["scratch"], rows["iterative"], rows["refined"]
    scratch_reach = (f"<= {sc['train_s']:.0f} s (reached by the end of the budget; scored only there)"
                     if sc.get("phase_ssim", -1) >= target else
                     f"not reached within the {sc['train_s']:.0f} s budget (scored only at its end)")
    iter_reach = (f"<= {it['reach_s']:.2f} s (scored after chunks of 0.25, 0.5, ... {s['chunk_seconds']:g} s)"
                  if it["reach_s"] is not None
                  else f"not reached within {it['seconds']:.0f} s")
    ptychi = [r for r in result["rows"] if r["method"].startswith("ptychi_")]
    seen = rows.get("pretrained, training scan")  # absent in results written before it was measured
    every = rows.get("pretrained, every_pattern")  # likewise
    table = [
        ("(a) pretrained on the corpus, held-out scan's probe and normalisation", pre, pre["reconstruct_s"],
         f"{pre['reconstruct_s']:.1f} s (itself)"),
        *([("(a) with one group per pattern (`--grouping every_pattern`: 4x the network passes)", every,
            every["reconstruct_s"], "—")] if every else []),
        *([("(a) scored on training scan 0 instead (seen in pretraining; not the held-out scan)", seen,
            seen["reconstruct_s"], "—")] if seen else []),
        (f"(b) (a) fine-tuned {s['finetune_minutes']:g} min on the held-out scan (warm start)", ft,
         ft["train_s"] + ft["reconstruct_s"], "—"),
        (f"(c) trained from scratch on the held-out scan, {s['scratch_minutes']:g} min", sc,
         sc["train_s"] + sc["reconstruct_s"], scratch_reach),
        ("(d) iterative: gradient descent on the object (ptycho_torch.reconstruction.refine), known probe, flat start", it,
         it["seconds"], iter_reach),
        *((f"(d) iterative: {r['label']}", r, r["seconds"],
           f"<= {r['reach_s']:.2f} s (scored every 2 epochs)" if r["reach_s"] is not None
           else f"not reached within {r['seconds']:.0f} s ({r['steps']} epochs)") for r in ptychi),
        (f"(e) (a) refined {s['refine_seconds']:g} s by the same gradient descent", rf, rf["reconstruct_s"], "—"),
    ]
    for name, r, seconds, reach in table:
        fit = f"{r['data_fit']:.1f}x" if r.get("data_fit") is not None else "—"
        lines.append(f"| {name} | {f(r, 'phase_ssim')} | {f(r, 'amplitude_ssim')} | "
                     f"{f(r, 'frc_half_resolution_px', '.1f')} | {fit} | {seconds:.1f} | {reach} |")
    lines += ["", f"(a) pretraining cost {pre['train_s']:.0f} s ({pre['epochs']} epochs, {pre['steps']} steps) once, "
              "for every later scan; it is not in (a)'s row. (b) and (c) seconds are training + reconstruction."]
    fastest = fastest_solver(result["rows"])
    solvers = [it, *ptychi]
    if ratio is not None and fastest is not None:
        lines += ["", f"Speed ratio (the fastest iterative solver's time to reach (a)'s phase SSIM, "
                  f"{fastest.get('label', 'our gradient descent')}, / (a)'s reconstruct seconds): "
                  f"<= {ratio:.1f}x (the iterative time is an upper bound at the scoring resolution)"
                  + ("; the issue expects >= 10x: met." if ratio >= 10 else "; the issue expects >= 10x: not met.")]
    else:
        longest = max(r["seconds"] for r in solvers)
        lines += ["", f"Speed ratio: no iterative solver reached (a)'s phase SSIM within its budget "
                  f"({longest:.0f} s), so the ratio is above {longest / pre['reconstruct_s']:.1f}x (a lower bound)."]
    gap = sc.get("phase_ssim", float("nan")) - target
    losses = []
    versus = f"the model trained from scratch on the held-out scan for {s['scratch_minutes']:g} min"
    if gap > 0.05:
        losses.append(f"the pretrained model is {gap:.3f} phase SSIM below {versus} (the issue expects within 0.05)")
        if seen and "phase_ssim" in seen:
            losses.append(f"on a scan it trained on it scores {seen['phase_ssim']:.3f}, so "
                          + ("most of the gap is the unseen object (generalisation)"
                             if seen["phase_ssim"] - target > gap / 2 else
                             "the gap is mostly too short a pretraining, not the unseen object"))
    elif gap > 0:
        losses.append(f"the pretrained model is {gap:.3f} phase SSIM below {versus}, within the issue's 0.05")
    else:
        losses.append(f"the pretrained model scores {-gap:.3f} phase SSIM above {versus}")
    if ratio is not None and fastest is not None and ratio < 10:
        losses.append(f"{fastest.get('label', 'our gradient descent')} reaches the pretrained model's phase SSIM in "
                      f"{fastest['reach_s']:.2f} s, only {ratio:.1f}x the network's {pre['reconstruct_s']:.1f} s "
                      "(the issue expects >= 10x)")
    if ft.get("phase_ssim", -1) < target:
        losses.append(f"fine-tuning for {s['finetune_minutes']:g} min lowered the phase SSIM ({ft['phase_ssim']:.3f})")
    for r in solvers:
        if r.get("phase_ssim", -1) > target:
            losses.append(f"{r.get('label', 'our gradient descent')} ends higher (phase SSIM {r['phase_ssim']:.3f} "
                          f"after {r['seconds']:.0f} s vs the pretrained model's {target:.3f})")
    if rf.get("phase_ssim", -1) < target:
        losses.append(f"refinement for {s['refine_seconds']:g} s lowered the phase SSIM ({rf['phase_ssim']:.3f})")
    lines += ["", "Where we stand: " + "; ".join(losses) + "."]
    for note in result.get("notes", []):  # what was read from the table, kept in the results file
        lines += ["", note]
    lines += ["", "Iterative curves (solver seconds: phase SSIM). Our gradient descent: "
              + ", ".join(f"{p['seconds']:.2f}: {p.get('phase_ssim', float('nan')):.3f}" for p in it["curve"]) + ". "
              "Each of its chunks restarts Adam's moments from the previous chunk's object (so the solver is "
              "evaluated between chunks; this costs it a little speed); scoring time is not counted."]
    for r in ptychi:
        shown = r["curve"][::max(1, len(r["curve"]) // 12)][:-1] + r["curve"][-1:]  # about 12 points
        lines += ["", f"{r['label']}: " + ", ".join(f"{p['seconds']:.1f}: {p.get('phase_ssim', float('nan')):.3f}"
                                                   for p in shown) + " (copying the snapshots out not counted)."]
    if not ptychi:
        lines += ["", "Pty-chi rows missing: this run had no ptychi (pip install -e '.[bench]', or --ptychi-python)."]
    elif any(r.get("torchvision_replaced") for r in ptychi):
        lines += ["", "Pty-chi ran with torchvision replaced (benchmarks/ptychi_solver.py: PyPI's torchvision for "
                  "torch 2.13 does not load on a CPU-only torch; Pty-chi needs it only to draw a random initial "
                  "object, which these runs do not use)."]
    lines += ["", "The same table on 2 CPU cores: the section before this one." if gpu else
              f"On a GPU: `{command} --device cuda` (training, the network pass, our gradient descent (d) and the "
              "refinement of (e) on the GPU, so the speed ratio compares like with like; Pty-chi too where its "
              "Python's torch sees the GPU: benchmarks/ptychi_solver.py picks it then); sized for one short "
              "GPU lease (3 min of pretraining, results in their own section): `bash benchmarks/gpu_generalize.sh`."]
    return "\n".join(lines) + "\n"


def resolve(args: argparse.Namespace) -> None:
    """Explicit flags win; then --smoke's sizes; then the standard scan's."""
    for key, (default, smoke) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else default)
    if args.scratch_minutes is None:
        args.scratch_minutes = args.pretrain_minutes
    for key in ("object", "overlap", "nphotons", "max_phase", "min_amplitude", "neighbor_count"):
        if getattr(args, key) is None:
            setattr(args, key, STANDARD[key])
    cuda = args.device in ("cuda", "gpu") or (args.device == "auto" and torch.cuda.is_available())
    args.recon_device = "cuda" if cuda else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-scans", type=int, default=None, help="scans in the training corpus (default: 6)")
    parser.add_argument("--pretrain-minutes", type=float, default=None, help="(a) corpus training budget (default: 10)")
    parser.add_argument("--finetune-minutes", type=float, default=None, help="(b) fine-tuning budget (default: 2)")
    parser.add_argument("--scratch-minutes", type=float, default=None,
                        help="(c) from-scratch budget (default: the pretraining budget)")
    parser.add_argument("--iterative-seconds", type=float, default=None, help="(d) solver budget (default: 60)")
    parser.add_argument("--chunk-seconds", type=float, default=None, help="(d) seconds between scorings (default: 2)")
    parser.add_argument("--refine-seconds", type=float, default=None, help="(e) refinement of (a) (default: 10)")
    parser.add_argument("--N", type=int, default=None, help="pattern size (default: 64)")
    parser.add_argument("--positions", type=int, default=None, help="scan positions per scan (default: 512)")
    parser.add_argument("--object", default=None, help="object kind (default: lines)")
    parser.add_argument("--overlap", type=float, default=None, help="default: 0.7")
    parser.add_argument("--nphotons", type=float, default=None, help="photons per pattern (default: 1e6)")
    parser.add_argument("--max-phase", type=float, default=None, help="default: 1.5 rad")
    parser.add_argument("--min-amplitude", type=float, default=None, help="default: 0.5")
    parser.add_argument("--neighbor-count", type=int, default=None, help="default: 6")
    parser.add_argument("--n-filters-scale", type=float, default=TRAINING_DEFAULTS["n_filters_scale"],
                        help="network width (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=TRAINING_DEFAULTS["batch_size"],
                        help="groups per step (default: 4)")
    parser.add_argument("--learning-rate", type=float, default=TRAINING_DEFAULTS["learning_rate"],
                        help="default: 2e-3 (also for fine-tuning)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seeds seed..seed+K-1, held out seed+K (default: 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="training accelerator and device of the network pass and of our gradient descent "
                             "(d, e); auto = cuda if available (default)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (N=32, 2 scans, 64 positions, seconds per budget): the whole pipeline in "
                             "about a minute; implies --no-docs and writes the JSON only under --keep")
    parser.add_argument("--ptychi-python", default=None,
                        help="a Python with ptychi for the Pty-chi rows (default: $PTYCHI_PYTHON, else this one)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the corpus, runs and reconstructions here")
    args = parser.parse_args()
    resolve(args)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PTYCHO_QUIET_LIGHTNING", "1")
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="ptycho-generalize-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        from ptycho_torch.data.contract import read_scan

        print(f"simulating {args.n_scans} training scans + 1 held-out (N={args.N}, {args.positions} positions)",
              flush=True)
        corpus, heldout_path = simulate(args, work)
        scan = read_scan(heldout_path)
        print(f"(a) pretraining on {len(corpus)} scans for {args.pretrain_minutes:g} min", flush=True)
        pre = train_for(args, str(work / "corpus" / "scan_*.npz"), args.pretrain_minutes, work / "run_pretrained")
        rows = [{**pre, **network_row(args, "pretrained", pre["run_dir"], scan, work)}]
        target = rows[0].get("phase_ssim", float("nan"))
        print(f"  pretrained on the held-out scan: {json.dumps(rows[0])}", flush=True)
        # the same model reading one group per pattern (4x the network passes): what the cover grouping costs
        rows.append(network_row(args, "pretrained, every_pattern", pre["run_dir"], scan, work, grouping="every_pattern"))
        print(f"  pretrained, one group per pattern: {json.dumps(rows[-1])}", flush=True)
        # the same model on a scan it trained on: what is lost to an unseen scan, and what to too short a training
        rows.append(network_row(args, "pretrained, training scan", pre["run_dir"], read_scan(corpus[0]), work))
        print(f"  pretrained on training scan 0: {json.dumps(rows[-1])}", flush=True)
        print(f"(b) fine-tuning on the held-out scan for {args.finetune_minutes:g} min", flush=True)
        ft = train_for(args, str(heldout_path), args.finetune_minutes, work / "run_finetuned", pre["run_dir"])
        rows.append({**ft, **network_row(args, "fine-tuned", ft["run_dir"], scan, work)})
        print(f"  {json.dumps(rows[-1])}", flush=True)
        print(f"(c) training from scratch on the held-out scan for {args.scratch_minutes:g} min", flush=True)
        sc = train_for(args, str(heldout_path), args.scratch_minutes, work / "run_scratch")
        rows.append({**sc, **network_row(args, "scratch", sc["run_dir"], scan, work)})
        print(f"  {json.dumps(rows[-1])}", flush=True)
        print(f"(d) iterative solver for up to {args.iterative_seconds:g} s (target phase SSIM {target:.3f})",
              flush=True)
        rows.append(iterative(args, scan, target))
        rows += ptychi_curves(args, heldout_path, scan, target, work)
        print(f"(e) refining (a)'s object for {args.refine_seconds:g} s", flush=True)
        rows.append(network_row(args, "refined", pre["run_dir"], scan, work, refine_seconds=args.refine_seconds))
        print(f"  {json.dumps(rows[-1])}", flush=True)
    fastest = fastest_solver(rows)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if args.recon_device == "cuda" else None},
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "settings": {k: getattr(args, k) for k in (*SIZES, "object", "overlap", "nphotons", "max_phase",
                                                   "min_amplitude", "neighbor_count", "n_filters_scale",
                                                   "batch_size", "learning_rate", "seed", "device", "recon_device",
                                                   "smoke")},
        "rows": rows,
        "speed_ratio": fastest["reach_s"] / rows[0]["reconstruct_s"] if fastest is not None else None,
    }
    text = section(result)
    print(text)
    default = RESULTS_GPU if args.recon_device == "cuda" else RESULTS
    results = (args.keep / "generalize.json" if args.keep is not None else None) if args.smoke else default
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2))
    if not (args.no_docs or args.smoke):
        write_section(section_title(result), text)


if __name__ == "__main__":
    main()
