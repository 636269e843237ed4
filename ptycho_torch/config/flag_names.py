"""The command-line spellings of common config fields, shared by both command lines and the Python
APIs' keywords (`--batch-size` -> `batch_size` -> training.batch_size)."""

# The command-line spellings of common fields (flag -> dotted field), shared by both command lines and
# the Python APIs' keywords (--batch-size -> batch_size). Fields in BOOL_FLAG_FIELDS get --x/--no-x.
FLAG_FIELDS: dict[str, str] = {
    "--N": "model.N",
    "--gridsize": "model.gridsize",
    "--n-filters-scale": "model.n_filters_scale",
    "--probe-trainable": "model.probe_trainable",
    "--epochs": "training.nepochs",
    "--max-minutes": "training.max_minutes",
    "--batch-size": "training.batch_size",
    "--val-fraction": "data.val_fraction",
    "--n-groups": "data.n_groups",
    "--accelerator": "execution.accelerator",
    "--devices": "execution.devices",
    "--num-nodes": "execution.num_nodes",
    "--strategy": "execution.strategy",
    "--precision": "execution.precision",
    "--gradient-clip-val": "execution.gradient_clip_val",
    "--gradient-clip-algorithm": "execution.gradient_clip_algorithm",
    "--accumulate-grad-batches": "execution.accum_steps",
    "--num-workers": "execution.num_workers",
    "--learning-rate": "execution.learning_rate",
    "--scheduler": "execution.scheduler",
    "--logger": "execution.logger_backend",
    "--checkpoint-save-top-k": "execution.checkpoint_save_top_k",
    "--early-stop-patience": "execution.early_stop_patience",
    "--seed": "execution.seed",
    "--inference-batch-size": "execution.inference_batch_size",
    "--init-from": "training.init_from",
    "--freeze": "training.freeze",
}
BOOL_FLAG_FIELDS: dict[str, str] = {
    "--deterministic": "execution.deterministic",
    "--progress-bar": "execution.enable_progress_bar",
}
