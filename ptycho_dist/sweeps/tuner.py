"""Sweeps with Ray Tune (`ptycho-dist tune`, pd.tune), each trial a Ray Train run.

    ptycho-dist tune --config run.yaml --sweep sweep.yaml --data SCAN --out DIR [--name NAME]
    ptycho-dist tune --out DIR --resume NAME            # continue an interrupted sweep

The sweep file (`SweepConfig`, docs/sweeps.md) names the metric, the scheduler (ASHA by default), the
search (random, grid or Optuna), the search space over dotted run-config fields and the resources of
a trial. Everything is checked before Ray starts. Each trial is `ptycho_dist.sweeps.trial.run_trial`:
its own TorchTrainer with `workers_per_trial` workers running the same worker loop as
`ptycho-dist train`, reporting every epoch to Tune so ASHA can stop bad trials early.

Where things go (storage_path defaults to DIR):
    storage_path/NAME/          the Tune experiment (state for --resume, one directory per trial) and
    storage_path/NAME/runs/ID/  each trial's training run (checkpoints, model bundle), ID = trial id
    DIR/trials.csv              every trial: its values, status, epochs, last and best metric, ...
    DIR/best_config.yaml        the best trial's full RunConfig (a valid --config for train)
    DIR/best/                   the best trial's run files (model.pt, config.yaml, manifest.json, ...)
    DIR/trials.png              the metric per epoch of every trial

Resume: `--resume NAME` restores the experiment with Tuner.restore: finished trials (completed or
stopped by the scheduler) are kept, unfinished and errored ones run again and continue from their
latest training checkpoint, and trials not started yet start. The run config and sweep are read from
the experiment (`ptycho_sweep.yaml`); giving different ones is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from ptycho_dist.cluster.run_files import absolute_location, is_uri, run_location
from ptycho_dist.config import RayConfig
from ptycho_dist.sweeps.results import SweepResult, write_sweep_results
from ptycho_dist.sweeps.sweep_config import SweepConfig, check_resumed_spec, default_sweep_name
from ptycho_torch.config import ConfigError, RunConfig

log = logging.getLogger("ptycho_dist")

SPEC_FILE = "ptycho_sweep.yaml"  # in the experiment directory: the base config and the sweep


# An experiment's state (tuner.pkl) pickles our trainable and callbacks by module path; sweeps started before
# the modules moved (2026-12-07) name these. Resuming such a sweep finds them under their new names.
MOVED_MODULES = {
    "ptycho_dist.tune": "ptycho_dist.sweeps.tuner",
    "ptycho_dist.sweep_trial": "ptycho_dist.sweeps.trial",
    "ptycho_dist.sweep_report": "ptycho_dist.sweeps.report",
    "ptycho_dist.train": "ptycho_dist.training.driver",
    "ptycho_dist.run_files": "ptycho_dist.cluster.run_files",
    "ptycho_torch.sweep_config": "ptycho_dist.sweeps.sweep_config",
    "ptycho_torch.sweep_results": "ptycho_dist.sweeps.results",
    "ptycho_torch.search_space": "ptycho_dist.sweeps.search_space",
}


@contextlib.contextmanager
def modules_under_old_names() -> Iterator[None]:
    """While unpickling an older experiment: each moved module also importable by its old name."""
    added = [old for old in MOVED_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(MOVED_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


# ------------------------------------------------------------------ Tune objects

def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """The Tune search space: one domain per dotted field."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    return {dotted: make[kind](values) for dotted, entry in sweep.space.items() for kind, values in entry.items()}


def has_module(name: str) -> bool:
    """Whether an optional package is importable (patched in tests)."""
    return importlib.util.find_spec(name) is not None


def _check_optuna(sweep: SweepConfig) -> None:
    if sweep.search.name == "optuna" and not has_module("optuna"):
        raise ConfigError("sweep.search: optuna needs the optuna package; pip install 'ptycho-dist[optuna]' "
                          "(or use search: {name: random})")


def search_algorithm(sweep: SweepConfig, concurrency: int) -> Any:
    """Ray's variant generator (random / grid) or OptunaSearch, seeded by search.seed, running at most
    `concurrency` trials at once. (TuneConfig.max_concurrent_trials alone is ignored, with a warning,
    for a variant generator passed as search_alg: its own max_concurrent must be set.)"""
    if sweep.search.name == "optuna":
        _check_optuna(sweep)
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=sweep.search.seed), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.search.seed, max_concurrent=concurrency)


