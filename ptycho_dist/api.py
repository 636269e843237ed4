"""The Python API of ptycho_dist (`import ptycho_dist as pd`): the `ptycho-dist` commands as calls.

    pd.train(data, out, **flags)             Ray Train (`ptycho-dist train`); returns DistTrainResult
    pd.tune(sweep, out, config=..., data=...) Ray Tune (`ptycho-dist tune`); returns SweepResult
    pd.reconstruct(model, data, out)         Ray Data (`ptycho-dist reconstruct`); returns the object

Keywords mirror the command-line flags with '-' written '_': the run flags of ptycho_torch.api
(epochs, batch_size, N, devices, ...), the Ray flags (address, num_cpus, worker_start_timeout,
storage_path, name, max_failures, cpus_per_worker, gpus_per_worker, placement_strategy,
autoscaling), and any config field as overrides={"section.field": value}; `ray=` takes a RayConfig
(or a dict of its fields) under the flags.

This is the front door below the command line: `ptycho-dist` parses its flags and calls these
functions; `resolve_run` is the one place where a Ray run's configuration is resolved. Nothing here
imports the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from ptycho_dist.config import (
    RAY_FLAGS,
    SESSION_FLAGS,
    RayConfig,
    ray_keywords,
    read_dist_yaml,
    split_ray_section,
    stored_mapping,
)
from ptycho_dist.sweeps.sweep_config import SweepConfig, load_sweep_config, sweep_config_from_dict
from ptycho_torch.config import ConfigError, RunConfig

__all__ = ["demo", "live", "reconstruct", "resolve_run", "train", "tune"]

RayLike = Union[RayConfig, Mapping[str, Any], None]


def _split_flags(flags: dict[str, Any], ray_flags: Mapping[str, tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run flags, RayConfig fields) from the keywords of a call."""
    keywords = ray_keywords(dict(ray_flags))
    ray_fields = {keywords[k]: flags.pop(k) for k in list(flags) if k in keywords}
    return flags, ray_fields


def _ray_fields(ray: RayLike) -> dict[str, Any]:
    """The RayConfig fields a caller set: a RayConfig's non-default ones, a dict's own (checked where the RayConfig is made)."""
    if ray is None:
        return {}
    if isinstance(ray, RayConfig):
        defaults = RayConfig().to_dict()
        return {k: v for k, v in ray.to_dict().items() if v != defaults[k]}
    if isinstance(ray, Mapping):
        return dict(ray)  # checked where the RayConfig is made (errors name ray.<field>)
    raise ConfigError(f"ray: expected a RayConfig or a dict of its fields, got {type(ray).__name__}")


def _run_mapping(config: Any) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """(run sections or None, `ray:` section, where) of `config`: a YAML path, a RunConfig or a dict."""
    if config is None:
        return None, {}, ""
    if isinstance(config, (str, Path)):
        run, ray = read_dist_yaml(Path(config))
        return run, ray, str(config)
    if isinstance(config, RunConfig):
        return config.to_dict(), {}, "config"
    if isinstance(config, Mapping):
        run, ray = split_ray_section(dict(config), "config")
        return run, ray, "config"
    raise ConfigError(f"config: expected a RunConfig, a dict of sections or a YAML path, got {type(config).__name__}")


