"""Elastic training (`--min-workers`): a node that leaves mid-run (a preempted spot instance) costs one
worker-group restart from the latest checkpoint, not the run. On a `ray.cluster_utils.Cluster` of two
1-CPU nodes: two workers, one per node; the second node is removed after the first checkpoint."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import tiny_config

from ptycho_dist.cluster.scaling import ClusterResources, plan_scaling
from ptycho_dist.config import RayConfig
from ptycho_dist.training.driver import fit_distributed
from ptycho_torch.config import ConfigError

pytestmark = pytest.mark.ray


def test_elastic_requests_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"ray.min_workers: .*set --max-failures"):
        RayConfig(min_workers=1)
    with pytest.raises(ConfigError, match=r"ray.min_workers: got 0; must be >= 1"):
        RayConfig(min_workers=0, max_failures=2)
    ex = tiny_config("unused.npz", **{"trainer.devices": 2}).trainer
    with pytest.raises(ConfigError, match=r"ray.min_workers: 3 is more than the 2 workers asked"):
        plan_scaling(ex, RayConfig(min_workers=3, max_failures=1), ClusterResources.single_node(4))
    # the fewest must fit now, not the most: 1 CPU hosts an elastic 1-2 group, not a fixed 2
    plan = plan_scaling(ex, RayConfig(min_workers=1, max_failures=1), ClusterResources.single_node(1))
    assert plan.scaling_config().num_workers == (1, 2) and plan.strategy == "ddp"
    with pytest.raises(ConfigError, match="but the Ray cluster has 1 CPUs"):
        plan_scaling(ex, RayConfig(), ClusterResources.single_node(1))


def test_a_node_leaving_mid_run_restarts_on_the_rest_and_finishes(two_nodes, small_scan, tmp_path):
    cluster = two_nodes
    leaving = next(node for node in cluster.list_all_nodes() if node is not cluster.head_node)
    epochs = 6
    config = tiny_config(small_scan, **{"trainer.max_epochs": epochs, "trainer.devices": 2,
                                        "logging.logger": None})
    # a restart may first wait for the lost node (until the worker-start timeout), then goes on with one
    ray_config = RayConfig(storage_path=str(tmp_path), name="elastic", min_workers=1, max_failures=3,
                           placement_strategy="SPREAD", worker_start_timeout_s=20)
    snapshot = tmp_path / "elastic" / "checkpoint_manager_snapshot.json"
    seen: dict[str, int] = {}

    def preempt_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not snapshot.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        seen["epoch"] = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["epoch"]
        cluster.remove_node(leaving)  # its worker dies with it, as on a reclaimed spot instance

    preempt = threading.Thread(target=preempt_after_first_checkpoint, daemon=True)
    preempt.start()
    result = fit_distributed(config, ray_config)
    preempt.join(timeout=60)
    assert "epoch" in seen and seen["epoch"] < epochs - 1, seen  # the node left mid-run
    assert result.world_size == 1  # finished on the node that stayed
    assert result.epochs_completed == epochs and [row["epoch"] for row in result.history] == list(range(epochs))
    assert result.start_epoch >= seen["epoch"] + 1  # the restart continued after a checkpoint, not from 0
    manifest = json.loads((tmp_path / "elastic" / "manifest.json").read_text())
    assert manifest["epochs_completed"] == epochs and (tmp_path / "elastic" / "model.pt").is_file()
