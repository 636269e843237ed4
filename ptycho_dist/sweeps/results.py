"""Results of a hyper-parameter sweep as plain data: one TrialRecord per trial, the best trial, the
results table (a pandas DataFrame: trials.csv and the printed summary) and the per-trial curves.

A trial's status is one of
    completed   trained to its last epoch (or stopped by its own EarlyStopping): it has a model bundle
    stopped     stopped early by the scheduler (ASHA) after `epochs` epochs
    error       raised (the message is in the `error` column)
    unfinished  the sweep was interrupted while it ran (resume the sweep)
The best trial is the completed trial with the best metric at its last epoch (the weights in its
model bundle); `best_<metric>` is the best value a trial reached at any epoch.

`write_sweep_results` writes a sweep's results directory (trials.csv, trials.png, best_config.yaml,
best/) and returns its SweepResult. Nothing here needs Ray: ptycho_dist.sweeps.report fills
TrialRecords from Ray Tune's ResultGrid (with `rows_by_trial`, `number` and `metric_curve` over its
dataframes) and copies the best trial's run files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ptycho_torch.config import RunConfig, save_run_config
from ptycho_torch.errors import UserError

if TYPE_CHECKING:
    from ptycho_dist.sweeps.sweep_config import SweepConfig

log = logging.getLogger("ptycho_torch")

STATUS_ORDER = ("completed", "stopped", "unfinished", "error")  # table order, best first within each
EPOCHS_KEY = "epochs_completed"  # epochs a trial finished so far (Lightning's 0-based epoch + 1)
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_DIR = "best"
TRIALS_PNG = "trials.png"


@dataclass
class TrialRecord:
    """One trial as it appears in trials.csv."""

    trial_id: str
    params: dict[str, Any]
    status: str  # completed | stopped | error | unfinished
    epochs: int  # epochs reported
    last_value: float  # metric at the last reported epoch (NaN if none)
    best_value: float  # best metric over the reported epochs (NaN if none)
    stopped_early: bool  # fewer epochs than a full trial (by the scheduler or by EarlyStopping)
    seconds: float
    run_dir: str
    error: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epochs_completed, metric)


@dataclass
class SweepResult:
    """What a sweep produced (paths are local, except `experiment` which may be a URI)."""

    name: str
    experiment: str
    out_dir: Path
    metric: str
    trials: list[TrialRecord]  # in trial-id order
    table: str  # the printed summary
    complete: bool  # False when the sweep was interrupted (resume it with --resume NAME)
    best: TrialRecord | None = None  # the best trial (None if no trial completed)
    best_config: RunConfig | None = None
    files: dict[str, Path] = field(default_factory=dict)  # trials.csv, best_config.yaml, best/, trials.png
    # Ray Tune's own ray.tune.ResultGrid of the sweep (get_best_result, get_dataframe, errors, each
    # Result's checkpoint and metrics_dataframe), for users who know Tune's API; None when not run by Tune
    result_grid: Any = field(default=None, repr=False)


def rows_by_trial(frame: Any) -> dict[str, dict[str, Any]]:
    """trial id -> its row of a results dataframe with a trial_id column (pandas; trials that reported
    nothing are absent)."""
    return {str(r["trial_id"]): r for r in frame.to_dict("records")} if "trial_id" in frame.columns else {}


def number(row: dict[str, Any], key: str) -> float:
    """row[key] as a float; NaN when it is missing or not a number."""
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def metric_curve(dataframe: Any, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) per reported epoch of a trial's per-epoch dataframe (pandas, with an EPOCHS_KEY
    column); a repeated epoch (a continued trial) keeps its last value."""
    if dataframe is None or EPOCHS_KEY not in getattr(dataframe, "columns", ()) or metric not in dataframe.columns:
        return []
    rows = dataframe[[EPOCHS_KEY, metric]].dropna().drop_duplicates(EPOCHS_KEY, keep="last")
    return sorted((int(e), float(v)) for e, v in zip(rows[EPOCHS_KEY], rows[metric]))


def choose_best(records: Sequence[TrialRecord], mode: str) -> TrialRecord | None:
    """The completed trial with the best last-epoch metric (ties: the better best value, then the id)."""
    done = [r for r in records if r.status == "completed" and math.isfinite(r.last_value)]
    if not done:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(done, key=lambda r: (sign * r.last_value, sign * r.best_value, r.trial_id))


