"""`ptycho-dist live`: its flags and the call of ptycho_dist.api.live (the network on Ray actors)."""

from __future__ import annotations

import argparse
from typing import Any

from ptycho_dist.cli.flags import add_ray_flags, gpu_count, ray_overrides


def cmd_live(args: argparse.Namespace) -> None:
    from ptycho_dist import api

    result = api.live(args.model, args.watch, args.out, publish_seconds=args.publish_seconds,
                      idle_seconds=args.idle_timeout, start_timeout_s=args.start_timeout,
                      inference_batch_size=args.inference_batch_size, refine_seconds=args.refine_seconds,
                      fit_patterns=args.fit_patterns, concurrency=args.concurrency,
                      num_cpus_per_actor=args.num_cpus_per_actor, num_gpus_per_actor=args.num_gpus_per_actor,
                      ray=ray_overrides(args))
    print(f"live: {result.frames} frames ({result.ended_by}), {len(result.publications)} pictures published in "
          f"{args.out / 'live'}")
    print("\n".join(result.final.summary_lines()))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `live` command of `ptycho-dist`."""
    from ptycho_torch.cli.flags import add_live_flags

    p = subparsers.add_parser(
        "live", help="reconstruct a scan while it is acquired, the network on Ray actors",
        description="Reads frames as the detector writes them (a growing SWMR HDF5 file, a directory of frame "
                    "files or a ZMQ stream), runs the network on a pool of Ray actors, publishes the picture so far into OUT/live/ every --publish-seconds and "
                    "writes reconstruct's products into OUT when the scan is over.")
    add_live_flags(p)
    p.add_argument("--concurrency", type=int, default=None,
                   help="actors running the network (default: as many as the cluster's CPUs/GPUs fit, at most 8)")
    p.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                   help="CPUs per actor, also its torch threads (default: 1)")
    p.add_argument("--num-gpus-per-actor", type=gpu_count, default="auto",
                   help="GPUs per actor: auto = one each when the cluster has GPUs (the network on CUDA), else "
                        "0 (CPU); fractions share a GPU (default: auto)")
    add_ray_flags(p)
    p.set_defaults(func=cmd_live)
    return p
