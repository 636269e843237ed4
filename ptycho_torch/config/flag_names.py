"""The command-line spellings of common config fields, shared by both command lines and the Python
APIs' keywords (`--batch-size` -> `batch_size` -> training.batch_size). Old spellings that were renamed are in
config.renamed.RENAMED_FLAGS (they still work, with a notice)."""

# The command-line spellings of common fields (flag -> dotted field), shared by both command lines and
# the Python APIs' keywords (--batch-size -> batch_size). Fields in BOOL_FLAG_FIELDS get --x/--no-x.
FLAG_FIELDS: dict[str, str] = {
    "--N": "model.N",
    "--gridsize": "model.gridsize",
    "--n-filters-scale": "model.n_filters_scale",
    "--probe-trainable": "model.probe_trainable",
    "--epochs": "trainer.max_epochs",
    "--max-epochs": "trainer.max_epochs",
    "--max-minutes": "trainer.max_time",
    "--max-time": "trainer.max_time",
    "--batch-size": "training.batch_size",
    "--val-fraction": "data.val_fraction",
    "--n-groups": "data.n_groups",
    "--accelerator": "trainer.accelerator",
    "--devices": "trainer.devices",
    "--num-nodes": "trainer.num_nodes",
    "--strategy": "trainer.strategy",
    "--precision": "trainer.precision",
    "--gradient-clip-val": "trainer.gradient_clip_val",
    "--gradient-clip-algorithm": "trainer.gradient_clip_algorithm",
    "--accumulate-grad-batches": "trainer.accumulate_grad_batches",
    "--dataloader-workers": "dataloader.num_workers",
    "--learning-rate": "optimizer.learning_rate",
    "--scheduler": "optimizer.scheduler",
    "--logger": "logging.logger",
    "--checkpoint-save-top-k": "checkpoint.save_top_k",
    "--early-stop-patience": "checkpoint.early_stop_patience",
    "--seed": "training.seed",
    "--inference-batch-size": "inference.batch_size",
    "--init-from": "training.init_from",
    "--freeze": "training.freeze",
}
BOOL_FLAG_FIELDS: dict[str, str] = {
    "--deterministic": "trainer.deterministic",
    "--progress-bar": "trainer.enable_progress_bar",
}
