"""Workflows: train, reconstruct, model bundles."""
