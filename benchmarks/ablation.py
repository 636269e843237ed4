"""Ablation of the reconstruction-quality changes: which change bought what (issue 11).

One simulated scan (lines object, N=64, 512 positions, 1e6 photons by default: the standard scan of
quality.py). Each variant is a set of ModelConfig fields; it trains with the real
`ptycho_torch.training.train.train` for the same number of optimisation steps (a callback stops
Lightning at the step count; the epoch count is set high enough never to stop it first),
reconstructs the whole scan with `reconstruct` and evaluates the stitched object against the ground
truth. Variants are applied cumulatively from the old defaults to the new ones, then the new
defaults are compared with the constraint removed and with gridsize 1.

Per variant: final train and val loss as a multiple of the truth loss (the same loss for the
ground-truth object, the noise floor), phase/amplitude SSIM, FRC 0.5 resolution, seconds of
training and seconds per step. Writes benchmarks/results/ablation.json and the "## Ablation"
section of docs/benchmarks.md. With `--minutes M` every variant instead trains M minutes of wall-clock
(trainer.max_time, the learning rate annealed over the budget), the comparison that matters when
variants differ in cost per step; that run writes ablation_wallclock.json and its own section.

    .venv/bin/python benchmarks/ablation.py [--steps 1000 | --minutes 4] [--threads 1] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from docs_page import write_section
from lightning.pytorch.callbacks import Callback
from quality import HEADLINE, truth_loss

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ablation.json"
SECTION = "## Ablation"

OLD = {"gridsize": 2, "intensity_scale_start": "unit", "network_input": "amplitude", "group_network": "joint",
       "merge_weight": "ones", "decoder": "plain"}
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("old", "old defaults (upstream-like network, unit-amplitude scale start)", OLD),
    ("scale", "+ scale starts at the head's typical output", {**OLD, "intensity_scale_start": "typical"}),
    ("backprop", "+ back-propagated input", {**OLD, "intensity_scale_start": "typical",
                                             "network_input": "backprop"}),
    ("per_pattern", "+ one network per pattern", {"gridsize": 2, "decoder": "plain", "partner_input": False,
                                                  "merge_weight": "ones"}),
    ("new", "+ U-Net decoders (skips, bilinear upsampling)", {"gridsize": 2, "partner_input": False,
                                                              "merge_weight": "ones"}),
    ("partner", "+ each pattern's network also reads its partners' estimates in its own frame",
     {"gridsize": 2, "merge_weight": "ones"}),
    ("partner_probe", "+ probe-intensity merge weights = the defaults", {"gridsize": 2}),
    ("probe_weights", "U-Net without partners, probe-intensity merge weights",
     {"gridsize": 2, "merge_weight": "probe", "partner_input": False}),
    ("no_constraint", "U-Net without partners, overlap constraint off",
     {"gridsize": 2, "overlap_constraint": False, "partner_input": False, "merge_weight": "ones"}),
    ("g1", "defaults, gridsize 1", {"gridsize": 1}),
]


class StopAtStep(Callback):
    """Stop training after `steps` optimisation steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def run_variant(args: argparse.Namespace, scan: Path, name: str, model: dict[str, Any], work: Path
                ) -> dict[str, Any]:
    from ptycho_torch.config import RunConfig
    from ptycho_torch.reconstruction.reconstruct import reconstruct
    from ptycho_torch.training.train import train

    config = RunConfig.from_dict({
        "data": {"path": str(scan), "val_fraction": 0.1},
        "model": {"N": args.N, "n_filters_scale": args.n_filters_scale, **model},
        "training": {"batch_size": args.batch_size, "seed": args.seed},
        "trainer": {"max_epochs": 100_000, "max_time": args.minutes, "enable_progress_bar": False},
        "optimizer": {"learning_rate": args.learning_rate}, "logging": {"logger": "csv"}})
    start = time.perf_counter()
    stop = [] if args.minutes else [StopAtStep(args.steps)]  # equal wall-clock: Lightning's max_time stops it
    trained = train(config, work / f"run_{name}", callbacks=stop)
    train_s = time.perf_counter() - start
    recon = reconstruct(trained.run_dir, scan, work / f"recon_{name}", progress=False)
    truth = truth_loss(scan, model["gridsize"])
    m = recon.metrics or {}
    steps = int(trained.trainer.global_step) if trained.trainer is not None else args.steps
    row = {"variant": name, "model": model, "steps": steps, "train_s": train_s,
           "s_per_step": train_s / max(steps, 1), "truth_loss": truth,
           "train_loss_x_truth": trained.metrics.get("train_loss", float("nan")) / truth,
           "val_loss_x_truth": trained.metrics.get("val_loss", float("nan")) / truth,
           **{k: float(m[k]) for k in HEADLINE if isinstance(m.get(k), (int, float))}}
    print(json.dumps(row), flush=True)
    return row


