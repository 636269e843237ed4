"""The Python API of ptycho_torch: what a notebook or a live pipeline calls (`import ptycho_torch as pt`).

    pt.simulate(out, **fields)       a synthetic scan: a file (out given) or a ScanData in memory
    pt.read_scan(data)               a scan file, a glob or several files as one scan (lazy diffraction)
    pt.train(data, out, **flags)     train on this machine; returns TrainResult (run_dir, bundle_path, ...)
    pt.reconstruct(model, data)      the object (H, W) complex64 from files, a scan object or arrays:
    pt.reconstruct(model, diffraction=d, positions=p)
    pt.evaluate(recon, truth)        metrics of a reconstruction (file or array) against a ground truth
    pt.RunConfig                     the run configuration (sections data/model/training/inference/trainer/...)

Keyword arguments mirror the command-line flags of `ptycho-torch` with '-' written '_'
(`--batch-size 8` is `batch_size=8`, `--N 32` is `N=32`, `--inference-batch-size` is
`inference_batch_size`); any config field is reachable as `overrides={"trainer.accumulate_grad_batches": 4}`.
Errors a user can fix are `UserError`s (ConfigError, ScanValidationError) with a one-line message
naming the argument (by its flag, `--out`) and the fix.

This is the front door below the command line: `ptycho-torch` parses its flags and calls these
functions (the one place where defaults < --config YAML < flags < a resumed run's config are applied
and inputs are checked); they call the workflows. Nothing here imports the command line or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from ptycho_torch.config import ConfigError, RunConfig, SimulationConfig, apply_overrides, load_run_config
from ptycho_torch.data.scan import ScanData
from ptycho_torch.data.scan_files import Scan, ScanPaths, read_scans
from ptycho_torch.data.validation import ScanValidationError, check_arrays
from ptycho_torch.errors import UserError

__all__ = ["RunConfig", "SimulationConfig", "check_batch_size", "check_device", "data_path", "demo", "evaluate",
           "flag_keywords", "live", "read_scan", "reconstruct", "resolve_device", "run_config", "scan_from_arrays", "simulate",
           "solve", "train"]

ConfigLike = Union[RunConfig, Mapping[str, Any], str, Path, None]


def flag_keywords() -> dict[str, str]:
    """The run-config flags of `ptycho-torch train` as Python keywords -> dotted fields
    (--batch-size -> batch_size -> training.batch_size, --no-progress-bar -> progress_bar=False)."""
    from ptycho_torch.config.flag_names import BOOL_FLAG_FIELDS, FLAG_FIELDS

    return {flag.lstrip("-").replace("-", "_"): dotted for flag, dotted in {**FLAG_FIELDS, **BOOL_FLAG_FIELDS}.items()}


def data_path(data: Any) -> str | list[str]:
    """`data` (one or several paths or globs, as --data takes them) as the value of data.path."""
    items = [str(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
    return items[0] if len(items) == 1 else items


def check_device(device: str) -> str:
    """A torch device string this machine has: 'cpu', 'cuda', 'cuda:N' (N < visible GPUs), 'mps'."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device!r}: no CUDA device is visible on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"--device {device!r}: only {count} CUDA device(s) are visible "
                              f"(cuda:0 ... cuda:{count - 1})")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"--device {device!r}: unsupported device type {parsed.type!r}; use cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; anything else checked by check_device."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def check_batch_size(value: int | None, flag: str = "--inference-batch-size") -> None:
    """Patterns per inference batch: None (the model's own) or >= 1."""
    if value is not None and value < 1:
        raise ConfigError(f"{flag}: got {value}; must be >= 1 (patterns per batch), or leave it out to use "
                          "the model's inference.batch_size")