def scheduler(sweep: SweepConfig, base: RunConfig) -> Any:
    """ASHA on the epochs_completed axis, or FIFO. ASHA never stops a trial just for reaching
    max_epochs (stop_last_trials=False), so a finished trial always writes its model bundle."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from ptycho_dist.sweeps.trial import EPOCHS_KEY

    if not sweep.is_asha:
        return FIFOScheduler()
    s = sweep.scheduler
    return ASHAScheduler(time_attr=EPOCHS_KEY, max_t=sweep.epochs_per_trial(base), grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, stop_last_trials=False)


def trial_ray_config(sweep: SweepConfig, ray_config: RayConfig) -> RayConfig:
    """The RayConfig a trial's training run gets (resources per worker; fail fast on start-up)."""
    return RayConfig(cpus_per_worker=sweep.cpus_per_worker, gpus_per_worker=sweep.gpus_per_worker,
                     worker_start_timeout_s=ray_config.worker_start_timeout_s, verbose=ray_config.verbose)


def concurrent_trials(sweep: SweepConfig, plan: Any, resources: Any) -> int:
    """How many trials run at once: sweep.max_concurrent_trials, or as many as the cluster fits; an
    explicit value that does not fit is an error (the extra trials would wait for workers and fail)."""
    from ptycho_dist.cluster.scaling import fit_count

    per_trial = {k: plan.num_workers * v for k, v in plan.resources_per_worker.items() if v > 0}
    fits = fit_count(resources.total, per_trial)
    asked = sweep.max_concurrent_trials
    if asked is None:
        return max(1, fits)
    if asked > fits:
        need = ", ".join(f"{asked * v:g} {k}" for k, v in per_trial.items())
        have = ", ".join(f"{resources.total.get(k, 0.0):g} {k}" for k in per_trial)
        raise ConfigError(f"sweep.max_concurrent_trials: {asked} trials x {plan.num_workers} worker(s) x "
                          f"{plan.resources_per_worker} need {need}, but the Ray cluster has {have}; lower "
                          f"max_concurrent_trials to {max(fits, 1)} (or workers_per_trial / cpus_per_worker)")
    return asked


# ------------------------------------------------------------------ the experiment spec (for --resume)

def _storage(sweep: SweepConfig | None, out_dir: Path, storage_path: str | None) -> str:
    """Where the experiment lives: --storage-path, else the sweep's storage_path, else out_dir."""
    return absolute_location(storage_path or (sweep.storage_path if sweep else None) or str(out_dir))


