"""`ptycho-dist demo`: its flags and the call of ptycho_dist.api.demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ptycho_dist.cli.flags import add_ray_flags, ray_overrides
from ptycho_torch.demo import DEMO_EPOCHS, DEMO_MINUTES


def cmd_demo(args: argparse.Namespace) -> None:
    from ptycho_dist import api

    summary = api.demo(args.out, epochs=args.epochs, minutes=args.minutes, n_positions=args.n_positions,
                       sweep_epochs=args.sweep_epochs, ray=ray_overrides(args))
    print(f"demo finished in {sum(summary['timings_s'].values()):.0f} s: {args.out / 'summary.md'}")
    print(json.dumps(summary["metrics"], indent=1))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ptycho-dist demo`."""
    p = subparsers.add_parser("demo", help="simulate, train on 2 Ray workers, sweep, reconstruct with Ray "
                                           "Data, evaluate; writes summary.md")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                   help=f"training budget in minutes of wall clock; 0 = none (default: {DEMO_MINUTES:g})")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"training epochs at most (default: {DEMO_EPOCHS})")
    p.add_argument("--n-positions", type=int, default=1000, help="scan positions (default: 1000)")
    p.add_argument("--sweep-epochs", type=int, default=2, help="epochs per sweep trial (default: 2)")
    add_ray_flags(p)
    p.set_defaults(func=cmd_demo)
    return p