def dotted_overrides(flags: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                     more_keywords: Sequence[str] = ()) -> dict[str, Any]:
    """`overrides` (dotted fields) <- `flags` (keywords of the CLI flags) as one dict of dotted fields.
    An unknown keyword is a ConfigError listing the flag keywords (and `more_keywords`, those a caller
    such as ptycho_dist.api takes besides)."""
    from ptycho_torch.config.renamed import RENAMED_FLAGS, renamed_flag

    known = flag_keywords()
    for old in RENAMED_FLAGS:
        keyword = old.lstrip("-").replace("-", "_")
        if keyword in flags:
            new = renamed_flag(keyword).lstrip("-").replace("-", "_")
            flags = {(new if k == keyword else k): v for k, v in flags.items()}
    unknown = sorted(set(flags) - set(known))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: unknown keyword(s); the flag keywords are "
                          f"{', '.join(sorted(set(known) | set(more_keywords)))}, and any config field goes in "
                          "overrides={'section.field': value}")
    return {**dict(overrides or {}), **{known[k]: v for k, v in flags.items()}}


def run_config(config: ConfigLike = None, data: ScanPaths | None = None, *,
               overrides: Mapping[str, Any] | None = None, base: RunConfig | None = None, **flags: Any) -> RunConfig:
    """The one resolver of a run's configuration (the command line's too): `config` (a RunConfig, a dict of sections, or a
    YAML file; it replaces `base`, e.g. a resumed run's config, as --config does) <- `overrides` (dotted
    fields) <- `flags`
    (keywords of the CLI flags, e.g. epochs=5, batch_size=8, N=32, learning_rate=3e-3, logger='csv'),
    plus `data` (a scan file, glob, or list of files) as data.path. Values are checked as in a file."""
    if isinstance(config, RunConfig):
        resolved = config
    elif isinstance(config, (str, Path)):
        resolved = load_run_config(config)
    elif config is None:
        resolved = base or RunConfig()
    elif isinstance(config, Mapping):
        resolved = RunConfig.from_dict(dict(config))
    else:
        raise ConfigError(f"config: expected a RunConfig, a dict of sections or a YAML path, got "
                          f"{type(config).__name__}")
    dotted = dotted_overrides(flags, overrides)
    if data is not None:
        dotted["data.path"] = data_path(data)
    return apply_overrides(resolved, dotted)


# ------------------------------------------------------------------ simulate / read

