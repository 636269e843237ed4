"""Warm start and fine-tuning: a new run that starts from the network of a trained model.

`training.init_from` (`train --init-from BUNDLE_OR_RUN_DIR`) copies the network weights of a bundle
into the fresh module of a run; everything else is the run's own: a new optimiser and schedule, the
probe and normalisation factor of the run's data, and the intensity scale moved by the change of
probe (the bundle's learned offset from its start, log_scale - log s0, carried onto this run's s0).
`training.freeze` (`--freeze encoder`, `decoders`) keeps those parts of the network fixed.

The model must fit: the network's layer shapes follow model.N, gridsize (with group_network
'joint' or partner_input), n_filters_scale, network_input, group_network, decoder and
partner_input; a bundle whose shapes differ is refused with one line naming the fields that differ.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch

from ptycho_torch.config import ConfigError, ModelConfig, RunConfig
from ptycho_torch.model.bundle import BUNDLE_NAME, LoadedBundle, load_bundle, resolve_bundle_path
from ptycho_torch.model.module import PtychoPINNModule

log = logging.getLogger("ptycho_torch")

SHAPE_FIELDS = ("N", "gridsize", "n_filters_scale", "network_input", "group_network", "decoder", "partner_input")
_PARTS = {"encoder": ("net.blocks.",), "decoders": ("net.amplitude_decoder.", "net.phase_decoder.")}


def _differences(old: ModelConfig, new: ModelConfig) -> str:
    pairs = [f"model.{f}={getattr(old, f)!r} (this run: {getattr(new, f)!r})" for f in SHAPE_FIELDS
             if getattr(old, f) != getattr(new, f)]
    return ", ".join(pairs) or "the same model fields"


def check_compatible(bundle: LoadedBundle, module: PtychoPINNModule) -> None:
    """ConfigError unless every network weight of `bundle` has the shape of the run's `module`."""
    old, new = bundle.config.model, module.model_config
    where = f"training.init_from: the model {bundle.path}"
    if old.N != new.N:
        raise ConfigError(f"{where} was trained on {old.N}x{old.N} patterns (model.N={old.N}) but this run's are "
                          f"{new.N}x{new.N}; fine-tune on data of the model's size, or train from scratch")
    theirs = {k: v for k, v in bundle.module.state_dict().items() if k.startswith("net.")}
    ours = {k: v for k, v in module.state_dict().items() if k.startswith("net.")}
    if theirs.keys() != ours.keys() or any(theirs[k].shape != ours[k].shape for k in ours):
        raise ConfigError(f"{where} has another network shape: it was trained with {_differences(old, new)}; set "
                          "these model fields to the model's values (e.g. --gridsize, --n-filters-scale), or train "
                          "from scratch")


def init_source(source: str | Path) -> Path:
    """The bundle file of training.init_from (a model.pt or a run directory holding one); a missing
    one is a ConfigError naming the field."""
    try:
        return resolve_bundle_path(Path(source).expanduser())
    except FileNotFoundError:
        raise ConfigError(f"training.init_from: no model bundle at {source}; give a {BUNDLE_NAME} or the training "
                          f"run directory holding it (--init-from RUN_DIR)") from None


def init_from_bundle(module: PtychoPINNModule, source: str | Path) -> LoadedBundle:
    """Copy the network weights of the bundle at `source` (a model.pt or a run directory) into
    `module` in place and carry its intensity scale over (module docstring). Returns the bundle."""
    bundle = load_bundle(init_source(source))
    check_compatible(bundle, module)
    weights = {k: v for k, v in bundle.module.state_dict().items() if k.startswith("net.")}
    module.net.load_state_dict({k[len("net."):]: v for k, v in weights.items()})
    learned = float(bundle.module.log_scale.detach()) - math.log(float(bundle.module.input_scale))  # log s - log s0
    with torch.no_grad():
        module.log_scale.copy_(torch.tensor(math.log(float(module.input_scale)) + learned))
    log.info("starting from the network of %s (trained %s); probe and normalisation from this run's data",
             bundle.path, bundle.config.data.path)
    return bundle


def freeze_parts(module: PtychoPINNModule, parts: list[str]) -> int:
    """Keep the named parts of the network (training.freeze) fixed: requires_grad False, so the
    optimiser never sees them. Returns the number of frozen parameters."""
    prefixes = tuple(p for part in parts for p in _PARTS[part])
    frozen = 0
    for name, param in module.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    if parts:
        log.info("frozen: %s (%d parameters)", ", ".join(parts), frozen)
    return frozen


def apply_warm_start(module: PtychoPINNModule, config: RunConfig, resuming: bool) -> dict[str, object]:
    """The warm start of a run: weights from training.init_from (not when resuming: the checkpoint
    holds them), then training.freeze. Returns what manifest.json records."""
    record: dict[str, object] = {}
    if config.training.init_from:
        if not resuming:
            init_from_bundle(module, config.training.init_from)
        record["init_from"] = str(config.training.init_from)
    if config.training.freeze:
        record["frozen_parameters"] = freeze_parts(module, list(config.training.freeze))
    return record


def warm_start_base(source: str | Path) -> RunConfig:
    """Defaults for `train --init-from BUNDLE` without --config (local and Ray): the bundle's model
    section (so its network shape is kept unless a flag changes it), every other section at its default."""
    return RunConfig(model=load_bundle(init_source(source)).config.model)


def resolve_with_warm_start(resolve: Callable[[RunConfig | None], RunConfig], has_config: bool) -> RunConfig:
    """`resolve(base)` is a caller's config resolution (its base <- files <- flags; None = its own base).
    When the result warm-starts (training.init_from) and the user gave no config, resolve again over
    `warm_start_base`, so the bundle's network shape is kept unless a flag changes it. The one rule of
    `ptycho-torch train`, `ptycho-dist train` and `pt.train`."""
    config = resolve(None)
    if config.training.init_from and not has_config:
        config = resolve(warm_start_base(config.training.init_from))
    return config
