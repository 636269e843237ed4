"""What runs inside one Ray Tune trial of `ptycho-dist tune`: the trial's "driver function".

Each trial builds its full RunConfig (the sweep's base config + the sampled dotted overrides, see
`SweepConfig.trial_config`) and trains it with `ptycho_dist.training.driver.fit_distributed` — the same
TorchTrainer, worker loop, checkpoints and run directory as `ptycho-dist train` — with its own
ScalingConfig (workers_per_trial workers). Ray Train reports each epoch's metrics to Tune through
`EpochReportCallback` (Tune's `TuneReportCallback`, plus an `epochs_completed` counter that ASHA uses as
its time axis), so the scheduler can stop a bad trial after any epoch.

Layout under the experiment directory `storage_path/NAME/`:
    <trial_id>/          Tune's trial directory (result.json, progress.csv, params.json, error.txt)
    runs/<trial_id>/     the trial's training run (Ray checkpoints, config.yaml, model.pt, ...), named
                         from the trial id

Resources: the driver function itself asks Tune for 0 CPUs and a little `memory` (a resource every
Ray node has), so it does not take a CPU slot from the training workers; the workers reserve
`cpus_per_worker` CPUs each through the TorchTrainer's own placement group.

Restarts: when the trial's run directory already exists (the trial errored and is retried, or the
sweep driver was killed and the sweep resumed), the run continues from its latest Ray checkpoint.
"""

from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from ptycho_dist.sweeps.results import EPOCHS_KEY

RUNS_DIR = "runs"  # training runs of the trials, under the experiment directory
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes of Ray's `memory` resource asked for each trial's driver fn


class EpochReportCallback(TuneReportCallback):
    """Propagates each epoch's metrics (and the checkpoint path) from Ray Train to Tune, adding
    `epochs_completed` = epoch + 1: a time axis that keeps counting when a trial is continued from a
    checkpoint, unlike Tune's training_iteration which restarts at 1."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        rows = [{**m, EPOCHS_KEY: int(m.get("epoch", -1)) + 1} for m in metrics]
        super().after_report(run_context, rows, checkpoint)


def trial_dirname(trial: Any) -> str:
    """Tune trial directory name (and display name) = the trial id, e.g. 61834_00002."""
    return str(trial.trial_id)


def run_location(experiment: str, trial_id: str) -> str:
    """The training run directory (path or URI) of a trial."""
    from ptycho_dist.cluster.run_files import run_location as join

    return join(join(experiment, RUNS_DIR), trial_id)


def plain(value: Any) -> Any:
    """numpy scalars (what Tune's samplers may return) -> Python numbers, so configs type-check."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def run_trial(params: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """Tune function trainable: train one trial's configuration with Ray Train.

    `params` are the sampled dotted overrides; `spec` (put in the object store by
    `tune.with_parameters`) holds: base (RunConfig dict), sweep (SweepConfig dict), experiment (path or
    URI), worker_start_timeout_s and verbose.
    """
    from ray import tune

    from ptycho_dist.cluster.run_files import CONFIG_FILE, read_run_file
    from ptycho_dist.config import RayConfig
    from ptycho_dist.sweeps.sweep_config import SweepConfig
    from ptycho_dist.training.driver import fit_distributed
    from ptycho_torch.config import RunConfig

    trial_id = tune.get_context().get_trial_id()
    sweep = SweepConfig.from_dict(spec["sweep"])
    config = sweep.trial_config(RunConfig.from_dict(spec["base"]), {k: plain(v) for k, v in params.items()})
    location = run_location(spec["experiment"], trial_id)
    ray_config = RayConfig(storage_path=location.rsplit("/", 1)[0], name=trial_id,
                           cpus_per_worker=sweep.cpus_per_worker, gpus_per_worker=sweep.gpus_per_worker,
                           worker_start_timeout_s=float(spec["worker_start_timeout_s"]),
                           verbose=bool(spec.get("verbose", False)))
    resume = read_run_file(location, CONFIG_FILE) is not None
    fit_distributed(config, ray_config, resume=resume, ray_callbacks=[EpochReportCallback()])


def trainable(spec: dict[str, Any]) -> Any:
    """`run_trial` with its spec bound and its resources declared: the object Tuner(...) and
    Tuner.restore(...) must both be given."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                               tune.PlacementGroupFactory([{"CPU": 0, "memory": TRIAL_DRIVER_MEMORY}]))
