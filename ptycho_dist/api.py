"""The Python API of ptycho_dist (`import ptycho_dist as pd`): the `ptycho-dist` commands as calls.

    pd.train(data, out, **flags)             Ray Train (`ptycho-dist train`); returns DistTrainResult
    pd.tune(sweep, out, config=..., data=...) Ray Tune (`ptycho-dist tune`); returns SweepResult
    pd.reconstruct(model, data, out)         Ray Data (`ptycho-dist reconstruct`); returns the object

Keywords mirror the command-line flags with '-' written '_': the run flags of ptycho_torch.api
(epochs, batch_size, N, devices, ...), the Ray flags (address, num_cpus, worker_start_timeout,
storage_path, name, max_failures, cpus_per_worker, gpus_per_worker, placement_strategy,
autoscaling), and any config field as overrides={"section.field": value}; `ray=` takes a RayConfig
(or a dict of its fields) under the flags. The resolution is the command line's own
(train_cli.resolve_dist_configs), so a call and the command give the same run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from ptycho_dist.config import RayConfig
from ptycho_torch.config import ConfigError, RunConfig
from ptycho_torch.sweep_config import SweepConfig, load_sweep_config, sweep_config_from_dict

__all__ = ["CallableModule", "make_callable", "reconstruct", "train", "tune"]

RayLike = Union[RayConfig, Mapping[str, Any], None]


def _ray_keywords(flags: Mapping[str, tuple[str, Any]]) -> dict[str, str]:
    """Python keyword -> RayConfig field for the given Ray flags (--worker-start-timeout ->
    worker_start_timeout -> worker_start_timeout_s)."""
    return {flag.lstrip("-").replace("-", "_"): name for flag, (name, _) in flags.items()}


def _split_flags(flags: dict[str, Any], ray_flags: Mapping[str, tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run flags, RayConfig fields) from the keywords of a call."""
    keywords = _ray_keywords(ray_flags)
    ray_fields = {keywords[k]: flags.pop(k) for k in list(flags) if k in keywords}
    return flags, ray_fields


def _ray_fields(ray: RayLike) -> dict[str, Any]:
    if ray is None:
        return {}
    if isinstance(ray, RayConfig):
        defaults = RayConfig().to_dict()
        return {k: v for k, v in ray.to_dict().items() if v != defaults[k]}
    if isinstance(ray, Mapping):
        return dict(RayConfig.from_dict(dict(ray)).to_dict())
    raise ConfigError(f"ray: expected a RayConfig or a dict of its fields, got {type(ray).__name__}")


def _dotted(config: RunConfig) -> dict[str, Any]:
    return {f"{section}.{name}": value for section, fields in config.to_dict().items() for name, value in fields.items()}


def train(data: Any = None, out: str | Path | None = None, *, config: Any = None, resume: str | Path | None = None,
          overwrite: bool = False, ray: RayLike = None, callbacks: Sequence[Any] = (),
          overrides: Mapping[str, Any] | None = None, **flags: Any) -> Any:
    """Train on Ray (`ptycho-dist train`): devices x num_nodes workers, DDP, into the run directory
    `out` (= storage_path/name). `resume=NAME` (or a run directory) continues a run from its latest
    checkpoint. `config` is a run YAML (with an optional `ray:` section), a RunConfig or a dict of
    sections; `flags` are the run and Ray flags as keywords (module docstring). `callbacks` are extra
    picklable Lightning callbacks for every worker. Returns ptycho_dist.train.DistTrainResult."""
    from ptycho_dist.flags import RAY_FLAGS
    from ptycho_dist.train import fit_distributed
    from ptycho_dist.train_cli import resolve_dist_configs
    from ptycho_torch.api import dotted_overrides

    run_flags, ray_fields = _split_flags(dict(flags), RAY_FLAGS)
    flag_fields = dotted_overrides(run_flags, overrides, more_keywords=list(_ray_keywords(RAY_FLAGS)))
    dotted: dict[str, Any] = {}
    config_path = None
    if isinstance(config, (str, Path)):
        config_path = Path(config)
    elif isinstance(config, (RunConfig, Mapping)):
        dotted = _dotted(config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config)))
    elif config is not None:
        raise ConfigError(f"config: expected a RunConfig, a dict of sections or a YAML path, got {type(config).__name__}")
    dotted.update(flag_fields)
    args = argparse.Namespace(config=config_path, out=None if out is None else Path(out),
                              resume=None if resume is None else str(resume),
                              data=None if data is None else [str(d) for d in (data if isinstance(data, (list, tuple))
                                                                                else [data])],
                              **{"ray:" + k: v for k, v in {**_ray_fields(ray), **ray_fields}.items()},
                              **{"override:" + k: v for k, v in dotted.items()})
    run, ray_config, resuming = resolve_dist_configs(args)
    if not run.data.path:
        raise ConfigError("train needs data=SCAN (a scan file, glob or list of files) or data.path in config")
    return fit_distributed(run, ray_config, resume=resuming, overwrite=overwrite, callbacks=callbacks)


