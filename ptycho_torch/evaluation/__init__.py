"""How good a reconstruction is: against a ground truth, against its own data, in pictures.

    metrics.py     phase alignment, PSNR, SSIM, FRC (parity-tested against scikit-image)
    data_fit.py    Poisson deviance of the object's predicted patterns / the counting-noise floor (no truth needed)
    truth_loss.py  the loss of the ground truth on a simulated scan: the floor a model's loss is read against
    plots.py       every picture (object, loss, FRC, comparison, fit map, sweeps)
    evaluate.py    `evaluate` (files) and `score` (arrays in memory)
"""
