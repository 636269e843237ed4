"""Reconstruction speed on one machine: the whole `reconstruct` call vs the bare network forward.

One run simulates a scan of `--patterns` positions (default 10,000, N=32; the written files carry no
objectGuess, as measured data do not, so no evaluation runs), trains a bundle for one epoch on a
small simulated scan per width (`--widths`, speed does not depend on training quality), and then,
per width and file format (`--formats`, NPZ in memory and HDF5 read lazily), measures side by side
in the same process, with the same torch threads and batch size:

1. whole   patterns/s of `ptycho_torch.reconstruction.reconstruct.reconstruct(bundle, data, out)` timed
           end to end: loading the bundle, reading and validating the scan, grouping, the loader,
           the network, stitching, writing object.npz, amplitude.png and phase.png
2. bare    patterns/s of the bare network forward (`net(x)` under `torch.inference_mode`) on the
           same patterns in the same batches, the inputs (amplitude x norm factor) prepared in advance
3. phases  the steps of `reconstruct` run one by one with timers (the same library calls), so the
           gap between 1 and 2 is attributed: bundle load, read + validate, grouping, batch loading,
           network (incl. the predictor's input scaling and output cast), stitching, writing

A warm-up reconstruction of a small file (and a warm-up forward) runs first, so imports and first
calls are not counted (the first call's time is reported separately). Each measurement is repeated
(`--repeats`, interleaved) and the fastest run is reported: the machine is shared, slower repeats
measure the neighbours.

Writes benchmarks/results/reconstruct_speed.json and the "## Reconstruction speed (single machine)"
section of docs/benchmarks.md (other sections are kept). Usage:

    .venv/bin/python benchmarks/reconstruct_speed.py [--patterns 10000] [--N 32] [--widths 0.5 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bundles import one_epoch_bundle
from docs_page import DOCS, load_note, write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reconstruct_speed.json"
SECTION = "## Reconstruction speed (single machine)"
TARGET = 0.8  # whole reconstruct / bare network, patterns/s
PARTS = {"load_bundle": "bundle load", "read_validate": "read + validate", "groups": "grouping + set-up",
         "batch_loading": "batch loading", "predictor_wrap": "predictor scaling + cast",
         "stitching": "stitching", "write": "write npz + PNGs"}


# ------------------------------------------------------------------ data and models

def simulate_files(work: Path, N: int, M: int, formats: list[str]) -> dict[str, Any]:
    """Simulate M positions once; write them as each format without objectGuess, plus a 500-pattern
    warm-up file per format. Returns {"files": {fmt: path}, "warmup": {fmt: path}, ...}."""
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.contract import write_scan
    from ptycho_torch.data.simulate import simulate_scan

    t = time.perf_counter()
    sim = simulate_scan(SimulationConfig(N=N, n_positions=M, seed=1, nphotons=1e5), progress=False)
    sim_s = time.perf_counter() - t
    shape = sim["object_guess"].shape
    sim["object_guess"] = None  # measured data carry no ground truth: no evaluation in the timed path
    k = min(500, M)
    warm = {**sim, "diffraction": sim["diffraction"][:k], "xcoords": sim["xcoords"][:k],
            "ycoords": sim["ycoords"][:k], "scan_index": sim["scan_index"][:k]}
    suffix = {"npz": ".npz", "h5": ".h5"}
    files = {f: write_scan(work / f"scan{suffix[f]}", **sim) for f in formats}
    warmup = {f: write_scan(work / f"warmup{suffix[f]}", **warm) for f in formats}
    return {"files": files, "warmup": warmup, "simulate_s": sim_s, "object_shape": list(shape),
            "scan_step_px": sim["metadata"]["scan_step_px"]}


def train_bundle(work: Path, N: int, scale: float, batch: int) -> tuple[Path, float]:
    """One-epoch bundle whose inference.batch_size is `batch` (so `reconstruct` without a batch size
    uses it too), and the seconds it took."""
    t = time.perf_counter()
    bundle = one_epoch_bundle(work, N, scale, **{"inference.batch_size": batch})
    return bundle, time.perf_counter() - t


# ------------------------------------------------------------------ measurements

def time_whole(bundle: Path, data: Path, out: Path, batch: int) -> float:
    from ptycho_torch.reconstruction.reconstruct import reconstruct

    t = time.perf_counter()
    reconstruct(bundle, data, out, batch_size=batch, progress=False)
    return time.perf_counter() - t


def prepare_inputs(bundle: Path, data: Path, batch: int) -> tuple[Any, list[dict[str, Any]]]:
    """The network and its inputs, batch by batch, exactly as `reconstruct` feeds them (same loader,
    same order, same batch size): x = amplitude x the bundle's norm factor (float32), plus each
    batch's positions and indices (for the stitching timing)."""
    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.reconstruction.reconstruct import PatchPredictor, inference_groups, inference_loader

    predictor = PatchPredictor(bundle)
    scan = read_scan(data)
    groups = inference_groups(scan, predictor.gridsize)
    loader = inference_loader(scan, groups, predictor.config, batch)
    batches = [{"x": (b["amp"].float() * predictor.norm_factor).contiguous(), "positions": b["positions"],
                "index": b["index"]} for b in loader]
    return predictor.module, batches