def _read_spec(experiment: str) -> dict[str, Any] | None:
    """The stored {'base': ..., 'sweep': ...} of an experiment (None when it has none); a damaged spec
    is one ConfigError line naming the file."""
    from ptycho_dist.cluster.run_files import read_run_file
    from ptycho_torch.config.bounded_yaml import load_bounded, yaml_problem

    text = read_run_file(experiment, SPEC_FILE)
    if text is None:
        return None
    where = f"{experiment}/{SPEC_FILE}"
    fix = "restore it from a backup, or start a new sweep with --name"
    try:
        spec = load_bounded(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: is not valid YAML ({yaml_problem(e)}); {fix}") from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), dict) for k in ("base", "sweep")):
        raise ConfigError(f"{where}: damaged (expected the mappings base: and sweep:); {fix}")
    return spec


def stored_base(sweep: SweepConfig | None, out_dir: str | Path, name: str, storage_path: str | None) -> RunConfig | None:
    """The run config the sweep `name` started with (its experiment's SPEC_FILE), or None."""
    stored = _read_spec(run_location(_storage(sweep, Path(out_dir).expanduser().resolve(), storage_path), name))
    return RunConfig.from_dict(stored["base"]) if stored else None


def _resume_spec(experiment: str, name: str, base: RunConfig | None,
                 sweep: SweepConfig | None) -> tuple[RunConfig, SweepConfig]:
    """The stored base config and sweep of `experiment`; a different base or sweep given now is an error."""
    stored = _read_spec(experiment)
    if stored is None:
        raise FileNotFoundError(f"cannot resume: no sweep {name!r} at {experiment} ({SPEC_FILE} missing); "
                                "check --resume, --out and the sweep's storage_path")
    return check_resumed_spec(name, stored, base, sweep)


# ------------------------------------------------------------------ running

def _progress_callbacks(sweep: SweepConfig, full_epochs: int) -> list[Any]:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from ptycho_dist.sweeps.report import ProgressLog

    # the CSV/JSON loggers feed ResultGrid's per-epoch dataframes; added explicitly because
    # TUNE_DISABLE_AUTO_CALLBACK_LOGGERS (quiet mode) would drop them
    return [CSVLoggerCallback(), JsonLoggerCallback(), ProgressLog(sweep.metric, full_epochs)]


def run_sweep(base_config: RunConfig | None, sweep: SweepConfig | None, out_dir: str | Path, *,
              ray_config: RayConfig | None = None, name: str | None = None, resume: bool = False,
              storage_path: str | None = None) -> SweepResult:
    """Run (or with `resume=True` continue) a sweep and write its results into `out_dir`.

    `base_config` is the run config every trial starts from (its data.path is the scan); `sweep` the
    sweep. When resuming, both may be None (the experiment's stored ones are used). `ray_config` says
    where Ray runs (embedded local Ray by default, dashboard on); `name` overrides sweep.name;
    `storage_path` overrides sweep.storage_path (default: `out_dir`). Raises ConfigError (before Ray
    starts, where possible) for a sweep that cannot run.
    """
    from ptycho_dist.cluster.run_files import write_run_file
    from ptycho_dist.cluster.scaling import ClusterResources, check_request, plan_scaling
    from ptycho_dist.cluster.session import ray_session
    from ptycho_torch.training.launcher import with_absolute_data_path

    out_dir = Path(out_dir).expanduser().resolve()
    ray_config = ray_config or RayConfig()
    if resume:
        name = name or (sweep.name if sweep else None)
        if not name:
            raise ConfigError("--resume needs the sweep NAME")
        experiment = run_location(_storage(sweep, out_dir, storage_path), name)
        base, sweep = _resume_spec(experiment, name, base_config, sweep)
    else:
        if base_config is None or sweep is None:
            raise ConfigError("a new sweep needs a run config and a sweep (--config and --sweep)")
        base = with_absolute_data_path(base_config)
        sweep.check_against(base)
        name = name or sweep.name or default_sweep_name()
        experiment = run_location(_storage(sweep, out_dir, storage_path), name)
        if _read_spec(experiment) is not None or (not is_uri(experiment) and Path(experiment).exists()):
            raise ConfigError(f"sweep.name: a sweep {name!r} already exists at {experiment}; continue it with "
                              f"--resume {name} or choose another --name")
    _check_optuna(sweep)
    sweep = dataclasses.replace(sweep, name=name)
    probe = sweep.trial_config(base, {})
    trial_ray = trial_ray_config(sweep, ray_config)
    check_request(probe.trainer, trial_ray)
    if sweep.is_asha and ray_config.include_dashboard is False and not ray_config.address:
        log.warning("the Ray dashboard is off: ASHA's early stopping can hang without it (ray#54305); "
                    "keep ray.include_dashboard on")
    full_epochs = sweep.epochs_per_trial(base)
    spec = {"base": base.to_dict(), "sweep": sweep.to_dict(), "experiment": experiment,
            "worker_start_timeout_s": ray_config.worker_start_timeout_s, "verbose": ray_config.verbose}

    with ray_session(ray_config):
        from ray import tune

        from ptycho_dist.sweeps.trial import trainable, trial_dirname

        resources = ClusterResources.from_ray()
        plan = plan_scaling(probe.trainer, trial_ray, resources)
        concurrency = concurrent_trials(sweep, plan, resources)
        if resume:
            if not tune.Tuner.can_restore(experiment):
                raise FileNotFoundError(f"cannot resume: {experiment} holds no Tune experiment state")
            log.info("resuming sweep %r at %s", name, experiment)
            with modules_under_old_names():
                tuner = tune.Tuner.restore(experiment, trainable=trainable(spec), resume_unfinished=True,
                                           resume_errored=True)
        else:
            write_run_file(experiment, SPEC_FILE, yaml.safe_dump(
                {"base": spec["base"], "sweep": spec["sweep"], "out_dir": str(out_dir)}, sort_keys=False))
            log.info("sweep %r: %s search, %s scheduler, %d trial(s) at once x %d worker(s) x %s; experiment %s",
                     name, sweep.search.name, sweep.scheduler.name, concurrency, plan.num_workers,
                     plan.resources_per_worker, experiment)
            tuner = tune.Tuner(
                trainable(spec), param_space=param_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                    search_alg=search_algorithm(sweep, concurrency), scheduler=scheduler(sweep, base),
                    trial_name_creator=trial_dirname,
                    trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=name, storage_path=experiment.rsplit("/", 1)[0],
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    callbacks=_progress_callbacks(sweep, full_epochs), verbose=1 if ray_config.verbose else 0))
        with modules_under_old_names() if resume else contextlib.nullcontext():  # trials unpickle in fit
            result_grid = tuner.fit()
    return write_results(result_grid, base, sweep, experiment, out_dir)


def write_results(result_grid: Any, base: RunConfig, sweep: SweepConfig, experiment: str,
                  out_dir: Path) -> SweepResult:
    """trials.csv, trials.png, best_config.yaml and best/ in `out_dir` from a Tune ResultGrid
    (ptycho_dist.sweeps.results.write_sweep_results); the result keeps the ResultGrid (`result_grid`)."""
    from ptycho_dist.sweeps.report import collect_trials, copy_run

    records = collect_trials(result_grid, sweep.metric, sweep.mode, sweep.epochs_per_trial(base), experiment)
    result = write_sweep_results(records, base, sweep, experiment, out_dir, copy_run)
    result.result_grid = result_grid
    return result
