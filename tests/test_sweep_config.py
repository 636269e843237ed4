"""Sweep files (SweepConfig) and everything `ptycho-dist tune` checks before Ray starts: unknown keys
and fields, value types and ranges, metric availability, search/space conflicts, resources, resume
consistency; plus the results table logic. Fast: no Ray instance is started."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_config

from ptycho_dist.cluster.scaling import ClusterResources
from ptycho_dist.sweeps import tuner as dist_tune
from ptycho_dist.sweeps.results import TrialRecord, choose_best, format_table, write_trials_csv
from ptycho_dist.sweeps.sweep_config import SweepConfig, load_sweep_config, sweep_config_from_dict
from ptycho_dist.sweeps.tuner import SPEC_FILE, concurrent_trials, param_space, run_sweep
from ptycho_torch.config import ConfigError, RunConfig

SPEC_EXAMPLE = """
metric: val_loss            # any logged metric; mode min|max
mode: min
num_samples: 1              # repeats of the grid / samples of a random search
scheduler: {name: asha, max_epochs: 8, grace_period: 1}   # or {name: fifo}
search: {name: grid}        # grid | random | optuna
workers_per_trial: 1
max_concurrent_trials: 2
space:
  trainer.gradient_clip_val: {grid: [0.5, 1.0]}
  trainer.accumulate_grad_batches: {grid: [1, 2]}
  optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}   # also choice, uniform, randint
