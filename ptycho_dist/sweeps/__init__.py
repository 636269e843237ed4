"""Ray Tune sweeps (`ptycho-dist tune`, pd.tune): each trial one Ray Train run.

    sweep_config.py  SweepConfig (the sweep file: metric, scheduler, search, space, trial resources)
    search_space.py  a search space over run-config fields: entry kinds, normalisation, checks
    tuner.py         run_sweep: the Tuner (search, scheduler, resume), concurrency, the results written
    trial.py         one trial = one fit_distributed, reporting each epoch to Tune
    report.py        TrialRecords from a ResultGrid, the best trial's files, progress lines
    results.py       a sweep's results as plain data: the table, the best trial, trials.csv, trials.png
"""