def time_bare(net: Any, batches: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    """Seconds of `net(x)` over all batches (inference mode), and the outputs (kept, not timed)."""
    import torch

    outs = []
    with torch.inference_mode():
        t = time.perf_counter()
        for b in batches:
            outs.append(net(b["x"]))
        return time.perf_counter() - t, outs


def time_parts(bundle: Path, data: Path, out: Path, batch: int, batches: list[dict[str, Any]],
               outs: list[Any]) -> dict[str, float]:
    """Every step of `reconstruct` except the network, each timed alone with the same library calls:
    bundle load, read + validate, grouping and set-up, batch loading (the loader iterated without the
    network), the predictor's own work around `net` (input scaling, output cast), stitching the
    network outputs of the bare pass (accumulate + result), writing object.npz and the PNGs."""
    import torch

    from ptycho_torch.data.contract import read_scan
    from ptycho_torch.physics.stitching import StitchAccumulator, stitch_weight
    from ptycho_torch.reconstruction.reconstruct import (
        PatchPredictor,
        inference_groups,
        inference_loader,
        write_reconstruction,
    )

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    predictor = PatchPredictor(bundle)
    t1 = time.perf_counter()
    scan = read_scan(data)
    t2 = time.perf_counter()
    groups = inference_groups(scan, predictor.gridsize)
    loader = inference_loader(scan, groups, predictor.config, batch)
    acc = StitchAccumulator(scan.object_shape, stitch_weight(predictor.probe, predictor.config.inference.stitch_weight))
    stitch_mask = torch.from_numpy(groups.stitch_mask())  # (G, C): every pattern stitched once
    t3 = time.perf_counter()
    amps = [b["amp"] for b in loader]
    t4 = time.perf_counter()
    t["load_bundle"], t["read_validate"], t["groups"], t["batch_loading"] = t1 - t0, t2 - t1, t3 - t2, t4 - t3
    with torch.inference_mode():  # what PatchPredictor.__call__ does besides net(x)
        a = time.perf_counter()
        for amp, o in zip(amps, outs):
            torch.as_tensor(amp, dtype=torch.float32).to(predictor.device) * predictor.norm_factor
            o.to(torch.complex64).cpu()
        t["predictor_wrap"] = time.perf_counter() - a
    a = time.perf_counter()
    for b, patches in zip(batches, outs):
        patches = patches.to(torch.complex64)
        mask = stitch_mask[b["index"]]
        acc.add(patches[mask], b["positions"][mask])
    obj, weight = acc.result(predictor.config.inference.weight_threshold)
    b_ = time.perf_counter()
    write_reconstruction(out, obj, weight, scan, {"engine": "benchmark"})
    c = time.perf_counter()
    t["stitching"], t["write"] = b_ - a, c - b_
    return t


def thread_check(net: Any, batches: list[dict[str, Any]], n: int, threads: list[int], rounds: int = 2
                 ) -> dict[str, Any]:
    """Bare-forward patterns/s on the first `n` patterns with each torch thread count, alternating
    (a shared machine punishes more threads than free cores: OpenMP threads wait on each other)."""
    import torch

    previous = torch.get_num_threads()
    sub, k = [], 0
    for b in batches:
        if k >= n:
            break
        sub.append(b)
        k += len(b["x"])
    rates: dict[int, list[float]] = {th: [] for th in threads}
    try:
        for _ in range(rounds):
            for th in threads:
                torch.set_num_threads(th)
                seconds, _ = time_bare(net, sub)
                rates[th].append(k / seconds)
    finally:
        torch.set_num_threads(previous)
    return {"patterns": k, "bare_patterns_per_s": {str(th): max(r) for th, r in rates.items()},
            "all_bare_patterns_per_s": {str(th): r for th, r in rates.items()}}


def measure(bundle: Path, data: Path, warmup: Path, work: Path, M: int, batch: int, repeats: int
            ) -> tuple[dict[str, Any], tuple[Any, list[dict[str, Any]]]]:
    """Whole, bare and parts for one bundle and file, `repeats` interleaved rounds, best of each."""
    first_call_s = time_whole(bundle, warmup, work / "warm_out", batch)  # warm-up: imports, first calls
    net, batches = prepare_inputs(bundle, data, batch)
    time_bare(net, batches[:2])
    if sum(len(b["x"]) for b in batches) != M:
        raise RuntimeError("the loader did not yield every pattern")
    whole, bare, parts = [], [], []
    for r in range(repeats):
        whole.append(time_whole(bundle, data, work / f"out_{r}", batch))
        seconds, outs = time_bare(net, batches)
        bare.append(seconds)
        parts.append(time_parts(bundle, data, work / f"parts_out_{r}", batch, batches, outs))
        del outs
        print(f"  round {r + 1}: whole {M / whole[-1]:.0f} patterns/s, bare {M / bare[-1]:.0f} patterns/s, "
              f"non-network parts {sum(parts[-1].values()):.2f} s", flush=True)
    best = {k: min(p[k] for p in parts) for k in parts[0]}
    whole_pps, bare_pps = M / min(whole), M / min(bare)
    return {"whole_s": min(whole), "bare_s": min(bare), "whole_patterns_per_s": whole_pps,
            "bare_patterns_per_s": bare_pps, "ratio": whole_pps / bare_pps,
            "all_whole_s": whole, "all_bare_s": bare, "parts_s": best, "all_parts_s": parts,
            "unaccounted_s": min(whole) - min(bare) - sum(best.values()),
            "warmup_first_call_s": first_call_s, "batches": len(batches)}, (net, batches)


# ------------------------------------------------------------------ report

def table(result: dict[str, Any]) -> list[str]:
    lines = ["| model | file | patterns | batch | whole `reconstruct` s | whole patterns/s | "
             "bare network s | bare patterns/s | whole / bare |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| N={r['N']}, n_filters_scale={r['n_filters_scale']} | {r['format']} | {r['n_patterns']} | "
                     f"{r['batch_size']} | {r['whole_s']:.2f} | {r['whole_patterns_per_s']:.0f} | {r['bare_s']:.2f} | "
                     f"{r['bare_patterns_per_s']:.0f} | {r['ratio']:.2f}x |")
    return lines


def breakdown(result: dict[str, Any]) -> list[str]:
    lines = ["| model | file | whole s | bare network | " + " | ".join(PARTS.values()) + " | unaccounted |",
             "|---|---|---|---|" + "---|" * (len(PARTS) + 1)]
    for r in result["runs"]:
        w, p = r["whole_s"], r["parts_s"]
        cells = [f"{v:.2f} ({v / w:.0%})" for v in [r["bare_s"], *(p[k] for k in PARTS), r["unaccounted_s"]]]
        lines.append(f"| n_filters_scale={r['n_filters_scale']} | {r['format']} | {w:.2f} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    env, s = result["environment"], result["settings"]
    worst = min(result["runs"], key=lambda r: r["ratio"])
    met = all(r["ratio"] >= TARGET for r in result["runs"])
    threads = env["torch_threads"]
    lines = [SECTION, "",
             f"`benchmarks/reconstruct_speed.py`, {result['date']}, {env['cpu_count']} CPU cores "
             f"(shared with other work, so read ratios, not absolute rates), {threads} torch "
             f"thread(s) for both measurements, torch {env['torch']}. A simulated scan of {s['patterns']} positions "
             f"(N={s['N']}, object {result['data']['object_shape'][0]}x{result['data']['object_shape'][1]} px, "
             "written without objectGuess as measured data are, so no evaluation runs), bundles trained "
             "for one epoch. *Whole* times the `reconstruct(bundle, data, out)` call end to end (bundle "
             "load, read and validation, grouping, loader, network, stitching, writing object.npz and the "
             "two PNGs); *bare* times `net(x)` under `torch.inference_mode` on the same patterns in the "
             "same batches, inputs prepared in advance. Both in one process after a warm-up reconstruction "
             f"of a 500-pattern file; best of {s['repeats']} interleaved rounds. "
             + load_note(env["load_start"], result["load_end"], env["cpu_count"]), "",
             "Reproduce with:", "", "```bash",
             f".venv/bin/python benchmarks/reconstruct_speed.py --patterns {s['patterns']} --N {s['N']} "
             f"--widths {' '.join(str(w) for w in s['widths'])} --formats {' '.join(s['formats'])} "
             f"--batch-size {s['batch_size']} --threads {s['threads']} --repeats {s['repeats']}", "```", ""]
    lines += table(result)
    lines += ["", "Where the whole call's seconds go: every step of `reconstruct` but the network timed "
              "alone with the same library calls (stitching on the bare pass's outputs), the bare "
              "network time, and what is left of the whole call (unaccounted); fastest round of each, "
              "percentages of the whole call:", ""]
    lines += breakdown(result)
    check = result.get("thread_check")
    if check:
        rates = check["bare_patterns_per_s"]
        lines += ["", f"Torch threads (bare forward, first {check['patterns']} patterns, n_filters_scale="
                  f"{result['runs'][0]['n_filters_scale']}, best of 2 alternating): "
                  + ", ".join(f"{th} thread(s) {v:.0f} patterns/s" for th, v in rates.items())
                  + ". With more threads than free cores (other work running) the OpenMP threads wait "
                  "on each other and the rate collapses and swings from one pass to the next, which is "
                  "why `--threads` defaults to 1 here; the ratio compares both paths at the same setting."]
    verdict = "meets" if met else "misses"
    top = sorted(PARTS, key=lambda k: -worst["parts_s"][k])[:2]
    lines += ["", f"The whole path {verdict} the {TARGET}x target: its rate is at worst "
              f"{worst['ratio']:.2f}x the bare network's (n_filters_scale={worst['n_filters_scale']}, "
              f"{worst['format']}), where the largest costs besides the network are "
              + " and ".join(f"{PARTS[k]} ({worst['parts_s'][k]:.2f} s, {worst['parts_s'][k] / worst['whole_s']:.0%})"
                             for k in top) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=10000, help="scan positions to reconstruct (default: 10000)")
    parser.add_argument("--N", type=int, default=32, help="pattern size (default: 32)")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5],
                        help="n_filters_scale of the bundles, e.g. 0.5 2 (default: 0.5)")
    parser.add_argument("--formats", nargs="+", choices=["npz", "h5"], default=["npz", "h5"],
                        help="scan file formats to reconstruct (default: npz h5)")
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size (default: 64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every measurement; 0 keeps torch's default (all cores). "
                             "On a shared machine more threads than free cores make the rates collapse "
                             "and swing (default: 1)")
    parser.add_argument("--thread-check", type=int, default=1000,
                        help="patterns for a bare-forward comparison of 1 thread vs all cores; 0 skips it "
                             "(default: 1000)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds per case; the fastest is reported (default: 2)")
    parser.add_argument("--quick", action="store_true", help="2000 patterns, 1 round, NPZ only (default: off)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args()
    if args.quick:
        args.patterns, args.repeats, args.formats = 2000, 1, ["npz"]
    os.environ.setdefault("PTYCHO_QUIET_LIGHTNING", "1")
    import torch

    from ptycho_torch.cli.main import setup_logging

    setup_logging(False, names=("ptycho_torch",))
    default_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch_default_threads": default_threads, "torch_interop_threads": torch.get_num_interop_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "load_start": os.getloadavg()[0]}
    runs: list[dict[str, Any]] = []
    check = None
    with tempfile.TemporaryDirectory(prefix="recon_speed_") as tmp:
        work = Path(tmp)
        data = simulate_files(work, args.N, args.patterns, args.formats)
        print(f"simulated {args.patterns} patterns (object {data['object_shape']}) in {data['simulate_s']:.1f} s",
              flush=True)
        for width in args.widths:
            bundle, train_s = train_bundle(work, args.N, width, args.batch_size)
            torch.set_num_threads(env["torch_threads"])  # training may have changed it
            for fmt in args.formats:
                print(f"n_filters_scale={width}, {fmt}:", flush=True)
                row, (net, batches) = measure(bundle, data["files"][fmt], data["warmup"][fmt],
                                              work / f"out_{width}_{fmt}", args.patterns, args.batch_size,
                                              args.repeats)
                runs.append({"N": args.N, "n_filters_scale": width, "format": fmt, "n_patterns": args.patterns,
                             "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                             "train_s": train_s, "file_mb": data["files"][fmt].stat().st_size / 2**20, **row})
                if check is None and args.thread_check > 0:
                    check = thread_check(net, batches, args.thread_check, sorted({1, default_threads}))
                    print(f"thread check: {check['bare_patterns_per_s']}", flush=True)
                del net, batches
    result = {"date": time.strftime("%Y-%m-%d"), "environment": env, "settings": {**vars(args), "results": str(args.results)},
              "target_ratio": TARGET,
              "data": {k: v for k, v in data.items() if k not in ("files", "warmup")},
              "runs": runs, "thread_check": check, "target_met": all(r["ratio"] >= TARGET for r in runs)}
    result["total_seconds"] = time.perf_counter() - started
    result["load_end"] = os.getloadavg()[0]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str))
    section = markdown(result)
    if not args.no_docs:
        write_section(SECTION, section)
    print(section)
    print(f"wrote {args.results}" + ("" if args.no_docs else f" and the '{SECTION}' section of {DOCS}")
          + f" in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
