"""Files written before the `execution` section was split by concern still load, resume, reconstruct and
sweep, each old name read as its new one with one notice line (ptycho_torch/config/renamed.py).

`tests/data/run_written_by_43cb0e6/` is a real run directory written by main at 43cb0e6 (the last commit
before the split): `ptycho-torch train --config old.yaml` on its simulated scan.npz (48 patterns, N=32),
2 epochs; kept are config.yaml, data_files.json, manifest.json, metrics.json, model.pt and
checkpoints/last.ckpt (whose hyper-parameters hold the old sections).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from ptycho_torch.cli.main import main
from ptycho_torch.config import ConfigError, RunConfig, apply_overrides, load_run_config
from ptycho_torch.config import renamed as renamed_module
from ptycho_torch.config.renamed import RENAMED_FIELDS

OLD_RUN = Path(__file__).parent / "data" / "run_written_by_43cb0e6"


@pytest.fixture(autouse=True)
def fresh_notices():
    renamed_module._noticed.clear()  # each test sees its own notices
    yield


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run, ignore=shutil.ignore_patterns("scan.npz", "old.yaml"))
    shutil.copy(OLD_RUN / "scan.npz", tmp_path / "scan.npz")  # moved: the same bytes, another path
    return run


def test_every_old_field_has_a_new_home_and_the_old_section_is_gone():
    from dataclasses import fields

    from ptycho_torch.config import SECTIONS

    new_fields = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)}
    assert set(RENAMED_FIELDS.values()) <= new_fields
    assert len(set(RENAMED_FIELDS.values())) == len(RENAMED_FIELDS)  # no two old names share a new one
    assert "execution" not in SECTIONS
    old_saved = yaml.safe_load((OLD_RUN / "config.yaml").read_text())
    assert {f"execution.{k}" for k in old_saved["execution"]} <= set(RENAMED_FIELDS)  # all 32 of 43cb0e6


def test_old_config_yaml_reads_as_the_new_sections_with_one_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.config"):
        config = load_run_config(OLD_RUN / "config.yaml")
        load_run_config(OLD_RUN / "config.yaml")
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "config.yaml: old config names read as the new ones" in notices[0]
    assert "training.nepochs -> trainer.max_epochs" in notices[0]
    t = config.trainer
    assert (t.max_epochs, t.accumulate_grad_batches, t.max_time) == (2, 2, {"minutes": 5.0})
    assert t.max_time_delta.total_seconds() == 300
    assert config.optimizer.learning_rate == 0.003 and config.checkpoint.save_top_k == 2
    assert config.training.seed == 7 and config.inference.batch_size == 8 and config.logging.logger == "csv"
    # the same run described with today's names is the same config
    assert RunConfig.from_dict(config.to_dict()) == config
    written_by_hand = load_run_config(OLD_RUN / "old.yaml")  # the --config that run was started with
    assert written_by_hand.trainer == config.trainer.__class__(**{**t.to_dict(), "enable_progress_bar": None})


def test_old_run_directory_resumes_and_its_bundle_reconstructs(old_run, tmp_path, capsys):
    scan = tmp_path / "scan.npz"
    assert main(["train", "--resume", str(old_run), "--data", str(scan), "--epochs", "3", "--no-progress-bar"]) == 0
    err = capsys.readouterr().err
    assert "old config names read as the new ones" in err and "Traceback" not in err
    resumed = load_run_config(old_run / "config.yaml")  # rewritten with today's names
    saved = yaml.safe_load((old_run / "config.yaml").read_text())
    assert "execution" not in saved and saved["trainer"]["max_epochs"] == 3
    assert (resumed.trainer.accumulate_grad_batches, resumed.optimizer.learning_rate, resumed.training.seed) == (
        2, 0.003, 7)
    import json

    assert json.loads((old_run / "manifest.json").read_text())["epochs_completed"] == 3  # 2 before + 1 now
    # the model bundle written at 43cb0e6 reconstructs (its saved config holds the old sections)
    old_bundle = tmp_path / "old_bundle"
    old_bundle.mkdir()
    shutil.copy(OLD_RUN / "model.pt", old_bundle / "model.pt")
    assert main(["reconstruct", "--model", str(old_bundle / "model.pt"), "--data", str(scan),
                 "--out", str(tmp_path / "recon")]) == 0
    assert (tmp_path / "recon" / "object.npz").is_file()


def test_old_dotted_overrides_flags_and_keywords_still_work(tmp_path, caplog, capsys):
    import ptycho_torch as pt

    with caplog.at_level(logging.WARNING, logger="ptycho_torch.config"):
        config = apply_overrides(RunConfig(), {"execution.accum_steps": 3, "training.max_minutes": 0.5,
                                               "execution.num_workers": 1})
        from_keyword = pt.api.run_config(num_workers=2)
    assert config.trainer.accumulate_grad_batches == 3 and config.trainer.max_time == {"minutes": 0.5}
    assert config.dataloader.num_workers == 1 and from_keyword.dataloader.num_workers == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "execution.accum_steps -> trainer.accumulate_grad_batches" in messages
    assert "num_workers is now dataloader_workers" in messages
    # the old flag, hidden from --help, still sets the DataLoader's workers (with a notice)
    from ptycho_torch.cli.flags import cli_overrides
    from ptycho_torch.cli.main import build_parser

    args = build_parser().parse_args(["train", "--data", "x.npz", "--out", str(tmp_path / "r"), "--num-workers", "2"])
    assert cli_overrides(args) == {"dataloader.num_workers": 2}
    assert "--num-workers" not in build_parser().format_help()


def test_a_misspelt_old_field_names_the_old_field_and_its_new_home():
    with pytest.raises(ConfigError, match=r"execution: unknown key\(s\) acum_steps; .* did you mean accum_steps "
                                          r"\(now trainer.accumulate_grad_batches\)"):
        RunConfig.from_dict({"execution": {"acum_steps": 4}})
    assert RunConfig.from_dict({"execution": {}}) == RunConfig()  # an emptied old section is no error


def test_old_sweep_space_keys_and_stored_base_configs_read_as_the_new_ones():
    from ptycho_dist.sweeps.sweep_config import sweep_config_from_dict

    sweep = sweep_config_from_dict({"space": {"execution.learning_rate": {"loguniform": [1e-4, 1e-2]},
                                              "execution.accum_steps": {"grid": [1, 2]}}})
    assert set(sweep.space) == {"optimizer.learning_rate", "trainer.accumulate_grad_batches"}
    base = RunConfig.from_dict(yaml.safe_load((OLD_RUN / "config.yaml").read_text()))
    trial = sweep.trial_config(base, {"execution.learning_rate": 1e-3})  # a trial sampled by an old experiment
    assert trial.optimizer.learning_rate == 1e-3 and trial.trainer.devices == 1
