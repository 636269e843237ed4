"""The one training path: a RunConfig and a scan -> a Lightning Trainer, fitted -> a run directory.

    train.py            build_trainer (execution config -> Trainer) and train (local, DDP, Ray's workers)
    callbacks.py        History, EpochSummary, LearningRate
    progress_images.py  the current reconstruction of a fixed region every K epochs (TensorBoard, MLflow, PNG)
    interrupt.py        SIGTERM/SIGINT -> a resumable checkpoint, exit 143/130; run_interruptibly
    interrupt_once.py   the command line's SIGINT handler: the first Ctrl-C stops, later ones are ignored
    data_binding.py     a run bound to its data (data_files.json; the check of --resume)
    manifest.py         manifest.json
    warm_start.py       --init-from and --freeze; the one warm-start rule of every front door
    launcher.py         what launchers in processes of their own need (Ray Train, sweep trials)

Importing the package is light (no torch): the command line imports interrupt_once before anything heavy.
"""
