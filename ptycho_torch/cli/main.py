"""`ptycho-torch`: simulate, train, reconstruct, evaluate and demo on one machine (no Ray).

Argparse and printing only: each command turns its flags into one call of the Python API
(ptycho_torch.api, which resolves the config and checks the inputs) and prints the result. Every
command exits non-zero with one readable message on bad input; `--help` lists every flag with its
default.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ptycho_torch.config import SimulationConfig
from ptycho_torch.demo import DEMO_EPOCHS, DEMO_MINUTES
from ptycho_torch.errors import USER_ERRORS, one_line
from ptycho_torch.logging_setup import setup_logging


def run_cli(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a command; user errors become one line on stderr and exit status 2; an interrupted
    training run prints how to resume it and exits 128 + signal (143 SIGTERM, 130 SIGINT). Once
    interrupted, a further Ctrl-C is ignored until the process exits (the handler of the command is
    gone by then, and the default one would kill the exit under way)."""
    import signal

    from ptycho_torch.training.interrupt_once import forget_unhandled_interrupt

    code = _run_once(main, args)
    if code in (130, 143):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        forget_unhandled_interrupt()
    return code


def _run_once(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    from ptycho_torch.training.interrupt_once import first_sigint_only, interrupted

    with first_sigint_only():  # a second Ctrl-C cannot turn the one-line outcome into a traceback
        try:
            main(args)
        except BaseException as e:
            interrupt = sys.modules.get("ptycho_torch.training.interrupt")  # loaded whenever training ran
            if interrupt is not None and isinstance(e, interrupt.TrainingInterrupted):
                from ptycho_torch.training.train import launched_rank

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
    from ptycho_torch import api

    config = simulation_config(args)
    written = api.simulate(args.out, config=config, n_scans=args.n_scans, defocus_range=args.defocus_range,
                           diameter_range=args.diameter_range, nphotons_range=args.nphotons_range,
                           acquire_hz=args.acquire_hz)
    if args.acquire_hz is not None:
        print(f"acquired {config.n_positions} frames ({config.N}x{config.N}) into {written} at {args.acquire_hz:g} Hz")
    elif args.n_scans is not None:
        print(f"wrote {len(written)} scans of {config.n_positions} patterns ({config.N}x{config.N}) to "
              f"{args.out}/scan_*.npz")
    else:
        print(f"wrote {config.n_positions} patterns ({config.N}x{config.N}, {config.scan} scan, "
              f"{config.nphotons:g} photons/pattern) to {written}")


# ------------------------------------------------------------------ train

def cmd_train(args: argparse.Namespace) -> None:
    from ptycho_torch import api
    from ptycho_torch.cli.flags import cli_overrides

    result = api.train(args.data, args.out, config=args.config, resume=args.resume or False,
                       overwrite=args.overwrite, allow_other_data=args.allow_other_data,
                       overrides=cli_overrides(args))
    shown = {k: round(v, 6) for k, v in result.metrics.items() if k in ("train_loss", "val_loss")}
    print(f"trained {result.epochs_completed} epochs in {result.seconds:.1f} s {shown}; "
          f"model bundle: {result.bundle_path}")


# ------------------------------------------------------------------ reconstruct / solve / evaluate

def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ptycho_torch import api

    result = api.reconstruct(args.model, args.data, args.out, inference_batch_size=args.inference_batch_size,
                             device=args.device, renormalize=args.renormalize, refine_seconds=args.refine_seconds,
                             align_phases=args.align_phases, probe=args.probe, normalization=args.normalization,
                             grouping=args.grouping, refine_probe=args.refine_probe, progress=None, full_result=True,
                             dtype=args.dtype)
    print("\n".join(result.summary_lines()))


def cmd_live(args: argparse.Namespace) -> None:
    from ptycho_torch import api

    result = api.live(args.model, args.watch, args.out, publish_seconds=args.publish_seconds,
                      idle_seconds=args.idle_timeout, start_timeout_s=args.start_timeout,
                      inference_batch_size=args.inference_batch_size, device=args.device,
                      refine_seconds=args.refine_seconds, fit_patterns=args.fit_patterns)
    print(f"live: {result.frames} frames ({result.ended_by}), {len(result.publications)} pictures published in "
          f"{args.out / 'live'}")
    print("\n".join(result.final.summary_lines()))


def cmd_solve(args: argparse.Namespace) -> None:
    from ptycho_torch import api
    from ptycho_torch.cli.flags import cli_overrides

    result = api.solve(args.data, args.out, seconds=args.seconds, epochs=args.epochs, probe=args.probe,
                       modes=args.modes, positions=args.positions, fixed_probe=args.fixed_probe,
                       half_scan=args.half_scan, batch=args.batch, seed=args.seed, device=args.device,
                       progress=None, fit_patterns=args.fit_patterns, config=args.config,
                       overrides=cli_overrides(args))
    print("\n".join(result.summary_lines()))


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ptycho_torch import api

    metrics = api.evaluate(args.recon, args.truth, out=args.out, plane_fit=args.plane_fit)
    print(json.dumps(_headline(metrics), indent=1))


# ------------------------------------------------------------------ demo

def cmd_demo(args: argparse.Namespace) -> None:
    from ptycho_torch import api

    summary = api.demo(args.out, epochs=args.epochs, n_positions=args.n_positions, minutes=args.minutes)
    print(f"demo finished: {summary}")


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    from ptycho_torch.cli.flags import (
        add_config_arguments,
        add_data_arguments,
        add_live_flags,
        add_probe_normalization_flags,
        add_run_dir_flags,
    )
    from ptycho_torch.reconstruction.solver import PROBE_CHOICES

    parser = argparse.ArgumentParser(prog="ptycho-torch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: off)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a synthetic scan (NPZ or HDF5 by suffix), or a corpus of scans")
    p.add_argument("--out", required=True, help="output scan file (.npz/.h5); with --n-scans a directory; with "
                   "--acquire-hz also a directory of frame files (DIR/) or a ZMQ stream (tcp://*:PORT)")
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
    p.add_argument("--acquire-hz", type=float, default=None, metavar="RATE",
                   help="write the scan into --out (.h5) frame by frame at RATE frames/s in SWMR mode, as a detector "
                        "does during a scan, or into a directory (--out DIR: header.npz + frame_<index>.npz files) "
                        "(what `live --watch` reads; 0 = as fast as possible) (default: off, the "
                        "whole file at once)")
    add_simulation_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train PtychoPINN with Lightning on this machine")
    p.add_argument("--data", nargs="+", default=None, help="scan file(s) (.npz/.h5/.hdf5, CXI .cxi, NeXus .nxs; "
                   "FILE.h5::/path/to/frames for any HDF5 layout, see data.datasets) or quoted glob(s) such "
                   "as 'scans/part*.npz' (default: data.path of --config)")
    p.add_argument("--out", type=Path, default=None, help="run directory to create (default: none; required)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its last.ckpt up to the configured epochs (default: off)")
    add_run_dir_flags(p)
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reconstruct", help="reconstruct a scan with a trained model")
    p.add_argument("--model", required=True, type=Path, help="training run directory or model.pt")
    p.add_argument("--data", required=True, nargs="+", help="scan file(s) (.npz/.h5/.hdf5, CXI, NeXus, or "
                   "FILE.h5::/path/to/frames, read with the model's data settings) or quoted glob(s) of "
                   "one scan, positions in one object frame (required)")
    p.add_argument("--out", required=True, type=Path, help="reconstruction directory")
    p.add_argument("--inference-batch-size", type=int, default=None,
                   help="patterns per batch (default: the model's inference.batch_size or batch_size)")
    p.add_argument("--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0 "
                                                   "(default: auto)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default=None,
                   help="network dtype: auto = bfloat16 where the device computes it natively, else float32 "
                        "(default: the model's inference.dtype)")
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

    p = sub.add_parser("live", help="reconstruct a scan while it is acquired: pictures every few seconds, "
                                     "reconstruct's products at the end")
    add_live_flags(p)
    p.add_argument("--device", default="auto", help="torch device: auto (a GPU when there is one), cpu, cuda:0 "
                                                   "(default: auto)")
    p.set_defaults(func=cmd_live)

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
