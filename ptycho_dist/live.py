"""`ptycho-dist live`: live reconstruction with the network pass on a pool of Ray actors.

The live loop is ptycho_torch's (ptycho_torch.live.loop: the source, the growing canvas, the published
pictures, the final `reconstruct`); only its network pass changes: each batch of new frames goes to one of
K `LivePredictor` actors (the bundle loaded once per actor, on a GPU with `num_gpus_per_actor`), all
batches of a catch-up are queued at once, round robin, and their patches are stitched on the driver as they come
back (the canvas sums add up in any order). The actors start as soon as the probe is chosen, so they load
the model while the first frames arrive (the normalisation factor travels with each batch); the pool goes
with the Ray session when the run ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ptycho_dist.config import RayConfig
from ptycho_torch.config import ConfigError
from ptycho_torch.live.loop import LiveOptions, LiveReconstruction, LiveResult, live_reconstruct

log = logging.getLogger("ptycho_dist")


class LivePredictor:
    """A Ray actor: one PatchPredictor (ptycho_torch.reconstruction.reconstruct) for the run's probe."""

    def __init__(self, model: str, device: str, probe: np.ndarray, threads: int) -> None:
        from ptycho_torch.reconstruction.reconstruct import PatchPredictor

        torch.set_num_threads(max(1, threads))
        self.predictor = PatchPredictor(model, device=device)
        self.predictor.use_probe(probe)

    def predict(self, amp: np.ndarray, offsets: np.ndarray | None, norm_factor: float, tag: int
                ) -> tuple[int, np.ndarray]:
        """(tag, patches (B, C, N, N) complex64) of amplitudes (B, C, N, N) with the run's r."""
        self.predictor.norm_factor = norm_factor
        amp = amp if amp.flags.writeable else amp.copy()
        patches = self.predictor(torch.from_numpy(amp), None if offsets is None else torch.from_numpy(offsets.copy()))
        return tag, patches.numpy()


def actor_batches(model: str, actors: int, num_cpus_per_actor: float, num_gpus_per_actor: float
                  ) -> Callable[[LiveReconstruction], Callable[[list], None]]:
    """The network pass of a LiveReconstruction on `actors` LivePredictor actors (started with the run)."""
    import ray

    def for_run(run: LiveReconstruction) -> Callable[[list], None]:
        # started now (the probe is chosen), so they load the model while the first frames arrive
        remote = ray.remote(num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor)(LivePredictor)
        device = "cuda" if num_gpus_per_actor > 0 else "cpu"
        probe = run.predictor.probe.numpy()
        pool = [remote.remote(model, device, probe, max(1, int(num_cpus_per_actor))) for _ in range(actors)]

        def reconstruct_batches(batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
            amplitudes, positions = run.store.frames()
            jobs = []
            for tag, (idx, _) in enumerate(batches):
                run.network_patterns += idx.size
                pos = positions[idx].astype(np.float32)
                offsets = None if run.C == 1 else pos - pos.mean(axis=1, keepdims=True)
                jobs.append((amplitudes[idx], offsets, run.predictor.norm_factor, tag))
            # every batch queued at once, round robin (an actor runs its queue back to back: no idle gaps
            # while the driver stitches), stitched in the order they finish
            pending = [pool[k % len(pool)].predict.remote(*job) for k, job in enumerate(jobs)]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                tag, patches = ray.get(ready[0])
                idx, stitched = batches[tag]
                run.canvas.add(torch.from_numpy(patches[stitched]), positions[idx][stitched])  # a copy: writable

        return reconstruct_batches

    return for_run


def live_distributed(model: str | Path, watch: str | Path, out: str | Path, options: LiveOptions,
                     ray_config: RayConfig, actors: int | None = None, num_cpus_per_actor: float = 1.0,
                     num_gpus_per_actor: float | str = "auto") -> LiveResult:
    """`live_reconstruct` with the network pass on Ray actors (`actors` None = as many as the cluster's
    CPUs (GPUs with num_gpus_per_actor) hold, at most 8; num_gpus_per_actor 'auto' = one GPU each when the
    cluster has GPUs, else CPU)."""
    from ptycho_dist.cluster.scaling import ClusterResources, actor_pool_size, gpus_per_actor
    from ptycho_dist.cluster.session import ray_session
    from ptycho_torch.model.bundle import resolve_bundle_path

    bundle = str(resolve_bundle_path(model))
    if actors is not None and actors < 1:
        raise ConfigError(f"--concurrency: got {actors}; must be >= 1 (actors running the network)")
    with ray_session(ray_config):
        resources = ClusterResources.from_ray()
        num_gpus_per_actor = gpus_per_actor(num_gpus_per_actor, resources)
        k = actor_pool_size(resources, actors, num_cpus_per_actor, num_gpus_per_actor)
        k = k if actors is not None else min(k, 8)
        log.info("live: the network runs on %d Ray actor(s) (%g CPU, %g GPU each)", k, num_cpus_per_actor,
                 num_gpus_per_actor)
        return live_reconstruct(bundle, watch, out, options,
                                reconstruct_batches=actor_batches(bundle, k, num_cpus_per_actor, num_gpus_per_actor))
