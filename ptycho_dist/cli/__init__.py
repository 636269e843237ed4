"""`ptycho-dist`: train, tune, reconstruct, live and demo on Ray (embedded local Ray or a cluster).

Argparse and printing only: each command's module here (train, tune, reconstruct, live, demo) declares its
flags and turns them into one call of the Python API (ptycho_dist.api); the Ray flags they share are
in ptycho_dist.cli.flags. This module assembles them and turns user errors into one line.

    train.py, tune.py, reconstruct.py, live.py, demo.py  one command each: add_parser, cmd_*
    flags.py                                    the Ray flags on the command line (ray_overrides)
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ptycho_torch.cli.main import run_cli
from ptycho_torch.logging_setup import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptycho-dist", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and Ray's own logs (default: off)")
    sub = parser.add_subparsers(dest="command", required=True)
    from ptycho_dist.cli import demo, live, reconstruct, train, tune

    for add_parser in (train.add_parser, tune.add_parser, reconstruct.add_parser, live.add_parser, demo.add_parser):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, names=("ptycho_torch", "ptycho_dist"))
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