def resolve_run(data: Any = None, out: str | Path | None = None, *, config: Any = None,
                resume: str | Path | None = None, ray: RayLike = None, overrides: Mapping[str, Any] | None = None,
                **flags: Any) -> tuple[RunConfig, RayConfig, bool]:
    """(RunConfig, RayConfig, resuming) of `ptycho-dist train` / pd.train, resolved once.

    Precedence (lowest first): defaults <- the resumed run's config.yaml / ray.yaml <- `config` (a
    run YAML with an optional `ray:` section, a RunConfig or a dict) <- `ray` <- `overrides` <- the
    flags as keywords, plus `data` as data.path; `out` DIR is --storage-path parent(DIR) --name
    basename(DIR). Where Ray runs (address, num_cpus, verbose) is never taken from a stored run."""
    from ptycho_dist.cluster.run_files import CONFIG_FILE, RAY_FILE, read_run_file, run_location, storage_path
    from ptycho_torch.api import dotted_overrides, run_config
    from ptycho_torch.training.warm_start import resolve_with_warm_start

    run_flags, flag_ray = _split_flags(dict(flags), RAY_FLAGS)
    dotted = dotted_overrides(run_flags, overrides, more_keywords=list(ray_keywords(RAY_FLAGS)))
    file_run, file_ray, where = _run_mapping(config)
    cli_ray = {**_ray_fields(ray), **flag_ray}
    if resume is not None and out is not None:
        raise ConfigError("--resume continues a run in its own directory; drop --out")
    if out is not None:
        out = Path(out)
        if out.name in ("", ".", ".."):  # `--out .` silently became ./train-<time> before
            raise ConfigError(f"--out {out}: names no run directory (a run is a directory of its own); give a "
                              f"new one, e.g. --out {out / 'run1'}")
        for key, value in (("storage_path", str(out.parent)), ("name", out.name)):
            if cli_ray.get(key, value) != value:
                raise ConfigError(f"--out {out} contradicts --{key.replace('_', '-')} {cli_ray[key]}; give one")
            cli_ray[key] = value
    run_data = file_run
    ray_data: dict[str, Any] = {}
    if resume is not None:
        resume = str(resume)
        target = Path(resume)
        if "/" in resume or (target / CONFIG_FILE).is_file():  # a run directory
            cli_ray.update(storage_path=str(target.resolve().parent), name=target.resolve().name)
        else:
            cli_ray["name"] = resume
        probe = RayConfig.from_dict({**file_ray, **cli_ray})
        location = run_location(storage_path(probe), probe.name)
        saved = read_run_file(location, CONFIG_FILE)
        if saved is None:
            raise FileNotFoundError(f"cannot resume: no run {probe.name!r} at {location} "
                                    f"({CONFIG_FILE} missing); check --resume and --storage-path")
        stored_ray = stored_mapping(read_run_file(location, RAY_FILE), f"{location}/{RAY_FILE}").get("ray") or {}
        if not isinstance(stored_ray, dict):
            raise ConfigError(f"{location}/{RAY_FILE}: ray: expected a mapping of fields, got {stored_ray!r}; "
                              "restore it or delete it")
        # where Ray runs now is a property of this invocation, not of the stored run
        ray_data = {k: v for k, v in stored_ray.items() if k not in ("address", "num_cpus", "verbose")}
        if run_data is None:
            run_data = stored_mapping(saved, f"{location}/{CONFIG_FILE}")
    try:
        stored = RunConfig.from_dict(run_data) if run_data is not None else RunConfig()
    except ConfigError as e:
        raise ConfigError(f"{where or CONFIG_FILE + ' of the resumed run'}: {e}") from None
    try:
        ray_config = RayConfig.from_dict({**ray_data, **file_ray, **cli_ray})  # errors name ray.<field>
    except ConfigError as e:
        source = f"{RAY_FILE} of the resumed run, --config or the flags" if resume else "--config or the flags"
        raise ConfigError(f"{source}: {e}") from None
    # <- the flags and data, as ptycho-torch train (a warm start: over the bundle's model)
    resolved = resolve_with_warm_start(
        lambda start: run_config(None, data, overrides=dotted, base=stored if start is None else start),
        has_config=run_data is not None)
    return resolved, ray_config, resume is not None


def train(data: Any = None, out: str | Path | None = None, *, config: Any = None, resume: str | Path | None = None,
          overwrite: bool = False, allow_other_data: bool = False, ray: RayLike = None, callbacks: Sequence[Any] = (),
          overrides: Mapping[str, Any] | None = None, **flags: Any) -> Any:
    """Train on Ray (`ptycho-dist train`): devices x num_nodes workers, DDP, into the run directory
    `out` (= storage_path/name). `resume=NAME` (or a run directory) continues a run from its latest
    checkpoint (`allow_other_data`: on other scan files). `config` is a run YAML (with an optional
    `ray:` section), a RunConfig or a dict of sections; `flags` are the run and Ray flags as keywords
    (module docstring). `callbacks` are extra picklable Lightning callbacks for every worker. Returns
    ptycho_dist.training.driver.DistTrainResult."""
    from ptycho_dist.training.driver import fit_distributed

    run, ray_config, resuming = resolve_run(data, out, config=config, resume=resume, ray=ray, overrides=overrides,
                                            **flags)
    if not run.data.path:
        raise ConfigError("train needs --data SCAN (data=: a scan file, glob or list of files) or data.path in the "
                          "--config file")
    return fit_distributed(run, ray_config, resume=resuming, overwrite=overwrite, callbacks=callbacks,
                           allow_other_data=allow_other_data)


