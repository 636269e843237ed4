"""Ray Tune's side of a sweep's results: TrialRecords (ptycho_dist.sweeps.results) from a ResultGrid,
the best trial's run files copied out of the storage path, and the driver's progress lines.

The last and the best reported metric of each trial are Ray's own `ResultGrid.get_dataframe()`
(last result) and `get_dataframe(filter_metric, filter_mode)` (best result at any epoch); the curves
for trials.png are each trial's `metrics_dataframe`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ray.tune import Callback

from ptycho_dist.sweeps.results import TrialRecord, metric_curve, number, rows_by_trial
from ptycho_dist.sweeps.trial import EPOCHS_KEY, plain, run_location

log = logging.getLogger("ptycho_dist")

# Tune's auto-filled metric: True in the last result of a trial that ended (its function returned, or
# the scheduler or a stopper stopped it); False or absent for one that was running, paused or pending
# when the sweep was interrupted. Read from Result.metrics (the trial's last result), public ResultGrid API.
DONE_KEY = "done"
RUN_FILES = ("model.pt", "config.yaml", "manifest.json", "metrics.json", "loss.png")  # copied to DIR/best


def _manifest_epochs(run_dir: str) -> int | None:
    """epochs_completed of a finished training run (its manifest.json), None if it did not finish."""
    from ptycho_dist.cluster.run_files import read_run_file

    text = read_run_file(run_dir, "manifest.json")
    if text is None:
        return None
    try:
        return int(json.loads(text).get("epochs_completed"))
    except (ValueError, TypeError):
        return None


def collect_trials(result_grid: Any, metric: str, mode: str, full_epochs: int, experiment: str) -> list[TrialRecord]:
    """TrialRecords from a Tune ResultGrid, in trial-id order (status: ptycho_dist.sweeps.results)."""
    last = rows_by_trial(result_grid.get_dataframe())
    best = rows_by_trial(result_grid.get_dataframe(filter_metric=metric, filter_mode=mode))
    records = []
    for result in result_grid:
        trial_id = Path(result.path).name
        row = last.get(trial_id, {})
        epochs = int(number(row, EPOCHS_KEY)) if math.isfinite(number(row, EPOCHS_KEY)) else 0
        run_dir = run_location(experiment, trial_id)
        if result.error is not None:
            status = "error"
        elif not (result.metrics or {}).get(DONE_KEY):  # the sweep was interrupted while it ran (or before)
            status = "unfinished"
        elif epochs >= full_epochs or _manifest_epochs(run_dir) == epochs:
            status = "completed"
        else:
            status = "stopped"
        error = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
        records.append(TrialRecord(
            trial_id=trial_id, params={k: plain(v) for k, v in (result.config or {}).items()}, status=status,
            epochs=epochs, last_value=number(row, metric), best_value=number(best.get(trial_id, {}), metric),
            stopped_early=status != "error" and epochs < full_epochs, seconds=number(row, "time_total_s"),
            run_dir=run_dir, error=error, curve=metric_curve(result.metrics_dataframe, metric)))
    return sorted(records, key=lambda r: r.trial_id)


def copy_run(run_dir: str, dest: Path, names: Sequence[str] = RUN_FILES) -> Path:
    """Copy a trial's run files (model bundle, config, manifest, metrics, loss plot) from a path or URI into
    the local directory `dest`, which then is a run directory `ptycho-torch reconstruct --model` accepts."""
    import pyarrow.fs as pafs

    from ptycho_dist.cluster.run_files import is_uri, run_location

    dest.mkdir(parents=True, exist_ok=True)
    if is_uri(run_dir):
        fs, base = pafs.FileSystem.from_uri(run_dir)
    else:
        fs, base = pafs.LocalFileSystem(), str(Path(run_dir).resolve())
    for name in names:
        source = run_location(base, name)
        if fs.get_file_info(source).type != pafs.FileType.File:
            if name == "model.pt":
                raise FileNotFoundError(f"the best trial's model bundle {run_dir}/{name} does not exist")
            continue
        from ptycho_torch.safe_output import atomic_write_bytes

        with fs.open_input_stream(source) as src:
            atomic_write_bytes(dest / name, src.read())
    return dest


class ProgressLog(Callback):
    """Driver-side progress lines: one per finished or failed trial (every epoch with -v)."""

    def __init__(self, metric: str, full_epochs: int) -> None:
        self.metric = metric
        self.full_epochs = full_epochs

    def _value(self, result: dict[str, Any] | None) -> str:
        value = (result or {}).get(self.metric)
        return f"{self.metric}={value:.5g}" if isinstance(value, (int, float)) else f"{self.metric}=?"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.info("trial %s started: %s", trial.trial_id, {k: plain(v) for k, v in trial.config.items()})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        log.debug("trial %s: epoch %s/%d %s", trial.trial_id, result.get(EPOCHS_KEY), self.full_epochs,
                  self._value(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get(EPOCHS_KEY, 0))
        how = "finished" if epochs >= self.full_epochs else "stopped early"
        log.info("trial %s %s after %d/%d epochs, %s", trial.trial_id, how, epochs, self.full_epochs,
                 self._value(trial.last_result))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.warning("trial %s failed after %s epochs (see error.txt in its trial directory)", trial.trial_id,
                    (trial.last_result or {}).get(EPOCHS_KEY, 0))