def simulate(out: str | Path | None = None, *, config: SimulationConfig | None = None, noise: bool = True,
             n_scans: int | None = None, defocus_range: tuple[float, float] | None = None,
             diameter_range: tuple[float, float] | None = None, nphotons_range: tuple[float, float] | None = None,
             acquire_hz: float | None = None, **fields: Any) -> Path | ScanData | list[Path]:
    """A synthetic scan (`ptycho-torch simulate`). `fields` are SimulationConfig fields (N=32,
    n_positions=100, object='grf', nphotons=1e6, seed=0, ...), applied over `config`. With `out` (.npz or
    .h5) the scan is written there and its path returned; without, the scan is returned in memory as a
    ScanData (diffraction (M, N, N) float32 sqrt(counts), positions (M, 2) (x, y) object pixels, probe
    (P, N, N), object_guess (H, W) complex64). `n_scans` K writes a corpus of K scans into the folder
    `out` (out/scan_000.npz, ...; other objects, probes spread over `defocus_range` (rad) and
    `diameter_range` (px), doses over `nphotons_range`, as --n-scans does) and returns their paths.
    `acquire_hz` writes `out` frame by frame at that rate, as a detector does: SCAN.h5 in SWMR mode, DIR/ (frame
    files) or tcp://*:PORT (ZMQ) (live.acquisition; what `live` watches); it returns after the last frame."""
    import dataclasses

    from ptycho_torch.data.simulate import simulate_scan, simulate_to_file

    base = config or SimulationConfig()
    names = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ConfigError(f"simulation: unknown field(s) {', '.join(unknown)}; SimulationConfig has {', '.join(sorted(names))}")
    sim = SimulationConfig.from_dict({**base.to_dict(), **fields})
    ranges = {"defocus_range": defocus_range, "diameter_range_px": diameter_range, "nphotons_range": nphotons_range}
    if n_scans is not None:
        if out is None:
            raise ConfigError("simulate: --n-scans (n_scans) writes a folder of scans; give --out DIR")
        from ptycho_torch.data.corpus_simulation import corpus_settings, simulate_corpus
        from ptycho_torch.safe_output import check_output_dir, holds_files

        out = Path(out)
        if out.suffix.lower() in (".npz", ".h5", ".hdf5"):
            raise ConfigError(f"--out {out}: --n-scans writes a folder of scans; give a directory, e.g. "
                              f"{out.parent / 'corpus'}")
        settings = corpus_settings(sim, n_scans, **ranges)
        check_output_dir(out, "--out")
        if holds_files(out):
            raise ConfigError(f"--out {out}: already holds files; choose an empty or new directory (scans are never "
                              "overwritten)")
        return simulate_corpus(settings, out, suffix=".npz")
    if any(v is not None for v in ranges.values()):
        raise ConfigError("--defocus-range, --diameter-range and --nphotons-range vary the scans of a corpus; "
                          "add --n-scans K (or set --probe-defocus / --probe-diameter-px / --nphotons)")
    if acquire_hz is not None:  # SCAN.h5, a directory of frame files (a name without suffix, DIR/) or tcp://
        if out is None:
            raise ConfigError("--acquire-hz: give --out SCAN.h5, --out DIR/ (frame files) or --out tcp://*:PORT")
        from ptycho_torch.live.acquisition import acquire

        stream = str(out).startswith(("tcp://", "ipc://"))
        target = str(out) if stream or Path(out).suffix else str(out).rstrip("/") + "/"
        return acquire(simulate_scan(sim, noise=noise), target, acquire_hz, progress=True)
    if out is not None:
        from ptycho_torch.safe_output import check_output_dir

        if Path(out).is_dir():
            raise ConfigError(f"--out {out}: is a directory; give the scan file to write, e.g. {out}/scan.npz")
        check_output_dir(Path(out).parent, "--out (its folder)")
        return simulate_to_file(sim, out, noise=noise)
    arrays = simulate_scan(sim, noise=noise)
    return ScanData(path=None, probe=arrays["probe"], xcoords=arrays["xcoords"], ycoords=arrays["ycoords"],
                    object_guess=arrays["object_guess"], scan_index=arrays["scan_index"],
                    metadata=arrays["metadata"], diffraction=arrays["diffraction"])


def live(model: Any, watch: str | Path, out: str | Path, *, publish_seconds: float = 5.0, idle_seconds: float = 30.0,
         start_timeout_s: float = 120.0, inference_batch_size: int | None = None, device: str = "auto",
         refine_seconds: float = 0.0, fit_patterns: int = 256, progress: bool | None = None) -> Any:
    """Reconstruct a scan while it is acquired (`ptycho-torch live`, docs/live.md): `watch` an HDF5 file growing in
    SWMR mode, a directory where frame files appear or a ZMQ stream (tcp://HOST:PORT); the picture so far into
    out/live/ every `publish_seconds`, at the end mark (or `idle_seconds` without a frame) `reconstruct`'s products."""
    from ptycho_torch.live.loop import LiveOptions, live_reconstruct

    check_batch_size(inference_batch_size)
    options = LiveOptions(publish_seconds=publish_seconds, idle_seconds=idle_seconds, start_timeout_s=start_timeout_s,
                          batch_size=inference_batch_size, device=resolve_device(device),
                          refine_seconds=refine_seconds, fit_patterns=fit_patterns, progress=progress)
    return live_reconstruct(model_source(model), watch, out, options)


def read_scan(data: ScanPaths, *, validate: bool = True) -> Scan:
    """A scan file (.npz/.h5), a glob ('scans/part*.h5') or several files of one scan, validated
    against the data contract (one error listing every problem); diffraction stays on disk where the
    file allows it. Returns a ScanData (one file) or ScanFiles (several), the same interface."""
    return read_scans(data, validate=validate)


# ------------------------------------------------------------------ train

