"""The Ray flags of `ptycho-dist` commands on the command line (their table: ptycho_dist.config.RAY_FLAGS).

Parsed values land in `args` as `ray:<field>`; `ray_overrides(args)` collects the ones given (plus `-v`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ptycho_dist.config import SESSION_FLAGS, RayConfig


def add_ray_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, Any]] = SESSION_FLAGS) -> None:
    """Add `flags` in a "Ray" group, each documented with its RayConfig field and default."""
    group = parser.add_argument_group("Ray (the `ray:` section of a run config)")
    docs, defaults = RayConfig.field_docs(), RayConfig().to_dict()
    for flag, (name, kind) in flags.items():
        group.add_argument(flag, dest="ray:" + name, type=kind, default=None, metavar=name.upper(),
                           help=f"{docs[name]} (sets ray.{name}; default: {defaults[name]!r})")


def ray_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The RayConfig fields given on the command line (and verbose from -v)."""
    out = {k[len("ray:"):]: v for k, v in vars(args).items() if k.startswith("ray:") and v is not None}
    if getattr(args, "verbose", False):
        out["verbose"] = True
    return out


def gpu_count(text: str) -> float | str:
    """--num-gpus-per-actor: 'auto' or a number >= 0 (argparse type)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {text!r}")
    return value
