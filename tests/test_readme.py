"""The README's commands, parsed from the README and run, so the README cannot rot.

Commands run literally, in order, in a temporary directory; only flags that shrink the work to a
test-sized setting are appended (argparse lets a later flag override an earlier one).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent

# subcommand -> flags appended to make the literal command test-sized
SMALL = {
    ("ptycho-torch", "simulate"): ["--n-positions", "80"],
    ("ptycho-torch", "train"): ["--epochs", "1", "--n-filters-scale", "0.25", "--no-progress-bar"],
    ("ptycho-dist", "train"): ["--epochs", "1", "--n-filters-scale", "0.25", "--no-progress-bar"],
    ("ptycho-dist", "demo"): ["--epochs", "1", "--n-positions", "120", "--sweep-epochs", "1"],
}


def block(marker: str) -> list[str]:
    """The command lines of the fenced block after `<!-- marker -->`."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README lacks the {marker} block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def all_cli_commands() -> list[list[str]]:
    """Every ptycho-torch / ptycho-dist command in the README's fenced blocks (inline snippets in the
    prose show flags, not whole commands)."""
    found = []
    for text in re.findall(r"```\w*\n(.*?)```", README, re.S):
        for line in text.splitlines():
            words = shlex.split(line.strip()) if "ptycho-" in line else []
            if words and Path(words[0]).name in ("ptycho-torch", "ptycho-dist") and len(words) > 2:
                found.append(words)
    return found


def run_literal(line: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    program = Path(words[0]).name
    words[0] = str(BIN / program)
    words += SMALL.get((program, words[1]), [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def test_readme_setup_blocks_are_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == block("ci:install") + block("ci:test")
    assert block("ci:install")[0].startswith("python3 -m venv .venv") and "torch==2.13.0" in block("ci:install")[0]
    assert "pytest" in block("ci:test")[0]


def test_every_readme_command_is_accepted_by_the_real_parser():
    from ptycho_dist.cli import build_parser as dist_parser
    from ptycho_torch.cli.main import build_parser as torch_parser

    commands = all_cli_commands()
    assert len(commands) >= 8
    for words in commands:
        parser = torch_parser() if Path(words[0]).name == "ptycho-torch" else dist_parser()
        parser.parse_args(words[1:])  # SystemExit on an unknown flag fails the test


def test_single_machine_commands_run(tmp_path):
    for line in block("readme:usage"):
        if "ptycho-dist" in line:
            continue  # the Ray commands run in the test below
        result = run_literal(line, tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (tmp_path / "recon" / "metrics.json").is_file()


@pytest.mark.ray
def test_distributed_commands_run(tmp_path):
    lines = block("readme:usage")
    for line in [lines[0]] + [line for line in lines if "ptycho-dist" in line]:  # simulate, then Ray
        result = run_literal(line, tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (tmp_path / "recon_ray" / "object.npz").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_main_job_runs(tmp_path):
    (line,) = block("readme:main")
    result = run_literal(line, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "demo_out"
    for name in ("summary.md", "comparison.png", "loss.png", "frc.png", "trials.png", "recon/object.npz"):
        assert (out / name).is_file(), name
