"""torch's intra-op thread pool sized as the process was told (every training or inference process)."""

from __future__ import annotations

import os


def configure_threads() -> None:
    """Respect OMP_NUM_THREADS for torch's intra-op pool (Ray sets it per worker)."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
