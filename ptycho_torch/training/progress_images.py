"""Pictures of the object while it trains: every K epochs the current network reconstructs a fixed
region of validation groups, and the amplitude and phase go to the run's logger.

`ReconstructionImages` (a Lightning callback) picks the region once, at the start of the fit: the
validation groups (training groups when validation is off) whose centroids lie nearest the median
centroid, at most `max_groups` of them, from scan 0 when the run trains on several scans. Each time
it runs the network on them (eval mode, no gradients, the trainer's precision), stitches every
patch of those groups (stitching.StitchAccumulator, |probe|^2 weights) onto the region's bounding
box, and logs two RGB images, `reconstruction/amplitude` and `reconstruction/phase`:

    TensorBoard  SummaryWriter.add_image at the global step
    MLflow       MlflowClient.log_image(key=reconstruction_amplitude|phase, step=global step)
    CSV / other  PNG files under the logger's directory: images/epoch003_amplitude.png, ...

Every rank runs the network (a sharded model needs all of them); rank 0 logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("ptycho_torch")

MAX_GROUPS = 64  # groups of the region: a few hundred patterns at most, a fraction of a second
MIN_SIDE_PX = 256  # small regions are enlarged (nearest neighbour) to at least this many pixels


def region_indices(centroids: np.ndarray, count: int) -> np.ndarray:
    """The `count` groups whose centroids (G, 2) lie nearest their median point, in ascending order
    (G,) -> (count,) int64; ties broken by index, so the choice is the same on every rank and run."""
    centre = np.median(centroids, axis=0)
    distance = np.hypot(*(centroids - centre).T)
    return np.sort(np.argsort(distance, kind="stable")[:count]).astype(np.int64)


def _colour(values: np.ndarray, support: np.ndarray, cmap: str) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 with `cmap` between the 1st and 99th percentile of the values
    on `support`; black outside it."""
    import matplotlib

    inside = values[support]
    lo, hi = (np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0))
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~support] = 0
    return rgb


def render(obj: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """A stitched object (H, W) complex and its weight (H, W) -> {'amplitude', 'phase'}: (h, w, 3)
    uint8 images (gray amplitude, viridis phase in radians after removing the global phase; black
    where no patch reached), enlarged by a whole factor to at least MIN_SIDE_PX."""
    support = weight > 0
    global_phase = np.angle(np.sum(obj * weight))
    images = {"amplitude": _colour(np.abs(obj), support, "gray"),
              "phase": _colour(np.angle(obj * np.exp(-1j * global_phase)), support, "viridis")}
    factor = max(1, -(-MIN_SIDE_PX // max(obj.shape)))
    return {k: np.repeat(np.repeat(v, factor, axis=0), factor, axis=1) for k, v in images.items()}


def _region_dataset(datamodule: Any) -> tuple[Any, np.ndarray] | None:
    """(dataset, indices of its groups) of the region of a PtychoDataModule: a GroupDataset of the
    chosen groups alone (built from the module's groups and scan, so it does not matter which loaders
    feed the training, e.g. Ray Data shards), or None when there is nothing to show."""
    from ptycho_torch.data.dataset import GroupDataset

    groups = getattr(datamodule, "val_groups", None) or getattr(datamodule, "train_groups", None)
    scan = getattr(datamodule, "scan", None)
    if groups is None or scan is None or len(groups) == 0:
        return None
    members = groups.indices  # (G, C) pattern indices
    candidates = np.arange(len(members))
    pattern_scan = getattr(scan, "pattern_scan", None)  # several scans: keep to scan 0's frame
    if pattern_scan is not None:
        candidates = candidates[np.asarray(pattern_scan)[members[:, 0]] == 0]
    if candidates.size == 0:
        return None
    centroids = np.asarray(scan.positions)[members[candidates]].mean(axis=1)  # (G', 2)
    chosen = candidates[region_indices(centroids, min(MAX_GROUPS, candidates.size))]
    factors = getattr(datamodule, "norm_factors", None) or [datamodule.norm_factor]
    dataset = GroupDataset(scan, groups.take(chosen), factors)
    return dataset, np.arange(len(chosen))


class ReconstructionImages(Callback):
    """Logs the current reconstruction of a fixed validation region every `every_n_epochs` epochs
    and after the last one (module docstring); `every_n_epochs` 0 turns it off."""

    def __init__(self, every_n_epochs: int) -> None:
        self.every_n_epochs = int(every_n_epochs)
        self._batch: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch = None
        if self.every_n_epochs <= 0 or not trainer.loggers:
            return
        picked = _region_dataset(trainer.datamodule)
        if picked is None:
            log.debug("reconstruction images off: no groups to show")
            return
        dataset, indices = picked
        items = dataset.__getitems__([int(i) for i in indices]) if hasattr(dataset, "__getitems__") \
            else [dataset[int(i)] for i in indices]
        self._batch = {k: torch.stack([item[k] for item in items]) for k in ("x", "positions", "offsets")}

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return self._batch is not None and ((epoch + 1) % self.every_n_epochs == 0 or last)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        obj, weight = self.reconstruct(trainer, pl_module)
        if trainer.is_global_zero:
            images = render(obj, weight)
            for logger in trainer.loggers:
                log_images(logger, images, trainer.current_epoch, trainer.global_step)

    @torch.no_grad()
    def reconstruct(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, np.ndarray]:
        """The region stitched from the network's current patches: object (h, w) complex64 and
        weight (h, w) float32 on the region's bounding box."""
        from ptycho_torch.physics.stitching import StitchAccumulator, stitch_weight

        assert self._batch is not None
        plugin = trainer.precision_plugin
        batch = plugin.convert_input({k: v.to(pl_module.device) for k, v in self._batch.items()})
        was_training = pl_module.training
        pl_module.eval()
        try:
            with plugin.forward_context():
                patches = pl_module(batch["x"], batch["offsets"])  # (B, C, N, N); scan 0's physics
        finally:
            pl_module.train(was_training)
        N = patches.shape[-1]
        patches = patches.reshape(-1, N, N).to(torch.complex64).cpu()
        positions = self._batch["positions"].reshape(-1, 2).double()
        corner = torch.floor(positions.min(dim=0).values) - N // 2  # whole pixels: sub-pixel parts kept
        local = (positions - corner).float()
        hw = (int(torch.floor(local[:, 1].max())) + N // 2, int(torch.floor(local[:, 0].max())) + N // 2)
        acc = StitchAccumulator(hw, stitch_weight(pl_module.probe.detach().cpu()))
        acc.add(patches, local)
        return acc.result(1e-3)


def log_images(logger: Any, images: dict[str, np.ndarray], epoch: int, step: int) -> None:
    """Send {'amplitude', 'phase'} (h, w, 3) uint8 to one Lightning logger (module docstring)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        for name, image in images.items():
            logger.experiment.add_image(f"reconstruction/{name}", image, global_step=step, dataformats="HWC")
        return
    if isinstance(logger, MLFlowLogger):
        for name, image in images.items():
            logger.experiment.log_image(logger.run_id, image, key=f"reconstruction_{name}", step=step)
        return
    folder = getattr(logger, "log_dir", None)
    if folder is None:
        return
    from matplotlib.image import imsave

    from ptycho_torch.safe_output import atomic_path

    for name, image in images.items():
        path = Path(folder) / "images" / f"epoch{epoch:03d}_{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            imsave(tmp, image, format="png")