def train(data: ScanPaths | None = None, out: str | Path | None = None, *, config: ConfigLike = None,
          resume: bool | str | Path = False, overwrite: bool = False, allow_other_data: bool = False,
          callbacks: Sequence[Any] = (), loggers: Sequence[Any] = (), overrides: Mapping[str, Any] | None = None,
          **flags: Any) -> Any:
    """Train on this machine (`ptycho-torch train`): `data` the scan (or data.path of `config`), `out`
    the run directory to create. `resume=True` continues `out` (or `resume=RUN_DIR` that run) from its
    last checkpoint up to the configured epochs, its config.yaml under `config`/`flags`
    (`allow_other_data` lets it continue on other scan files). `flags` are the CLI's run flags as
    keywords (epochs, batch_size, N, gridsize, learning_rate, logger, seed, ...), `overrides` any dotted
    config field; `callbacks` / `loggers` Lightning Callback / Logger objects added to the configured ones.
    Returns the training.train.TrainResult (run_dir, bundle_path, metrics, history, seconds)."""
    from ptycho_torch.training.train import train as train_run

    base = None
    if resume is not False and resume is not None:
        run_dir = Path(out if resume is True else resume)  # type: ignore[arg-type]
        if resume is not True and out is not None and Path(out) != run_dir:
            raise ConfigError("--resume continues a run in its own directory; drop --out (or pass resume=True "
                              "with out=RUN_DIR)")
        if resume is True and out is None:
            raise ConfigError("resume=True continues the run in out; pass out=RUN_DIR (or resume=RUN_DIR)")
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / 'config.yaml'} does not exist; --resume takes "
                                    "the directory of an earlier `ptycho-torch train --out RUN_DIR`")
        if overwrite:
            raise ConfigError("--overwrite starts a new run and --resume continues one; give only one")
        base = load_run_config(run_dir / "config.yaml")
    else:
        if out is None:
            raise ConfigError("train needs --out RUN_DIR (out=, the run directory to create), or --resume RUN_DIR")
        run_dir = Path(out)
    from ptycho_torch.training.warm_start import resolve_with_warm_start

    resolved = resolve_with_warm_start(
        lambda start: run_config(config, data, overrides=overrides, base=base if start is None else start, **flags),
        has_config=config is not None or base is not None)
    if not resolved.data.path:
        raise ConfigError("train needs --data SCAN (data=: a scan file, glob or list of files) or data.path in the "
                          "--config file")
    return train_run(resolved, run_dir, resume=base is not None, overwrite=overwrite, callbacks=callbacks,
                     loggers=loggers, allow_other_data=allow_other_data)


# ------------------------------------------------------------------ reconstruct

_POSITION_NAMES = {"xcoords": "positions[:, 0] (x)", "ycoords": "positions[:, 1] (y)"}


def scan_from_arrays(diffraction: Any, positions: Any, probe: Any, object_guess: Any = None) -> ScanData:
    """An in-memory ScanData from arrays, checked like a scan file (one error listing every problem).

    diffraction (n, N, N): amplitudes sqrt(counts) (float), or photon counts (any integer dtype,
    converted to float32 sqrt(counts)); positions (n, 2) float: (x, y) = (column, row) in object pixels,
    the frame of the scan files (docs/data_format.md); probe (N, N) or (P, N, N) complex; object_guess
    (H, W) complex, optional: the reference in the same frame (sets the canvas shape, as a file's
    objectGuess does)."""
    d = np.asarray(diffraction)
    problems: list[str] = []
    if d.dtype.kind in "iu":
        if d.dtype.kind == "i" and d.size and int(d.min()) < 0:
            problems.append(f"diffraction: integer photon counts must be >= 0, found {int((d < 0).sum())} negative "
                            "values; clip background-subtracted counts at 0")
            d = np.clip(d, 0, None)
        d = np.sqrt(d, dtype=np.float32)
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 2:
        problems.append(f"positions: expected shape (n, 2) holding (x, y) = (column, row) object pixels, found "
                        f"shape {pos.shape}; stack them as np.stack([x, y], axis=1)")
        pos = np.zeros((d.shape[0] if d.ndim else 0, 2))
    arrays = {"diffraction": d, "probeGuess": np.asarray(probe), "xcoords": pos[:, 0], "ycoords": pos[:, 1],
              "objectGuess": None if object_guess is None else np.asarray(object_guess)}
    found, _ = check_arrays(arrays)
    for line in found:
        key = line.split(":", 1)[0]
        problems.append(_POSITION_NAMES[key] + line[len(key):] if key in _POSITION_NAMES else line)
    if problems:
        raise ScanValidationError(problems, "arrays given to reconstruct")
    return ScanData(path=None, probe=probe, xcoords=pos[:, 0], ycoords=pos[:, 1], object_guess=object_guess,
                    metadata={"source": "in-memory arrays"}, diffraction=d)


