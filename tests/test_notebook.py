"""examples/quickstart.ipynb runs, cell by cell, in a real Jupyter kernel (nbclient), with a training
budget of a few seconds instead of its three minutes: every cell succeeds, the pictures are shown, the
numbers are printed, and the progress bars show in the notebook (stderr is no terminal there)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
BUDGET_LINE = "MINUTES = 3.0"


def outputs(cell, kind: str) -> list:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == kind]


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    settings = next(c for c in nb.cells if c.cell_type == "code" and BUDGET_LINE in c.source)
    settings.source = settings.source.replace(BUDGET_LINE, "MINUTES = 0.1")  # seconds, not minutes, here
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in outputs(c, "error")]
    pictures = sum(1 for c in code for o in outputs(c, "display_data") if "image/png" in o.get("data", {}))
    assert pictures >= 4  # the scan, loss.png, comparison.png, the phase
    text = "".join(o.get("text", "") for c in code for o in outputs(c, "stream"))
    assert "epochs in" in text and "phase_ssim" in text and "wrote" in text
    stderr = "".join(o.get("text", "") for c in code for o in outputs(c, "stream") if o.get("name") == "stderr")
    assert "reconstruct" in stderr and "pattern" in stderr  # the reconstruction's progress bar
    for name in ("scan.npz", "run/model.pt", "recon/object.npz", "recon/comparison.png"):
        assert (tmp_path / "quickstart" / name).is_file(), name
