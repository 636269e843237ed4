"""What the programs print: plain log lines on stderr, Lightning's chatter kept to warnings.

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