"""
CLIP = {"trainer.gradient_clip_val": {"grid": [0.5, 1.0]}}


def _sweep(**keys) -> SweepConfig:
    return sweep_config_from_dict({"space": CLIP, **keys})


def _error(data: dict, base: RunConfig | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        sweep = sweep_config_from_dict(data)
        sweep.check_against(base or RunConfig())
    return str(e.value)


def test_spec_example_loads_with_defaults(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SPEC_EXAMPLE)
    sweep = load_sweep_config(path)
    assert (sweep.metric, sweep.mode, sweep.num_samples, sweep.workers_per_trial) == ("val_loss", "min", 1, 1)
    assert (sweep.scheduler.name, sweep.scheduler.max_epochs, sweep.scheduler.grace_period) == ("asha", 8, 1)
    assert sweep.scheduler.reduction_factor == 4.0 and sweep.search.name == "grid"
    assert sweep.space["trainer.accumulate_grad_batches"] == {"grid": [1, 2]}
    assert sweep.max_concurrent_trials == 2 and sweep.cpus_per_worker == 1.0 and sweep.storage_path is None
    sweep.check_against(RunConfig())
    space = param_space(sweep)  # a grid search that also samples a distribution at every grid point
    assert space["trainer.accumulate_grad_batches"] == {"grid_search": [1, 2]}
    assert type(space["optimizer.learning_rate"]).__name__ == "Float"
    assert SweepConfig.from_dict(sweep.to_dict()) == sweep  # stored in the experiment for --resume
    # defaults: asha, random search, val_loss/min
    plain = _sweep()
    assert (plain.scheduler.name, plain.search.name, plain.metric, plain.mode) == ("asha", "random", "val_loss", "min")
    assert sweep_config_from_dict({"space": CLIP, "scheduler": "fifo", "search": "random"}).scheduler.name == "fifo"


def test_trial_config_sets_workers_and_asha_epochs():
    base = RunConfig()
    sweep = _sweep(workers_per_trial=2, scheduler={"name": "asha", "max_epochs": 5})
    config = sweep.trial_config(base, {"trainer.gradient_clip_val": 0.5, "model.n_filters_scale": 0.5})
    assert (config.trainer.devices, config.trainer.num_nodes, config.trainer.max_epochs) == (2, 1, 5)
    assert config.trainer.gradient_clip_val == 0.5 and config.model.n_filters_scale == 0.5
    fifo = _sweep(scheduler={"name": "fifo"}, space={"trainer.max_epochs": {"grid": [2, 3]}})
    assert fifo.trial_config(base, {}).trainer.max_epochs == base.trainer.max_epochs
    assert fifo.trial_config(base, {"trainer.max_epochs": 3}).trainer.max_epochs == 3
    assert _sweep(scheduler={"name": "asha"}).epochs_per_trial(base) == base.trainer.max_epochs


@pytest.mark.parametrize("data, expected", [
    # unknown field names: the field and the valid ones of its section
    ({"space": {"optimizer.learnin_rate": {"grid": [1e-3]}}},
     ["sweep.space.optimizer.learnin_rate", "unknown field 'learnin_rate'", "learning_rate", "warmup_epochs"]),
    ({"space": {"modle.N": {"grid": [32]}}}, ["sweep.space.modle.N", "data, model, training"]),
    ({"space": {"learning_rate": {"grid": [1e-3]}}}, ["sweep.space.learning_rate", "section.field"]),
    # unknown keys in the sweep file and its mappings
    ({"space": CLIP, "num_trials": 4}, ["sweep: unknown key(s) num_trials", "num_samples"]),
    ({"space": CLIP, "scheduler": {"name": "asha", "grace": 1}}, ["sweep.scheduler: unknown key(s) grace",
                                                                  "grace_period"]),
    ({"space": CLIP, "search": {"name": "bayes"}}, ["sweep.search.name", "'bayes'", "'optuna'"]),
    ({"space": CLIP, "scheduler": {"name": "pbt"}}, ["sweep.scheduler.name", "'asha'", "'fifo'"]),
    # entries
    ({"space": {"trainer.accumulate_grad_batches": 2}}, ["sweep.space.trainer.accumulate_grad_batches", "exactly one of grid"]),
    ({"space": {"trainer.accumulate_grad_batches": {"values": [1, 2]}}}, ["unknown kind 'values'"]),
    ({"space": {"trainer.accumulate_grad_batches": {"grid": []}}}, ["grid needs a non-empty list"]),
    ({"space": {"optimizer.learning_rate": {"uniform": [1e-3]}}}, ["uniform needs [low, high]"]),
    ({"space": {}}, ["sweep.space", "non-empty mapping"]),
    ({}, ["sweep.space", "non-empty mapping"]),
    # impossible ranges
    ({"space": {"optimizer.learning_rate": {"uniform": [1e-2, 1e-3]}}}, ["uniform [0.01, 0.001]: low must be < high"]),
    ({"space": {"optimizer.learning_rate": {"loguniform": [0.0, 1e-2]}}}, ["loguniform", "low must be > 0"]),
    ({"space": {"optimizer.learning_rate": {"loguniform": [-1e-3, 1e-2]}}}, ["loguniform", "low must be > 0"]),
    ({"space": {"trainer.accumulate_grad_batches": {"randint": [3, 3]}}}, ["randint [3, 3]", "high is exclusive"]),
    ({"space": {"trainer.accumulate_grad_batches": {"randint": [1.5, 3]}}}, ["randint needs integer bounds"]),
    # search / space conflicts
    ({"space": CLIP, "search": {"name": "optuna"}}, ["sweep.space.trainer.gradient_clip_val",
                                                     "grid is not supported with search optuna"]),
    ({"space": {"trainer.max_epochs": {"grid": [2, 4]}}}, ["sweep.space.trainer.max_epochs", "scheduler.max_epochs"]),
    ({"space": {"trainer.devices": {"grid": [1, 2]}}}, ["sweep.space.trainer.devices", "workers_per_trial"]),
    ({"space": {"data.path": {"grid": ["a.npz"]}}}, ["sweep.space.data.path", "--data"]),
    # scalar keys
    ({"space": CLIP, "metric": "val_acc"}, ["sweep.metric", "'val_acc'", "val_loss", "train_nll"]),
    ({"space": CLIP, "mode": "minimize"}, ["sweep.mode", "'min'", "'max'"]),
    ({"space": CLIP, "num_samples": 0}, ["sweep.num_samples", "must be >= 1"]),
    ({"space": CLIP, "workers_per_trial": 0}, ["sweep.workers_per_trial"]),
    ({"space": CLIP, "max_concurrent_trials": 0}, ["sweep.max_concurrent_trials"]),
    ({"space": CLIP, "name": "a/b"}, ["sweep.name", "plain directory name"]),
    ({"space": CLIP, "scheduler": {"max_epochs": 2, "grace_period": 3}}, ["sweep.scheduler.grace_period",
                                                                         "max_epochs (2)"]),
    ({"space": CLIP, "scheduler": {"reduction_factor": 1}}, ["sweep.scheduler.reduction_factor", "> 1"]),
])
def test_bad_sweep_files_name_the_problem(data, expected):
    message = _error(data)
    for text in expected:
        assert text in message, (text, message)


@pytest.mark.parametrize("space, expected", [
    # each grid/choice value is type-checked by building the trial's RunConfig
    ({"trainer.accumulate_grad_batches": {"grid": [1, 2.5]}}, ["sweep.space.trainer.accumulate_grad_batches: grid value 2.5",
                                                      "expected an integer"]),
    ({"optimizer.scheduler": {"choice": ["Default", "Cosine"]}}, ["choice value 'Cosine'", "'WarmupCosine'"]),
    ({"trainer.gradient_clip_val": {"grid": [0.5, -1.0]}}, ["grid value -1.0", "must be > 0"]),
    ({"model.N": {"grid": [32, 48]}}, ["sweep.space.model.N: grid value 48", "32, 64, 128"]),
    ({"training.batch_size": {"grid": ["big"]}}, ["grid value 'big'", "expected an integer"]),
    # ranges: both ends and a non-integer sample
    ({"trainer.accumulate_grad_batches": {"uniform": [1, 4]}}, ["an integer field: use randint or grid"]),
    ({"optimizer.learning_rate": {"uniform": [-1.0, 1.0]}}, ["optimizer.learning_rate", "must be > 0"]),
    ({"data.val_fraction": {"uniform": [0.1, 1.0]}}, ["data.val_fraction", "[0, 1)"]),
    ({"trainer.accumulate_grad_batches": {"randint": [0, 3]}}, ["randint [0, 3] sample 0", "must be >= 1"]),
    # several problems are reported at once
    ({"trainer.accumulate_grad_batches": {"grid": [0]}, "optimizer.learning_rate": {"grid": [-1.0]}},
     ["invalid sweep:", "trainer.accumulate_grad_batches", "optimizer.learning_rate"]),
])
def test_values_are_type_checked_against_the_run_config(space, expected):
    message = _error({"space": space})
    for text in expected:
        assert text in message, (text, message)


def test_combinations_of_grid_values_are_checked():
    base = RunConfig.from_dict({"dataloader": {"num_workers": 2}})
    space = {"dataloader.num_workers": {"grid": [2, 0]}, "dataloader.persistent_workers": {"grid": [True]}}
    message = _error({"space": space}, base)
    assert "the combination" in message and "persistent_workers" in message


def test_metric_must_be_logged_by_every_trial():
    assert "data.val_fraction is 0" in _error({"space": CLIP}, RunConfig.from_dict({"data": {"val_fraction": 0.0}}))
    assert "val_loss needs validation" in _error(
        {"space": {**CLIP, "data.val_fraction": {"grid": [0.0, 0.2]}}})
    sweep_config_from_dict({"space": CLIP, "metric": "train_loss"}).check_against(
        RunConfig.from_dict({"data": {"val_fraction": 0.0}}))
    assert "training.mae_weight > 0" in _error({"space": CLIP, "metric": "val_mae"})
    sweep_config_from_dict({"space": CLIP, "metric": "val_mae"}).check_against(
        RunConfig.from_dict({"training": {"mae_weight": 0.1}}))
    assert "grace_period: 3 epochs is more than the 2 epochs" in _error(
        {"space": CLIP, "scheduler": {"grace_period": 3}}, RunConfig.from_dict({"trainer": {"max_epochs": 2}}))


def test_sweep_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {trainer.accumulate_grad_batches: {grid: [1, 2]}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_sweep_config(bad)
    bad.write_text("space: {optimizer.lr: {grid: [1]}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: sweep\.space\.optimizer\.lr: unknown field"):
        load_sweep_config(bad)


def test_param_space_maps_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = param_space(sweep_config_from_dict({"space": {
        "trainer.accumulate_grad_batches": {"grid": [1, 2]}, "optimizer.scheduler": {"choice": ["Default", "Exponential"]},
        "trainer.gradient_clip_val": {"uniform": [0.5, 2.0]},
        "optimizer.learning_rate": {"loguniform": [1e-4, 1e-2]}, "training.batch_size": {"randint": [8, 33]}}}))
    assert space["trainer.accumulate_grad_batches"] == {"grid_search": [1, 2]}
    assert isinstance(space["optimizer.scheduler"], Categorical)
    assert space["optimizer.scheduler"].categories == ["Default", "Exponential"]
    assert isinstance(space["trainer.gradient_clip_val"], Float)
    assert (space["trainer.gradient_clip_val"].lower, space["trainer.gradient_clip_val"].upper) == (0.5, 2.0)
    assert isinstance(space["optimizer.learning_rate"].sampler, Float._LogUniform)
    assert isinstance(space["training.batch_size"], Integer)
    assert (space["training.batch_size"].lower, space["training.batch_size"].upper) == (8, 33)


def test_concurrency_fits_the_cluster():
    plan = SimpleNamespace(num_workers=2, resources_per_worker={"CPU": 1.0})
    two_cpus, eight = ClusterResources.single_node(2), ClusterResources.single_node(8)
    assert concurrent_trials(_sweep(), plan, eight) == 4
    assert concurrent_trials(_sweep(), plan, two_cpus) == 1
    assert concurrent_trials(_sweep(max_concurrent_trials=3), plan, eight) == 3
    with pytest.raises(ConfigError, match=r"sweep.max_concurrent_trials: 3 trials .* need 6 CPU, but the Ray "
                                          r"cluster has 2 CPU; lower max_concurrent_trials to 1"):
        concurrent_trials(_sweep(max_concurrent_trials=3), plan, two_cpus)
    gpu_plan = SimpleNamespace(num_workers=1, resources_per_worker={"CPU": 1.0, "GPU": 1.0})
    assert concurrent_trials(_sweep(), gpu_plan, ClusterResources.single_node(16, gpus=2)) == 2


# ------------------------------------------------------------------ checks run_sweep makes before Ray starts

@pytest.fixture()
def no_ray(monkeypatch):
    """Fail the test if anything tries to start Ray."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start for this check")

    monkeypatch.setattr(ray, "init", refuse)


