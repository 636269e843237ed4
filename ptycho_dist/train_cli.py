"""`ptycho-dist train`: flags, config resolution (with a `ray:` YAML section) and the command.

Flags: everything `ptycho-torch train` takes (`--data`, `--out`, `--config`, `--epochs`, execution
flags, every `--section.field`), plus the Ray ones (`--address`, `--storage-path`, `--name`,
`--max-failures`, `--cpus-per-worker`, `--gpus-per-worker`, `--num-cpus`, `--placement-strategy`,
`--worker-start-timeout`, `--autoscaling`), `--resume NAME` and `--overwrite`.

The run YAML given to `--config` may carry a `ray:` section (any RayConfig field) next to the
data/model/training/inference/execution sections; ptycho-dist takes it out before the rest goes to
RunConfig, so `ptycho-torch` stays strict about unknown sections:

    execution: {devices: 2, num_nodes: 1}
    ray: {storage_path: /shared/runs, name: big-run, max_failures: 2, cpus_per_worker: 4}

Precedence (lowest first): defaults <- the resumed run's config.yaml / ray.yaml <- --config <- flags.
`--out DIR` is shorthand for `--storage-path parent(DIR) --name basename(DIR)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ptycho_dist.config import RayConfig
from ptycho_dist.flags import RAY_FLAGS, add_ray_flags, ray_overrides
from ptycho_dist.run_files import CONFIG_FILE, RAY_FILE, read_run_file, run_location, storage_path
from ptycho_torch.bounded_yaml import load_bounded
from ptycho_torch.config import ConfigError, RunConfig, read_yaml_mapping, yaml_problem


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ptycho-dist train`."""
    from ptycho_torch.cli_args import add_config_arguments

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
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run where a run of that name exists, after moving the old one aside to "
                        "NAME.replaced-<time> (nothing is deleted) (default: off, such a run is refused)")
    p.add_argument("--allow-other-data", action="store_true",
                   help="with --resume: continue on scan files other than those the run trained on (recorded "
                        "in data_files.json and manifest.json) (default: off, such a resume is refused)")
    add_ray_flags(p, RAY_FLAGS)
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def split_dist_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a run YAML; return (run sections, `ray:` section)."""
    data = read_yaml_mapping(path)
    ray = data.pop("ray", None) or {}
    if not isinstance(ray, dict):
        raise ConfigError(f"{path}: ray: expected a mapping of fields, got {ray!r}")
    return data, ray


def load_dist_config(path: Path) -> tuple[RunConfig, RayConfig]:
    """A run YAML with an optional `ray:` section -> (RunConfig, RayConfig)."""
    run, ray = split_dist_yaml(Path(path))
    try:
        return RunConfig.from_dict(run), RayConfig.from_dict(ray)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _text_config(text: str | None, where: str) -> dict[str, Any]:
    """The mapping in a stored run file; a damaged file is one line naming it and the fix."""
    if text is None:
        return {}
    try:
        data = load_bounded(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: is not valid YAML ({yaml_problem(e)}); restore it from a backup, or delete it to "
                          "resume with the settings of --config and the flags") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}; restore it "
                          "or delete it")
    return data


def resolve_dist_configs(args: argparse.Namespace) -> tuple[RunConfig, RayConfig, bool]:
    """(RunConfig, RayConfig, resume) from the flags; see the module docstring for precedence."""
    from ptycho_torch.cli_args import resolve_run_config

    file_run, file_ray = split_dist_yaml(args.config) if args.config is not None else (None, {})
    cli_ray = ray_overrides(args)
    if args.resume is not None and args.out is not None:
        raise ConfigError("--resume continues a run in its own directory; drop --out")
    if args.out is not None:
        out = Path(args.out)
        if out.name in ("", ".", ".."):  # `--out .` silently became ./train-<time> before
            raise ConfigError(f"--out {args.out}: names no run directory (a run is a directory of its own); give a "
                              f"new one, e.g. --out {out / 'run1'}")
        for key, value in (("storage_path", str(out.parent)), ("name", out.name)):
            if cli_ray.get(key, value) != value:
                raise ConfigError(f"--out {out} contradicts --{key.replace('_', '-')} {cli_ray[key]}; give one")
            cli_ray[key] = value
    run_data: dict[str, Any] | None = file_run
    ray_data: dict[str, Any] = {}
    resume = args.resume is not None
    if resume:
        target = Path(args.resume)
        if "/" in args.resume or (target / CONFIG_FILE).is_file():  # a run directory
            cli_ray.update(storage_path=str(target.resolve().parent), name=target.resolve().name)
        else:
            cli_ray["name"] = args.resume
        probe = RayConfig.from_dict({**file_ray, **cli_ray})
        location = run_location(storage_path(probe), probe.name)
        saved = read_run_file(location, CONFIG_FILE)
        if saved is None:
            raise FileNotFoundError(f"cannot resume: no run {probe.name!r} at {location} "
                                    f"({CONFIG_FILE} missing); check --resume and --storage-path")
        stored_ray = _text_config(read_run_file(location, RAY_FILE), f"{location}/{RAY_FILE}").get("ray") or {}
        if not isinstance(stored_ray, dict):
            raise ConfigError(f"{location}/{RAY_FILE}: ray: expected a mapping of fields, got {stored_ray!r}; "
                              "restore it or delete it")
        # where Ray runs now is a property of this invocation, not of the stored run
        ray_data = {k: v for k, v in stored_ray.items() if k not in ("address", "num_cpus", "verbose")}
        if run_data is None:
            run_data = _text_config(saved, f"{location}/{CONFIG_FILE}")
    try:
        config = RunConfig.from_dict(run_data) if run_data is not None else RunConfig()
    except ConfigError as e:
        raise ConfigError(f"{args.config or CONFIG_FILE + ' of the resumed run'}: {e}") from None
    try:
        ray_config = RayConfig.from_dict({**ray_data, **file_ray, **cli_ray})  # errors name ray.<field>
    except ConfigError as e:
        where = f"{RAY_FILE} of the resumed run, --config or the flags" if resume else "--config or the flags"
        raise ConfigError(f"{where}: {e}") from None
    flags = argparse.Namespace(**{**vars(args), "config": None})  # --config was read above (its ray: split off)
    from ptycho_torch.workflows.warm_start import resolve_with_warm_start  # torch: only once the flags parsed

    stored = config  # <- the flags and --data, as ptycho-torch train (a warm start: over the bundle's model)
    config = resolve_with_warm_start(lambda base: resolve_run_config(flags, base=stored if base is None else base),
                                     has_config=run_data is not None)
    return config, ray_config, resume


def cmd_train(args: argparse.Namespace) -> None:
    from ptycho_dist.train import fit_distributed  # Ray and Lightning: imported when the command runs

    config, ray_config, resume = resolve_dist_configs(args)
    if not config.data.path:
        raise ConfigError("train needs --data SCAN (or data.path in the --config file)")
    result = fit_distributed(config, ray_config, resume=resume, overwrite=args.overwrite,
                             allow_other_data=args.allow_other_data)
    shown = {k: round(v, 6) for k, v in result.metrics.items() if k in ("train_loss", "val_loss")}
    print(f"trained {result.epochs_completed} epochs on {result.world_size} Ray worker(s) in "
          f"{result.wall_seconds:.1f} s (fit {result.fit_seconds:.1f} s) {shown}; "
          f"model bundle: {result.bundle_path}")
    print(f"reconstruct with: ptycho-torch reconstruct --model {result.run_dir} --data SCAN --out RECON_DIR")