def tune(sweep: SweepConfig | Mapping[str, Any] | str | Path | None, out: str | Path, *, config: Any = None,
         data: Any = None, name: str | None = None, resume: str | None = None, storage_path: str | None = None,
         ray: RayLike = None, **flags: Any) -> Any:
    """A Ray Tune sweep (`ptycho-dist tune`): `sweep` a sweep YAML, a dict or a SweepConfig (None only
    with `resume=NAME`), `out` the results directory, `config` the run every trial starts from (YAML,
    RunConfig or dict), `data` its scan. `flags` are the Ray session flags (address, num_cpus,
    worker_start_timeout). Returns ptycho_dist.sweeps.results.SweepResult (table, best_config, files, and
    `result_grid`: Ray Tune's own ResultGrid, e.g. `.get_best_result(metric, mode)`, `.get_dataframe()`)."""
    from ptycho_dist.sweeps.tuner import run_sweep
    from ptycho_torch.api import run_config
    from ptycho_torch.safe_output import check_output_dir

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); tune takes "
                          f"{', '.join(sorted(ray_keywords(SESSION_FLAGS)))} and ray=")
    check_output_dir(out, "--out")
    if isinstance(sweep, (str, Path)):
        sweep = load_sweep_config(sweep)
    elif isinstance(sweep, Mapping):
        sweep = sweep_config_from_dict(dict(sweep))
    if resume is None and sweep is None:
        raise ConfigError("tune needs --sweep SWEEP.yaml (sweep= in Python: a YAML, dict or SweepConfig), or "
                          "--resume NAME to continue a sweep")
    if resume is not None and name is not None and name != resume:
        raise ConfigError(f"--name {name} contradicts --resume {resume}; give one")
    stored = None  # resuming with data alone: the data is checked against the sweep's own run config
    if resume is not None and config is None and data is not None:
        from ptycho_dist.sweeps.tuner import stored_base

        stored = stored_base(sweep, out, resume, storage_path)
    base = None
    if config is not None or resume is None or stored is not None:
        base = run_config(config, None if data is None else str(Path(data).expanduser().resolve()), base=stored)
    ray_config = RayConfig.from_dict({**_ray_fields(ray), **ray_fields})
    return run_sweep(base, sweep, out, ray_config=ray_config, name=resume or name, resume=resume is not None,
                     storage_path=storage_path)


