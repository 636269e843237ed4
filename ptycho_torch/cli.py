"""`ptycho-torch`: simulate, train, reconstruct, evaluate and demo on one machine (no Ray).

Every command exits non-zero with one readable message on bad input; `--help` lists every flag with
its default.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ptycho_torch.config import ConfigError, SimulationConfig
from ptycho_torch.console import setup_logging
from ptycho_torch.errors import USER_ERRORS, UserError, one_line
from ptycho_torch.workflows.demo import DEMO_EPOCHS, DEMO_MINUTES


def run_cli(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a command; user errors become one line on stderr and exit status 2; an interrupted
    training run prints how to resume it and exits 128 + signal (143 SIGTERM, 130 SIGINT). Once
    interrupted, a further Ctrl-C is ignored until the process exits (the handler of the command is
    gone by then, and the default one would kill the exit under way)."""
    import signal

    from ptycho_torch.interrupt_once import forget_unhandled_interrupt

    code = _run_once(main, args)
    if code in (130, 143):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        forget_unhandled_interrupt()
    return code


def _run_once(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    from ptycho_torch.interrupt_once import first_sigint_only, interrupted

    with first_sigint_only():  # a second Ctrl-C cannot turn the one-line outcome into a traceback
        try:
            main(args)
        except BaseException as e:
            interrupt = sys.modules.get("ptycho_torch.interrupt")  # loaded whenever training ran
            if interrupt is not None and isinstance(e, interrupt.TrainingInterrupted):
                from ptycho_torch.workflows.train import launched_rank

                if launched_rank() == 0:  # one line, not one per DDP process
                    print(f"error: {e}", file=sys.stderr)
                return e.exit_code
            # Ctrl-C; or what it left behind, e.g. a library import it cut short failing later
            if isinstance(e, KeyboardInterrupt) or (interrupted() and not isinstance(e, SystemExit)):
                print("error: interrupted (SIGINT)", file=sys.stderr)
                return 130
            if isinstance(e, USER_ERRORS):
                print(f"error: {one_line(e)}", file=sys.stderr)
                return 2
            raise
    return 0


def check_device(device: str) -> str:
    """A torch device string this machine has: 'cpu', 'cuda', 'cuda:N' (N < visible GPUs), 'mps'."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device!r}: no CUDA device is visible on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"--device {device!r}: only {count} CUDA device(s) are visible "
                              f"(cuda:0 ... cuda:{count - 1})")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"--device {device!r}: unsupported device type {parsed.type!r}; use cpu, cuda or cuda:N")
    return device


def check_batch_size(value: int | None, flag: str = "--inference-batch-size") -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag}: got {value}; must be >= 1 (patterns per batch), or leave it out to use "
                          "the model's execution.inference_batch_size")


# ------------------------------------------------------------------ simulate

def add_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SimulationConfig field, parsed as the field's type (int, float, else a string that
    SimulationConfig checks)."""
    import typing

    hints = typing.get_type_hints(SimulationConfig)
    for f in fields(SimulationConfig):
        default = f.default if f.default is not MISSING else None
        kind = hints[f.name] if hints[f.name] in (int, float) else str
        parser.add_argument("--" + f.name.replace("_", "-"), dest="sim_" + f.name, default=default, type=kind,
                            help=f"{f.metadata.get('doc', '')} (default: {default!r})")


def simulation_config(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(**{f.name: getattr(args, "sim_" + f.name) for f in fields(SimulationConfig)})


def cmd_simulate(args: argparse.Namespace) -> None:
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.outputs import check_output_dir

    config = simulation_config(args)
    ranges = {"defocus_range": args.defocus_range, "diameter_range_px": args.diameter_range,
              "nphotons_range": args.nphotons_range}
    if args.n_scans is not None:
        return simulate_corpus_cli(config, args.out, args.n_scans, ranges)
    if any(v is not None for v in ranges.values()):
        raise ConfigError("--defocus-range, --diameter-range and --nphotons-range vary the scans of a corpus; "
                          "add --n-scans K (or set --probe-defocus / --probe-diameter-px / --nphotons)")
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a directory; give the scan file to write, e.g. {args.out}/scan.npz")
    check_output_dir(Path(args.out).parent, "--out (its folder)")
    path = simulate_to_file(config, args.out)
    print(f"wrote {config.n_positions} patterns ({config.N}x{config.N}, {config.scan} scan, "
          f"{config.nphotons:g} photons/pattern) to {path}")


def simulate_corpus_cli(config: SimulationConfig, out: Path, n_scans: int, ranges: dict[str, Any]) -> None:
    """`simulate --n-scans K --out DIR`: K scans DIR/scan_000.npz ... (data.corpus_simulation)."""
    from ptycho_torch.data.corpus_simulation import corpus_settings, simulate_corpus
    from ptycho_torch.outputs import check_output_dir, holds_files

    out = Path(out)
    if out.suffix.lower() in (".npz", ".h5", ".hdf5"):
        raise ConfigError(f"--out {out}: --n-scans writes a folder of scans; give a directory, e.g. {out.parent / 'corpus'}")
    configs = corpus_settings(config, n_scans, **ranges)
    check_output_dir(out, "--out")
    if holds_files(out):
        raise ConfigError(f"--out {out}: already holds files; choose an empty or new directory (scans are never "
                          "overwritten)")
    paths = simulate_corpus(configs, out, suffix=".npz")
    print(f"wrote {len(paths)} scans of {config.n_positions} patterns ({config.N}x{config.N}) to {out}/scan_*.npz")


# ------------------------------------------------------------------ train

def cmd_train(args: argparse.Namespace) -> None:
    from ptycho_torch.cli_args import resolve_run_config
    from ptycho_torch.workflows.train import train

    if args.resume is not None:
        run_dir = Path(args.resume)
        if args.out is not None and Path(args.out) != run_dir:
            raise ConfigError("--resume continues a run in its own directory; drop --out")
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / 'config.yaml'} does not exist; --resume takes "
                                    "the directory of an earlier `ptycho-torch train --out RUN_DIR`")
        config = resolve_run_config(args, base_file=run_dir / "config.yaml")
    else:
        if args.out is None:
            raise ConfigError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        run_dir = Path(args.out)
        from ptycho_torch.workflows.warm_start import resolve_with_warm_start

        config = resolve_with_warm_start(lambda base: resolve_run_config(args, base=base),
                                         has_config=getattr(args, "config", None) is not None)
        if not config.data.path:
            raise ConfigError("train needs --data SCAN (or data.path in the --config file)")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--overwrite starts a new run and --resume continues one; give only one")
    result = train(config, run_dir, resume=args.resume is not None, overwrite=args.overwrite,
                   allow_other_data=args.allow_other_data)
    shown = {k: round(v, 6) for k, v in result.metrics.items() if k in ("train_loss", "val_loss")}
    print(f"trained {result.epochs_completed} epochs in {result.seconds:.1f} s {shown}; "
          f"model bundle: {result.bundle_path}")


