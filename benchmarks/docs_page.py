"""docs/benchmarks.md: each benchmark script owns one `## ` section and rewrites only that one."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(title: str, section: str, docs: Path = DOCS) -> None:
    """Replace the section that starts with the line `title` (up to the next `## ` heading) by
    `section`, or append it when the page lacks it; the page is created when missing."""
    text = docs.read_text() if docs.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text.rstrip("\n") + "\n")


def load_note(start: float, end: float, cores: int | None) -> str:
    """'1-minute load average S at the start, E at the end' and, when either exceeds the core count,
    that the runs competed with other processes."""
    text = f"1-minute load average {start:.1f} at the start, {end:.1f} at the end"
    busy = cores is not None and max(start, end) > cores
    return text + (" (above the core count: runs competed with other processes)." if busy else ".")
