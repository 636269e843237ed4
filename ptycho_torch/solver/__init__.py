"""Iterative reconstruction of object, probe and positions (no network): the engine `solve`, the
probe estimated from the data when a scan brings none, and the half-scan resolution estimate."""

from ptycho_torch.solver.engine import Solution, SolverOptions, solve

__all__ = ["SolverOptions", "Solution", "solve"]
