"""ptycho_dist.cluster.scaling and `ptycho-dist train` flag handling, without starting Ray: the mapping from the
execution config to Ray Train configs, and every bad request failing with one clear message."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from ptycho_dist.api import resolve_run
from ptycho_dist.cli.train import run_keywords
from ptycho_dist.cluster.run_files import read_run_file, write_run_file
from ptycho_dist.cluster.scaling import (
    POLL_INTERVAL_ENV,
    START_TIMEOUT_ENV,
    ClusterResources,
    actor_pool_size,
    check_request,
    checkpoint_config,
    failure_config,
    gpus_per_actor,
    lightning_strategy,
    plan_scaling,
    run_config,
    run_name,
    set_controller_env,
    storage_path,
    strategy_class,
)
from ptycho_dist.config import RAY_FLAGS, RayConfig, load_dist_config
from ptycho_dist.training.driver import _user_error
from ptycho_torch.config import ConfigError, RunConfig, TrainerConfig, load_run_config
from ptycho_torch.training.launcher import state_checksum

CPU4 = ClusterResources.single_node(4)


def ex(**kw) -> TrainerConfig:
    return TrainerConfig(**kw)


# ------------------------------------------------------------------ scaling

def test_workers_are_devices_times_nodes_with_cpu_resources():
    plan = plan_scaling(ex(devices=2, num_nodes=2), RayConfig(cpus_per_worker=1), CPU4)
    assert (plan.num_workers, plan.use_gpu, plan.accelerator, plan.strategy) == (4, False, "cpu", "ddp")
    sc = plan.scaling_config()
    assert sc.num_workers == 4 and not sc.use_gpu and sc.resources_per_worker == {"CPU": 1.0}
    assert sc.placement_strategy == "PACK"
    assert plan_scaling(ex(devices=1), RayConfig(cpus_per_worker=3), CPU4).torch_threads == 3


def test_auto_accelerator_uses_gpus_only_when_the_cluster_has_them():
    gpu_cluster = ClusterResources.single_node(8, gpus=2)
    plan = plan_scaling(ex(devices=2, accelerator="auto"), RayConfig(gpus_per_worker=1), gpu_cluster)
    assert plan.use_gpu and plan.accelerator == "gpu"
    assert plan.scaling_config().resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    assert not plan_scaling(ex(devices=2, accelerator="auto"), RayConfig(), CPU4).use_gpu
    assert not plan_scaling(ex(devices=1, accelerator="cpu"), RayConfig(), gpu_cluster).use_gpu
    spread = plan_scaling(ex(devices=1, num_nodes=2, accelerator="cuda"),
                          RayConfig(placement_strategy="SPREAD", gpus_per_worker=0.5), gpu_cluster)
    assert spread.use_gpu and spread.scaling_config().placement_strategy == "SPREAD"
    assert spread.resources_per_worker["GPU"] == 0.5


def test_strategy_mapping():
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy

    assert plan_scaling(ex(strategy="auto", devices=2), RayConfig(), CPU4).strategy == "ddp"
    # one worker needs no DDP wrapper (Lightning's single-device strategy); asked-for DDP is kept
    assert plan_scaling(ex(strategy="auto", devices=1), RayConfig(), CPU4).strategy == "single"
    assert plan_scaling(ex(strategy="ddp", devices=1), RayConfig(), CPU4).strategy == "ddp"
    assert lightning_strategy("single") == "auto" and isinstance(lightning_strategy("ddp"), RayDDPStrategy)
    assert strategy_class("ddp") is RayDDPStrategy and strategy_class("fsdp") is RayFSDPStrategy
    assert plan_scaling(ex(strategy="fsdp", devices=2), RayConfig(), CPU4).strategy == "fsdp"


@pytest.mark.parametrize("execution, ray_config, cluster, expected", [
    (ex(devices="auto"), RayConfig(), CPU4, ["'auto' cannot be used with Ray", "--devices"]),
    (ex(accelerator="gpu"), RayConfig(), CPU4, ["no GPUs", "--accelerator cpu"]),
    (ex(accelerator="mps"), RayConfig(), CPU4, ["'mps' is not supported"]),
    (ex(devices=3, num_nodes=2), RayConfig(cpus_per_worker=1), CPU4,
     ["6 workers", "= 6 CPUs", "has 4 CPUs", "--devices", "--num-nodes", "--cpus-per-worker"]),
    (ex(devices=2), RayConfig(cpus_per_worker=3), CPU4, ["= 6 CPUs", "has 4 CPUs"]),
    (ex(devices=4, accelerator="gpu"), RayConfig(), ClusterResources.single_node(8, gpus=2),
     ["= 4 GPUs", "has 2 GPUs"]),
    (ex(accelerator="gpu"), RayConfig(gpus_per_worker=0), ClusterResources.single_node(8, gpus=1),
     ["--gpus-per-worker"]),
    (ex(devices=2), RayConfig(placement_strategy="STRICT_SPREAD"), CPU4, ["cannot be placed", "STRICT_SPREAD"]),
    (ex(devices=2), RayConfig(placement_strategy="STRICT_PACK", cpus_per_worker=1.5),
     ClusterResources({"CPU": 3.0}, ({"CPU": 1.5}, {"CPU": 1.5})), ["only 1 fit", "{CPU: 1.5}"]),
    (ex(devices=2), RayConfig(cpus_per_worker=2), ClusterResources({"CPU": 4.0}, ({"CPU": 1.0}, {"CPU": 3.0})),
     ["only 1 fit"]),
])
def test_bad_requests_fail_before_any_worker_starts(execution, ray_config, cluster, expected):
    with pytest.raises(ConfigError) as err:
        plan_scaling(execution, ray_config, cluster)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_every_problem_is_reported_at_once_and_cluster_free_checks_run_early():
    with pytest.raises(ConfigError) as err:
        plan_scaling(ex(devices="auto", accelerator="gpu"), RayConfig(), CPU4)
    assert "'auto'" in str(err.value) and "no GPUs" in str(err.value)
    with pytest.raises(ConfigError, match="'auto' cannot be used"):
        check_request(ex(devices="auto"), RayConfig())
    check_request(ex(devices=64, accelerator="gpu"), RayConfig())  # needs the cluster to judge


def test_deepspeed_needs_the_package():
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError, match="deepspeed package"):
        check_request(ex(strategy="deepspeed"), RayConfig())


def test_checkpoint_failure_and_run_configs(tmp_path, monkeypatch, tiny_scan):
    config = tiny_config(tiny_scan)
    ck = checkpoint_config(config)
    assert (ck.num_to_keep, ck.checkpoint_score_attribute, ck.checkpoint_score_order) == (1, "val_loss", "min")
    every = checkpoint_config(tiny_config(tiny_scan, **{"checkpoint.save_top_k": -1,
                                                        "checkpoint.mode": "max"}))
    assert every.num_to_keep is None and every.checkpoint_score_order == "max"
    no_val = checkpoint_config(tiny_config(tiny_scan, **{"data.val_fraction": 0.0}))
    assert no_val.checkpoint_score_attribute == "train_loss"
    fc = failure_config(RayConfig(max_failures=3))
    assert (fc.max_failures, fc.controller_failure_limit) == (3, 0)

    monkeypatch.chdir(tmp_path)
    rc = run_config(config, RayConfig(storage_path="runs"), "exp")
    assert rc.storage_path == str(tmp_path / "runs") and Path(rc.storage_path).is_absolute()
    assert rc.name == "exp" and rc.logging_config.log_level == "WARNING"
    assert run_config(config, RayConfig(verbose=True), "x").logging_config.log_level == "INFO"
    assert storage_path(RayConfig(storage_path="s3://bucket/runs")) == "s3://bucket/runs"
    assert storage_path(RayConfig()) == str(tmp_path / "ray_runs")
    no_ckpt = tiny_config(tiny_scan, **{"trainer.enable_checkpointing": False})
    with pytest.raises(ConfigError, match="enable_checkpointing"):
        run_config(no_ckpt, RayConfig(max_failures=1), "x")

    assert run_name(RayConfig(), datetime(2024, 5, 6, 7, 8, 9)) == "train-20240506-070809"
    with pytest.raises(ConfigError, match="plain directory name"):
        run_name(RayConfig(name="a/b"))
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(POLL_INTERVAL_ENV, raising=False)
    set_controller_env(RayConfig(worker_start_timeout_s=12.5, poll_interval_s=0.25))
    assert (os.environ[START_TIMEOUT_ENV], os.environ[POLL_INTERVAL_ENV]) == ("12.5", "0.25")


# ------------------------------------------------------------------ run files, checksums, errors

def test_run_files_on_local_paths_and_uris(tmp_path):
    for location in (str(tmp_path / "local" / "run"), (tmp_path / "uri" / "run").as_uri()):
        assert read_run_file(location, "config.yaml") is None
        write_run_file(location, "config.yaml", "a: 1\n")
        assert read_run_file(location, "config.yaml") == "a: 1\n"


def test_state_checksum_is_deterministic_and_sensitive():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_checksum(a) == state_checksum(b)
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert state_checksum(a) != state_checksum(b)


def test_user_errors_inside_worker_failures_are_unwrapped():
    from ray.train import WorkerGroupError

    inner = ConfigError("model.N: set --N 32")
    wrapper = RuntimeError("worker died")
    wrapper.__cause__ = inner
    assert _user_error(WorkerGroupError("boom", {0: wrapper})) is inner
    assert _user_error(WorkerGroupError("boom", {0: RuntimeError("bug")})) is None


# ------------------------------------------------------------------ CLI flags and the `ray:` section

def _parse(argv: list[str]):
    from ptycho_dist.cli import build_parser

    return build_parser().parse_args(["train", *argv])


def test_help_lists_every_ray_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = capsys.readouterr().out
    for flag in [*RAY_FLAGS, "--resume", "--data", "--out", "--epochs", "--devices", "--accumulate-grad-batches"]:
        assert flag in text, flag
    assert text.count("default:") >= len(RAY_FLAGS) + 20


def test_ray_section_in_yaml_precedence_and_out(tmp_path, tiny_scan):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"max_epochs": 5, "devices": 2},
                                   "ray": {"max_failures": 2, "name": "from-file", "cpus_per_worker": 2}}))
    run, ray = load_dist_config(cfg)
    assert run.trainer.max_epochs == 5 and ray.max_failures == 2 and ray.name == "from-file"
    with pytest.raises(ConfigError, match="unknown section"):  # ptycho-torch stays strict
        load_run_config(cfg)

    args = _parse(["--config", str(cfg), "--data", str(tiny_scan), "--max-failures", "1", "--epochs", "3",
                   "--out", str(tmp_path / "runs" / "mine")])
    config, ray_config, resume = resolve_run(**run_keywords(args))
    assert not resume and config.trainer.max_epochs == 3 and config.trainer.devices == 2
    assert (ray_config.max_failures, ray_config.cpus_per_worker) == (1, 2.0)
    assert (ray_config.storage_path, ray_config.name) == (str(tmp_path / "runs"), "mine")
    assert config.data.path == str(tiny_scan)


@pytest.mark.parametrize("argv, message", [
    (["--out", "a/b", "--name", "c"], "contradicts --"),
    (["--max-failures", "-3"], "ray.max_failures"),
    (["--placement-strategy", "diagonal"], "ray.placement_strategy"),
    (["--resume", "nope", "--storage-path", "{tmp}"], "cannot resume"),
    (["--resume", "x", "--out", "y"], "drop --out"),
    (["--devices", "auto", "--data", "{scan}"], "'auto' cannot be used with Ray"),
    (["--data", "{tmp}/missing.npz"], "does not exist"),
    ([], "needs --data"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, message, tmp_path, tiny_scan, capsys):
    from ptycho_dist.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)).replace("{scan}", str(tiny_scan)) for a in argv]
    assert main(["train", "--storage-path", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_bad_ray_section_names_the_file_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ray: {max_failure: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml: ray: unknown key"):
        load_dist_config(cfg)
    assert isinstance(RunConfig.from_dict({}), RunConfig)


def test_benign_ray_lines_are_dropped_on_the_driver_and_others_kept(capsys):
    """While a session is open the driver's sys.stdout/sys.stderr drop the lines Ray forwards that are
    benign and keep the rest; Ray prints them as `print(line, file=sys.stderr)` (worker logs, raylet
    warnings), which is what this test does; afterwards the streams are the ones from before."""
    import sys

    from ptycho_dist.cluster.session import BENIGN_RAY_LINES, BenignLineFilter, filter_benign_ray_lines

    before = (sys.stdout, sys.stderr)
    noise = f"[2026-11-29 E 1 2] core_worker.cc:2465: Actor ... {BENIGN_RAY_LINES[0]}. See ..."
    with filter_benign_ray_lines():
        assert isinstance(sys.stdout, BenignLineFilter) and isinstance(sys.stderr, BenignLineFilter)
        with filter_benign_ray_lines():  # nested: not wrapped twice
            assert not isinstance(sys.stderr.stream, BenignLineFilter)
        print(f"\x1b[36m(pid=1)\x1b[0m {noise}", file=sys.stderr)
        print("\x1b[36m(pid=1)\x1b[0m epoch 1/3 val_loss=1.0", file=sys.stderr)
        print(f"\x1b[33m(raylet)\x1b[0m WARNING: 8 {BENIGN_RAY_LINES[1]}: abc")
        print("\x1b[36m(pid=2)\x1b[0m Traceback (most recent call last):", file=sys.stderr)
        sys.stderr.write(f"a\n{noise} [repeated 3x across cluster]\nb\n")  # several lines in one write
        sys.stderr.write("\rprogress 50%")  # no newline: passed on at once
        assert sys.stderr.write("x") == 1 and sys.stderr.isatty() == before[1].isatty()
    assert (sys.stdout, sys.stderr) == before
    out, err = capsys.readouterr()
    assert err.count("\n") == 4, repr(err)  # the two kept lines and a, b: no blank line left behind
    assert "epoch 1/3 val_loss=1.0" in err and "Traceback (most recent call last):" in err
    assert "a\nb\n\rprogress 50%x" in err and out == ""
    assert not any(b in out + err for b in BENIGN_RAY_LINES)


def test_embedded_ray_is_a_new_local_one_even_beside_a_running_cluster(monkeypatch):
    """A bare ray.init() joins the cluster named in /tmp/ray/ray_current_cluster (then refuses
    num_cpus); the embedded Ray asks for address='local', an address given is used as is."""
    import ray

    from ptycho_dist.cluster import session

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(session, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(session, "secure_token_file", lambda *a: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with session.ray_session(RayConfig(num_cpus=2, verbose=True)):
        pass
    with session.ray_session(RayConfig(address="auto", verbose=True)):
        pass
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2
    assert calls[1]["address"] == "auto" and "num_cpus" not in calls[1]


def test_inference_actors_take_a_gpu_each_when_the_cluster_has_one():
    """--num-gpus-per-actor auto (the default of `ptycho-dist reconstruct` and `live`): CUDA when the
    cluster has GPUs, the CPU otherwise; numbers pass through; anything else is one clear line."""
    from ptycho_dist.cli import build_parser
    from ptycho_dist.cli.flags import gpu_count

    cpu_only, with_gpus = ClusterResources.single_node(8), ClusterResources.single_node(8, gpus=2)
    assert gpus_per_actor("auto", cpu_only) == 0.0 and gpus_per_actor("auto", with_gpus) == 1.0
    assert gpus_per_actor(0.5, with_gpus) == 0.5 and gpus_per_actor("0.25", cpu_only) == 0.25
    assert actor_pool_size(with_gpus, None, 1.0, gpus_per_actor("auto", with_gpus)) == 2
    for bad in ("many", -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--num-gpus-per-actor"):
            gpus_per_actor(bad, with_gpus)
    assert gpu_count("AUTO") == "auto" and gpu_count("0.5") == 0.5
    parser = build_parser()
    for command in ("reconstruct", "live"):
        args = parser.parse_args([command, "--model", "m", "--out", "o",
                                  *(["--data", "s.h5"] if command == "reconstruct" else ["--watch", "s.h5"])])
        assert args.num_gpus_per_actor == "auto", command
    with pytest.raises(SystemExit):
        parser.parse_args(["reconstruct", "--model", "m", "--out", "o", "--data", "s", "--num-gpus-per-actor", "x"])
