"""Iterative reconstruction of object, probe and positions (no network).

    engine.py      solve: minibatch rPIE over sparse batches (object, probe modes, positions), scale-free,
                   annealed steps; SolverOptions, Solution
    batches.py     sparse batches: one position from each spatial cluster
    modes.py       incoherent probe modes: new ones to start from, orthogonalisation
    probe_init.py  a probe estimated from the data (mean pattern's far field + a defocus search)
    half_scan.py   resolution without a truth: half-scan FRC (registration, 1/7 and half-bit thresholds)

Importing the package is light (no torch): the command line reads PROBE_CHOICES before any heavy import."""

PROBE_CHOICES = ("file", "estimate")  # where `solve` starts its probe: the scan's, or estimated from the data