def test_optuna_missing_gives_install_hint(no_ray, tiny_scan, monkeypatch, tmp_path):
    monkeypatch.setattr(dist_tune, "has_module", lambda name: False)
    sweep = sweep_config_from_dict({"search": {"name": "optuna"},
                                    "space": {"optimizer.learning_rate": {"loguniform": [1e-4, 1e-2]}}})
    with pytest.raises(ConfigError, match=r"pip install 'ptycho-dist\[optuna\]'"):
        run_sweep(tiny_config(tiny_scan), sweep, tmp_path / "out")


def test_new_sweep_needs_an_existing_scan_and_a_fresh_name(no_ray, tiny_scan, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        run_sweep(tiny_config(tmp_path / "missing.npz"), _sweep(), tmp_path / "out")
    with pytest.raises(ConfigError, match="data.path: no scan file"):
        run_sweep(RunConfig(), _sweep(), tmp_path / "out")
    (tmp_path / "out" / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="a sweep 'taken' already exists .* --resume taken"):
        run_sweep(tiny_config(tiny_scan), _sweep(), tmp_path / "out", name="taken")


def test_resume_checks_the_stored_sweep(no_ray, tiny_scan, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="cannot resume: no sweep 'gone'"):
        run_sweep(None, None, out, name="gone", resume=True)
    base, sweep = tiny_config(tiny_scan), _sweep()
    (out / "s1").mkdir(parents=True)
    (out / "s1" / SPEC_FILE).write_text(yaml.safe_dump({"base": base.to_dict(), "sweep": sweep.to_dict()}))
    changed = tiny_config(tiny_scan, **{"optimizer.learning_rate": 0.5})
    with pytest.raises(ConfigError, match=r"--resume s1: the run config differs .*optimizer.learning_rate"):
        run_sweep(changed, None, out, name="s1", resume=True)
    with pytest.raises(ConfigError, match=r"the sweep differs .*metric"):
        run_sweep(None, _sweep(metric="train_loss"), out, name="s1", resume=True)


def test_resume_with_data_alone_keeps_the_stored_run_config(no_ray, tiny_scan, small_scan, tmp_path):
    """`--resume NAME --data SCAN` (CLI and pd.tune, one code path): the stored base config with that
    scan, so the same scan resumes and another one is refused as a changed run config."""
    import ptycho_dist as pd

    out = tmp_path / "out"
    base = tiny_config(tiny_scan, **{"optimizer.learning_rate": 0.5, "data.path": str(tiny_scan.resolve())})
    (out / "s1").mkdir(parents=True)
    (out / "s1" / SPEC_FILE).write_text(yaml.safe_dump({"base": base.to_dict(), "sweep": _sweep().to_dict()}))
    with pytest.raises(AssertionError, match="Ray must not start"):  # passed every check, then Ray would start
        pd.tune(None, out, data=tiny_scan, resume="s1")
    with pytest.raises(ConfigError, match=r"the run config differs .*data.path"):
        pd.tune(None, out, data=small_scan, resume="s1")


def test_cli_reports_one_line_and_exit_status_2(no_ray, tiny_scan, tmp_path, capsys):
    from ptycho_dist.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("space: {trainer.accumulate_grad_batches: {grid: [1, 2.5]}}\n")
    code = main(["tune", "--sweep", str(sweep), "--data", str(tiny_scan), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: invalid sweep:") and "grid value 2.5" in err
    assert main(["tune", "--data", str(tiny_scan), "--out", str(tmp_path / "out")]) == 2
    assert "tune needs --sweep" in capsys.readouterr().err
    assert main(["tune", "--out", str(tmp_path / "out"), "--resume", "nothing"]) == 2
    assert "cannot resume" in capsys.readouterr().err


# ------------------------------------------------------------------ results table

def _record(trial_id: str, status: str, last: float, epochs: int = 3, best: float | None = None) -> TrialRecord:
    return TrialRecord(trial_id, {"trainer.accumulate_grad_batches": int(trial_id[-1])}, status, epochs, last,
                       last if best is None else best, epochs < 3, 10.0, f"/runs/{trial_id}",
                       "FloatingPointError: loss became nan" if status == "error" else "",
                       [(e + 1, last) for e in range(epochs)])


def test_best_is_the_completed_trial_with_the_best_last_value(tmp_path):
    records = [_record("t_1", "completed", 5.0, best=1.0), _record("t_2", "completed", 4.0),
               _record("t_3", "stopped", 1.0, epochs=1), _record("t_4", "error", math.nan, epochs=0)]
    assert choose_best(records, "min").trial_id == "t_2"  # stopped/errored trials have no full model
    assert choose_best(records, "max").trial_id == "t_1"
    assert choose_best(records[2:], "min") is None
    table = format_table(records, ["trainer.accumulate_grad_batches"], "val_loss", "min", records[1])
    lines = table.splitlines()
    assert "accumulate_grad_batches" in lines[0] and lines[1].startswith("*") and "t_2" in lines[1]
    assert lines[0].split()[-1] == "error" and "FloatingPointError: loss became nan" in table
    path = write_trials_csv(records, ["trainer.accumulate_grad_batches"], "val_loss", tmp_path / "trials.csv")
    text = Path(path).read_text().splitlines()
    assert text[0] == ("trial_id,status,trainer.accumulate_grad_batches,epochs,stopped_early,last_val_loss,best_val_loss,"
                       "seconds,run_dir,error")
    assert text[3].startswith("t_3,stopped,3,1,true,1,1,")


def test_docs_list_every_sweep_key_with_its_default():
    from dataclasses import MISSING, fields

    from ptycho_dist.sweeps.sweep_config import SweepScheduler, SweepSearch

    page = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip().strip("`")
            for line in page.splitlines() if line.startswith("| `")}
    for cls, prefix in ((SweepConfig, ""), (SweepScheduler, "scheduler."), (SweepSearch, "search.")):
        for f in fields(cls):
            if f.name in ("scheduler", "search"):
                continue
            key = prefix + f.name
            assert key in rows, f"docs/sweeps.md does not document {key}"
            default = f.default if f.default is not MISSING else None
            if key != "space":
                assert rows[key] == ("null" if default is None else str(default)), (key, rows[key], default)


def test_trial_records_from_a_result_grid_without_ray(tmp_path):
    """collect_trials reads Ray's get_dataframe() (last result) and get_dataframe(filter_metric,
    filter_mode) (best result); a trial whose last result is not `done` (Tune still ran it) is
    unfinished, one that raised is an error."""
    import pandas as pd

    from ptycho_dist.sweeps.report import collect_trials

    curves = {"t_1": [3.0, 2.0, 2.5], "t_2": [4.0], "t_3": [5.0, 1.0]}
    frames = {t: pd.DataFrame({"epochs_completed": range(1, len(v) + 1), "val_loss": v, "trial_id": t,
                               "time_total_s": 1.5}) for t, v in curves.items()}

    class Grid:
        def get_dataframe(self, filter_metric=None, filter_mode=None):
            pick = (lambda f: f.loc[f[filter_metric].idxmin()]) if filter_metric else (lambda f: f.iloc[-1])
            return pd.DataFrame([pick(f) for f in frames.values()])

        def __iter__(self):
            for t in ("t_4", "t_1", "t_2", "t_3"):
                # Result.metrics: the trial's last result, Tune's `done` True once it ended (t_3 still ran)
                yield SimpleNamespace(path=str(tmp_path / t), config={"trainer.accumulate_grad_batches": int(t[-1])},
                                      error=RuntimeError("boom\nValueError: bad") if t == "t_4" else None,
                                      metrics={"trial_id": t, "done": t in ("t_1", "t_2")},
                                      metrics_dataframe=frames.get(t))

    records = collect_trials(Grid(), "val_loss", "min", 3, str(tmp_path / "exp"))
    by_id = {r.trial_id: r for r in records}
    assert [r.trial_id for r in records] == ["t_1", "t_2", "t_3", "t_4"]
    assert (by_id["t_1"].status, by_id["t_1"].last_value, by_id["t_1"].best_value) == ("completed", 2.5, 2.0)
    assert by_id["t_1"].curve == [(1, 3.0), (2, 2.0), (3, 2.5)] and by_id["t_1"].seconds == 1.5
    assert (by_id["t_2"].status, by_id["t_2"].epochs, by_id["t_2"].stopped_early) == ("stopped", 1, True)
    assert by_id["t_3"].status == "unfinished" and by_id["t_3"].best_value == 1.0
    t4 = by_id["t_4"]
    assert (t4.status, t4.epochs, t4.error) == ("error", 0, "ValueError: bad") and math.isnan(t4.last_value)
    assert t4.run_dir == str(tmp_path / "exp" / "runs" / "t_4")


def test_an_experiment_pickled_before_the_modules_moved_resumes():
    """tuner.pkl names our trainable and callbacks by module path; a sweep started before the move
    (ptycho_dist.sweep_trial, ...) unpickles while resuming, and only then."""
    import importlib
    import pickle

    from ptycho_dist.sweeps.trial import trainable
    from ptycho_dist.sweeps.tuner import MOVED_MODULES, modules_under_old_names

    old_reference = b"cptycho_dist.sweep_trial\ntrainable\n."  # how an old tuner.pkl names the trainable
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old_reference)
    with modules_under_old_names():
        assert pickle.loads(old_reference) is trainable
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old_reference)
    for new in MOVED_MODULES.values():
        importlib.import_module(new)
