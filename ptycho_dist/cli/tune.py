"""`ptycho-dist tune`: its flags, the call of ptycho_dist.api.tune and the printed table.

    ptycho-dist tune --config run.yaml --sweep sweep.yaml --data SCAN --out DIR [--name NAME]
    ptycho-dist tune --out DIR --resume NAME            # continue an interrupted sweep

What a sweep does and where its files go: ptycho_dist.sweeps.tuner.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ptycho_dist.cli.flags import add_ray_flags, ray_overrides
from ptycho_dist.sweeps.results import BEST_CONFIG

DESCRIPTION = "sweep training settings with Ray Tune, each trial a Ray Train run"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ptycho-dist tune`."""
    p = subparsers.add_parser("tune", help="sweep training settings with Ray Tune (each trial a Ray Train run)",
                              description=DESCRIPTION)
    p.add_argument("--config", type=Path, default=None,
                   help="run YAML every trial starts from (default: built-in defaults; on --resume: the "
                        "sweep's stored one)")
    p.add_argument("--sweep", type=Path, default=None,
                   help="sweep YAML: metric, mode, scheduler, search, space, resources (see docs/sweeps.md; "
                        "required for a new sweep)")
    p.add_argument("--data", type=Path, default=None, help="scan file (.npz/.h5) every worker can read "
                   "(default: data.path of --config)")
    p.add_argument("--out", type=Path, required=True, help="results directory: trials.csv, best_config.yaml, "
                   "best/model.pt, trials.png; also the default storage_path of the experiment")
    p.add_argument("--name", default=None, help="sweep name: the experiment directory under the storage path "
                   "(default: name: of the sweep file, else sweep-<timestamp>)")
    p.add_argument("--resume", default=None, metavar="NAME",
                   help="continue the interrupted sweep NAME (default: start a new sweep)")
    p.add_argument("--storage-path", default=None, help="where the experiment and the trials' runs go: path "
                   "or URI (default: storage_path of the sweep file, else --out)")
    add_ray_flags(p)
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args: argparse.Namespace) -> None:
    """Run or resume a sweep and print its table and where the results are."""
    from ptycho_dist import api

    result = api.tune(args.sweep, args.out, config=args.config, data=args.data, name=args.name, resume=args.resume,
                      storage_path=args.storage_path, ray=ray_overrides(args))
    print(result.table)
    for label, path in result.files.items():
        print(f"{label:>16}: {path}")
    if not result.complete:
        print(f"sweep interrupted; continue with: ptycho-dist tune --out {args.out} --resume {result.name}")
        sys.exit(130)
    print(f"best trial {result.best.trial_id}: {result.best.params}, {result.metric} = {result.best.last_value:.6g}")
    print(f"train it longer with: ptycho-dist train --config {result.files[BEST_CONFIG]} --out RUN_DIR")
