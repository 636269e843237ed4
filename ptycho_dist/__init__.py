"""ptycho_dist: thin Ray adapters (Train, Tune, Data) over ptycho_torch."""

__version__ = "0.1.0"
