"""Command-line flags for run configs, shared by `ptycho-torch` and `ptycho-dist`.

Every config field is settable as `--section.field VALUE` (e.g. `--trainer.accumulate_grad_batches 4`); the
common ones also have upstream-style spellings (`--accumulate-grad-batches 4`, `--epochs 20`).
Values are read as YAML scalars ("null", "0.5", "[5, 8]", "true") and handed to the API as dotted
overrides (`cli_overrides`); ptycho_torch.api.run_config checks them exactly like a config file.
Nothing here reads a config file or resolves a run: that is the API's one resolver.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from ptycho_torch.config import SECTIONS
from ptycho_torch.config.flag_names import BOOL_FLAG_FIELDS, FLAG_FIELDS
from ptycho_torch.config.renamed import RENAMED_FLAGS, renamed_flag

_PREFIX = "override:"


def _parse_value(text: str) -> Any:
    from ptycho_torch.config.bounded_yaml import load_bounded

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
                        help="run YAML file with sections data/model/training/inference/trainer/optimizer/"
                             "dataloader/checkpoint/logging "
                             "(default: built-in defaults)")
    group = parser.add_argument_group("common settings")
    for flag, dotted in FLAG_FIELDS.items():
        group.add_argument(flag, dest=_PREFIX + dotted, type=_parse_value, default=argparse.SUPPRESS,
                           metavar="VALUE", help=_field_help(dotted))
    for flag, dotted in BOOL_FLAG_FIELDS.items():
        group.add_argument(flag, dest=_PREFIX + dotted, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=_field_help(dotted))
    for old, new in RENAMED_FLAGS.items():  # still read, with a notice; not in --help
        group.add_argument(old, dest=_PREFIX + FLAG_FIELDS[new], type=_parse_value, default=argparse.SUPPRESS,
                           action=_RenamedFlag, help=argparse.SUPPRESS)
    every = parser.add_argument_group("every config field (--section.field VALUE)")
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            dotted = f"{section}.{f.name}"
            if dotted == "data.path":
                continue
            every.add_argument(f"--{dotted}", dest=_PREFIX + dotted, type=_parse_value,
                               default=argparse.SUPPRESS, metavar="VALUE", help=_field_help(dotted))


class _RenamedFlag(argparse.Action):
    """An old spelling of a flag: stores the value as its new spelling does, with one notice line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        renamed_flag(option_string or "")
        setattr(namespace, self.dest, values)


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


def add_probe_normalization_flags(parser: argparse.ArgumentParser) -> None:
    """--probe, --normalization, --renormalize and --grouping of a reconstruct command (local and Ray):
    which probe and which normalisation factor r reconstruct a scan (reconstruction.reconstruct.choose_probe),
    and which groups a gridsize > 1 model reads (reconstruction.reconstruct.inference_groups)."""
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


def add_live_flags(parser: argparse.ArgumentParser) -> None:
    """--model, --watch, --out and the timing flags of a live command (local and Ray)."""
    parser.add_argument("--model", required=True, type=Path, help="training run directory or model.pt (required)")
    parser.add_argument("--watch", required=True,
                        help="the scan being acquired: SCAN.h5 (the data contract's layout, growing in SWMR mode), "
                             "DIR/ (header.npz + frame_<index>.npz files renamed into place) or tcp://host:port "
                             "(a ZMQ stream; tcp://*:port listens; needs pyzmq) (docs/live.md) (required)")
    parser.add_argument("--out", required=True, type=Path,
                        help="reconstruction directory; the pictures so far in OUT/live/ (required)")
    parser.add_argument("--publish-seconds", type=float, default=5.0,
                        help="publish the picture so far this often (default: 5)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="seconds without a new frame (and no end mark) after which the writer counts as gone "
                             "and the frames received are finished (default: 30)")
    parser.add_argument("--start-timeout", type=float, default=120.0,
                        help="seconds to wait for the source to appear (the file, the directory's header, the "
                             "stream's header message) (default: 120)")
    parser.add_argument("--inference-batch-size", type=int, default=None,
                        help="patterns per batch (default: the model's inference.batch_size or batch_size)")
    parser.add_argument("--fit-patterns", type=int, default=256,
                        help="data fit of each published picture on this many of the frames so far (0 = none) "
                             "(default: 256)")
    parser.add_argument("--refine-seconds", type=float, default=0.0,
                        help="at the end, refine the network's object with the iterative solver this long "
                             "(default: 0)")


def add_run_dir_flags(parser: argparse.ArgumentParser) -> None:
    """--overwrite and --allow-other-data of a train command (local and Ray)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run where a run already is, after moving the old one aside to "
                             "<run>.replaced-<time> (nothing is deleted) (default: off, such a run is refused)")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="with --resume: continue on scan files other than those the run trained on (recorded "
                             "in data_files.json and manifest.json) (default: off, such a resume is refused)")