def section(result: dict[str, Any], title: str = SECTION) -> str:
    s = result["settings"]
    budget = s.get("minutes")
    flags = f"--minutes {budget:g}" if budget else f"--steps {s['steps']}"
    flags += f" --batch-size {s['batch_size']}"
    if s.get("threads"):
        flags += f" --threads {s['threads']}"
    if s.get("extraction", "fourier") != "fourier":
        flags += f" --extraction {s['extraction']}"
    equal = ("every variant trains exactly {} steps (equal steps; the s/step column converts to equal "
             "wall-clock)".format(s["steps"]) if not budget else
             f"every variant trains for {budget:g} minutes of wall-clock (equal time, the learning rate annealed "
             f"over the budget; the steps column is what that time bought)"
             + (f", torch on {s['threads']} thread(s)" if s.get("threads") else ""))
    lines = [title, "",
             f"`benchmarks/ablation.py {flags}`, {result['date']}, {result['cpu_count']} CPU cores "
             f"(shared), torch {result['torch']}. Standard scan (lines, N={s['N']}, {s['positions']} positions, "
             f"{s['nphotons']:.0e} photons), n_filters_scale {s['n_filters_scale']}, batch {s['batch_size']}, "
             f"lr {s['learning_rate']:g}; {equal}. Losses are multiples of the loss of the ground "
             "truth under the same model (1.0 = the noise floor).", "",
             "| variant | what changed | train loss / truth | val loss / truth | phase SSIM | amplitude SSIM | "
             "FRC 0.5 px | steps | train s | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    described = {name: text for name, text, _ in VARIANTS}
    for r in result["runs"]:
        def f(key: str, fmt: str = ".3f", r: dict[str, Any] = r) -> str:
            return format(r[key], fmt) if key in r else "n/a"
        lines.append(f"| {r['variant']} | {described.get(r['variant'], '')} | {f('train_loss_x_truth', '.0f')} | "
                     f"{f('val_loss_x_truth', '.0f')} | {f('phase_ssim')} | {f('amplitude_ssim')} | "
                     f"{f('frc_half_resolution_px', '.1f')} | {r['steps']} | {r['train_s']:.0f} | {r['s_per_step']:.3f} |")
    for note in result.get("notes", []):  # what was read from the table, kept in the results file
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps per variant (default: 1000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="equal wall-clock instead of equal steps: every variant trains this many minutes "
                             "(trainer.max_time); results go to ablation_wallclock.json and their own docs "
                             "section (default: equal steps)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, all cores)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--nphotons", type=float, default=1e6)
    parser.add_argument("--n-filters-scale", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extraction", choices=["fourier", "bilinear"], default="fourier",
                        help="how the simulator cuts patches: 'fourier' (our model's convention) or 'bilinear' "
                             "(as other simulators do); bilinear results go to ablation_bilinear.json and their "
                             "own docs section (default: fourier)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PTYCHO_QUIET_LIGHTNING", "1")
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.simulate import simulate_to_file

    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [v for v in VARIANTS if args.only is None or v[0] in args.only]
    with tempfile.TemporaryDirectory(prefix="ptycho-ablation-") as tmp:
        work = Path(tmp)
        scan = simulate_to_file(SimulationConfig(N=args.N, object="lines", n_positions=args.positions,
                                                 nphotons=args.nphotons, seed=args.seed,
                                                 patch_extraction=args.extraction), work / "scan.npz")
        runs = [run_variant(args, scan, name, model, work) for name, _, model in chosen]
    result = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "settings": {k: getattr(args, k) for k in ("steps", "N", "positions", "nphotons", "n_filters_scale",
                                                         "batch_size", "learning_rate", "seed", "extraction", "minutes",
                                                         "threads")},
              "runs": runs}
    results, title = RESULTS, SECTION
    if args.extraction != "fourier":
        results = RESULTS.with_name(f"ablation_{args.extraction}.json")
        title = f"{SECTION} on {args.extraction}-extraction data (another simulator's convention)"
    if args.minutes:
        results = results.with_name(results.stem + "_wallclock.json")
        title += " at equal wall-clock"
    if args.only and results.is_file():  # a partial run adds its rows to an earlier run of the same settings
        earlier = json.loads(results.read_text())
        if earlier.get("settings") == result["settings"]:
            mine = {r["variant"] for r in runs}
            kept = {r["variant"]: r for r in earlier["runs"] if r["variant"] not in mine}
            kept.update({r["variant"]: r for r in runs})
            result["runs"] = [kept[name] for name, _, _ in VARIANTS if name in kept]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    text = section(result, title)
    print(text)
    if not args.no_docs:
        write_section(title, text)


if __name__ == "__main__":
    main()