def model_source(model: Any) -> Any:
    """A run directory / bundle path as is; a LoadedBundle as is; anything holding a `bundle_path`
    (a TrainResult of pt.train or ptycho_dist.training.driver) as that path."""
    from ptycho_torch.model.bundle import LoadedBundle

    if isinstance(model, (str, Path, LoadedBundle)):
        return model
    if hasattr(model, "bundle_path"):
        return Path(model.bundle_path)
    raise UserError(f"model: expected a run directory, a model.pt path, a loaded bundle or a train result, got "
                    f"{type(model).__name__}")


def reconstruct(model: Any, data: ScanPaths | Scan | None = None, out: str | Path | None = None, *,
                diffraction: Any = None, positions: Any = None, object_guess: Any = None,
                inference_batch_size: int | None = None, device: str = "auto", probe: Any = "auto",
                normalization: str = "scan", renormalize: bool = False, align_phases: bool = False,
                refine_seconds: float = 0.0, progress: bool | None = None, with_weight: bool = False,
                grouping: str | None = None, refine_probe: bool = False, full_result: bool = False,
                dtype: str | None = None) -> Any:
    """Reconstruct a scan with a trained model (`ptycho-torch reconstruct`) and return the object,
    (H, W) complex64 in the positions' pixel frame (object[y, x]); zero where no patch reached.

    `model`: a run directory or model.pt, a loaded bundle (model.bundle.load_bundle) or a train result. The
    scan is either `data` (file(s)/glob, or a scan from pt.read_scan / pt.simulate) or the arrays
    `diffraction` (n, N, N) amplitudes or integer counts and `positions` (n, 2) (x, y) object pixels (with
    optional `object_guess` (H, W), see scan_from_arrays). Both give the same numbers for the same patterns.
    With `out` the reconstruction directory is written as on the command line (object.npz, PNGs, products,
    metrics.json with a ground truth). The other keywords are the CLI flags: inference_batch_size (patterns
    per batch), device ('auto' = a GPU when there is one, 'cpu', 'cuda:0'), probe ('auto', 'scan', 'model';
    with arrays also the probe of those frames, (N, N) or (P, N, N) complex, which then is their 'scan' probe;
    arrays without one take the model's), normalization ('scan' = r of these patterns, 'model' = the model's),
    renormalize, align_phases, refine_seconds (s), refine_probe, grouping ('cover', 'every_pattern'; None =
    the model's inference.grouping), dtype ('auto', 'float32', 'bfloat16'; None = the model's
    inference.dtype). `with_weight` also returns the stitching weight (H, W) float32 (its support is the
    scanned region; pt.evaluate uses it); `full_result` returns the whole ReconResult instead (object, weight,
    metrics, the files written, `summary_lines()`: what the command prints)."""
    from ptycho_torch.reconstruction.reconstruct import reconstruct as reconstruct_scan

    check_batch_size(inference_batch_size)
    device = resolve_device(device)
    if dtype not in (None, "auto", "float32", "bfloat16"):
        raise UserError(f"--dtype: got {dtype!r}; choose auto, float32 or bfloat16")
    if refine_seconds < 0:
        raise UserError(f"--refine-seconds must be >= 0 (0 = no refinement), got {refine_seconds:g}")
    model = model_source(model)
    if isinstance(model, (str, Path)):
        from ptycho_torch.model.bundle import resolve_bundle_path

        resolve_bundle_path(model)
    arrays_given = diffraction is not None or positions is not None
    if (data is None) == (not arrays_given):
        raise UserError("reconstruct: give either data (scan file(s) or a scan) or diffraction= and positions= "
                        "arrays, not both" if arrays_given else "reconstruct: give data (scan file(s) or a scan) "
                        "or diffraction= and positions= arrays")
    if arrays_given:
        if diffraction is None or positions is None:
            raise UserError("reconstruct: diffraction= (n, N, N) and positions= (n, 2) go together; give both")
        from ptycho_torch.model.bundle import LoadedBundle, load_bundle

        model = model if isinstance(model, LoadedBundle) else load_bundle(model)
        frames_probe = model.module.probe.detach().cpu().numpy() if isinstance(probe, str) else probe
        data = scan_from_arrays(diffraction, positions, frames_probe, object_guess)
        probe = probe if isinstance(probe, str) else "scan"
    elif object_guess is not None or not isinstance(probe, str):
        raise UserError("reconstruct: object_guess and a probe array go with diffraction= and positions=; a scan "
                        "file carries its own objectGuess and probeGuess (probe= then picks 'auto', 'scan' or 'model')")
    if out is not None:
        from ptycho_torch.safe_output import check_output_dir

        check_output_dir(out, "--out")
    result = reconstruct_scan(model, data, out, batch_size=inference_batch_size, device=device,
                              renormalize=renormalize, progress=progress, refine_seconds=refine_seconds,
                              refine_probe=refine_probe,
                              align_phases=align_phases, probe=probe, normalization=normalization,
                              grouping=grouping, dtype=dtype)
    if full_result:
        return result
    return (result.object, result.weight) if with_weight else result.object


