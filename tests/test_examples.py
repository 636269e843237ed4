"""examples/*.yaml stay valid: each resolves through the real `train --config` path of the CLI
that its header names, and the CPU smoke config trains for real (no GPU and no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ptycho_torch.config import ConfigError, apply_overrides, load_run_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
EXPECTED = {"cpu-smoke.yaml", "single-gpu.yaml", "multi-gpu-ddp.yaml"}


def has_ray_section(path: Path) -> bool:
    return "ray" in (yaml.safe_load(path.read_text()) or {})


def test_the_examples_are_there():
    assert len(EXAMPLES) >= 3
    assert EXPECTED <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_header_says_how_to_run_it(path):
    lines = path.read_text().splitlines()
    header = "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert f"train --config examples/{path.name}" in header


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_resolves_like_ptycho_dist_train(path):
    """`ptycho-dist train --config FILE --data ... --out ...` accepts every example."""
    from ptycho_dist.api import resolve_run
    from ptycho_dist.cli import build_parser
    from ptycho_dist.cli.train import run_keywords

    args = build_parser().parse_args(["train", "--config", str(path), "--data", "scan.npz",
                                      "--out", "runs/example"])
    config, ray_config, resume = resolve_run(**run_keywords(args))
    assert config.data.path == "scan.npz" and not resume
    assert ray_config.name == "example"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_resolves_like_ptycho_torch_train(path):
    """`ptycho-torch train --config FILE --data ...` accepts every example without a `ray:` section
    and refuses the others by naming the section (they are for ptycho-dist)."""
    from ptycho_torch.api import run_config
    from ptycho_torch.cli.flags import cli_overrides
    from ptycho_torch.cli.main import build_parser

    def resolve_run_config(args):  # as `ptycho-torch train` resolves its flags
        return run_config(args.config, args.data, overrides=cli_overrides(args))

    args = build_parser().parse_args(["train", "--config", str(path), "--data", "scan.npz", "--out", "run"])
    if has_ray_section(path):
        with pytest.raises(ConfigError, match="unknown section"):
            resolve_run_config(args)
        return
    config = resolve_run_config(args)
    assert config.data.path == "scan.npz"
    assert config == apply_overrides(load_run_config(path), {"data.path": "scan.npz"})


def test_gpu_examples_ask_for_what_their_names_say():
    from ptycho_dist.cluster.scaling import ClusterResources, plan_scaling
    from ptycho_dist.config import load_dist_config

    single, _ = load_dist_config(ROOT / "examples" / "single-gpu.yaml")
    ex = single.trainer
    assert (ex.accelerator, ex.devices, ex.num_nodes, ex.precision) == ("gpu", 1, 1, "bf16-mixed")
    assert single.optimizer.scheduler == "WarmupCosine" and single.checkpoint.early_stop_patience
    assert single.dataloader.persistent_workers

    multi, ray_config = load_dist_config(ROOT / "examples" / "multi-gpu-ddp.yaml")
    ex = multi.trainer
    assert (ex.devices, ex.num_nodes, ex.strategy) == (4, 2, "ddp")
    # a hand-written 2-node x 4-GPU cluster (no Ray started): the request fits, 8 GPU workers
    node = {"CPU": 32.0, "GPU": 4.0}
    plan = plan_scaling(ex, ray_config, ClusterResources({"CPU": 64.0, "GPU": 8.0}, (node, node)))
    assert plan.num_workers == 8 and plan.use_gpu and plan.strategy == "ddp"


def test_cpu_smoke_example_trains(tiny_scan, tmp_path):
    from ptycho_torch.training.train import train

    config = apply_overrides(load_run_config(ROOT / "examples" / "cpu-smoke.yaml"),
                             {"data.path": str(tiny_scan), "trainer.max_epochs": 1,
                              "trainer.enable_progress_bar": False})
    result = train(config, tmp_path / "run")
    assert (result.run_dir / "model.pt").is_file()
    assert (result.run_dir / "config.yaml").is_file()
    assert len(result.history) == 1
