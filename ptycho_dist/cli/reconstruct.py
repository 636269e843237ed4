"""`ptycho-dist reconstruct`: its flags and the call of ptycho_dist.api.reconstruct (Ray Data)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_dist.cli.flags import add_ray_flags, gpu_count, ray_overrides


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ptycho_dist import api

    result = api.reconstruct(
        args.model, args.data, args.out, concurrency=args.concurrency, inference_batch_size=args.batch_size,
        num_gpus_per_actor=args.num_gpus_per_actor, num_cpus_per_actor=args.num_cpus_per_actor,
        dtype=args.dtype, block_size=args.block_size, renormalize=args.renormalize,
        probe=args.probe, normalization=args.normalization, grouping=args.grouping, validate=not args.no_validate,
        ray=ray_overrides(args), progress=None, full_result=True)
    print("\n".join(result.summary_lines()))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `reconstruct` command of `ptycho-dist`."""
    from ptycho_dist.inference import DTYPES
    from ptycho_torch.cli.flags import add_probe_normalization_flags

    p = subparsers.add_parser(
        "reconstruct", help="reconstruct scan file(s) with a trained model on Ray Data",
        description="Batch inference on Ray Data (model loaded once per actor) with streaming stitching; "
                    "reads the files as the model's training data were read; writes object.npz, "
                    "amplitude.png, phase.png, probe.npy, amplitude.tif, phase.tif, reconstruction.cxi and "
                    "metrics.json (with a ground truth).")
    p.add_argument("--model", required=True, type=Path,
                   help="training run directory (holding model.pt) or the bundle file (required)")
    p.add_argument("--data", required=True, nargs="+",
                   help="scan file(s) (.npz/.h5/.hdf5) or quoted glob(s), positions in one object frame; "
                        "the canvas is the union of the files' frames (required)")
    p.add_argument("--out", required=True, type=Path, help="reconstruction directory (required)")
    p.add_argument("--concurrency", type=_positive_int, default=None,
                   help="number of inference actors (default: as many as the cluster's CPUs/GPUs fit)")
    p.add_argument("--batch-size", "--inference-batch-size", dest="batch_size", type=_positive_int, default=None,
                   help="patterns per network batch (default: the bundle's inference.batch_size, "
                        "else training.batch_size)")
    p.add_argument("--num-gpus-per-actor", type=gpu_count, default="auto",
                   help="GPUs per actor: auto = one each when the cluster has GPUs (the network on CUDA), else "
                        "0 (CPU); fractions share a GPU (default: auto)")
    p.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                   help="CPUs per actor, also its torch threads (default: 1)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="network dtype (default: the bundle's inference.dtype, normally float32)")
    p.add_argument("--block-size", type=_positive_int, default=None,
                   help="groups per read block (a group reads gridsize**2 patterns), several blocks per "
                        "file (default: ~16 MiB of amplitudes, at least 4 blocks per actor)")
    add_probe_normalization_flags(p)
    p.add_argument("--no-validate", action="store_true",
                   help="skip the driver's full pass over the patterns (NaN/Inf/negative checks); shapes, "
                        "probe and positions are still checked (default: validate)")
    add_ray_flags(p)
    p.set_defaults(func=cmd_reconstruct)
    return p
