"""Multi-node training on one machine: a `ray.cluster_utils.Cluster` with a head and a worker node
(1 CPU each). Nodes share this machine's IP and disk, so this exercises scheduling across nodes
(placement groups, SPREAD) and the resource checks against `ray.nodes()`, not shared storage."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from ptycho_dist.cluster.scaling import ClusterResources, plan_scaling
from ptycho_dist.config import RayConfig
from ptycho_dist.training.driver import fit_distributed
from ptycho_torch.config import ConfigError

pytestmark = pytest.mark.ray


def test_resource_checks_see_every_node(two_nodes):
    resources = ClusterResources.from_ray()
    assert resources.cpus == 2 and len(resources.nodes) == 2
    ex = tiny_config("unused.npz", **{"trainer.devices": 1, "trainer.num_nodes": 2}).trainer
    assert plan_scaling(ex, RayConfig(placement_strategy="STRICT_SPREAD"), resources).num_workers == 2
    with pytest.raises(ConfigError, match="only 1 fit"):  # 2 CPUs in total, but not on one node
        plan_scaling(ex, RayConfig(placement_strategy="STRICT_PACK"), resources)


def test_spread_training_runs_one_worker_per_node(two_nodes, small_scan, tmp_path):
    import ray

    config = tiny_config(small_scan, **{"trainer.max_epochs": 2, "trainer.devices": 1,
                                        "trainer.num_nodes": 2, "logging.logger": None})
    r = fit_distributed(config, RayConfig(storage_path=str(tmp_path), name="spread", placement_strategy="SPREAD"))
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert r.world_size == 2 and set(r.replica_nodes) == node_ids  # one rank on each node
    assert len(set(r.replica_checksums)) == 1
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert (tmp_path / "spread" / "model.pt").is_file()
