"""Pure tensor math, the bottom floor of the model: tensors in, tensors out, no files, no config.

    forward.py    the forward model: sub-pixel shifts, patch extraction / placement, the overlap
                  constraint, the far field (unitary FFT), predicted amplitudes, Poisson NLL
    stitching.py  patches -> object: StitchAccumulator, stitch; streaming pieces (compact_subsets,
                  partial_canvas, CanvasSum) that add up across Ray Data actors
"""
