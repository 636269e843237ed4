"""Pty-chi (PyPI `ptychi`) ePIE / LSQML on one scan file, known probe, flat start: the iterative
reference solver of the quality and generalisation benchmarks.

Runs in any Python that has ptychi (the `bench` extra, or a separate environment): it imports only
numpy and ptychi, reads an NPZ of our data contract and writes the reconstructed object. The caller
scores it (`quality.py` does, with the same metric and region as the network).

Conventions translated (ours -> Pty-chi), checked by the SSIM the solver reaches on our scans:
    data        diffraction X = sqrt(counts), DC at the centre  ->  intensities X**2, fft_shift=True
    far field   fft2(norm='ortho')                              ->  unnormalised fft2: probe / N
    positions   patch pixel N/2 on object pixel (y, x)          ->  patch centre at (N-1)/2: (y, x) - 0.5,
                                                                    origin at the object's top-left pixel
    object      (H, W) frame of objectGuess                     ->  the same buffer, flat start of ones

Pty-chi 2.2 imports torchvision for one function (`GaussianBlur`, used only to draw a random initial
object, which we never ask for). PyPI's torchvision wheels for torch 2.13 need CUDA libraries; on a
CPU-only torch they fail to import (`operator torchvision::nms does not exist`). In that case this
script puts in its place a module whose `GaussianBlur` raises when called, so a run that needed it
would fail loudly rather than differ; the output records whether that happened.

    python benchmarks/ptychi_solver.py SCAN.npz OUT.npz --method epie --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np


def import_ptychi() -> tuple[object, bool]:
    """(ptychi.api, whether torchvision had to be replaced, see the module docstring)."""
    try:
        import ptychi.api as api

        return api, False
    except (RuntimeError, ImportError) as error:
        if "torchvision" not in f"{error!r} {getattr(error, 'name', '')}" and "nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "ptychi"))]:
        del sys.modules[name]

    class GaussianBlur:  # never called by the runs below; fails loudly if it were
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("torchvision could not be imported, and this Pty-chi run needed GaussianBlur")

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur  # type: ignore[attr-defined]
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms
    import ptychi.api as api

    return api, True


def options_for(api: object, method: str, scan: dict[str, np.ndarray], batch_size: int, seed: int,
                refine_probe: bool = False, refine_positions: bool = False) -> object:
    """Pty-chi task options: object from a flat start; the probe and the positions known (not
    optimised) unless `refine_probe` / `refine_positions` (then Pty-chi's own defaults for them, the
    object/probe ambiguity removal left on)."""
    import torch

    a = api  # ptychi.api
    options = {"epie": a.EPIEOptions, "lsqml": a.LSQMLOptions}[method]()
    X = scan["diffraction"].astype(np.float32)
    M, N, _ = X.shape
    options.data_options.data = np.square(X)
    options.data_options.fft_shift = True
    H, W = scan["objectGuess"].shape if "objectGuess" in scan else (int(v) for v in scan["object_shape"])
    options.object_options.initial_guess = torch.ones((1, H, W), dtype=torch.complex64)
    options.object_options.determine_position_origin_coords_by = a.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.zeros(2)
    options.object_options.remove_object_probe_ambiguity.enabled = refine_probe  # off while the probe is fixed
    probe = np.asarray(scan["probeGuess"], np.complex64)
    probe = probe[None] if probe.ndim == 2 else probe
    options.probe_options.initial_guess = torch.from_numpy(probe[None] / N)  # (1 OPR mode, P, N, N)
    options.probe_options.optimizable = refine_probe
    options.probe_position_options.position_x_px = np.asarray(scan["xcoords"], np.float64) - 0.5
    options.probe_position_options.position_y_px = np.asarray(scan["ycoords"], np.float64) - 0.5
    options.probe_position_options.optimizable = refine_positions
    options.reconstructor_options.batch_size = batch_size
    options.reconstructor_options.random_seed = seed
    options.reconstructor_options.default_device = (a.Devices.GPU if torch.cuda.is_available() else a.Devices.CPU)
    return options


def current_object(task: object) -> np.ndarray:
    obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True))  # type: ignore[attr-defined]
    return (obj[0] if obj.ndim == 3 else obj).astype(np.complex64)


def solve(scan_path: Path, method: str, seconds: float, batch_size: int, seed: int = 0,
          chunk_epochs: int = 5, curve: bool = False, refine_probe: bool = False,
          refine_positions: bool = False) -> dict[str, object]:
    """Reconstruct for about `seconds` of wall clock (whole chunks of `chunk_epochs` epochs; set-up
    included in the time): {'object': (H, W) complex64, 'epochs', 'seconds', 'torchvision_replaced'}.
    With `curve`, also the object after every chunk: 'snapshots' (K, H, W) complex64 and
    'snapshot_seconds', 'snapshot_epochs' (K,): solver seconds and epochs at each (copying the
    snapshots out is not counted)."""
    api, replaced = import_ptychi()
    from ptychi.api.task import PtychographyTask

    with np.load(scan_path) as f:
        scan = {k: f[k] for k in ("diffraction", "probeGuess", "xcoords", "ycoords", "objectGuess", "object_shape")
                if k in f.files}
    start = time.perf_counter()
    options = options_for(api, method, scan, batch_size, seed, refine_probe, refine_positions)
    options.reconstructor_options.num_epochs = chunk_epochs
    task = PtychographyTask(options)
    epochs, paused = 0, 0.0
    snapshots: list[np.ndarray] = []
    at: list[tuple[float, int]] = []
    while epochs == 0 or time.perf_counter() - start - paused < seconds:
        task.run(n_epochs=chunk_epochs)
        epochs += chunk_epochs
        if curve:
            t = time.perf_counter()
            at.append((t - start - paused, epochs))
            snapshots.append(current_object(task))
            paused += time.perf_counter() - t
    probe = np.asarray(task.get_data_to_cpu("probe", as_numpy=True))[0] * scan["diffraction"].shape[-1]  # to ortho units
    positions = np.stack([np.asarray(task.get_data_to_cpu("probe_positions", as_numpy=True))[:, 1] + 0.5,
                          np.asarray(task.get_data_to_cpu("probe_positions", as_numpy=True))[:, 0] + 0.5], axis=1)
    out: dict[str, object] = {"object": current_object(task), "probe": probe.astype(np.complex64),
                              "positions": positions, "epochs": epochs,
                              "seconds": time.perf_counter() - start - paused, "torchvision_replaced": replaced}
    if curve:
        out.update(snapshots=np.stack(snapshots), snapshot_seconds=np.array([a for a, _ in at]),
                   snapshot_epochs=np.array([e for _, e in at]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path, help="an NPZ of the data contract with probeGuess and objectGuess (or, "
                        "for a measured scan, an object_shape key (H, W))")
    parser.add_argument("out", type=Path, help="NPZ written with `object` (H, W) complex64")
    parser.add_argument("--method", choices=("epie", "lsqml"), default="epie", help="default: epie")
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget (default: 60)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="patterns per update (default: 16 for epie, 96 for lsqml)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--chunk-epochs", type=int, default=5, help="epochs between time checks (default: 5)")
    parser.add_argument("--curve", action="store_true",
                        help="also write the object after every chunk (snapshots, snapshot_seconds, snapshot_epochs)")
    parser.add_argument("--refine-probe", action="store_true", help="optimise the probe too (default: off)")
    parser.add_argument("--refine-positions", action="store_true", help="correct the positions (default: off)")
    args = parser.parse_args()
    batch = args.batch_size or {"epie": 16, "lsqml": 96}[args.method]
    result = solve(args.scan, args.method, args.seconds, batch, args.seed, args.chunk_epochs, args.curve,
                   args.refine_probe, args.refine_positions)
    arrays = {k: result.pop(k) for k in ("object", "probe", "positions", "snapshots", "snapshot_seconds",
                                         "snapshot_epochs") if k in result}
    np.savez(args.out, **arrays)
    print(json.dumps({"method": args.method, "batch_size": batch, **result}))


if __name__ == "__main__":
    main()
