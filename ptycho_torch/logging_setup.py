"""What the programs print: plain log lines on stderr, Lightning's chatter kept to warnings, and
whether a progress bar shows (`show_progress`: on a terminal or in a Jupyter notebook).

Used by both command lines and by Ray workers (whose stderr Ray forwards to the driver).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Sequence


def setup_logging(verbose: bool = False, names: Sequence[str] = ("ptycho_torch",)) -> None:
    """Our loggers print plain lines to stderr; Lightning's chatter is kept to warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
    if not verbose:
        os.environ.setdefault("PTYCHO_QUIET_LIGHTNING", "1")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel: its stderr is no terminal, yet a person watches."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def show_progress(progress: bool | None) -> bool:
    """A progress bar's on/off: `progress` when given; None (auto) = on where someone watches (stderr is
    a terminal, or a notebook), off in batch jobs and logs (`tqdm(disable=not show_progress(p))`)."""
    if progress is not None:
        return bool(progress)
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()