def reconstruct(model: Any, data: Any, out: str | Path, *, concurrency: int | None = None,
                inference_batch_size: int | None = None, num_gpus_per_actor: float | str = "auto",
                num_cpus_per_actor: float = 1.0, dtype: str | None = None, block_size: int | None = None,
                renormalize: bool = False, validate: bool = True, ray: RayLike = None, progress: bool | None = None,
                with_weight: bool = False, probe: str = "auto", normalization: str = "scan", grouping: str | None = None,
                full_result: bool = False, **flags: Any) -> Any:
    """Reconstruct scan file(s) on Ray Data (`ptycho-dist reconstruct`) into `out` and return the
    object (H, W) complex64 (with `with_weight`, also the stitching weight (H, W) float32). `model` is
    a run directory, model.pt or a train result; `data` a file, glob or list of files every node can
    read. Keywords are the command's flags (concurrency = inference actors, num_cpus_per_actor, ...,
    validate=False for --no-validate) and the Ray session flags (address, num_cpus,
    worker_start_timeout). The object equals pt.reconstruct's for the same files (up to float32
    summation order). `full_result` returns the whole ReconResult instead (object, weight, metrics,
    `summary_lines()`: what the command prints)."""
    from ptycho_dist.inference import reconstruct_distributed
    from ptycho_torch.api import check_batch_size, model_source
    from ptycho_torch.model.bundle import LoadedBundle, resolve_bundle_path
    from ptycho_torch.safe_output import check_output_dir

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); see help(ptycho_dist.reconstruct)")
    for label, value in (("concurrency", concurrency), ("block_size", block_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{label}: got {value}; must be >= 1 (or None for the default)")
    check_batch_size(inference_batch_size)
    model = model_source(model)
    model = model.path if isinstance(model, LoadedBundle) else model
    resolve_bundle_path(model)
    check_output_dir(out, "--out")
    ray_config = RayConfig.from_dict({**_ray_fields(ray), **ray_fields})
    result = reconstruct_distributed(
        model, data, out, concurrency=concurrency, batch_size=inference_batch_size,
        num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor, dtype=dtype,
        block_size=block_size, renormalize=renormalize, validate=validate, ray_config=ray_config, progress=progress,
        probe=probe, normalization=normalization, grouping=grouping)
    if full_result:
        return result
    return (result.object, result.weight) if with_weight else result.object


def live(model: Any, watch: str | Path, out: str | Path, *, publish_seconds: float = 5.0, idle_seconds: float = 30.0,
         start_timeout_s: float = 120.0, inference_batch_size: int | None = None, refine_seconds: float = 0.0,
         fit_patterns: int = 256, concurrency: int | None = None, num_cpus_per_actor: float = 1.0,
         num_gpus_per_actor: float | str = "auto", ray: RayLike = None, progress: bool | None = None, **flags: Any) -> Any:
    """`pt.live` with the network on `concurrency` Ray actors (`ptycho-dist live`): reads `watch` (a growing HDF5
    file, a directory of frame files or a ZMQ stream tcp://HOST:PORT), publishes the picture so far into out/live/ every `publish_seconds`, and writes `reconstruct`'s
    products into `out` when the scan is over. `flags` are the Ray session flags. Returns a LiveResult."""
    from ptycho_dist.live import live_distributed
    from ptycho_torch.api import check_batch_size, model_source
    from ptycho_torch.live.loop import LiveOptions
    from ptycho_torch.model.bundle import LoadedBundle

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); see help(ptycho_dist.live)")
    check_batch_size(inference_batch_size)
    model = model_source(model)
    model = model.path if isinstance(model, LoadedBundle) else model
    options = LiveOptions(publish_seconds=publish_seconds, idle_seconds=idle_seconds, start_timeout_s=start_timeout_s,
                          batch_size=inference_batch_size, refine_seconds=refine_seconds, fit_patterns=fit_patterns,
                          progress=progress)
    ray_config = RayConfig.from_dict({**_ray_fields(ray), **ray_fields})
    return live_distributed(model, watch, out, options, ray_config, actors=concurrency,
                            num_cpus_per_actor=num_cpus_per_actor, num_gpus_per_actor=num_gpus_per_actor)


def demo(out: str | Path, *, epochs: int | None = None, minutes: float | None = None, n_positions: int = 1000,
         sweep_epochs: int = 2, ray: RayLike = None, **flags: Any) -> dict[str, Any]:
    """The demo (`ptycho-dist demo`): simulate, train on 2 Ray workers, sweep, reconstruct with Ray Data
    and evaluate into `out`, within `minutes` of training (None = the demo's default, 0 = none) or
    `epochs`; `flags` are the Ray session flags. Returns the summary (also out/summary.json)."""
    from ptycho_dist.demo import run_demo
    from ptycho_torch.demo import DEMO_EPOCHS, DEMO_MINUTES

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); see help(ptycho_dist.demo)")
    settings = {**_ray_fields(ray), **ray_fields}
    minutes = DEMO_MINUTES if minutes is None else minutes
    return run_demo(Path(out), epochs=DEMO_EPOCHS if epochs is None else epochs, minutes=minutes or None,
                    n_positions=n_positions, sweep_epochs=sweep_epochs, num_cpus=settings.pop("num_cpus", None),
                    ray_settings=settings)

