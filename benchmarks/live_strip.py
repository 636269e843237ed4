"""The README's strip of a live run (docs/images/live.png): a demo-sized model trained `--minutes` on one lines
scan, then `live_reconstruct` following another lines scan written at `--hz` by a writer process; three of the
published phase pictures (the first, the middle one, the last) side by side, titled with what each showed.

    .venv/bin/python benchmarks/live_strip.py            # 3 min training, 1000 frames at 50 Hz, N=32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write(path: str, hz: float, positions: int) -> None:
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.data.simulate import simulate_scan
    from ptycho_torch.live.acquisition import acquire

    acquire(simulate_scan(SimulationConfig(N=32, object="lines", n_positions=positions, seed=11)), path, hz)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget (default: 3)")
    parser.add_argument("--hz", type=float, default=50.0, help="writer rate, frames/s (default: 50)")
    parser.add_argument("--positions", type=int, default=1000)
    parser.add_argument("--publish-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "live.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from ptycho_torch.config import apply_overrides
    from ptycho_torch.data.simulate import simulate_to_file
    from ptycho_torch.demo import demo_run_config, demo_simulation
    from ptycho_torch.live.loop import LiveOptions, live_reconstruct
    from ptycho_torch.training.train import train

    with tempfile.TemporaryDirectory(prefix="live-strip-") as tmp:
        work = Path(tmp)
        scan = simulate_to_file(demo_simulation(1000), work / "train.npz")
        config = apply_overrides(demo_run_config(scan, 200, args.minutes), {"trainer.enable_progress_bar": False})
        bundle = train(config, work / "run").bundle_path
        acq = work / "acq.h5"
        writer = multiprocessing.get_context("spawn").Process(target=_write, args=(str(acq), args.hz, args.positions))
        writer.start()
        result = live_reconstruct(bundle, acq, work / "live", LiveOptions(publish_seconds=args.publish_seconds,
                                                                          progress=False))
        writer.join()
        rows = result.publications
        shown = sorted({0, len(rows) // 2, len(rows) - 1})
        fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.4))
        for ax, k in zip(axes, shown):
            ax.imshow(mpimg.imread(work / "live" / "live" / "history" / f"phase_{k:04d}.png"))
            ax.axis("off")
            ax.set_title(f"after {rows[k]['seconds']:.0f} s: {rows[k]['frames_reconstructed']} frames, data fit "
                         f"{rows[k]['data_fit']:.0f}x", fontsize=11)
        fig.tight_layout()
        fig.savefig(args.out, dpi=90)
        final = result.final
        print(json.dumps({"publications": rows, "final_data_fit": final.data_fit["ratio"],
                          "final_phase_ssim": final.metrics["phase_ssim"], "out": str(args.out)}, indent=1))


if __name__ == "__main__":
    main()
