"""benchmarks/generalize.py runs end to end at its --smoke sizes (with shorter budgets still): corpus,
pretraining, fine-tuning, from-scratch training, the chunked iterative solver and refinement, one
table row each, and leaves docs/benchmarks.md and benchmarks/results alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # about 30-45 s on 2 CPU cores: three short Lightning runs


def test_generalize_smoke(tmp_path):
    docs = ROOT / "docs" / "benchmarks.md"
    before = docs.read_text() if docs.is_file() else None
    keep = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "generalize.py"), "--smoke", "--keep", str(keep),
           "--pretrain-minutes", "0.05", "--finetune-minutes", "0.03", "--scratch-minutes", "0.03",
           "--iterative-seconds", "1", "--refine-seconds", "0.5", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((keep / "generalize.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    solvers = [m for m in rows if m.startswith("ptychi_")]  # where ptychi is installed (the bench extra)
    assert [m for m in rows if m not in solvers] == ["pretrained", "pretrained, every_pattern",
                                                         "pretrained, training scan", "fine-tuned",
                                                         "scratch", "iterative", "refined"]
    assert solvers in ([], ["ptychi_epie", "ptychi_lsqml"])
    for m in solvers:
        points = rows[m]["curve"]
        assert points and all(a["seconds"] < b["seconds"] for a, b in zip(points, points[1:]))
        assert rows[m]["phase_ssim"] == points[-1]["phase_ssim"]
        reached = [p["seconds"] for p in points if p["phase_ssim"] >= rows["pretrained"]["phase_ssim"]]
        assert rows[m]["reach_s"] == (reached[0] if reached else None)
    for r in rows.values():
        assert -1.0 <= r["phase_ssim"] <= 1.0 and -1.0 <= r["amplitude_ssim"] <= 1.0
        assert r["frc_half_resolution_px"] > 0
    for m in rows:
        if m not in solvers:  # deviance / noise floor of each of our own rows' objects
            assert rows[m]["data_fit"] > 0.5
    assert rows["pretrained"]["reconstruct_s"] > 0 and rows["fine-tuned"]["train_s"] > 0
    curve = rows["iterative"]["curve"]
    assert curve and curve[-1]["seconds"] == pytest.approx(rows["iterative"]["seconds"])
    assert all(a["seconds"] < b["seconds"] for a, b in zip(curve, curve[1:]))
    reach = rows["iterative"]["reach_s"]
    if reach is not None:  # the first scored point at the pretrained model's phase SSIM
        first = next(p for p in curve if p["phase_ssim"] >= rows["pretrained"]["phase_ssim"])
        assert reach == first["seconds"]
    assert len(sorted((keep / "corpus").glob("scan_*.npz"))) == 2 and (keep / "heldout.npz").is_file()
    manifest = json.loads((keep / "run_finetuned" / "manifest.json").read_text())
    assert manifest.get("init_from")  # (b) started from (a)'s weights
    assert "## Generalization to unseen scans" in done.stdout
    assert "(a) scored on training scan 0 instead" in done.stdout  # seen vs unseen, side by side
    assert "(a) with one group per pattern" in done.stdout  # the two groupings, side by side
    assert "| data fit |" in done.stdout
    assert (keep / "recon_pretrained" / "fit.png").is_file() and (keep / "iterative_object.npy").is_file()
    assert (docs.read_text() if docs.is_file() else None) == before
    # a GPU run gets its own section and results file beside the CPU table, with the command that made it
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import generalize
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert generalize.section(result).startswith(generalize.SECTION + "\n")
    on_gpu = {**result, "settings": {**result["settings"], "recon_device": "cuda", "batch_size": 16},
              "machine": {**result["machine"], "gpu": "NVIDIA H200"}}
    text = generalize.section(on_gpu)
    assert text.startswith(generalize.SECTION_GPU + "\n") and generalize.SECTION_GPU != generalize.SECTION
    assert "--batch-size 16 --device cuda`" in text and "GPU NVIDIA H200" in text