# ------------------------------------------------------------------ reconstruct / evaluate

def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ptycho_torch.outputs import check_output_dir
    from ptycho_torch.workflows.bundle import resolve_bundle_path
    from ptycho_torch.workflows.reconstruct import reconstruct

    check_batch_size(args.inference_batch_size)
    check_device(args.device)
    resolve_bundle_path(args.model)
    check_output_dir(args.out, "--out")
    if args.refine_seconds < 0:
        raise UserError(f"--refine-seconds must be >= 0 (0 = no refinement), got {args.refine_seconds:g}")
    result = reconstruct(args.model, args.data, args.out, batch_size=args.inference_batch_size,
                         device=args.device, renormalize=args.renormalize, refine_seconds=args.refine_seconds,
                         align_phases=args.align_phases, probe=args.probe, normalization=args.normalization,
                         grouping=args.grouping, refine_probe=args.refine_probe)
    print("\n".join(result.summary_lines()))


def cmd_solve(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ptycho_torch.cli_args import resolve_run_config
    from ptycho_torch.data.beamline import ReadOptions
    from ptycho_torch.outputs import check_output_dir
    from ptycho_torch.solver.engine import SolverOptions
    from ptycho_torch.workflows.solve import solve_scan

    device = resolve_device(args.device)
    check_output_dir(args.out, "--out")
    config = resolve_run_config(args)
    read = replace(ReadOptions.from_config(config), probe_optional=args.probe == "estimate")
    try:
        options = SolverOptions(modes=args.modes, positions=args.positions, refine_probe=not args.fixed_probe,
                                batch=args.batch, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e).replace("solver.", "--").replace("_", "-")) from None
    result = solve_scan(config.data.path, args.out, seconds=args.seconds or None, epochs=args.epochs,
                        probe=args.probe, options=options, read_options=read, device=device,
                        half_scan=args.half_scan, fit_patterns=args.fit_patterns)
    print("\n".join(result.summary_lines()))


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; anything else checked by check_device."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ptycho_torch.outputs import check_output_dir
    from ptycho_torch.workflows.evaluate import evaluate

    out = Path(args.out) if args.out else Path(args.recon).parent / "metrics.json"
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give the metrics JSON file to write")
    check_output_dir(out.parent, "--out (its folder)")
    metrics = evaluate(Path(args.recon), Path(args.truth), Path(args.out) if args.out else None,
                       plane_fit=args.plane_fit)
    print(json.dumps(_headline(metrics), indent=1))


