"""Iterative reconstruction of object, probe and positions (no network): the engine (`engine.solve`),
the probe estimated from the data when a scan brings none (`probe_init`), and the half-scan resolution
estimate (`half_scan`). Importing the package is light (no torch): the command line reads
PROBE_CHOICES before any heavy import."""

PROBE_CHOICES = ("file", "estimate")  # where `solve` starts its probe: the scan's, or estimated from the data
