"""Where Ray runs and what fits on it.

    session.py    start or join Ray quietly (loopback only when embedded); always let go of what we started;
                  the auth token kept private
    scaling.py    trainer section + RayConfig -> ScalingConfig / RunConfig / CheckpointConfig / FailureConfig;
                  fit_count (train workers, sweep trials, inference actors); autoscaler pre-flight
    run_files.py  where runs live (storage_path, run_location; local path or URI), their files, Ray's
                  checkpoint registry
"""
