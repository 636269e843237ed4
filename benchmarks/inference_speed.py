"""The network pass of reconstruction against the machine's limit (issue 31, item 7): FLOPs per pattern, the
rate as a fraction of peak, and today's path against the old one, side by side in one process.

Paths (the same bundle, scan, batches and threads; repeats interleaved, the fastest kept):
    old     float32, the network's input as it comes (before issue 31)
    cl      float32, the input made channels-last like the weights
    bf16    bfloat16 autocast for the convolutions, input as it comes
    new     inference.dtype 'auto' (bfloat16 where the CPU/GPU computes it natively) + channels-last input:
            today's default
Measured: `reconstruct` end to end (patterns/s) and the module's forward alone (network + back-propagated
input + overlap constraint: what PatchPredictor runs per batch). FLOPs per pattern by
torch.utils.flop_counter (convolutions; a multiply-add counts 2). Peak = cores x clock x 32 FLOP/cycle
(two 256-bit FMA pipes of float32: AVX2, or Zen 4's AVX-512; an assumption printed with the result).

Quality: a model trained `--train-minutes` on a lines scan reconstructs another lines scan with each path;
SSIM against the truth and the data fit must be unchanged.

    .venv/bin/python benchmarks/inference_speed.py            # N=64, 2048 patterns, gridsize 2, width 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bundles import one_epoch_bundle
from docs_page import load_note, write_section

RESULTS = Path(__file__).resolve().parent / "results" / "inference_speed.json"
TITLE = "## Inference speed against the machine's peak"
PATHS = {"old": ("float32", False), "cl": ("float32", True), "bf16": ("bfloat16", False), "new": ("auto", True)}


def clock_ghz() -> float:
    """The CPU clock from /proc/cpuinfo (the largest 'cpu MHz'), GHz; 0 when unknown."""
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else 0.0
    except OSError:
        return 0.0


def with_path(bundle: Any, name: str) -> Any:
    from ptycho_torch.config import apply_overrides
    from ptycho_torch.model.network import PtychoNet

    dtype, channels_last = PATHS[name]
    PtychoNet.channels_last_input = channels_last
    return dataclasses.replace(bundle, config=apply_overrides(bundle.config, {"inference.dtype": dtype}))


def flops_per_pattern(bundle: Any, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    N, C = bundle.config.model.N, bundle.config.model.gridsize ** 2
    x, offsets = torch.rand(batch, C, N, N), torch.randn(batch, C, 2) * 4
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        bundle.module(x, offsets)
    return counter.get_total_flops() / (batch * C)


def forward_rate(bundle: Any, name: str, batch: int, reps: int) -> float:
    """Patterns/s of PatchPredictor's forward (random inputs) on `name`'s path."""
    from ptycho_torch.reconstruction.reconstruct import PatchPredictor

    predictor = PatchPredictor(with_path(bundle, name))
    N, C = bundle.config.model.N, bundle.config.model.gridsize ** 2
    x, offsets = torch.rand(batch, C, N, N), torch.randn(batch, C, 2) * 4
    predictor(x, offsets)
    start = time.perf_counter()
    for _ in range(reps):
        predictor(x, offsets)
    return reps * batch * C / (time.perf_counter() - start)


def reconstruct_run(bundle: Any, name: str, scan: Path, out: Path) -> Any:
    from ptycho_torch.reconstruction.reconstruct import reconstruct

    return reconstruct(with_path(bundle, name), scan, out, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--patterns", type=int, default=2048)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32, help="groups per forward batch (default: 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-minutes", type=float, default=3.0, help="training of the quality check's model")
    parser.add_argument("--quality-N", type=int, default=32, help="pattern size of the quality check (default: 32)")
    args = parser.parse_args()
    from ptycho_torch.config import SimulationConfig, apply_overrides
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.demo import demo_run_config
    from ptycho_torch.model.bundle import load_bundle
    from ptycho_torch.reconstruction.reconstruct import network_dtype
    from ptycho_torch.training.train import train

    torch.set_num_threads(os.cpu_count() or 1)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="inference-speed-") as tmp:
        work = Path(tmp)
        bundle = load_bundle(one_epoch_bundle(work, args.N, args.scale))
        scan = simulate_to_file(SimulationConfig(N=args.N, n_positions=args.patterns, seed=3), work / "scan.npz")
        flops = flops_per_pattern(bundle, 8)
        speed: dict[str, dict[str, float]] = {name: {"forward": 0.0, "reconstruct": 0.0} for name in PATHS}
        for _ in range(args.repeats):  # interleaved: a busy neighbour slows every path alike
            for name in PATHS:
                speed[name]["forward"] = max(speed[name]["forward"], forward_rate(bundle, name, args.batch, 5))
                rate = reconstruct_run(bundle, name, scan, work / f"out_{name}").patterns_per_second
                speed[name]["reconstruct"] = max(speed[name]["reconstruct"], rate)
        # quality: a trained model, each path, SSIM and data fit against the truth
        train_scan = simulate_to_file(SimulationConfig(N=args.quality_N, object="lines", n_positions=1000, seed=0),
                                      work / "train.npz")
        config = apply_overrides(demo_run_config(train_scan, 200, args.train_minutes),
                                 {"trainer.enable_progress_bar": False, "logging.logger": None})
        trained = load_bundle(train(config, work / "run").bundle_path)
        test = simulate_to_file(SimulationConfig(N=args.quality_N, object="lines", n_positions=1000, seed=21),
                                work / "test.npz")
        quality = {}
        for name in ("old", "new"):
            r = reconstruct_run(trained, name, test, work / f"q_{name}")
            quality[name] = {"phase_ssim": r.metrics["phase_ssim"], "amplitude_ssim": r.metrics["amplitude_ssim"],
                             "data_fit": r.data_fit["ratio"]}
        import numpy as np

        a = np.load(work / "q_old" / "object.npz")["object"]
        b = np.load(work / "q_new" / "object.npz")["object"]
        quality["max_abs_difference"] = float(np.abs(a - b).max())
    from ptycho_torch.model.network import PtychoNet

    PtychoNet.channels_last_input = True
    cores, ghz = os.cpu_count() or 1, clock_ghz()
    peak = cores * ghz * 1e9 * 32
    result = {"machine": platform.processor() or platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "cores": cores, "clock_ghz": ghz, "peak_gflops_assumed": peak / 1e9, "N": args.N, "gridsize": 2,
              "n_filters_scale": args.scale, "mflop_per_pattern": flops / 1e6, "auto_dtype": network_dtype("auto", "cpu"),
              "speed": speed, "quality": quality, "load": load_note(load_start, os.getloadavg()[0], cores)}
    RESULTS.write_text(json.dumps(result, indent=1))
    lines = [TITLE, "", f"`.venv/bin/python benchmarks/inference_speed.py` on {cores} cores "
             f"({result['cpu_capability']}, {ghz:.2f} GHz): N={args.N}, gridsize 2, n_filters_scale {args.scale}, "
             f"{args.patterns} patterns. The network costs {flops / 1e6:.0f} MFLOP per pattern (convolutions, "
             f"multiply-add = 2); peak taken as cores x clock x 32 FLOP/cycle = {peak / 1e9:.0f} GFLOP/s "
             f"(float32). 'auto' resolves to {result['auto_dtype']} here. {result['load']}", "",
             "| path | forward patterns/s | GFLOP/s | of peak | reconstruct patterns/s | vs old |", "|---|---|---|---|---|---|"]
    for name, (dtype, cl) in PATHS.items():
        s = speed[name]
        lines.append(f"| {name} ({dtype}{', channels-last input' if cl else ''}) | {s['forward']:.0f} | "
                     f"{s['forward'] * flops / 1e9:.0f} | {s['forward'] * flops / peak:.0%} | {s['reconstruct']:.0f} | "
                     f"{s['reconstruct'] / speed['old']['reconstruct']:.2f}x |")
    q = quality
    lines += ["", f"Quality (N={args.quality_N} lines, a model trained {args.train_minutes:g} min, another lines scan): "
              f"phase / amplitude SSIM {q['old']['phase_ssim']:.4f} / {q['old']['amplitude_ssim']:.4f} and data fit "
              f"{q['old']['data_fit']:.3f}x on the old path; {q['new']['phase_ssim']:.4f} / {q['new']['amplitude_ssim']:.4f} "
              f"and {q['new']['data_fit']:.3f}x on the new one (largest object difference "
              f"{q['max_abs_difference']:.1e}).", ""]
    write_section(TITLE, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
