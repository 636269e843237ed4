"""Results of a sweep: one record per trial, trials.csv, the printed table, the best trial's config
and run directory, and the per-trial curves (trials.png).

A trial's status is one of
    completed  trained to its last epoch (or stopped by its own EarlyStopping): it has a model bundle
    stopped    stopped early by the scheduler (ASHA) after `epochs` epochs
    error      raised (the message is in the `error` column; Tune keeps error.txt in the trial directory)
The best trial is the completed trial with the best metric at its last epoch (the weights in its
model bundle); `best_<metric>` is the best value a trial reached at any epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ray.tune import Callback

from ptycho_dist.sweep_trial import EPOCHS_KEY, plain, run_location

log = logging.getLogger("ptycho_dist")

RUN_FILES = ("model.pt", "config.yaml", "manifest.json", "metrics.json", "loss.png")  # copied to DIR/best


@dataclass
class TrialRecord:
    """One trial as it appears in trials.csv."""

    trial_id: str
    params: dict[str, Any]
    status: str  # completed | stopped | error
    epochs: int  # epochs reported to Tune
    last_value: float  # metric at the last reported epoch (NaN if none)
    best_value: float  # best metric over the reported epochs (NaN if none)
    stopped_early: bool  # fewer epochs than a full trial (by the scheduler or by EarlyStopping)
    seconds: float
    run_dir: str
    error: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epochs_completed, metric)


def _manifest_epochs(run_dir: str) -> int | None:
    """epochs_completed of a finished training run (its manifest.json), None if it did not finish."""
    from ptycho_dist.run_files import read_run_file

    text = read_run_file(run_dir, "manifest.json")
    if text is None:
        return None
    try:
        return int(json.loads(text).get("epochs_completed"))
    except (ValueError, TypeError):
        return None


def _curve(dataframe: Any, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) per reported epoch; a repeated epoch (a continued trial) keeps its last value."""
    if dataframe is None or EPOCHS_KEY not in getattr(dataframe, "columns", ()) or metric not in dataframe.columns:
        return []
    by_epoch: dict[int, float] = {}
    for epoch, value in zip(dataframe[EPOCHS_KEY], dataframe[metric]):
        if epoch == epoch and value is not None:  # skip NaN epochs
            by_epoch[int(epoch)] = float(value)
    return sorted(by_epoch.items())


def collect_trials(result_grid: Any, metric: str, mode: str, full_epochs: int, experiment: str) -> list[TrialRecord]:
    """TrialRecords from a Tune ResultGrid, in trial-id order."""
    records = []
    for result in result_grid:
        trial_id = Path(result.path).name
        curve = _curve(result.metrics_dataframe, metric)
        values = [v for _, v in curve if math.isfinite(v)]
        epochs = curve[-1][0] if curve else 0
        run_dir = run_location(experiment, trial_id)
        finished = _manifest_epochs(run_dir)
        if result.error is not None:
            status = "error"
        elif epochs >= full_epochs or (finished is not None and finished == epochs):
            status = "completed"
        else:
            status = "stopped"
        pick = min if mode == "min" else max
        error = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
        records.append(TrialRecord(
            trial_id=trial_id, params={k: plain(v) for k, v in (result.config or {}).items()}, status=status,
            epochs=epochs, last_value=curve[-1][1] if curve else math.nan,
            best_value=pick(values) if values else math.nan, stopped_early=status != "error" and epochs < full_epochs,
            seconds=float((result.metrics or {}).get("time_total_s", math.nan)), run_dir=run_dir, error=error,
            curve=curve))
    return sorted(records, key=lambda r: r.trial_id)


def choose_best(records: Sequence[TrialRecord], mode: str) -> TrialRecord | None:
    """The completed trial with the best last-epoch metric (ties: the better best value, then the id)."""
    done = [r for r in records if r.status == "completed" and math.isfinite(r.last_value)]
    if not done:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(done, key=lambda r: (sign * r.last_value, sign * r.best_value, r.trial_id))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def table_rows(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (the columns of trials.csv)."""
    header = ["trial_id", "status", *space_keys, "epochs", "stopped_early", f"last_{metric}", f"best_{metric}",
              "seconds", "run_dir", "error"]
    rows = [[r.trial_id, r.status, *(_fmt(r.params.get(k)) for k in space_keys), str(r.epochs),
             str(r.stopped_early).lower(), _fmt(r.last_value), _fmt(r.best_value), _fmt(round(r.seconds, 1)),
             r.run_dir, r.error] for r in records]
    return header, rows


def write_trials_csv(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, path: Path) -> Path:
    """trials.csv: one row per trial (see `table_rows`)."""
    header, rows = table_rows(records, space_keys, metric)
    from ptycho_torch.outputs import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def format_table(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, mode: str,
                 best: TrialRecord | None) -> str:
    """A fixed-width summary, best first ('*' marks the best trial); errors shortened."""
    header, _ = table_rows(records, space_keys, metric)
    keep = [h for h in header if h not in ("run_dir", "seconds") and (h != "error" or any(r.error for r in records))]
    sign = 1.0 if mode == "min" else -1.0
    order = sorted(records, key=lambda r: (r.status != "completed", r.status != "stopped",
                                           sign * r.last_value if math.isfinite(r.last_value) else math.inf))
    short = {k: k.split(".", 1)[-1] for k in space_keys}
    head = ["", *(short.get(h, h) for h in keep)]
    body = []
    for r in order:
        _, (row,) = table_rows([r], space_keys, metric)
        cells = dict(zip(header, row))
        cells["error"] = r.error if len(r.error) <= 70 else r.error[:67] + "..."
        body.append(["*" if r is best else "", *(cells[h] for h in keep)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join(lines)


def save_curves(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, path: Path) -> Path:
    """trials.png: the metric per epoch of every trial (legend: trial id and its values)."""
    from ptycho_torch.plots import save_trial_curves

    def label(r: TrialRecord) -> str:
        values = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(r.params.get(k))}" for k in space_keys)
        return f"{r.trial_id} {values}" + ("" if r.status == "completed" else f" ({r.status})")

    curves = {label(r): ([e for e, _ in r.curve], [v for _, v in r.curve]) for r in records}
    return save_trial_curves(curves, path, metric, title=f"{metric} per trial ({len(records)} trials)")


def copy_run(run_dir: str, dest: Path, names: Sequence[str] = RUN_FILES) -> Path:
    """Copy a trial's run files (model bundle, config, manifest, metrics, loss plot) from a path or URI into
    the local directory `dest`, which then is a run directory `ptycho-torch reconstruct --model` accepts."""
    import pyarrow.fs as pafs

    from ptycho_dist.run_files import is_uri, run_location

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
        from ptycho_torch.outputs import atomic_write_bytes

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
