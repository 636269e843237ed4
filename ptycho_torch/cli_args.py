"""Command-line flags for run configs, shared by `ptycho-torch` and `ptycho-dist`.

Every config field is settable as `--section.field VALUE` (e.g. `--execution.accum_steps 4`); the
common ones also have upstream-style spellings (`--accumulate-grad-batches 4`, `--epochs 20`).
Values are read as YAML scalars ("null", "0.5", "[5, 8]", "true") and then checked by the config
dataclasses exactly like a config file. Precedence: CLI > --config file > defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from ptycho_torch.config import SECTIONS, ConfigError, RunConfig, apply_overrides, load_run_config

# flag -> dotted field. Boolean fields listed in BOOL_ALIASES get --x/--no-x.
ALIASES: dict[str, str] = {
    "--N": "model.N",
    "--gridsize": "model.gridsize",
    "--n-filters-scale": "model.n_filters_scale",
    "--probe-trainable": "model.probe_trainable",
    "--epochs": "training.nepochs",
    "--max-minutes": "training.max_minutes",
    "--batch-size": "training.batch_size",
    "--val-fraction": "data.val_fraction",
    "--n-groups": "data.n_groups",
    "--accelerator": "execution.accelerator",
    "--devices": "execution.devices",
    "--num-nodes": "execution.num_nodes",
    "--strategy": "execution.strategy",
    "--precision": "execution.precision",
    "--gradient-clip-val": "execution.gradient_clip_val",
    "--gradient-clip-algorithm": "execution.gradient_clip_algorithm",
    "--accumulate-grad-batches": "execution.accum_steps",
    "--num-workers": "execution.num_workers",
    "--learning-rate": "execution.learning_rate",
    "--scheduler": "execution.scheduler",
    "--logger": "execution.logger_backend",
    "--checkpoint-save-top-k": "execution.checkpoint_save_top_k",
    "--early-stop-patience": "execution.early_stop_patience",
    "--seed": "execution.seed",
    "--inference-batch-size": "execution.inference_batch_size",
    "--init-from": "training.init_from",
    "--freeze": "training.freeze",
}
BOOL_ALIASES: dict[str, str] = {
    "--deterministic": "execution.deterministic",
    "--progress-bar": "execution.enable_progress_bar",
}
_PREFIX = "override:"


def _parse_value(text: str) -> Any:
    from ptycho_torch.bounded_yaml import load_bounded

    try:
        return load_bounded(text)
    except yaml.YAMLError:
        return text


def _field_help(dotted: str) -> str:
    section, name = dotted.split(".")
    f = next(f for f in fields(SECTIONS[section]) if f.name == name)
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return f"{f.metadata.get('doc', '')} (sets {dotted}; default: {default!r})"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, the alias flags and one --section.field flag per config field."""
    parser.add_argument("--config", type=Path, default=None,
                        help="run YAML file with sections data/model/training/inference/execution "
                             "(default: built-in defaults)")
    group = parser.add_argument_group("common settings")
    for flag, dotted in ALIASES.items():
        group.add_argument(flag, dest=_PREFIX + dotted, type=_parse_value, default=argparse.SUPPRESS,
                           metavar="VALUE", help=_field_help(dotted))
    for flag, dotted in BOOL_ALIASES.items():
        group.add_argument(flag, dest=_PREFIX + dotted, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=_field_help(dotted))
    every = parser.add_argument_group("every config field (--section.field VALUE)")
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            dotted = f"{section}.{f.name}"
            if dotted == "data.path":
                continue
            every.add_argument(f"--{dotted}", dest=_PREFIX + dotted, type=_parse_value,
                               default=argparse.SUPPRESS, metavar="VALUE", help=_field_help(dotted))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--config (its data section and model.N are read), --N and one --data.field flag per DataConfig
    field: how a command without a model (solve) reads a scan."""
    parser.add_argument("--config", type=Path, default=None,
                        help="run YAML file; its data section and model.N say how the scan is read (default: none)")
    parser.add_argument("--N", dest=_PREFIX + "model.N", type=_parse_value, default=argparse.SUPPRESS,
                        metavar="VALUE", help="pattern size to crop / bin beamline frames to (sets model.N; "
                                              "default: the frames' own size)")
    every = parser.add_argument_group("how the scan is read (--data.field VALUE)")
    for f in fields(SECTIONS["data"]):
        if f.name != "path":
            every.add_argument(f"--data.{f.name}", dest=_PREFIX + f"data.{f.name}", type=_parse_value,
                               default=argparse.SUPPRESS, metavar="VALUE", help=_field_help(f"data.{f.name}"))


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides given on the command line (only flags the user actually passed)."""
    return {k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX)}


def resolve_run_config(args: argparse.Namespace, base_file: Path | None = None, base: RunConfig | None = None
                       ) -> RunConfig:
    """defaults (or `base`, e.g. the model section of a warm start's bundle) <- base_file (e.g. a resumed
    run's config.yaml) <- --config <- CLI flags, plus --data."""
    config = RunConfig() if base is None else base
    if base_file is not None:
        config = load_run_config(base_file)
    if getattr(args, "config", None) is not None:
        config = load_run_config(args.config)
    overrides = cli_overrides(args)
    if getattr(args, "data", None) is not None:
        overrides["data.path"] = data_path(args.data)
    try:
        return apply_overrides(config, overrides)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}") from None


def data_path(data: Any) -> str | list[str]:
    """`--data` (one or several paths or globs) as the value of data.path."""
    items = [str(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
    return items[0] if len(items) == 1 else items


def add_probe_normalization_flags(parser: argparse.ArgumentParser) -> None:
    """--probe, --normalization, --renormalize and --grouping of a reconstruct command (local and Ray):
    which probe and which normalisation factor r reconstruct a scan (workflows.reconstruct.choose_probe),
    and which groups a gridsize > 1 model reads (workflows.reconstruct.inference_groups)."""
    parser.add_argument("--probe", choices=("auto", "scan", "model"), default="auto",
                        help="which probe the network reads and stitching weighs with: 'scan' = the probe in "
                             "--data, 'model' = the model's (its training scan's, refined if it learned it), "
                             "'auto' = the scan's, except the model's refined probe when the scan's probe is the "
                             "one the model was trained from (default: auto)")
    parser.add_argument("--normalization", choices=("scan", "model"), default="scan",
                        help="normalisation factor r: 'scan' = from the patterns of --data (its dose), 'model' = "
                             "the model's training r (default: scan)")
    parser.add_argument("--renormalize", action="store_true",
                        help="same as --normalization scan (the default); kept for old scripts (default: off)")
    parser.add_argument("--grouping", choices=("cover", "every_pattern"), default=None,
                        help="gridsize > 1: 'cover' = about M / C groups that together stitch each pattern once "
                             "(fast), 'every_pattern' = one group per pattern, its own channel stitched (C times "
                             "the network work) (default: the model's inference.grouping, normally cover)")
