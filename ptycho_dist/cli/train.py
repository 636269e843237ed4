"""`ptycho-dist train`: its flags, and the call of ptycho_dist.api.train.

Flags: everything `ptycho-torch train` takes (`--data`, `--out`, `--config`, `--epochs`, the Trainer's
flags, every `--section.field`), plus the Ray ones (`--address`, `--storage-path`, `--name`,
`--max-failures`, `--cpus-per-worker`, `--gpus-per-worker`, `--num-cpus`, `--placement-strategy`,
`--worker-start-timeout`, `--autoscaling`), `--resume NAME` and `--overwrite`.

The run YAML given to `--config` may carry a `ray:` section (any RayConfig field) next to the
data/model/training/inference/trainer/optimizer/dataloader/checkpoint/logging sections; ptycho-dist takes it out before the rest goes to
RunConfig, so `ptycho-torch` stays strict about unknown sections:

    trainer: {devices: 2, num_nodes: 1}
    ray: {storage_path: /shared/runs, name: big-run, max_failures: 2, cpus_per_worker: 4}

Precedence (lowest first): defaults <- the resumed run's config.yaml / ray.yaml <- --config <- flags
(resolved once, by ptycho_dist.api.resolve_run). `--out DIR` is shorthand for `--storage-path
parent(DIR) --name basename(DIR)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_dist.cli.flags import add_ray_flags, ray_overrides
from ptycho_dist.config import RAY_FLAGS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ptycho-dist train`."""
    from ptycho_torch.cli.flags import add_config_arguments, add_run_dir_flags

    p = subparsers.add_parser("train", help="train PtychoPINN on Ray (one worker per device, DDP)",
                              description="Train PtychoPINN with Ray Train: devices x num_nodes workers running "
                                          "the same Lightning training as ptycho-torch train, into the run "
                                          "directory --storage-path/--name (or --out); --resume NAME continues "
                                          "a run from its latest checkpoint.")
    p.add_argument("--data", nargs="+", default=None, help="scan file(s) (.npz/.h5/.hdf5) or quoted glob(s) "
                   "of one scan, readable by every worker (default: data.path of --config)")
    p.add_argument("--out", type=Path, default=None, help="run directory; same as --storage-path "
                   "parent --name basename (default: --storage-path/--name)")
    p.add_argument("--resume", default=None, metavar="NAME",
                   help="continue the run NAME under --storage-path (or a run directory) from its latest "
                        "checkpoint up to the configured epochs (default: off)")
    add_run_dir_flags(p)
    add_ray_flags(p, RAY_FLAGS)
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ptycho_dist.api.train / resolve_run that these flags stand for."""
    from ptycho_torch.cli.flags import cli_overrides

    return {"data": args.data, "out": args.out, "config": args.config, "resume": args.resume,
            "ray": ray_overrides(args), "overrides": cli_overrides(args)}


def cmd_train(args: argparse.Namespace) -> None:
    from ptycho_dist import api

    result = api.train(**run_keywords(args), overwrite=args.overwrite, allow_other_data=args.allow_other_data)
    shown = {k: round(v, 6) for k, v in result.metrics.items() if k in ("train_loss", "val_loss")}
    print(f"trained {result.epochs_completed} epochs on {result.world_size} Ray worker(s) in "
          f"{result.wall_seconds:.1f} s (fit {result.fit_seconds:.1f} s) {shown}; "
          f"model bundle: {result.bundle_path}")
    print(f"reconstruct with: ptycho-torch reconstruct --model {result.run_dir} --data SCAN --out RECON_DIR")
