"""Model bundles: one file with weights, configs, normalisation and versions.

A bundle is a plain dict of tensors and builtins, so it loads with `torch.load(weights_only=True)`:
    format        "ptycho-dist-bundle/1"
    state_dict    the LightningModule state dict (network, probe, log_scale, norm_factor)
    config        RunConfig.to_dict() of the run that trained it
    norm_factor   float, r of the training data (SPEC 4.1)
    probe_modes   int
    versions      {"ptycho_dist", "torch", "lightning", "python"}
    data_probe    (P, N, N) complex64, the probe of the training data as read (scan 0 of a corpus),
                  before any refinement; absent in bundles written before it existed
"""

from __future__ import annotations

import pickle
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptycho_torch import __version__
from ptycho_torch.config import ModelConfig, RunConfig
from ptycho_torch.errors import UserError
from ptycho_torch.model.module import PtychoPINNModule

BUNDLE_FORMAT = "ptycho-dist-bundle/1"
BUNDLE_NAME = "model.pt"


def versions() -> dict[str, str]:
    import lightning

    return {"ptycho_dist": __version__, "torch": str(torch.__version__), "lightning": str(lightning.__version__),
            "python": platform.python_version()}


def save_bundle(module: PtychoPINNModule, config: RunConfig, path: str | Path,
                data_probe: torch.Tensor | None = None) -> Path:
    """Write the bundle of a trained module (weights moved to CPU) atomically; `data_probe` is the
    probe of its training data (what `reconstruct --probe auto` compares a new scan's probe with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = {
        "format": BUNDLE_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "config": config.to_dict(),
        "norm_factor": float(module.norm_factor),
        "probe_modes": int(module.probe.shape[0]),
        "versions": versions(),
    }
    if data_probe is not None:
        bundle["data_probe"] = data_probe.detach().cpu().to(torch.complex64)
    from ptycho_torch.safe_output import atomic_path

    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)
    return path


@dataclass
class LoadedBundle:
    module: PtychoPINNModule  # in eval mode, on CPU
    config: RunConfig
    norm_factor: float
    path: Path
    versions: dict[str, Any]
    data_probe: torch.Tensor | None = None  # (P, N, N) complex64: the training data's probe (see save_bundle)


def resolve_bundle_path(path: str | Path) -> Path:
    """Accept a run directory (containing model.pt) or the bundle file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {path}; pass --model RUN_DIR (a training run "
                                f"directory holding {BUNDLE_NAME}) or the bundle file")
    return path


def load_bundle(path: str | Path) -> LoadedBundle:
    """Load a bundle (weights_only=True) and rebuild the module in eval mode on CPU."""
    path = resolve_bundle_path(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the model bundle is empty (0 bytes); train again or copy it again")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        from ptycho_torch.model.checkpoints import torch_load_problem

        first = torch_load_problem(e)
        if "weights" in str(e).lower():
            raise UserError(f"{path}: refused to load: it holds Python objects beyond tensors ({first}); "
                             "nothing in it was run. Bundles written by ptycho-torch never do; if you did not "
                             "write it, delete it") from None
        raise UserError(f"{path}: damaged model bundle ({first}); train again or copy it again") from None
    except (RuntimeError, EOFError, OSError) as e:
        from ptycho_torch.model.checkpoints import torch_load_problem

        raise UserError(f"{path}: damaged or truncated model bundle ({torch_load_problem(e)}); train "
                         "again or copy it again") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is not a {BUNDLE_FORMAT} model bundle")
    saved = dict(bundle["config"])
    saved["model"] = {**ModelConfig.saved_before, **(saved.get("model") or {})}
    config = RunConfig.from_dict(saved, str(path))
    module = PtychoPINNModule(config, bundle["norm_factor"], bundle["probe_modes"])
    module.load_state_dict(bundle["state_dict"])
    module.eval()
    return LoadedBundle(module, config, float(bundle["norm_factor"]), path, bundle.get("versions", {}),
                        bundle.get("data_probe"))
