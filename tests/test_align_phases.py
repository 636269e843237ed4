"""Global phase alignment of patches before stitching (stitching.align_phases)."""

from __future__ import annotations

import json

import numpy as np
import torch

from ptycho_torch.physics.forward import extract_patches
from ptycho_torch.physics.stitching import align_phases


def _phase_spread(patches: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest disagreement (rad) between the patches' global phases, relative to patch 0."""
    r = (patches * truth.conj()).sum((-2, -1))
    return float(torch.angle(r / r.abs() * (r[0] / r[0].abs()).conj()).abs().max())


def test_random_patch_phases_are_undone():
    torch.manual_seed(0)
    obj = torch.polar(torch.ones(160, 160), torch.randn(160, 160))
    grid = torch.arange(20, 140, 8.3)
    positions = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2).float()
    truth = extract_patches(obj, positions, 32)  # (M, 32, 32)
    scrambled = truth * torch.polar(torch.ones(len(truth)), torch.rand(len(truth)) * 2 * np.pi)[:, None, None]
    aligned, record = align_phases(scrambled, positions, torch.ones(32, 32))
    assert _phase_spread(scrambled, truth) > 2.5
    assert _phase_spread(aligned, truth) < 0.3 and record["pairs"] > len(truth)
    torch.testing.assert_close(aligned.abs(), scrambled.abs())  # only phases change


def test_reconstruct_align_phases_flag(tiny_scan, tmp_path):
    from conftest import tiny_config

    from ptycho_torch.cli.main import main
    from ptycho_torch.training.train import train

    trained_g2 = train(tiny_config(tiny_scan, **{"model.gridsize": 2, "trainer.max_epochs": 1}), tmp_path / "g2").run_dir
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(trained_g2), "--data", str(tiny_scan), "--out", str(out),
                 "--align-phases"]) == 0
    saved = np.load(out / "object.npz")
    assert json.loads(str(saved["metadata"]))["align_phases"] is True and np.isfinite(saved["object"]).all()
