"""From a scan to an object: with the trained network, or iteratively with the solver; and the files written.

    reconstruct.py      PatchPredictor, inference_groups, scan_for_model, the local loop, write_reconstruction
    batch_predictor.py  RowReader and BatchPredictor: rows by global index -> partial canvases (Ray Data's actors)
    solver/             the iterative solver (object, probe modes, positions; scale-free), probe estimate, half-scan FRC
    solve.py            `ptycho-torch solve` / pt.solve: the solver's run and its products
    refine.py           reconstruct --refine-seconds: the network's object as the solver's start
    exports.py          products for other programs: probe.npy, float32 TIFFs, reconstruction.cxi

Importing the package is light (no torch): the command line reads solver.PROBE_CHOICES before anything heavy.
"""
