"""`ptycho-dist train` on a corpus of scans through Ray Data (ptycho_dist.training.ingest), on a 2-node
`ray.cluster_utils.Cluster` (1 CPU each: two 0.5-CPU workers, one per node, leave room for reads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from ptycho_dist.config import RayConfig
from ptycho_dist.training.driver import fit_distributed
from ptycho_dist.training.ingest import check_read_room
from ptycho_torch.cli.main import main as torch_main
from ptycho_torch.config import ConfigError, apply_overrides
from ptycho_torch.data.dataset import PtychoDataModule
from ptycho_torch.training.train import train

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_corpus") / "scans"
    """Two scans of one dose with other objects and probes: the loss of a batch is its deviance over its
    mean counts, so at one dose a model's epoch-mean loss does not depend on how groups are batched."""
    assert torch_main(["simulate", "--n-scans", "2", "--out", str(out), "--N", "32", "--n-positions", "48",
                       "--defocus-range", "4", "12"]) == 0
    return [str(p) for p in sorted(out.glob("scan_*.npz"))]


class SeenGroups(Callback):
    """Writes the group indices each rank trains on (epoch 0) to `folder`/rank<k>.json."""

    def __init__(self, folder: str) -> None:
        self.folder, self.seen = folder, []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0:
            self.seen += [int(i) for i in batch["index"]]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def _config(corpus, batch_size: int):
    """One epoch at a learning rate too small to move the loss: its epoch means are then the losses of
    the same (seeded) initial model over the same groups, whatever their order or sharding."""
    return apply_overrides(tiny_config(corpus[0]), {
        "data.path": corpus, "data.val_fraction": 0.25, "trainer.max_epochs": 1, "training.batch_size": batch_size,
        "optimizer.learning_rate": 1e-6, "logging.logger": None, "trainer.enable_checkpointing": False})


def test_each_worker_trains_on_a_disjoint_shard_and_losses_match_a_local_run(two_nodes, corpus, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    seen = tmp_path / "seen"
    seen.mkdir()
    dist_config = apply_overrides(_config(corpus, 8), {"trainer.devices": 1, "trainer.num_nodes": 2})
    r = fit_distributed(dist_config, RayConfig(storage_path=str(tmp_path), name="ingest", cpus_per_worker=0.5,
                                               placement_strategy="SPREAD"), callbacks=[SeenGroups(str(seen))])
    assert r.world_size == 2 and len(set(r.replica_nodes)) == 2 and len(set(r.replica_checksums)) == 1
    shards = [json.loads((seen / f"rank{k}.json").read_text()) for k in range(2)]
    n_train = len(PtychoDataModule(_config(corpus, 8)).train_groups)
    assert not set(shards[0]) & set(shards[1])  # disjoint
    assert len(shards[0]) == len(shards[1]) == n_train // 2  # equal shards: at most one group left out
    assert all(len(set(s)) == len(s) for s in shards) and set(shards[0]) | set(shards[1]) <= set(range(n_train))
    local = train(_config(corpus, 16), tmp_path / "local")  # same groups, same global batch (2 x 8)
    (row_dist,), (row_local,) = r.history, local.history
    assert row_dist["train_loss"] == pytest.approx(row_local["train_loss"], rel=0.02)  # <= 1 group of 72 left out
    assert row_dist["val_loss"] == pytest.approx(row_local["val_loss"], rel=0.02)
    manifest = json.loads((Path(r.run_dir) / "manifest.json").read_text())
    assert len(manifest["norm_factors"]) == 2 and manifest["ray"]["ingest"] == "ray_data"


def test_a_worker_group_that_leaves_no_cpu_for_reading_is_refused():
    check_read_room(2.0, 2, 0.5)
    with pytest.raises(ConfigError, match="--cpus-per-worker"):
        check_read_room(2.0, 2, 1.0)


def test_the_driver_hands_workers_an_absolute_init_from(corpus, tmp_path, monkeypatch):
    from ptycho_torch.training.launcher import with_absolute_data_path

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"")  # only its place is checked here
    monkeypatch.chdir(tmp_path)
    config = apply_overrides(_config(corpus, 8), {"training.init_from": "run"})
    assert with_absolute_data_path(config).training.init_from == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="training.init_from: no model bundle"):
        with_absolute_data_path(apply_overrides(config, {"training.init_from": "elsewhere"}))