def trials_frame(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str) -> Any:
    """The results table, one row per trial: trial_id, status, the searched fields, epochs,
    stopped_early, last_<metric>, best_<metric>, seconds, run_dir, error (pandas DataFrame)."""
    import pandas as pd

    columns = ["trial_id", "status", *space_keys, "epochs", "stopped_early", f"last_{metric}", f"best_{metric}",
               "seconds", "run_dir", "error"]
    rows = [[r.trial_id, r.status, *(r.params.get(k) for k in space_keys), r.epochs, r.stopped_early,
             r.last_value, r.best_value, round(r.seconds, 1), r.run_dir, r.error] for r in records]
    return pd.DataFrame(rows, columns=columns)


def write_trials_csv(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, path: Path) -> Path:
    """trials.csv: `trials_frame` (booleans written true / false, floats to 6 significant digits)."""
    from ptycho_torch.safe_output import atomic_path

    frame = trials_frame(records, space_keys, metric)
    frame["stopped_early"] = frame["stopped_early"].map({True: "true", False: "false"})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)


def format_table(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, mode: str,
                 best: TrialRecord | None) -> str:
    """A fixed-width summary of `trials_frame`, best first ('*' marks the best trial), without
    run_dir and seconds; the error column only when a trial failed (long errors shortened)."""
    frame = trials_frame(records, space_keys, metric)
    frame["error"] = [e if len(e) <= 70 else e[:67] + "..." for e in frame["error"]]
    frame["stopped_early"] = frame["stopped_early"].map({True: "true", False: "false"})
    sign = 1.0 if mode == "min" else -1.0
    rank = frame["status"].map(lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER))
    frame = frame.assign(_rank=rank, _key=sign * frame[f"last_{metric}"]).sort_values(
        ["_rank", "_key"], na_position="last", kind="stable")
    frame.insert(0, "", ["*" if best is not None and t == best.trial_id else "" for t in frame["trial_id"]])
    drop = ["run_dir", "seconds", "_rank", "_key"] + ([] if any(r.error for r in records) else ["error"])
    frame = frame.drop(columns=drop).rename(columns={k: k.split(".", 1)[-1] for k in space_keys})
    cells = [list(frame.columns), *frame.map(_fmt).values.tolist()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def save_curves(records: Sequence[TrialRecord], space_keys: Sequence[str], metric: str, path: Path) -> Path:
    """trials.png: the metric per epoch of every trial (legend: trial id and its values)."""
    from ptycho_torch.evaluation.plots import save_trial_curves

    def label(r: TrialRecord) -> str:
        values = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(r.params.get(k))}" for k in space_keys)
        return f"{r.trial_id} {values}" + ("" if r.status == "completed" else f" ({r.status})")

    curves = {label(r): ([e for e, _ in r.curve], [v for _, v in r.curve]) for r in records}
    return save_trial_curves(curves, path, metric, title=f"{metric} per trial ({len(records)} trials)")


def write_sweep_results(records: Sequence[TrialRecord], base: RunConfig, sweep: SweepConfig, experiment: str,
                        out_dir: Path, copy_run: Callable[[str, Path], Path]) -> SweepResult:
    """trials.csv, trials.png, best_config.yaml and best/ in `out_dir` from the trials' `records`.

    An interrupted sweep (a trial `unfinished`) gets the table only (resume it); a finished sweep with no
    completed trial is a UserError naming the first error. `copy_run(run_dir, dest)` copies the best
    trial's run files (from a path or URI) into `dest`."""
    full_epochs = sweep.epochs_per_trial(base)
    complete = all(r.status != "unfinished" for r in records)
    keys = list(sweep.space)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {TRIALS_CSV: write_trials_csv(records, keys, sweep.metric, out_dir / TRIALS_CSV)}
    if any(r.curve for r in records):
        files[TRIALS_PNG] = save_curves(records, keys, sweep.metric, out_dir / TRIALS_PNG)
    best = choose_best(records, sweep.mode) if complete else None
    table = format_table(records, keys, sweep.metric, sweep.mode, best)
    result = SweepResult(name=str(sweep.name), experiment=experiment, out_dir=out_dir, metric=sweep.metric,
                         trials=list(records), table=table,
                         complete=complete, best=best, files=files)
    if not complete:
        log.warning("sweep %r was interrupted; continue it with: ptycho-dist tune --out %s --resume %s",
                    sweep.name, out_dir, sweep.name)
        return result
    if best is None:
        errors = [f"{r.trial_id}: {r.error}" for r in records if r.error]
        raise UserError(f"no trial of sweep {sweep.name!r} completed its {full_epochs} epochs "
                         f"({len(records)} trials; see {files[TRIALS_CSV]})"
                         + (f"; first error: {errors[0]}" if errors else ""))
    result.best_config = sweep.trial_config(base, best.params)
    files[BEST_CONFIG] = save_run_config(result.best_config, out_dir / BEST_CONFIG)
    files[BEST_DIR] = copy_run(best.run_dir, out_dir / BEST_DIR)
    return result
