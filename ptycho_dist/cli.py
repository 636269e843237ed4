"""`ptycho-dist`: train, tune, reconstruct and demo on Ray (embedded local Ray or a cluster).

Each command's flags are defined next to its implementation (`add_parser` in ptycho_dist.train_cli,
.tune, .inference, .demo; the Ray flags they share in ptycho_dist.flags); this module only assembles
them and turns user errors into one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ptycho_torch.cli import run_cli
from ptycho_torch.console import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptycho-dist", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and Ray's own logs (default: off)")
    sub = parser.add_subparsers(dest="command", required=True)
    from ptycho_dist import demo, inference, train_cli, tune

    for add_parser in (train_cli.add_parser, tune.add_parser, inference.add_parser, demo.add_parser):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, names=("ptycho_torch", "ptycho_dist"))
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
