"""The sweep file of `ptycho-dist tune` (SweepConfig, docs/sweeps.md) as plain data, and its checks.

Frozen dataclasses validated on creation with messages naming the key, like ptycho_torch.config
(they reuse its checking machinery); the search space is checked by ptycho_dist.sweeps.search_space.
`check_resumed_spec` compares the run config and sweep given to `--resume` with the ones the sweep
started with. Nothing here needs Ray: ptycho_dist.sweeps.tuner turns a SweepConfig into Ray Tune's objects.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional

from ptycho_dist.sweeps.search_space import SWEEP_METRICS, metric_problems, normalise_space, space_problems
from ptycho_torch.config import ConfigError, ConfigSection, RunConfig, config_field, read_yaml_mapping


@dataclass(frozen=True)
class SweepScheduler(ConfigSection):
    """Which trial scheduler stops bad trials (the `scheduler:` mapping of a sweep file)."""

    section: typing.ClassVar[str] = "sweep.scheduler"

    name: Literal["asha", "fifo"] = config_field(
        "asha", "asha = asynchronous successive halving (stops bad trials early); fifo = run every trial to the end")
    max_epochs: Optional[int] = config_field(
        None, "asha: epochs of a trial that is never stopped; sets trainer.max_epochs of every trial "
              "(None = trainer.max_epochs of the run config)")
    grace_period: int = config_field(1, "asha: epochs every trial runs before it can be stopped")
    reduction_factor: float = config_field(
        4.0, "asha: rungs at grace_period * reduction_factor^k epochs; at each rung only the best "
             "1/reduction_factor of the trials seen there continue")

    def _check(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 1:
            self._fail("max_epochs", f"got {self.max_epochs}; must be >= 1 or null")
        if self.grace_period < 1:
            self._fail("grace_period", f"got {self.grace_period}; must be >= 1")
        if self.max_epochs is not None and self.grace_period > self.max_epochs:
            self._fail("grace_period", f"got {self.grace_period}; must be <= max_epochs ({self.max_epochs})")
        if self.reduction_factor <= 1:
            self._fail("reduction_factor", f"got {self.reduction_factor}; must be > 1 (e.g. 2, 3 or 4)")


@dataclass(frozen=True)
class SweepSearch(ConfigSection):
    """How trial configurations are chosen (the `search:` mapping of a sweep file)."""

    section: typing.ClassVar[str] = "sweep.search"

    name: Literal["random", "grid", "optuna"] = config_field(
        "random", "random / grid = Ray's variant generator: grid entries expanded exhaustively, distributions "
                  "sampled once per grid point and repeat (the two names are synonyms); optuna = Optuna's TPE sampler "
                  "(pip install 'ptycho-dist[optuna]'; no grid entries)")
    seed: Optional[int] = config_field(None, "seed of the random sampling / of Optuna (None = not reproducible)")


@dataclass(frozen=True)
class SweepConfig(ConfigSection):
    """A hyper-parameter sweep over run-config fields (`ptycho-dist tune --sweep SWEEP.yaml`).

    `space` maps dotted config field names to one search entry each: `{grid: [...]}`,
    `{choice: [...]}`, `{uniform: [low, high]}`, `{loguniform: [low, high]}` or `{randint: [low, high)}`.
    Checks that need the run config (value types, metric availability) are in `check_against`.
    """

    section: typing.ClassVar[str] = "sweep"

    metric: str = config_field("val_loss", "metric that ranks trials (and that ASHA compares): one the module "
                                           "logs every epoch, e.g. val_loss, val_nll, train_loss")
    mode: Literal["min", "max"] = config_field("min", "whether the metric should go down (min) or up (max)")
    num_samples: int = config_field(1, "repeats of the grid (random/grid search) or number of trials (optuna)")
    scheduler: Any = config_field(None, "trial scheduler: {name: asha|fifo, max_epochs, grace_period, "
                                        "reduction_factor} (None = asha with defaults)")
    search: Any = config_field(None, "search algorithm: {name: random|grid|optuna, seed} (None = random)")
    space: Any = config_field(None, "dotted field name -> {grid|choice: [values]} or "
                                    "{uniform|loguniform|randint: [low, high]}")
    workers_per_trial: int = config_field(1, "Ray Train workers of each trial (sets trainer.devices; "
                                             "trainer.num_nodes = 1)")
    cpus_per_worker: float = config_field(1.0, "CPUs reserved by each training worker")
    gpus_per_worker: float = config_field(1.0, "GPUs reserved by each worker when the accelerator is a GPU")
    max_concurrent_trials: Optional[int] = config_field(
        None, "trials running at once (None = as many as the cluster's CPUs/GPUs fit)")
    max_failures: int = config_field(0, "times an errored trial is retried (it continues from its latest "
                                        "checkpoint); -1 = unlimited")
    storage_path: Optional[str] = config_field(None, "where the Ray Tune experiment and every trial's "
                                                     "training run go: a path or URI (None = the --out directory)")
    name: Optional[str] = config_field(None, "sweep name: the experiment directory under storage_path; "
                                             "--name overrides (None = sweep-<timestamp>)")

    def _subsection(self, key: str, kind: type, example: str) -> Any:
        """The `key:` entry as a `kind` section: None -> defaults, a bare name -> {name: ...}."""
        value = getattr(self, key)
        if value is None or isinstance(value, str):
            value = {} if value is None else {"name": value}
        if isinstance(value, dict):
            value = kind.from_dict(value)
        if not isinstance(value, kind):
            self._fail(key, f"got {value!r}; expected a mapping such as {example}")
        return value

    def _check(self) -> None:
        scheduler = self._subsection("scheduler", SweepScheduler, "{name: asha, max_epochs: 8}")
        search = self._subsection("search", SweepSearch, "{name: grid}")
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "search", search)
        object.__setattr__(self, "space", normalise_space(self.space))

        if self.metric not in SWEEP_METRICS:
            self._fail("metric", f"got {self.metric!r}; the module logs {', '.join(SWEEP_METRICS)} "
                                 "(val_* need data.val_fraction > 0, *_mae / *_tv a non-zero loss weight)")
        if self.num_samples < 1:
            self._fail("num_samples", f"got {self.num_samples}; must be >= 1")
        if self.workers_per_trial < 1:
            self._fail("workers_per_trial", f"got {self.workers_per_trial}; must be >= 1")
        if self.cpus_per_worker <= 0:
            self._fail("cpus_per_worker", f"got {self.cpus_per_worker}; must be > 0")
        if self.gpus_per_worker < 0:
            self._fail("gpus_per_worker", f"got {self.gpus_per_worker}; must be >= 0")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            self._fail("max_concurrent_trials", f"got {self.max_concurrent_trials}; must be >= 1 or null")
        if self.max_failures < -1:
            self._fail("max_failures", f"got {self.max_failures}; must be >= 0 (or -1 = unlimited)")
        if self.name is not None and ("/" in self.name or self.name in ("", ".", "..")):
            self._fail("name", f"got {self.name!r}; must be a plain directory name (no '/')")
        for dotted, entry in self.space.items():
            (kind,) = entry
            if search.name == "optuna" and kind == "grid":
                self._fail(f"space.{dotted}", "grid is not supported with search optuna (Optuna samples "
                                              "points); use {choice: [...]} or search: {name: grid}")
            if dotted == "trainer.max_epochs" and scheduler.name == "asha":
                self._fail(f"space.{dotted}", "ASHA sets trainer.max_epochs of every trial to scheduler.max_epochs; "
                                              "search it with scheduler: {name: fifo}")

    # ---------------------------------------------------------------- with the run config

    @property
    def is_asha(self) -> bool:
        return self.scheduler.name == "asha"

    def epochs_per_trial(self, base: RunConfig) -> int:
        """Epochs of a trial that runs to the end: scheduler.max_epochs (ASHA) or trainer.max_epochs."""
        if self.is_asha and self.scheduler.max_epochs is not None:
            return self.scheduler.max_epochs
        return base.trainer.max_epochs

    def trial_config(self, base: RunConfig, params: dict[str, Any]) -> RunConfig:
        """The full RunConfig of one trial: `base` + the sampled dotted `params`, with
        trainer.devices = workers_per_trial, trainer.num_nodes = 1 and, under ASHA,
        trainer.max_epochs = scheduler.max_epochs."""
        from ptycho_torch.config import apply_overrides

        fixed: dict[str, Any] = {"trainer.devices": self.workers_per_trial, "trainer.num_nodes": 1}
        if self.is_asha:
            fixed["trainer.max_epochs"] = self.epochs_per_trial(base)
        return apply_overrides(base, {**params, **fixed})

    def check_against(self, base: RunConfig) -> None:
        """Check the sweep against the run config before any trial starts; raise one ConfigError that
        lists every problem: value types and ranges (search_space.space_problems, through
        `trial_config`), metric availability and ASHA's epochs."""
        problems: list[str] = []
        try:
            self.trial_config(base, {})
        except ConfigError as e:
            problems.append(f"sweep.workers_per_trial: {e}")
        if not problems:
            problems += space_problems(self.space, lambda params: self.trial_config(base, params))
        problems += metric_problems(self.metric, self.space, base)
        if self.is_asha and self.scheduler.grace_period > self.epochs_per_trial(base):
            problems.append(f"sweep.scheduler.grace_period: {self.scheduler.grace_period} epochs is more than the "
                            f"{self.epochs_per_trial(base)} epochs of a trial (trainer.max_epochs); lower grace_period "
                            "or set scheduler.max_epochs")
        if problems:
            raise ConfigError("invalid sweep:\n  - " + "\n  - ".join(problems))


