"""Scan data: the file contract, grouping, datasets and simulation."""