def tune(sweep: SweepConfig | Mapping[str, Any] | str | Path | None, out: str | Path, *, config: Any = None,
         data: Any = None, name: str | None = None, resume: str | None = None, storage_path: str | None = None,
         ray: RayLike = None, **flags: Any) -> Any:
    """A Ray Tune sweep (`ptycho-dist tune`): `sweep` a sweep YAML, a dict or a SweepConfig (None only
    with `resume=NAME`), `out` the results directory, `config` the run every trial starts from (YAML,
    RunConfig or dict), `data` its scan. `flags` are the Ray session flags (address, num_cpus,
    worker_start_timeout). Returns ptycho_torch.sweep_results.SweepResult (table, best_config, files)."""
    from ptycho_dist.flags import SESSION_FLAGS
    from ptycho_dist.tune import run_sweep
    from ptycho_torch.api import run_config
    from ptycho_torch.outputs import check_output_dir

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); tune takes "
                          f"{', '.join(sorted(_ray_keywords(SESSION_FLAGS)))} and ray=")
    check_output_dir(out, "out")
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
        from ptycho_dist.tune import stored_base

        stored = stored_base(sweep, out, resume, storage_path)
    base = None
    if config is not None or resume is None or stored is not None:
        base = run_config(config, None if data is None else str(Path(data).expanduser().resolve()), base=stored)
    ray_config = RayConfig.from_dict({**_ray_fields(ray), **ray_fields})
    return run_sweep(base, sweep, out, ray_config=ray_config, name=resume or name, resume=resume is not None,
                     storage_path=storage_path)


def reconstruct(model: Any, data: Any, out: str | Path, *, concurrency: int | None = None,
                inference_batch_size: int | None = None, num_gpus_per_actor: float = 0.0,
                num_cpus_per_actor: float = 1.0, dtype: str | None = None, block_size: int | None = None,
                renormalize: bool = False, validate: bool = True, ray: RayLike = None, progress: bool | None = False,
                with_weight: bool = False, probe: str = "auto", normalization: str = "scan", **flags: Any) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Reconstruct scan file(s) on Ray Data (`ptycho-dist reconstruct`) into `out` and return the
    object (H, W) complex64 (with `with_weight`, also the stitching weight (H, W) float32). `model` is
    a run directory, model.pt or a train result; `data` a file, glob or list of files every node can
    read. Keywords are the command's flags (concurrency = inference actors, num_cpus_per_actor, ...,
    validate=False for --no-validate) and the Ray session flags (address, num_cpus,
    worker_start_timeout). The object equals pt.reconstruct's for the same files (up to float32
    summation order)."""
    from ptycho_dist.flags import SESSION_FLAGS
    from ptycho_dist.inference import reconstruct_distributed
    from ptycho_torch.api import _bundle
    from ptycho_torch.cli import check_batch_size
    from ptycho_torch.outputs import check_output_dir
    from ptycho_torch.workflows.bundle import LoadedBundle, resolve_bundle_path

    rest, ray_fields = _split_flags(dict(flags), SESSION_FLAGS)
    if rest:
        raise ConfigError(f"{', '.join(sorted(rest))}: unknown keyword(s); see help(ptycho_dist.reconstruct)")
    for label, value in (("concurrency", concurrency), ("block_size", block_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{label}: got {value}; must be >= 1 (or None for the default)")
    check_batch_size(inference_batch_size, "inference_batch_size")
    model = _bundle(model)
    model = model.path if isinstance(model, LoadedBundle) else model
    resolve_bundle_path(model)
    check_output_dir(out, "out")
    ray_config = RayConfig.from_dict({**_ray_fields(ray), **ray_fields})
    result = reconstruct_distributed(
        model, data, out, concurrency=concurrency, batch_size=inference_batch_size,
        num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor, dtype=dtype,
        block_size=block_size, renormalize=renormalize, validate=validate, ray_config=ray_config, progress=progress,
        probe=probe, normalization=normalization)
    return (result.object, result.weight) if with_weight else result.object



class CallableModule(types.ModuleType):
    """A module that, called, runs the API function of its name: the modules ptycho_dist.train and
    ptycho_dist.tune are the package attributes `train` and `tune` (Python sets a submodule as its
    package's attribute on import), so `ptycho_dist.train(...)` calls ptycho_dist.api.train and
    `from ptycho_dist.train import fit_distributed` keeps working."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("ptycho_dist.api")
        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the imported module `module_name` a CallableModule."""
    sys.modules[module_name].__class__ = CallableModule
