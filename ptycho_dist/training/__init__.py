"""Ray Train: one Lightning training (ptycho_torch.training) on many workers.

    driver.py   fit_distributed (driver: validate once, claim, TorchTrainer, interruption, results) and
                train_loop_per_worker (a call of ptycho_torch.training.train.train with what Ray adds)
    ingest.py   ray.ingest: ray_data: a Ray Dataset of group ids per split, read tasks -> rows, each
                worker's shard as Lightning batches; pattern_ids (the id blocks of train and reconstruct)
"""
