"""Live reconstruction on this machine: how many frames per second the live loop sustains, and how long a frame
waits from being written to being in a published picture (issue 31).

For each engine (`ptycho-torch live`, and `ptycho-dist live` with 1 and 2 actors) two acquisitions of the same
simulated scan are read while a writer process writes them into an SWMR HDF5 file:
  * capacity: the writer as fast as it can (the whole scan is there almost at once), so the live loop runs
    flat out: sustained rate = frames / (first frame received -> every frame on the running canvas);
  * latency: the writer at --hz frames/s (below capacity): written -> published, p50 / p95, and the
    rate kept (reconstructed vs written);
  * written (local engine): the file whole before the live loop starts, the loop's own rate without the
    writer on the same cores;
  * keep-up (local engine): the writer at --keep-up of offline's rate (a detector that fast): does the live loop,
    sharing the cores with the writer, keep up (sustained rate = the writer's), and with what latency.
Offline `reconstruct` of the finished file, on the same model, is the reference rate (measured in the same
run). Results: benchmarks/results/live.json and docs/benchmarks.md ("## Live reconstruction").

    .venv/bin/python benchmarks/live.py                      # N=64, 1024 frames, writer at 60 Hz
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bundles import one_epoch_bundle
from docs_page import load_note, write_section

RESULTS = Path(__file__).resolve().parent / "results" / "live.json"
TITLE = "## Live reconstruction"


def _write(path: str, N: int, positions: int, hz: float) -> None:
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.simulate import simulate_scan
    from ptycho_torch.live.acquisition import acquire

    acquire(simulate_scan(SimulationConfig(N=N, n_positions=positions, seed=7)), path, hz)


def one_run(engine: str, bundle: Path, work: Path, args: argparse.Namespace, hz: float, tag: str) -> dict[str, Any]:
    """One acquisition read live by `engine` ('local', 'ray1', 'ray2')."""
    from ptycho_torch.live.loop import LiveOptions, live_reconstruct

    acq = work / f"{engine}_{tag}.h5"
    out = work / f"{engine}_{tag}"
    # capacity runs publish at the default interval; latency runs at --publish-seconds (latency >= its half)
    publish = args.publish_seconds if hz > 0 else LiveOptions.publish_seconds
    options = LiveOptions(publish_seconds=publish, idle_seconds=30, progress=False,
                          fit_patterns=args.fit_patterns, device=args.device)
    writer = multiprocessing.get_context("spawn").Process(target=_write, args=(str(acq), args.N, args.positions, hz))
    writer.start()
    if tag == "written":  # the file is whole before the live loop starts: its own rate, no writer beside it
        writer.join()
    try:
        if engine == "local":
            result = live_reconstruct(bundle, acq, out, options)
        else:
            from ptycho_dist.live import actor_batches

            result = live_reconstruct(bundle, acq, out, options,
                                      reconstruct_batches=actor_batches(str(bundle), int(engine[-1]), 1.0,
                                                                        args.gpus_per_actor))
    finally:
        writer.join(120)
    lat = np.asarray(result.latency_s)
    return {"engine": engine, "writer_hz": hz, "mode": tag, "frames": result.frames, "publications": len(result.publications),
            "live_seconds": round(result.live_seconds, 3),
            "frames_per_second": round(result.frames / max(result.live_seconds, 1e-9), 1),
            "network_frames_per_second": round(result.live_frames_per_second, 1),
            "network_reads_per_frame": round(result.network_reads_per_frame, 2),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "latency_p95_s": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
            "data_fit": [p["data_fit"] for p in result.publications]}


def section(result: dict[str, Any], publish_seconds: float, fit_patterns: int) -> str:
    """The docs/benchmarks.md section of a result (`--docs-only` rebuilds it from results/live.json)."""
    from ptycho_torch.live.loop import LiveOptions

    offline = result["offline_patterns_per_second"]
    lines = [TITLE, "", f"`.venv/bin/python benchmarks/live.py --positions {result['positions']}` on {result['cores']} CPU "
             f"cores: N={result['N']}, {result['positions']} frames, gridsize 2, n_filters_scale "
             f"{result['n_filters_scale']}; a writer process writes an SWMR HDF5 file on the same cores, the live loop "
             f"reads it (publishing every {LiveOptions.publish_seconds:g} s in the capacity runs, every "
             f"{publish_seconds:g} s in the latency runs; data fit on {fit_patterns} frames). Offline `reconstruct` of "
             f"the finished file in the same run: {offline:.0f} patterns/s. {result['load']}", "",
             "| engine | writer | frames/s sustained (live) | network only | vs offline | network reads / frame | "
             "latency p50 / p95 (s) | pictures |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        capacity = r["writer_hz"] == 0
        keep_up = r.get("mode") == "keep-up"
        writer = "as fast as it can" if capacity else f"{r['writer_hz']:g} Hz"
        if r.get("mode") == "written":
            writer = "done before (no writer beside it)"
        if keep_up:
            writer += f" ({r['writer_hz'] / max(offline, 1e-9):.0%} of offline's rate)"
        lat = "—" if capacity else f"{r['latency_p50_s']:.1f} / {r['latency_p95_s']:.1f}"
        versus = f"{r['frames_per_second'] / max(offline, 1e-9):.0%}" if capacity or keep_up else "(the writer's rate)"
        lines.append(f"| {r['engine']} | {writer} | {r['frames_per_second']:.0f} | {r['network_frames_per_second']:.0f} | "
                     f"{versus} | {r['network_reads_per_frame']:.2f} | {lat} | {r['publications']} |")
    lines += ["", "Sustained = frames / (first frame received -> every frame on the running canvas), publishing "
              "included; network only = frames / seconds in the network pass and stitching; network reads / frame: "
              "patterns through the network per frame (a frame read again as a partner of a later group counts "
              "again; offline 'cover' grouping of the whole scan reads 1.17 on this scan's raster); latency = a frame's write time (the writer's clock) -> "
              "the first published picture that holds it. keep-up: the writer at a set fraction of offline's rate, "
              "on the same cores; the live loop keeps up when its sustained rate is the writer's. ray1 / ray2: the network on 1 / 2 Ray actors of 1 CPU each; "
              "the driver (reading, stitching, publishing) and the writer share the same 2 cores, so on this machine "
              "actors add processes, not cores: two actors are slower than one (oversubscribed threads).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=0.5, help="n_filters_scale of the model (default: 0.5)")
    parser.add_argument("--hz", type=float, default=60.0, help="writer rate of the latency runs (default: 60)")
    parser.add_argument("--publish-seconds", type=float, default=2.0)
    parser.add_argument("--keep-up", type=float, default=0.9,
                        help="writer rate of the keep-up run, a fraction of offline's rate (default: 0.9)")
    parser.add_argument("--fit-patterns", type=int, default=256)
    parser.add_argument("--engines", nargs="+", default=["local", "ray1", "ray2"])
    parser.add_argument("--device", default="cpu", help="device of the local engine and the final pass (default: cpu)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per Ray actor (default: 0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: results/live.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--docs-only", action="store_true", help="rebuild the docs section from --out, run nothing")
    args = parser.parse_args()
    if args.docs_only:
        write_section(TITLE, section(json.loads(args.out.read_text()), args.publish_seconds, args.fit_patterns))
        return

    logging.basicConfig(level=logging.WARNING)
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
        work = Path(tmp)
        bundle = one_epoch_bundle(work, args.N, args.scale)
        from ptycho_torch.reconstruction.reconstruct import reconstruct

        reference = work / "reference.h5"
        _write(str(reference), args.N, args.positions, 0)
        offline = reconstruct(bundle, reference, work / "offline", progress=False, device=args.device)
        if any(e.startswith("ray") for e in args.engines):
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
        try:
            for engine in args.engines:
                runs = [("capacity", 0.0), ("latency", args.hz)]
                if engine == "local":
                    runs += [("written", 0.0), ("keep-up", round(args.keep_up * offline.patterns_per_second))]
                for tag, hz in runs:
                    rows.append(one_run(engine, bundle, work, args, hz, tag))
                    print(json.dumps(rows[-1]))
        finally:
            if any(e.startswith("ray") for e in args.engines):
                ray.shutdown()
    note = load_note(load_start, os.getloadavg()[0], os.cpu_count())
    result = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "N": args.N,
              "positions": args.positions, "n_filters_scale": args.scale, "gridsize": 2,
              "offline_patterns_per_second": round(offline.patterns_per_second, 1), "runs": rows, "load": note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    text = section(result, args.publish_seconds, args.fit_patterns)
    if not args.no_docs:
        write_section(TITLE, text)
    print(text)


if __name__ == "__main__":
    main()
