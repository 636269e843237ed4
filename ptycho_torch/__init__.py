"""ptycho_torch: PtychoPINN on one machine (PyTorch + Lightning). Never imports ray."""

__version__ = "0.1.0"
