"""The trained thing: the network, how Lightning trains it, and how it is stored and loaded.

    network.py      PtychoNet: the encoder-decoder that maps diffraction amplitudes to object patches
    module.py       the LightningModule: physics-informed loss, optimiser, schedulers, logging
    bundle.py       the model bundle (model.pt): weights, config, probe, normalisation; load_bundle
    checkpoints.py  safe checkpoint loading (weights_only), the intact-checkpoint choice, atomic CheckpointIO
"""