# ------------------------------------------------------------------ evaluate

def evaluate(recon: Any, truth: Any, *, weight: Any = None, out: str | Path | None = None, plane_fit: bool = False
             ) -> dict[str, Any]:
    """Score a reconstruction against a ground truth (`ptycho-torch evaluate`); returns the metrics
    (amplitude/phase PSNR and SSIM, FRC; see metrics.evaluate_reconstruction).

    `recon`: an object.npz (or its directory), or the object (H, W) complex in memory, or the
    (object, weight) pair of pt.reconstruct(..., with_weight=True); `weight` (H, W) limits the score to
    the scanned region (without one, every pixel of an in-memory object counts). `truth`: a scan file
    with objectGuess, an object .npy/.npz, or an (H, W) complex array. Files are written only for a
    recon file (metrics.json next to it, or `out`) or when `out` is given."""
    from ptycho_torch.evaluation.evaluate import load_recon, load_truth, score
    from ptycho_torch.evaluation.metrics import evaluate_reconstruction

    if isinstance(recon, (str, Path)):
        path = Path(recon) / "object.npz" if Path(recon).is_dir() else Path(recon)
        obj, recon_weight = load_recon(path)
        weight = recon_weight if weight is None else weight
    else:
        if isinstance(recon, tuple) and len(recon) == 2:
            recon, weight = recon[0], recon[1] if weight is None else weight
        obj, path = np.asarray(recon), None
        if obj.ndim != 2:
            raise UserError(f"recon: expected the object (H, W), found shape {obj.shape}")
    truth_path = Path(truth) if isinstance(truth, (str, Path)) else None
    truth_arr = load_truth(truth_path) if truth_path is not None else np.asarray(truth, dtype=np.complex64)
    weight = None if weight is None else np.asarray(weight, dtype=np.float32)
    if path is not None or out is not None:
        from ptycho_torch.safe_output import check_output_dir

        target = Path(out) if out is not None else path.parent / "metrics.json"  # type: ignore[union-attr]
        if target.is_dir():
            raise ConfigError(f"--out {target}: is a directory; give the metrics JSON file to write")
        check_output_dir(target.parent, "--out (its folder)")
        label = path if path is not None else Path(out).parent / "object (in memory)"
        w = weight if weight is not None else np.ones(obj.shape, np.float32)
        return score(obj, w, truth_arr, label, truth_path, out, plane_fit)
    if obj.shape != truth_arr.shape:
        raise UserError(f"recon has shape {obj.shape} but the ground truth has shape {truth_arr.shape}; both must "
                        "be in the scan's pixel frame (docs/data_format.md)")
    return evaluate_reconstruction(obj, truth_arr, weight, plane_fit)


