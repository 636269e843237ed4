"""`ptycho-dist reconstruct`: Ray Data batch inference with streaming stitching.

Pipeline (one Ray Dataset, streamed; the driver never holds the patterns or the patches):

    driver     read_scans: one file, a glob or several files, validated once, patterns left on disk;
               groups per file (inference_groups, as the local loop); group ids cut into blocks
    Ray Data   pattern_ids (blocks of group ids)                     8 bytes per group
               .map_batches(read_ids)                              ids -> rows (RowReader)
               .map_batches(BatchPredictor, ActorPoolStrategy(K))  model loaded once per actor;
                                                                   each batch -> network -> stitched
                                                                   patches -> partial canvases
    driver     CanvasSum (ptycho_torch.physics.stitching): partial canvases add up in any order, then
               object = sum(w*O) / sum(w) where sum(w) is large enough, and write_reconstruction

Driver memory: the (H, W) canvas (12 bytes/pixel), O(M) positions and a few partial canvases; the
ground truth for metrics is the scan's objectGuess, scored in memory. Files are read with the
bundle's reading options (dataset paths, crop / binning to N, detector mask, geometry) and the
products are those of the local reconstruct (write_reconstruction: probe.npy, TIFFs, CXI). The read step is fused into
the actors by Ray Data; files must be readable from every node.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho_dist.config import RayConfig
from ptycho_dist.training.ingest import pattern_ids
from ptycho_torch.config import ConfigError
from ptycho_torch.data.scan_files import scan_paths
from ptycho_torch.logging_setup import show_progress
from ptycho_torch.model.bundle import load_bundle, resolve_bundle_path
from ptycho_torch.physics.forward import normalization_factor
from ptycho_torch.physics.stitching import CanvasSum, stitch_weight
from ptycho_torch.reconstruction.batch_predictor import (
    BatchPredictor,
    RowReader,
    default_block_size,
    id_energies,
    read_ids,
)
from ptycho_torch.reconstruction.reconstruct import (
    PatchPredictor,
    ReconResult,
    network_dtype,
    scan_for_model,
    write_reconstruction,
)
from ptycho_torch.safe_output import writes_whole_dir

log = logging.getLogger("ptycho_dist")

DTYPES = ("auto", "float32", "bfloat16")


def streaming_norm_factor(reader: RowReader, block_size: int) -> float:
    """r of the whole scan (normalisation, docs/configuration.md) from a Ray Data pass of block energies."""
    ds = pattern_ids(reader.scan.n_patterns, block_size).map_batches(
        id_energies, batch_size=None, fn_kwargs={"reader": reader})
    energy, count = 0.0, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        energy += float(np.sum(batch["energy"]))
        count += int(np.sum(batch["count"]))
    return normalization_factor(energy / max(count, 1), reader.scan.N)


@writes_whole_dir("out_dir")
def reconstruct_distributed(
    model: str | Path,
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    concurrency: int | None = None,
    batch_size: int | None = None,
    num_gpus_per_actor: float | str = "auto",
    num_cpus_per_actor: float = 1.0,
    dtype: str | None = None,
    block_size: int | None = None,
    renormalize: bool = False,
    validate: bool = True,
    grouping: str | None = None,
    ray_config: RayConfig | None = None,
    progress: bool | None = None,
    probe: str = "auto",
    normalization: str = "scan",
) -> ReconResult:
    """Reconstruct the scan `data` (a file, a glob, or several files of one object frame) with the
    bundle `model` on Ray Data into `out_dir`.

    Reads the files with the reading options the model was trained with (ReadOptions.from_config)
    and writes the same files as the local `ptycho_torch.reconstruction.reconstruct.reconstruct` (object.npz,
    PNGs, the products probe.npy / TIFFs / reconstruction.cxi, metrics.json when the scan has an
    objectGuess) with `write_reconstruction`, and returns the same ReconResult; the object
    equals the local one for the same files (up to float32 summation order). `validate` False trusts
    the pattern values (shapes, probe and positions are still checked). `probe` and `normalization`
    choose as the local reconstruct does (default: the scan's own probe and r; `renormalize` is
    the old spelling of normalization 'scan'), and `grouping` the groups of gridsize > 1 (None = the
    bundle's inference.grouping).
    """
    from ptycho_dist.cluster.scaling import actor_pool_size, gpus_per_actor

    bundle_path = resolve_bundle_path(model).resolve()
    bundle = load_bundle(bundle_path)
    config = bundle.config
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if not num_cpus_per_actor > 0:
        raise ConfigError(f"--num-cpus-per-actor: got {num_cpus_per_actor}; must be > 0")
    batch = batch_size or config.inference_batch_size
    if batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch}")
    ready = scan_for_model(bundle, data, validate=validate, probe=probe, normalization=normalization,
                           renormalize=renormalize, grouping=grouping)
    scan, groups, normalization, probe_used = ready.scan, ready.groups, ready.normalization, ready.probe_used
    chosen = ready.probe  # None: the model's own
    reader = RowReader(scan.without_object(), groups)
    canvas_hw, n = scan.object_shape, scan.n_patterns
    probe_t = bundle.module.probe.detach().cpu() if chosen is None else \
        torch.as_tensor(np.asarray(chosen)).to(torch.complex64).reshape(-1, scan.N, scan.N)
    weight = stitch_weight(probe_t, config.inference.stitch_weight)  # the probe the actors read with
    ray_config = ray_config or RayConfig()

    import ray.data

    from ptycho_dist.cluster.scaling import ClusterResources
    from ptycho_dist.cluster.session import quiet_ray_data, ray_session

    with ray_session(ray_config):
        quiet_ray_data(ray_config.verbose)
        resources = ClusterResources.from_ray()
        num_gpus_per_actor = gpus_per_actor(num_gpus_per_actor, resources)
        actors = actor_pool_size(resources, concurrency, num_cpus_per_actor, num_gpus_per_actor)
        n_groups = len(groups)
        rows_per_block = block_size or default_block_size(n_groups, groups.indices.shape[1], scan.N, actors)
        n_blocks = math.ceil(n_groups / rows_per_block)
        scan_r = normalization == "scan"
        norm_factor = streaming_norm_factor(reader, rows_per_block) if scan_r else bundle.norm_factor
        ds = pattern_ids(n_groups, rows_per_block).map_batches(read_ids, batch_size=None, fn_kwargs={"reader": reader})
        ds = ds.map_batches(
            BatchPredictor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor,
            fn_constructor_kwargs={"model": str(bundle_path), "canvas_hw": canvas_hw,
                                   "norm_factor": norm_factor if scan_r else None, "dtype": dtype,
                                   "probe": None if chosen is None else np.asarray(chosen),
                                   "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
                                   "num_threads": max(1, round(num_cpus_per_actor))})
        total = CanvasSum(canvas_hw, weight, n)
        log.info("reconstructing %d patterns from %d file(s) on a %dx%d canvas: %d blocks of <= %d "
                 "patterns, %d actor(s) x (%g CPU, %g GPU), batch %d", n, len(scan_paths(scan)),
                 canvas_hw[0], canvas_hw[1], n_blocks, rows_per_block, actors, num_cpus_per_actor,
                 num_gpus_per_actor, batch)
        start = time.perf_counter()
        first: float | None = None
        with tqdm(total=n, unit="pattern", desc="reconstruct",
                  disable=not show_progress(progress)) as bar:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                first = first if first is not None else time.perf_counter() - start
                bar.update(total.add_batch(out))
        seconds = time.perf_counter() - start
    obj, obj_weight = total.result(config.inference.weight_threshold)
    rate = n / max(seconds, 1e-9)
    compute = total.compute_seconds
    steady = n / compute if compute > 0 else rate
    log.info("reconstructed %d patterns in %.2f s: %.0f patterns/s end to end (actor start-up included), "
             "%.0f patterns/s while the actors computed (%.2f s)", n, seconds, rate, steady, compute)
    meta = {"model": str(bundle_path), "data": scan_paths(scan), "n_patterns": n, "n_groups": n_groups,
            "grouping": ready.grouping,
            "norm_factor": float(norm_factor), "patterns_per_second": rate,
            "engine": "ray_data", "concurrency": actors, "batch_size": batch,
            "num_cpus_per_actor": num_cpus_per_actor, "num_gpus_per_actor": num_gpus_per_actor,
            "dtype": network_dtype(dtype or config.inference.dtype, "cuda" if num_gpus_per_actor > 0 else "cpu"),
            "block_size": rows_per_block, "n_blocks": n_blocks,
            "seconds": seconds, "first_result_seconds": first, "compute_seconds": compute,
            "patterns_per_second_compute": steady, "probe": probe_used, "normalization": normalization}
    photon_scale = PatchPredictor(bundle, norm_factor=norm_factor, probe=chosen).photon_scale  # the actors' scale
    written = write_reconstruction(out_dir, obj, obj_weight, scan, meta, probe=probe_t, photon_scale=photon_scale,
                                   fit_patterns=config.inference.fit_patterns)
    return ReconResult(Path(out_dir), obj, obj_weight, rate, written.get("metrics"), written.get("data_fit"),
                       photon_scale)