# ------------------------------------------------------------------ demo

def cmd_demo(args: argparse.Namespace) -> None:
    from ptycho_torch.outputs import check_output_dir, holds_files
    from ptycho_torch.workflows.demo import run_demo

    check_output_dir(args.out, "--out")
    if holds_files(Path(args.out) / "run"):
        raise ConfigError(f"--out {args.out}: already holds a demo run ({Path(args.out) / 'run'}); choose another "
                          "--out (or move that one away): trained runs are never overwritten")
    summary = run_demo(Path(args.out), epochs=args.epochs, n_positions=args.n_positions, minutes=args.minutes or None)
    print(f"demo finished: {summary}")


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    from ptycho_torch.cli_args import add_config_arguments, add_data_arguments, add_probe_normalization_flags
    from ptycho_torch.solver import PROBE_CHOICES

    parser = argparse.ArgumentParser(prog="ptycho-torch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: off)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a synthetic scan (NPZ or HDF5 by suffix), or a corpus of scans")
    p.add_argument("--out", required=True, type=Path, help="output scan file (.npz/.h5); with --n-scans a directory")
    p.add_argument("--n-scans", type=int, default=None, metavar="K",
                   help="write K scans OUT/scan_000.npz ... with seeds seed..seed+K-1 (other objects), a training "
                        "corpus (default: one scan)")
    p.add_argument("--defocus-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="with --n-scans: probe defocus (rad) spread evenly from LOW (scan 0) to HIGH (default: "
                        "--probe-defocus for all)")
    p.add_argument("--diameter-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="with --n-scans: probe diameter (px) spread evenly from LOW to HIGH (default: "
                        "--probe-diameter-px for all)")
    p.add_argument("--nphotons-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="with --n-scans: photons per pattern spread geometrically from LOW to HIGH (default: "
                        "--nphotons for all)")
    add_simulation_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train PtychoPINN with Lightning on this machine")
    p.add_argument("--data", nargs="+", default=None, help="scan file(s) (.npz/.h5/.hdf5, CXI .cxi, NeXus .nxs; "
                   "FILE.h5::/path/to/frames for any HDF5 layout, see data.datasets) or quoted glob(s) such "
                   "as 'scans/part*.npz' (default: data.path of --config)")
    p.add_argument("--out", type=Path, default=None, help="run directory to create (default: none; required)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its last.ckpt up to the configured epochs (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --out that already holds a run, after moving that run aside to "
                        "RUN_DIR.replaced-<time> (nothing is deleted) (default: off, such an --out is refused)")
    p.add_argument("--allow-other-data", action="store_true",
                   help="with --resume: continue on scan files other than those the run trained on (recorded "
                        "in data_files.json and manifest.json) (default: off, such a resume is refused)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reconstruct", help="reconstruct a scan with a trained model")
    p.add_argument("--model", required=True, type=Path, help="training run directory or model.pt")
    p.add_argument("--data", required=True, nargs="+", help="scan file(s) (.npz/.h5/.hdf5, CXI, NeXus, or "
                   "FILE.h5::/path/to/frames, read with the model's data settings) or quoted glob(s) of "
                   "one scan, positions in one object frame (required)")
    p.add_argument("--out", required=True, type=Path, help="reconstruction directory")
    p.add_argument("--inference-batch-size", type=int, default=None,
                   help="patterns per batch (default: the model's execution.inference_batch_size or batch_size)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    add_probe_normalization_flags(p)
    p.add_argument("--align-phases", action="store_true",
                   help="give every patch the global phase that agrees with its overlapping neighbours before "
                        "stitching (helps when patches differ by their invisible global phase; holds the patches "
                        "in memory; local only; default: off)")
    p.add_argument("--refine-seconds", type=float, default=0.0,
                   help="then refine the network's object with the iterative solver (the engine of `solve`) for "
                        "this many seconds; the network's own object is kept in OUT/network/ (default: 0 = off)")
    p.add_argument("--refine-probe", action="store_true",
                   help="with --refine-seconds: refine the probe too (default: off, the probe stays fixed)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("solve", help="reconstruct object and probe iteratively (no model): a measured scan's "
                                      "first answer, its probe for training, its resolution")
    p.add_argument("--data", required=True, nargs="+", help="scan file(s) (.npz, .npz.bz2, tike's layout, .h5, CXI, "
                   "NeXus, FILE.h5::/path/to/frames) or quoted glob(s) of one scan (required)")
    p.add_argument("--out", required=True, type=Path, help="reconstruction directory")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="wall-clock budget of the main run in seconds; 0 = none (then --epochs) (default: 60)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the scan at most (default: no limit)")
    p.add_argument("--probe", choices=PROBE_CHOICES, default="file",
                   help="starting probe: 'file' = the scan's probeGuess or --data.probe; 'estimate' = from the data "
                        "(mean pattern's far field + a defocus search), for scans without a usable probe (default: file)")
    p.add_argument("--modes", type=int, default=1, help="incoherent probe modes (default: 1)")
    p.add_argument("--positions", action="store_true", help="correct the scan positions (default: off)")
    p.add_argument("--fixed-probe", action="store_true", help="keep the starting probe (default: refined)")
    p.add_argument("--half-scan", action="store_true",
                   help="also reconstruct the two interleaved halves of the scan and report the half-scan FRC "
                        "resolution (1/7 and half-bit; in nm when the pixel size is known) (default: off)")
    p.add_argument("--batch", type=int, default=16, help="patterns per update, spread over the scan (default: 16)")
    p.add_argument("--fit-patterns", type=int, default=2048,
                   help="patterns the data fit reads (0 = no data fit) (default: 2048)")
    p.add_argument("--seed", type=int, default=0, help="batch order and new probe modes (default: 0)")
    p.add_argument("--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0 "
                                                   "(default: auto)")
    add_data_arguments(p)
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("evaluate", help="compare a reconstruction with the ground truth")
    p.add_argument("--recon", required=True, type=Path, help="object.npz of a reconstruction")
    p.add_argument("--truth", required=True, type=Path, help="scan file with objectGuess, or an object .npy/.npz")
    p.add_argument("--out", type=Path, default=None, help="metrics JSON (default: metrics.json next to --recon)")
    p.add_argument("--plane-fit", action="store_true", help="also remove a linear phase ramp (default: off)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="simulate -> train -> reconstruct -> evaluate on built-in defaults")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                   help=f"training budget in minutes of wall clock; 0 = none (default: {DEMO_MINUTES:g})")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs at most (default: {DEMO_EPOCHS})")
    p.add_argument("--n-positions", type=int, default=1000, help="scan positions (default: 1000)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
