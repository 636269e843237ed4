"""Several scans trained on together: a corpus whose scans keep their own probe and normalisation.

`read_training_scans(data, scans=...)` reads `data.path` for training. Several files are either
parts of one scan (one object frame, one probe, one normalisation factor: `ScanFiles`, as
`read_scans` reads them) or separate scans (a `ScanCorpus`):

    data.scans = "one"       every file is a part of one scan (the files must share N and probe)
    data.scans = "per_file"  every file is a scan of its own
    data.scans = "auto"      files belong to one scan when they have the same probe, the same
                             scan_index values and the same objectGuess (or none); otherwise they are
                             separate scans. `ptycho-torch simulate --n-scans K` writes scan_index = k
                             into file k, so its scans are told apart even with one probe.

A `ScanCorpus` offers the reading interface of one scan over all its patterns in global order
(scan order, then row order): n_patterns, N, positions (M, 2), diffraction_rows(indices),
diffraction_block, mean_energy; plus what training needs per scan: `scans`, `offsets`,
`pattern_scan` (M,) int64 (the scan of each pattern) and `probes()` (S, P, N, N) complex64 (each
scan's probe, padded with zero modes to the largest mode count: a zero mode adds no intensity).
Its `probe` is the probe of scan 0, the reference a model's own probe is set to. Positions of
different scans live in different object frames; groups are formed per scan, so a group never
holds patterns of two scans.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ptycho_torch.config import ConfigError
from ptycho_torch.data.beamline import ReadOptions
from ptycho_torch.data.contract import read_scan
from ptycho_torch.data.scan import ScanData
from ptycho_torch.data.scan_files import (
    Scan,
    ScanFiles,
    ScanPaths,
    resolve_scan_sources,
    rows_by_part,
    scan_parts,
)

log = logging.getLogger("ptycho_torch")

SCAN_MODES = ("auto", "one", "per_file")


@dataclass(eq=False)
class ScanCorpus:
    """Separate scans read as one training source (module docstring); `scans` in order."""

    scans: list[Scan]
    offsets: np.ndarray = field(init=False, repr=False)  # (S + 1,) int64: global index of each scan's row 0

    def __post_init__(self) -> None:
        if len(self.scans) < 2:
            raise ValueError("a ScanCorpus holds at least two scans")
        self.offsets = np.cumsum([0] + [s.n_patterns for s in self.scans]).astype(np.int64)
        first = self.scans[0]
        for scan in self.scans[1:]:
            if scan.N != first.N:
                raise ConfigError(f"data.path: the scans hold patterns of different sizes: {first.path} is "
                                  f"{first.N}x{first.N} but {scan.path} is {scan.N}x{scan.N}; one model takes one "
                                  "pattern size, so train on scans of one size (crop or bin the others)")

    # -- what the corpus has
    @property
    def n_scans(self) -> int:
        return len(self.scans)

    @property
    def path(self) -> Path | None:
        return self.scans[0].path

    @property
    def paths(self) -> list[Path]:
        return [p.path for scan in self.scans for p in scan_parts(scan)]

    @property
    def N(self) -> int:
        return self.scans[0].N

    @property
    def n_patterns(self) -> int:
        return int(self.offsets[-1])

    @property
    def probe(self) -> np.ndarray:
        """(P, N, N) complex64: scan 0's probe padded to the corpus's mode count."""
        return self.probes()[0]

    def probes(self) -> np.ndarray:
        """(S, P, N, N) complex64: each scan's probe, padded with zero modes to the largest P."""
        modes = max(s.probe.shape[0] for s in self.scans)
        out = np.zeros((self.n_scans, modes, self.N, self.N), np.complex64)
        for k, scan in enumerate(self.scans):
            out[k, : scan.probe.shape[0]] = scan.probe
        return out

    @property
    def metadata(self) -> dict:
        return self.scans[0].metadata

    @property
    def mask(self) -> np.ndarray | None:
        """(N, N) bool detector mask shared by the scans (True = excluded pixel), or None. Scans with
        different masks cannot be one corpus yet (GroupDataset applies one mask to every group)."""
        masks = [getattr(s, "mask", None) for s in self.scans]
        first = masks[0]
        if any((m is None) != (first is None) or (m is not None and not np.array_equal(m, first)) for m in masks):
            raise ConfigError("data.mask: the scans of this corpus have different detector masks, and one corpus "
                              "trains with one mask; give one mask for all (--data.mask MASK.npy) or train on "
                              "scans of one detector")
        return first

    @property
    def object_guess(self) -> None:
        """None: the scans lie in different object frames (their truths stay with each scan)."""
        return None

    @property
    def positions(self) -> np.ndarray:
        """(M, 2) float64 (x, y) pixels, each scan in its own object frame."""
        return np.concatenate([s.positions for s in self.scans])

    @property
    def pattern_scan(self) -> np.ndarray:
        """(M,) int64: the scan of each pattern (0..S-1)."""
        return np.repeat(np.arange(self.n_scans, dtype=np.int64), np.diff(self.offsets))

    # -- reading rows by global index
    def diffraction_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patterns at global `indices` (any shape) as (*indices.shape, N, N) float32, one read per scan."""
        return rows_by_part(self.scans, self.offsets, indices, self.N)

    def diffraction_block(self, start: int, stop: int) -> np.ndarray:
        return self.diffraction_rows(np.arange(max(start, 0), min(stop, self.n_patterns)))

    def mean_energy(self, block: int | None = None) -> float:
        """Mean over all patterns of sum_xy X**2 (photons); training normalises each scan by its own."""
        total = sum(s.mean_energy(block) * s.n_patterns for s in self.scans)
        return total / max(self.n_patterns, 1)

    def without_object(self) -> "ScanCorpus":
        return ScanCorpus([s.without_object() for s in self.scans])


TrainingScans = Union[Scan, ScanCorpus]


def corpus_scans(data: TrainingScans) -> list[Scan]:
    """The scans of a training source in order (one for a single scan)."""
    return data.scans if isinstance(data, ScanCorpus) else [data]


def _same_scan(a: ScanData, b: ScanData) -> bool:
    """Whether two files can be parts of one scan: same probe, scan_index values and objectGuess."""
    scale = float(np.abs(a.probe).max())
    if a.probe.shape != b.probe.shape or not np.allclose(a.probe, b.probe, rtol=1e-5, atol=1e-6 * scale):
        return False
    ia = None if a.scan_index is None else np.unique(a.scan_index)
    ib = None if b.scan_index is None else np.unique(b.scan_index)
    if (ia is None) != (ib is None) or (ia is not None and not np.array_equal(ia, ib)):
        return False
    ga, gb = a.object_guess, b.object_guess
    if (ga is None) != (gb is None):
        return False
    return ga is None or (ga.shape == gb.shape and np.array_equal(ga, gb))


def _as_scan(parts: list[ScanData]) -> Scan:
    return parts[0] if len(parts) == 1 else ScanFiles(parts)


def read_training_scans(data: ScanPaths, *, scans: str = "auto", validate: bool = True,
                        max_patterns: int | None = None, options: ReadOptions | None = None) -> TrainingScans:
    """Read `data` (a path, a glob, or several) for training: one scan (ScanData / ScanFiles) or a
    ScanCorpus of separate scans, as `scans` says (module docstring). With `max_patterns` each scan
    keeps only its first `max_patterns` patterns."""
    if scans not in SCAN_MODES:
        raise ConfigError(f"data.scans: got {scans!r}; allowed values are {', '.join(SCAN_MODES)}")
    # options: how beamline files are read (ReadOptions.from_config); 'FILE.h5::/frames' keeps its dataset
    files = [read_scan(p, validate=validate, options=(options or ReadOptions()).with_frames(frames))
             for p, frames in resolve_scan_sources(data)]
    if scans == "one" or len(files) == 1:
        members = [_as_scan(files)]
    elif scans == "per_file":
        members = list(files)
    else:
        groups: list[list[ScanData]] = []
        for f in files:
            home = next((g for g in groups if _same_scan(g[0], f)), None)
            if home is None:
                groups.append([f])
            else:
                home.append(f)
        members = [_as_scan(g) for g in groups]
    if max_patterns is not None:
        members = [s.subset(np.arange(max_patterns)) if max_patterns < s.n_patterns else s for s in members]
    if len(members) == 1:
        return members[0]
    corpus = ScanCorpus(members)
    log.info("training on %d scans (%d files, %d patterns); each keeps its own probe and normalisation",
             corpus.n_scans, len(files), corpus.n_patterns)
    return corpus