def sweep_config_from_dict(data: dict[str, Any] | None, where: str = "sweep") -> SweepConfig:
    """A SweepConfig from a mapping (a parsed sweep YAML); errors name the key."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sweep keys, got {type(data).__name__}")
    return SweepConfig.from_dict(data or {})


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and check a sweep YAML file (see docs/sweeps.md)."""
    data = read_yaml_mapping(path, "sweep file")
    try:
        return sweep_config_from_dict(data, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def default_sweep_name(now: datetime | None = None) -> str:
    """sweep-YYYYmmdd-HHMMSS."""
    return (now or datetime.now()).strftime("sweep-%Y%m%d-%H%M%S")


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k} ({y!r} in the sweep, {x!r} now)")
    return out


def check_resumed_spec(name: str, stored: dict[str, Any], base: RunConfig | None,
                       sweep: SweepConfig | None) -> tuple[RunConfig, SweepConfig]:
    """The base config and sweep the sweep `name` started with (`stored`: {'base': ..., 'sweep': ...},
    as saved in its experiment); a different base or sweep given now (None = not given) is an error."""
    stored_base, stored_sweep = RunConfig.from_dict(stored["base"]), SweepConfig.from_dict(stored["sweep"])
    for what, now, then, flag in (("run config", base, stored_base, "--config/--data"),
                                  ("sweep", sweep, stored_sweep, "--sweep")):
        if now is None:
            continue
        ignore = {"name", "storage_path"} if what == "sweep" else set()
        diff = _differences({k: v for k, v in now.to_dict().items() if k not in ignore},
                            {k: v for k, v in then.to_dict().items() if k not in ignore})
        if diff:
            raise ConfigError(f"--resume {name}: the {what} differs from the one the sweep started with: "
                              f"{'; '.join(diff[:8])}; drop {flag} to resume with the stored one, or start a "
                              "new sweep with --name")
    return stored_base, stored_sweep
