"""`ptycho-dist reconstruct`: Ray Data batch inference with streaming stitching (SPEC 4.6-4.7, 6, 7).

Pipeline (one Ray Dataset, streamed; the driver never holds the patterns or the patches):

    driver     open the files' headers (scan_source): positions, probe, canvas = union of frames;
               groups per file from positions (gridsize > 1); global indices cut into blocks
    Ray Data   from_numpy(global ids in blocks of `block_size`)    8 bytes per pattern
               .map_batches(read_ids)                              ids -> rows (index, file, x, y,
                                                                   seed_channel, amp (C, N, N))
               .map_batches(BatchPredictor, ActorPoolStrategy(K))  model loaded once per actor;
                                                                   each batch -> network -> seed
                                                                   patches -> *partial canvases*
                                                                   over the batch's bounding box
    driver     iter_batches: add each partial canvas into Σw·O and Σw of the full (H, W) canvas
               (stitching is linear, so partial canvases add up; arrival order does not matter),
               then object = Σw·O / Σw where Σw is large enough, and write_reconstruction

A partial canvas of B patches is float32 (3, h, w) = (Re Σw·O, Im Σw·O, Σw) over the patches'
bounding box, usually smaller than the patches themselves for overlapping scans. Positions are
shifted by the box corner (an integer), so sub-pixel shifts are bit-identical to the local loop.
Driver memory: the (H, W) canvas (12 bytes/pixel), O(M) positions and a few partial canvases.
The read step is fused into the actors by Ray Data; files must be readable from every node.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho_dist.config import RayConfig
from ptycho_dist.scan_source import (
    FileRows,
    ScanSource,
    id_energies,
    load_object_guess,
    open_scan_source,
    read_ids,
)
from ptycho_torch.config import ConfigError
from ptycho_torch.physics import normalization_factor, place_patches
from ptycho_torch.stitching import StitchAccumulator, stitch_weight
from ptycho_torch.workflows.bundle import load_bundle, resolve_bundle_path
from ptycho_torch.workflows.reconstruct import PatchPredictor, ReconResult, write_reconstruction

log = logging.getLogger("ptycho_dist")

DTYPES = ("float32", "bfloat16")


# ------------------------------------------------------------------ actor side

def partial_canvas(patches: torch.Tensor, positions: np.ndarray, canvas_hw: tuple[int, int],
                   weight: torch.Tensor) -> tuple[int, int, np.ndarray]:
    """Stitch patches (B, N, N) complex at positions (B, 2) (x, y) pixels onto their bounding box.

    Returns (y0, x0, canvas (3, h, w) float32 = Re Σw·O, Im Σw·O, Σw) whose pixel (0, 0) is pixel
    (y0, x0) of the full (H, W) canvas. Positions are cast to float32 (as the local loop does) and
    shifted by the integer box corner, so the sub-pixel shifts are exactly the local ones.
    """
    N = patches.shape[-1]
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))  # (B, 2)
    corner = torch.floor(pos).long() - N // 2  # (B, 2) top-left (x, y) of each patch
    x0, y0 = int(corner[:, 0].min()), int(corner[:, 1].min())
    x1, y1 = int(corner[:, 0].max()) + N, int(corner[:, 1].max()) + N
    H, W = canvas_hw
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise ValueError(f"patch positions fall outside the {H}x{W} canvas (box x {x0}..{x1}, y {y0}..{y1})")
    local = pos - torch.tensor([x0, y0], dtype=torch.float32)  # exact: an integer shift
    obj_sum, w_sum = place_patches(patches[None].to(torch.complex64), local[None], (y1 - y0, x1 - x0), weight)
    return y0, x0, torch.stack([obj_sum[0].real, obj_sum[0].imag, w_sum[0]]).numpy()


class BatchPredictor:
    """Ray Data callable class: a batch of rows -> one partial canvas. Usable without Ray.

    Loads the bundle once (PatchPredictor, inference mode, float32 or bfloat16) in `__init__`;
    `num_threads` sets torch's intra-op threads (the actor's CPUs), None keeps OMP_NUM_THREADS.
    Input batch (dict of numpy arrays, B rows): amp (B, C, N, N) or (B, N, N) float32 sqrt(counts);
    x, y (B,) float64 object pixels; seed_channel (B,) int64 and offsets (B, C, 2) float32 (optional when
    C = 1); index (B,) int64.
    """

    def __init__(self, model: str | Path, *, canvas_hw: tuple[int, int], norm_factor: float | None = None,
                 dtype: str | None = None, device: str = "cpu", num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        else:
            from ptycho_torch.workflows.train import configure_threads

            configure_threads()  # OMP_NUM_THREADS when set (Ray sets it for its workers)
        self.predictor = PatchPredictor(model, device=device, dtype=dtype, norm_factor=norm_factor)
        config = self.predictor.config
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.weight = stitch_weight(self.predictor.probe, config.inference.stitch_weight)  # (N, N)

    def predict(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """Object patches of the batch's own patterns (the seed channel of each group, overlap-
        constrained with the group's `offsets` when given): (B, N, N) complex64, exactly what the
        local loop stitches."""
        amp = np.asarray(batch["amp"], dtype=np.float32)
        if amp.ndim == 3:
            amp = amp[:, None]  # (B, 1, N, N)
        if not amp.flags.writeable:  # Ray hands out read-only zero-copy batches
            amp = amp.copy()
        offsets = batch.get("offsets")
        offsets = None if offsets is None or amp.shape[1] == 1 else np.array(offsets, np.float32)
        patches = self.predictor(torch.from_numpy(amp), offsets)  # (B, C, N, N)
        seed = batch.get("seed_channel")
        seed_t = torch.zeros(len(amp), dtype=torch.long) if seed is None else torch.from_numpy(np.array(seed, np.int64))
        return patches[torch.arange(len(amp)), seed_t]

    def partial_canvas(self, patches: torch.Tensor, positions: np.ndarray) -> tuple[int, int, np.ndarray]:
        """`partial_canvas` with this predictor's canvas and stitching weight."""
        return partial_canvas(patches, positions, self.canvas_hw, self.weight)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Partial canvases of the batch, one output row per spatially compact subset (usually one):
        y0, x0, count (int64), canvas (3, h, w) float32, index (count,) int64, and t0, t1 (float64
        epoch seconds when this batch's work started and the row was done). Ragged columns are
        object arrays of arrays."""
        t0 = time.time()
        patches = self.predict(batch)  # (B, N, N)
        positions = np.stack([batch["x"], batch["y"]], axis=1)  # (B, 2) float64
        index = np.asarray(batch["index"], np.int64)
        parts = compact_subsets(positions.astype(np.float32), patches.shape[-1])
        rows: dict[str, list[Any]] = {k: [] for k in ("y0", "x0", "count", "canvas", "index", "t0", "t1")}
        for sel in parts:
            y0, x0, canvas = self.partial_canvas(patches[torch.from_numpy(sel)], positions[sel])
            for key, value in (("y0", y0), ("x0", x0), ("count", len(sel)), ("canvas", canvas),
                               ("index", index[sel]), ("t0", t0), ("t1", time.time())):
                rows[key].append(value)
        out = {k: np.array(rows[k]) for k in ("y0", "x0", "count", "t0", "t1")}
        for key in ("canvas", "index"):  # ragged: object arrays of arrays
            out[key] = np.empty(len(parts), dtype=object)
            for i, value in enumerate(rows[key]):
                out[key][i] = value
        return out


def compact_subsets(positions: np.ndarray, N: int, max_ratio: float = 1.0) -> list[np.ndarray]:
    """Split a batch into subsets whose patch bounding boxes hold at most `max_ratio` x (count x N²)
    pixels, by recursive median cuts along the longer side; positions (B, 2) (x, y) pixels.

    Consecutive patterns of raster or spiral scans are close, so a batch is normally one subset;
    scattered positions (random scan order, a batch spanning two files) give several small partial
    canvases instead of one canvas-sized one, so a partial canvas never costs much more than the
    patches it replaces (12 bytes per pixel vs 8).
    """
    out: list[np.ndarray] = []
    stack = [np.arange(len(positions))]
    while stack:
        idx = stack.pop()
        p = np.floor(positions[idx])
        span = p.max(axis=0) - p.min(axis=0)  # (2,) x, y extent of the corners
        if len(idx) == 1 or (span[0] + N) * (span[1] + N) <= max_ratio * len(idx) * N * N:
            out.append(idx)
            continue
        axis = int(np.argmax(span))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        half = len(order) // 2
        stack += [order[:half], order[half:]]
    return out


# ------------------------------------------------------------------ driver side

class CanvasSum:
    """The driver's (H, W) stitching sums, fed with partial canvases in any order.

    Tracks which global indices arrived (one byte per pattern) so that a lost or repeated batch is
    an error, not a silently wrong object.
    """

    def __init__(self, canvas_hw: tuple[int, int], weight: torch.Tensor, n_patterns: int) -> None:
        self.acc = StitchAccumulator(canvas_hw, weight)
        self.seen = np.zeros(n_patterns, dtype=bool)
        self.first_start, self.last_end = math.inf, -math.inf  # actor-side batch timestamps

    def add(self, y0: int, x0: int, canvas: np.ndarray, index: np.ndarray) -> int:
        """Add one partial canvas (3, h, w); returns the number of patterns it holds."""
        index = np.asarray(index, dtype=np.int64)
        if self.seen[index].any():
            raise RuntimeError(f"patterns {index[self.seen[index]][:5].tolist()} arrived twice; a "
                               "retried Ray Data task produced duplicate output")
        self.seen[index] = True
        c = torch.from_numpy(np.array(canvas, dtype=np.float32))  # a writable copy of a Ray buffer
        self.acc.add_partial(y0, x0, torch.complex(c[0], c[1]), c[2], len(index))
        return len(index)

    def add_batch(self, batch: dict[str, np.ndarray]) -> int:
        """Add every row of an output batch of `BatchPredictor` (ragged columns come as object arrays)."""
        if "t0" in batch and len(batch["t0"]):
            self.first_start = min(self.first_start, float(np.min(batch["t0"])))
            self.last_end = max(self.last_end, float(np.max(batch["t1"])))
        return sum(self.add(int(batch["y0"][i]), int(batch["x0"][i]), batch["canvas"][i], batch["index"][i])
                   for i in range(len(batch["count"])))

    @property
    def compute_seconds(self) -> float:
        """From the first batch entering an actor to the last batch leaving one (0 if unknown)."""
        return max(self.last_end - self.first_start, 0.0) if math.isfinite(self.first_start) else 0.0

    def result(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        missing = np.flatnonzero(~self.seen)
        if missing.size:
            raise RuntimeError(f"{missing.size} patterns never came back from Ray Data (first "
                               f"{missing[:5].tolist()})")
        return self.acc.result(threshold)


@dataclass
class ReconFrame:
    """What write_reconstruction reads of a scan: all positions in global order and the ground
    truth (objectGuess of the first file that has one, when its frame is the canvas)."""

    path: Path | None
    xcoords: np.ndarray
    ycoords: np.ndarray
    object_guess: np.ndarray | None


def _recon_frame(source: ScanSource, canvas_hw: tuple[int, int]) -> ReconFrame:
    truth = source.truth_file()
    obj = None
    if truth is not None:
        if truth.object_shape != canvas_hw:
            log.warning("no metrics: the objectGuess of %s is %s but the canvas of all files is %s",
                        truth.path, truth.object_shape, canvas_hw)
        else:
            obj = load_object_guess(truth.path)
    return ReconFrame(truth.path if truth is not None else None, source.xcoords, source.ycoords, obj)


def _quiet_ray_data(verbose: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose  # the driver shows its own tqdm bar over patterns
    ctx.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


def _resolve_concurrency(resources: dict[str, float], concurrency: int | None, cpus: float, gpus: float) -> int:
    """Actors that fit the cluster (default) or a checked user value (infeasible pools hang in Ray)."""
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus > 0 and have_gpu < gpus:
        raise ConfigError(f"--num-gpus-per-actor {gpus:g}: the Ray cluster has {have_gpu:g} GPUs; use 0 on CPU")
    fit = int(have_cpu // cpus) if cpus > 0 else 10**6
    if gpus > 0:
        fit = min(fit, int(have_gpu // gpus))
    if concurrency is None:
        return max(1, fit)
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    if concurrency > fit:
        raise ConfigError(f"--concurrency {concurrency} actors x ({cpus:g} CPU, {gpus:g} GPU) do not fit the "
                          f"Ray cluster ({have_cpu:g} CPUs, {have_gpu:g} GPUs); lower --concurrency "
                          "or --num-cpus-per-actor")
    return concurrency


def pattern_ids(n_patterns: int, block_size: int) -> Any:
    """A Ray Dataset of the global pattern indices (column "data", int64) in blocks of `block_size`.

    Built from in-memory blocks (8 bytes per pattern, like the positions the driver holds anyway)
    rather than from a dataset of block descriptors or `ray.data.range`, for two measured reasons:
    Ray Data fuses the read into the actors and bundles >= batch_size input rows per actor task, so
    one descriptor row per block would put B blocks, often the whole job, on a single actor; and
    `range` runs as separate 1-CPU read tasks that deadlock when the actors hold every CPU.
    """
    import ray.data

    return ray.data.from_numpy([np.arange(s, min(s + block_size, n_patterns), dtype=np.int64)
                                for s in range(0, n_patterns, block_size)])


def streaming_norm_factor(source: ScanSource, files: Sequence[FileRows], block_size: int) -> float:
    """r of all files together (SPEC 4.1) from a Ray Data pass of per-block energies."""
    ds = pattern_ids(source.n_patterns, block_size).map_batches(id_energies, batch_size=None,
                                                                 fn_kwargs={"files": files})
    energy, count = 0.0, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        energy += float(np.sum(batch["energy"]))
        count += int(np.sum(batch["count"]))
    return normalization_factor(energy / max(count, 1), source.N)


def reconstruct_distributed(
    model: str | Path,
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    concurrency: int | None = None,
    batch_size: int | None = None,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 1.0,
    dtype: str | None = None,
    block_size: int | None = None,
    renormalize: bool = False,
    validate: bool = True,
    ray_config: RayConfig | None = None,
    progress: bool | None = None,
) -> ReconResult:
    """Reconstruct the scan file(s) `data` with the bundle `model` on Ray Data into `out_dir`.

    Writes the same files as the local `ptycho_torch.workflows.reconstruct.reconstruct` (object.npz,
    PNGs, metrics.json when a file has objectGuess) and returns the same ReconResult; the object
    equals the local one for the same patterns (up to float32 summation order).
    """
    bundle_path = resolve_bundle_path(model).resolve()
    bundle = load_bundle(bundle_path)
    config = bundle.config
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if num_cpus_per_actor <= 0 or num_gpus_per_actor < 0:
        raise ConfigError("--num-cpus-per-actor must be > 0 and --num-gpus-per-actor >= 0")
    batch = batch_size or config.inference_batch_size
    if batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch}")
    source = open_scan_source(data, config.model.gridsize, validate=validate,
                              neighbor_count=config.data.neighbor_count, seed=config.execution.seed)
    if source.N != config.model.N:
        raise ValueError(f"the model {bundle_path} was trained on {config.model.N}x{config.model.N} patterns "
                         f"but {source.files[0].path} holds {source.N}x{source.N} patterns")
    canvas_hw = source.canvas_hw
    weight = stitch_weight(bundle.module.probe.detach().cpu(), config.inference.stitch_weight)
    files = source.file_rows()
    ray_config = ray_config or RayConfig()

    import ray.data

    from ptycho_dist.session import ray_session

    with ray_session(ray_config) as resources:
        _quiet_ray_data(ray_config.verbose)
        actors = _resolve_concurrency(resources, concurrency, num_cpus_per_actor, num_gpus_per_actor)
        rows_per_block = block_size or source.default_block_size(actors)
        n_blocks = math.ceil(source.n_patterns / rows_per_block)
        norm_factor = streaming_norm_factor(source, files, rows_per_block) if renormalize else bundle.norm_factor
        ds = pattern_ids(source.n_patterns, rows_per_block)
        ds = ds.map_batches(read_ids, batch_size=None, fn_kwargs={"files": files})
        ds = ds.map_batches(
            BatchPredictor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor,
            fn_constructor_kwargs={"model": str(bundle_path), "canvas_hw": canvas_hw,
                                   "norm_factor": norm_factor if renormalize else None, "dtype": dtype,
                                   "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
                                   "num_threads": max(1, round(num_cpus_per_actor))})
        total = CanvasSum(canvas_hw, weight, source.n_patterns)
        log.info("reconstructing %d patterns from %d file(s) on a %dx%d canvas: %d blocks of <= %d "
                 "patterns, %d actor(s) x (%g CPU, %g GPU), batch %d", source.n_patterns, len(source.files),
                 canvas_hw[0], canvas_hw[1], n_blocks, rows_per_block, actors, num_cpus_per_actor,
                 num_gpus_per_actor, batch)
        start = time.perf_counter()
        first: float | None = None
        with tqdm(total=source.n_patterns, unit="pattern", desc="reconstruct",
                  disable=None if progress is None else not progress) as bar:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                first = first if first is not None else time.perf_counter() - start
                bar.update(total.add_batch(out))
        seconds = time.perf_counter() - start
    obj, obj_weight = total.result(config.inference.weight_threshold)
    rate = source.n_patterns / max(seconds, 1e-9)
    compute = total.compute_seconds
    steady = source.n_patterns / compute if compute > 0 else rate
    log.info("reconstructed %d patterns in %.2f s: %.0f patterns/s end to end (actor start-up included), "
             "%.0f patterns/s while the actors computed (%.2f s)", source.n_patterns, seconds, rate, steady,
             compute)
    meta = {"model": str(bundle_path), "data": [str(f.path) for f in source.files],
            "n_patterns": source.n_patterns, "norm_factor": float(norm_factor), "patterns_per_second": rate,
            "engine": "ray_data", "concurrency": actors, "batch_size": batch,
            "num_cpus_per_actor": num_cpus_per_actor, "num_gpus_per_actor": num_gpus_per_actor,
            "dtype": dtype or config.inference.dtype, "block_size": rows_per_block, "n_blocks": n_blocks,
            "seconds": seconds, "first_result_seconds": first, "compute_seconds": compute,
            "patterns_per_second_compute": steady}
    frame = _recon_frame(source, canvas_hw)
    written = write_reconstruction(out_dir, obj, obj_weight, frame, meta)  # type: ignore[arg-type]
    return ReconResult(Path(out_dir), obj, obj_weight, rate, written.get("metrics"))


# ------------------------------------------------------------------ CLI

def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ptycho_torch.outputs import check_output_dir

    resolve_bundle_path(args.model)
    check_output_dir(args.out, "--out")  # before Ray starts and anything is computed
    result = reconstruct_distributed(
        args.model, args.data, args.out, concurrency=args.concurrency, batch_size=args.batch_size,
        num_gpus_per_actor=args.num_gpus_per_actor, num_cpus_per_actor=args.num_cpus_per_actor,
        dtype=args.dtype, block_size=args.block_size, renormalize=args.renormalize,
        validate=not args.no_validate,
        ray_config=RayConfig(address=args.address, verbose=getattr(args, "verbose", False)))
    print(f"wrote {result.out_dir / 'object.npz'} ({result.patterns_per_second:.0f} patterns/s)")
    if result.metrics:
        print(json.dumps({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}, indent=1))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `reconstruct` command of `ptycho-dist`."""
    p = subparsers.add_parser(
        "reconstruct", help="reconstruct scan file(s) with a trained model on Ray Data",
        description="Batch inference on Ray Data (model loaded once per actor) with streaming stitching; "
                    "writes object.npz, amplitude.png, phase.png and metrics.json (with a ground truth).")
    p.add_argument("--model", required=True, type=Path,
                   help="training run directory (holding model.pt) or the bundle file (required)")
    p.add_argument("--data", required=True, nargs="+",
                   help="scan file(s) (.npz/.h5/.hdf5) or quoted glob(s), positions in one object frame; "
                        "the canvas is the union of the files' frames (required)")
    p.add_argument("--out", required=True, type=Path, help="reconstruction directory (required)")
    p.add_argument("--concurrency", type=_positive_int, default=None,
                   help="number of inference actors (default: as many as the cluster's CPUs/GPUs fit)")
    p.add_argument("--batch-size", "--inference-batch-size", dest="batch_size", type=_positive_int, default=None,
                   help="patterns per network batch (default: the bundle's execution.inference_batch_size, "
                        "else training.batch_size)")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor; > 0 runs the network on CUDA, fractions share a GPU (default: 0)")
    p.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                   help="CPUs per actor, also its torch threads (default: 1)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="network dtype (default: the bundle's inference.dtype, normally float32)")
    p.add_argument("--block-size", type=_positive_int, default=None,
                   help="patterns per read block, several blocks per file (default: ~16 MiB of "
                        "amplitudes, at least 4 blocks per actor)")
    p.add_argument("--renormalize", action="store_true",
                   help="normalise with r of these files (a streaming pass) instead of the bundle's "
                        "training r (default: off)")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the driver's full pass over the patterns (NaN/Inf/negative checks); shapes, "
                        "probe and positions are still checked (default: validate)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto', ray://host:10001); default: RAY_ADDRESS, else an "
                        "embedded local Ray")
    p.set_defaults(func=cmd_reconstruct)
    return p
