"""docs/api.md's example session runs as written: its Python blocks, in order, in one fresh
interpreter inside a temporary directory (a block right after `<!-- api-docs:skip -->` is shown,
not run: it starts Ray, and tests/test_api_dist.py covers it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"(<!-- api-docs:skip -->\n)?```python\n(.*?)```", re.S)


def python_blocks(text: str) -> list[str]:
    """The runnable Python blocks of a Markdown page, in order."""
    return [code for skip, code in BLOCK.findall(text) if not skip]


def test_the_session_of_the_api_page_runs(tmp_path):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 3 and len(BLOCK.findall(DOC.read_text())) == len(blocks) + 1
    script = tmp_path / "session.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DOC.parents[1])}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "complex64" in result.stdout and "phase_ssim" in result.stdout
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "recon" / "object.npz").is_file()
