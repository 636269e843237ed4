"""ptycho_torch must never import ray: single-machine users do not need it."""

import pkgutil
import subprocess
import sys

import ptycho_torch


def test_importing_every_ptycho_torch_module_does_not_import_ray():
    names = [m.name for m in pkgutil.walk_packages(ptycho_torch.__path__, "ptycho_torch.")
             if not m.name.endswith(".__main__")]  # `python -m` scripts: importing one runs the command line
    assert "ptycho_torch.training.train" in names
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