def solve(data: ScanPaths | Scan | None, out: str | Path | None = None, *, seconds: float | None = 60.0,
          epochs: int | None = None, probe: str = "file", modes: int = 1, positions: bool = False,
          fixed_probe: bool = False, half_scan: bool = False, batch: int = 16, seed: int = 0, device: str = "auto",
          progress: bool | None = None, fit_patterns: int | None = None, config: ConfigLike = None,
          overrides: Mapping[str, Any] | None = None) -> Any:
    """Reconstruct object and probe iteratively (`ptycho-torch solve`): no model, the first answer on
    a measured scan, the probe to train with, the resolution by half-scan FRC.

    `data`: scan file(s)/glob or a scan (pt.read_scan / pt.simulate); None = data.path of `config`.
    How files are read is the data section of `config` (a run YAML, RunConfig or dict) and
    `overrides` ({"data.probe": ..., "model.N": 64}), as for training. Runs `seconds` of wall clock
    (None or 0 = no limit) or `epochs` passes (the first reached). `probe` 'file' (the scan's) or
    'estimate' (from the data); `modes` incoherent probe modes; `positions` corrects the scan
    positions; `fixed_probe` keeps the starting probe; `half_scan` adds the half-scan FRC; `device`
    'auto' (a GPU when there is one), 'cpu', 'cuda:0'; `fit_patterns` patterns the data fit reads
    (0 = none; default 2048 when `out` is given, else 0). With `out` the products are written as on the
    command line. Returns a reconstruction.solve.SolveResult: .object (H, W) complex64, .probe (K, N, N)
    complex64 in photon units, .weight, .positions, .data_fit, .resolution, .metrics (with a truth)."""
    from dataclasses import replace

    from ptycho_torch.data.beamline import ReadOptions
    from ptycho_torch.reconstruction.solve import solve_scan
    from ptycho_torch.reconstruction.solver.engine import SolverOptions

    device = resolve_device(device)
    if out is not None:
        from ptycho_torch.safe_output import check_output_dir

        check_output_dir(out, "--out")
    read = None
    if data is None or isinstance(data, (str, Path, list, tuple)):
        run = run_config(config, data, overrides=overrides)
        if not run.data.path:
            raise ConfigError("solve needs --data SCAN (data=: a scan file, glob or list of files)")
        data = run.data.path
        read = replace(ReadOptions.from_config(run), probe_optional=probe == "estimate")
    elif config is not None or overrides:
        raise ConfigError("solve: config and overrides say how scan files are read; a scan already read "
                          "(pt.read_scan) carries its own settings")
    try:
        options = SolverOptions(modes=modes, positions=positions, refine_probe=not fixed_probe, batch=batch, seed=seed)
    except ValueError as e:
        raise ConfigError(str(e).replace("solver.", "--").replace("_", "-")) from None
    if fit_patterns is None:
        fit_patterns = 2048 if out is not None else 0
    return solve_scan(data, out, seconds=seconds or None, epochs=epochs, probe=probe, options=options,
                      read_options=read, device=device, progress=progress, half_scan=half_scan,
                      fit_patterns=fit_patterns)


def demo(out: str | Path, *, epochs: int | None = None, n_positions: int = 1000, minutes: float | None = None
         ) -> Any:
    """The demo (`ptycho-torch demo`): simulate, train, reconstruct and evaluate into `out` (a new or
    empty directory) within `minutes` of training (None = the demo's default budget, 0 = none) or
    `epochs`; returns the summary."""
    from ptycho_torch.demo import DEMO_EPOCHS, DEMO_MINUTES, run_demo
    from ptycho_torch.safe_output import check_output_dir, holds_files

    check_output_dir(out, "--out")
    if holds_files(Path(out) / "run"):
        raise ConfigError(f"--out {out}: already holds a demo run ({Path(out) / 'run'}); choose another "
                          "--out (or move that one away): trained runs are never overwritten")
    minutes = DEMO_MINUTES if minutes is None else minutes
    return run_demo(Path(out), epochs=DEMO_EPOCHS if epochs is None else epochs, n_positions=n_positions,
                    minutes=minutes or None)
