"""Shared fixtures: tiny simulated scans (N=32) and a tiny run configuration, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptycho_torch.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    SimulationConfig,
    TrainerConfig,
    TrainingConfig,
)


def simulate(path: Path, **overrides) -> Path:
    from ptycho_torch.data.simulate import simulate_to_file

    settings = {"N": 32, "n_positions": 64, "seed": 0, "nphotons": 1e5}
    settings.update(overrides)
    return simulate_to_file(SimulationConfig(**settings), path)


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory) -> Path:
    """64 patterns, 32x32, with objectGuess."""
    return simulate(tmp_path_factory.mktemp("scan") / "tiny.npz")


@pytest.fixture(scope="session")
def small_scan(tmp_path_factory) -> Path:
    """200 patterns, 32x32, with objectGuess."""
    return simulate(tmp_path_factory.mktemp("scan") / "small.npz", n_positions=200)


def tiny_config(scan: Path, **sections) -> RunConfig:
    """N=32, gridsize 1 (machinery, not quality: the fastest model), 8/16 filters, batch 16, lr 1e-3, 2
    epochs, 25% validation, csv logs, no progress bar."""
    config = RunConfig(data=DataConfig(path=str(scan), val_fraction=0.25),
                       model=ModelConfig(N=32, gridsize=1, n_filters_scale=0.25),
                       training=TrainingConfig(batch_size=16), trainer=TrainerConfig(max_epochs=2))
    from ptycho_torch.config import apply_overrides

    # the tests' lr arithmetic; float32 inference: the machinery tests compare paths to 1e-5
    base = {"trainer.enable_progress_bar": False, "optimizer.learning_rate": 1e-3, "inference.dtype": "float32"}
    base.update(sections)
    return apply_overrides(config, base)


@pytest.fixture(scope="module")
def ray_local(request):
    """One local Ray for a test module (4 logical CPUs: room for a driver function plus 2 workers), with its
    dashboard on 127.0.0.1 (the State API: Tune's early stopping, Ray Train's placement-group cleaner);
    yields its GCS address."""
    import logging

    import ray

    from ptycho_dist.cluster.session import (
        LOOPBACK,
        free_loopback_port,
        gcs_server_port,
        loopback_only,
        runtime_env_naming_cluster,
    )

    # the dashboard (on 127.0.0.1), as the product's sessions have: Ray Train's PlacementGroupCleaner asks the
    # State API whether its controller lives; without a dashboard on its own cluster an answer from another
    # cluster on the machine removed a live run's placement group (full suite, -n 2)
    dashboard = True
    # address 'local': a Ray of its own even while another `ray start` cluster runs on this machine;
    # started as the product starts its embedded Ray (loopback, workers told their cluster's address:
    # other modules' clusters run beside this one under pytest -n 2)
    port = free_loopback_port()
    with loopback_only():
        with gcs_server_port(port):
            ray.init(address="local", num_cpus=4, include_dashboard=dashboard, dashboard_host=LOOPBACK,
                     dashboard_port=free_loopback_port(),  # another module's cluster may hold 8265
                     logging_level=logging.WARNING, _node_ip_address=LOOPBACK,
                     runtime_env=runtime_env_naming_cluster(f"{LOOPBACK}:{port}", None))
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes():
    """A 2-node Ray cluster on this machine (ray.cluster_utils.Cluster, 1 CPU per node, a dashboard),
    connected for the test module; yields the Cluster."""
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from ptycho_dist.cluster.session import free_loopback_port, runtime_env_naming_cluster

    cluster = Cluster(initialize_head=True, head_node_args={  # a dashboard (see ray_local) on a port of its own
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_loopback_port()})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING,
                 runtime_env=runtime_env_naming_cluster(cluster.address, None))
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
