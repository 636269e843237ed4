"""Results of a hyper-parameter sweep as plain data: one TrialRecord per trial, the best trial, the
results table (a pandas DataFrame: trials.csv and the printed summary) and the per-trial curves.

A trial's status is one of
    completed   trained to its last epoch (or stopped by its own EarlyStopping): it has a model bundle
    stopped     stopped early by the scheduler (ASHA) after `epochs` epochs
    error       raised (the message is in the `error` column)
    unfinished  the sweep was interrupted while it ran (resume the sweep)
The best trial is the completed trial with the best metric at its last epoch (the weights in its
model bundle); `best_<metric>` is the best value a trial reached at any epoch.

Nothing here needs Ray: ptycho_dist.sweep_report fills TrialRecords from Ray Tune's ResultGrid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

STATUS_ORDER = ("completed", "stopped", "unfinished", "error")  # table order, best first within each


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
    from ptycho_torch.outputs import atomic_path

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
    from ptycho_torch.plots import save_trial_curves

    def label(r: TrialRecord) -> str:
        values = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(r.params.get(k))}" for k in space_keys)
        return f"{r.trial_id} {values}" + ("" if r.status == "completed" else f" ({r.status})")

    curves = {label(r): ([e for e, _ in r.curve], [v for _, v in r.curve]) for r in records}
    return save_trial_curves(curves, path, metric, title=f"{metric} per trial ({len(records)} trials)")
